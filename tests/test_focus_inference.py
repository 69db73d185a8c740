"""FOCUS through the Predictor, the CLI and the nodes: the official test-time pipeline (short side
512, long side at most 2048, integer levels, zero padding to /32, crop, resize back, the query
merge), on a small FOCUS built with random weights (the pipeline does not depend on the values)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("cv2")

from birefnet_core import Predictor, Resolution
from birefnet_core.inference import FOCUS_PIXEL_MEAN, FOCUS_PIXEL_STD
from birefnet_core.models import build_model, family_of_model
from birefnet_core.models.focus import FocusConfig, mask_of_interest

SMALL = FocusConfig(width=128, depth=4, ffn_hidden=256, adapter_heads=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(SMALL)
    with torch.no_grad():  # larger random weights than the default init, so the two queries differ
        for p in net.sem_seg_head.predictor.parameters():
            p.mul_(3.0)
    return net


def photo(h, w, seed=0):
    """A test image: smooth shapes and texture, as uint8 [H, W, 3]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.08).float()
    base = torch.stack([0.2 + 0.6 * disc, 0.3 + 0.4 * xx, 0.5 + 0.3 * yy], -1)
    noise = 0.1 * torch.rand(h, w, 3, generator=g)
    return ((base + noise).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


SMALL_RULE = "short:128:512"  # the official rule at a quarter of its size, to keep the tests fast


def official_resize(image_u8, short, longest):
    """detectron2's ResizeShortestEdge: the size rule, then PIL bilinear on the uint8 image."""
    h, w = image_u8.shape[:2]
    scale = short / min(h, w)
    nh, nw = h * scale, w * scale
    if max(nh, nw) > longest:
        s = longest / max(nh, nw)
        nh, nw = nh * s, nw * s
    nh, nw = int(nh + 0.5), int(nw + 0.5)
    return np.array(Image.fromarray(image_u8).resize((nw, nh), Image.BILINEAR))


def official(model, image_u8, binary=False, short=128, longest=512):
    """The official pipeline on one uint8 image: PIL bilinear resize of the uint8 image with
    detectron2's ResizeShortestEdge size rule (512 and 2048 in the released configs), (x - mean)
    / std, zero padding to /32, the network, then upsample, crop, resize and merge (notes §1, §6)."""
    h, w = image_u8.shape[:2]
    resized = official_resize(image_u8, short, longest)
    nh, nw = resized.shape[:2]
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor(FOCUS_PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(FOCUS_PIXEL_STD).view(1, 3, 1, 1)
    x = F.pad(x, (0, -nw % 32, 0, -nh % 32))
    with torch.no_grad():
        out = model(x)
    soft, hard = mask_of_interest(out.class_logits, out.mask_logits, tuple(x.shape[-2:]), (nh, nw), (h, w))
    return (hard.float() if binary else soft)[0], resized


def test_the_family_table_routes_focus_to_its_pipeline(model):
    assert family_of_model(model).name == "focus"
    predictor = Predictor(model)
    assert type(predictor.pipeline).__name__ == "FocusPipeline"
    assert str(predictor.resolution) == "short:512:2048"


@pytest.mark.parametrize("h, w, expected", [
    (600, 800, (512, 683)),  # the README's default test size: 512x683, padded to 512x704
    (480, 640, (512, 683)),
    (1000, 1000, (512, 512)),
    (100, 5000, (41, 2048)),  # long side capped at 2048, short side follows
    (1, 1, (512, 512)),
])
def test_resize_shortest_edge_rule(h, w, expected):
    assert Resolution.parse("short:512:2048").size_for(h, w) == expected
    assert Resolution.shortest_edge(512, 2048).size_for(h, w) == expected


def test_predictor_input_is_the_official_one_up_to_the_resize(model):
    """Same size, same normalisation, same padding; the device resize equals PIL's on all but a
    few values (by one level), enlarging and shrinking."""
    image = photo(150, 200)
    predictor = Predictor(model)
    x, size = predictor.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert size == (512, 683) and tuple(x.shape) == (1, 3, 512, 704) and x.dtype == torch.float32
    assert torch.all(x[..., :, 683:] == 0) and torch.all(x[..., 512:, :] == 0)  # zero padding (after normalising)
    resized = official_resize(image, 512, 2048)
    levels = x[0, :, :, :683] * torch.tensor(FOCUS_PIXEL_STD).view(3, 1, 1) + torch.tensor(FOCUS_PIXEL_MEAN).view(3, 1, 1)
    diff = (levels.round() - torch.from_numpy(resized).permute(2, 0, 1).float()).abs()
    assert float(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.001, float((diff > 0).float().mean())
    # shrinking: both filters average over the source (antialiased), not 4-tap sampling
    big = photo(1200, 1600, seed=1)
    x, size = predictor.preprocess(torch.from_numpy(big).permute(2, 0, 1)[None].float() / 255)
    resized = official_resize(big, 512, 2048)
    levels = x[0, :, :, :size[1]] * torch.tensor(FOCUS_PIXEL_STD).view(3, 1, 1) + torch.tensor(FOCUS_PIXEL_MEAN).view(3, 1, 1)
    diff = (levels.round() - torch.from_numpy(resized).permute(2, 0, 1).float()).abs()
    assert float(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.001, float((diff > 0).float().mean())


def test_predictor_equals_the_official_pipeline_given_the_same_resized_image(model, monkeypatch):
    """With PIL's resize put in place of the device resize, the Predictor's output is the
    official one (soft and binary)."""
    image = photo(90, 130, seed=2)
    soft_ref, resized = official(model, image)
    hard_ref, _ = official(model, image, binary=True)

    def pil_resize(levels, size):
        assert tuple(size) == resized.shape[:2]
        return torch.from_numpy(resized).permute(2, 0, 1)[None].float()

    from birefnet_core.inference import FocusPipeline
    monkeypatch.setattr(FocusPipeline, "resize", staticmethod(pil_resize))
    batch = torch.from_numpy(image)[None]  # uint8 BHWC
    soft = Predictor(model, resolution=SMALL_RULE).predict(batch, layout="BHWC")[0]
    hard = Predictor(model, resolution=SMALL_RULE, binary=True).predict(batch, layout="BHWC")[0]
    # the official soft map sums over both queries and can pass 1 where both claim foreground: a mask is clamped
    assert soft.shape == (90, 130) and float((soft - soft_ref.clamp(0, 1)).abs().max()) < 1e-5
    assert torch.equal(hard, hard_ref) and set(hard.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(hard.mean()) < 1, "the merged binary mask should not be empty or full on this image"


def test_predictor_output_moves_little_from_the_official_pipeline(model):
    image = photo(120, 160, seed=3)
    ref, _ = official(model, image)
    ref = ref.clamp(0, 1)
    ours = Predictor(model, resolution=SMALL_RULE).predict(torch.from_numpy(image)[None], layout="BHWC")[0]
    assert ours.shape == ref.shape and float(ours.min()) >= 0 and float(ours.max()) <= 1
    assert float((ours - ref).abs().mean()) < 0.01, float((ours - ref).abs().mean())


def test_batches_chunks_and_other_resolutions(model):
    images = torch.stack([torch.from_numpy(photo(70, 90, seed=s)) for s in range(3)])  # uint8 BHWC
    one_by_one = torch.stack([Predictor(model, resolution=SMALL_RULE).predict(im[None], layout="BHWC")[0]
                              for im in images])
    chunked = Predictor(model, resolution=SMALL_RULE, batch_size=2).predict(images, layout="BHWC")
    assert float((chunked - one_by_one).abs().max()) < 1e-4
    for resolution, network in (("keep:96", (64, 96)), ("160x96", (96, 160)), ("short:64:128", (64, 82))):
        predictor = Predictor(model, resolution=resolution)
        assert predictor.network_size(70, 90) == network
        x, size = predictor.preprocess(images[:1].permute(0, 3, 1, 2).float() / 255)
        assert size == network and x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
        out = predictor.predict(images[:1], layout="BHWC")
        assert out.shape == (1, 70, 90) and bool(torch.isfinite(out).all())


def test_tiny_and_extreme_images(model):
    for h, w in ((1, 1), (1, 300), (3, 2)):
        image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        out = Predictor(model, resolution="short:64:256").predict(image, layout="BCHW")
        assert out.shape == (1, h, w) and bool(torch.isfinite(out).all())


def test_bfloat16_model_is_close_to_float32(model):
    import copy

    image = torch.from_numpy(photo(64, 96, seed=4))[None]
    ref = Predictor(model, resolution="short:64").predict(image, layout="BHWC")
    half = copy.deepcopy(model).to(torch.bfloat16)
    out = Predictor(half, resolution="short:64").predict(image, layout="BHWC")
    assert out.dtype == torch.float32 and float((out - ref).abs().mean()) < 0.05, float((out - ref).abs().mean())


# ---- the CLI and the nodes, with a small FOCUS saved as a file ----

@pytest.fixture(scope="module")
def focus_file(model, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("focus") / "small_focus.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_cli_predict_with_a_focus_file(focus_file, tmp_path):
    import subprocess
    import sys

    image = tmp_path / "photo.png"
    Image.fromarray(photo(60, 80, seed=5)).save(image)
    out = tmp_path / "out"
    for extra, name in (([], "soft"), (["--binary"], "binary")):
        result = subprocess.run([sys.executable, "-m", "birefnet_core", "predict", str(image), "--model", str(focus_file),
                                 "--out", str(out / name), "--device", "cpu", "--resolution", "short:64"] + extra,
                                capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert result.returncode == 0, result.stderr
        mask = np.asarray(Image.open(out / name / "photo_mask.png"))
        assert mask.shape == (60, 80)
        if name == "binary":
            assert set(np.unique(mask).tolist()) <= {0, 255}


def test_nodes_run_focus_unchanged(pack, focus_file, tmp_path, monkeypatch):
    folder = tmp_path / "birefnet"
    folder.mkdir()
    monkeypatch.setenv("BIREFNET_MODELS_DIR", str(folder))
    (folder / "small_focus.safetensors").write_bytes(focus_file.read_bytes())
    nodes = pack.NODE_CLASS_MAPPINGS
    choices = nodes["BiRefNetLoader"].INPUT_TYPES()["required"]["model"][0]
    assert "small_focus.safetensors" in choices and "focus_large_sd (download)" in choices
    (managed,) = nodes["BiRefNetLoader"]().load("small_focus.safetensors", "cpu", "float32", "auto")
    frames = torch.stack([torch.from_numpy(photo(48, 64, seed=s)).float() / 255 for s in range(3)])
    widgets = dict(resolution="keep_aspect", width=64, height=64, long_side=96, batch_size=2, mask_threshold=0.0,
                   background="transparent", background_color="#ffffff", foreground="none")
    mask, rgba, composite = nodes["BiRefNetSegment"]().segment(managed, frames, **widgets)
    assert mask.shape == (3, 48, 64) and rgba.shape == (3, 48, 64, 4) and composite.shape == (3, 48, 64, 3)
    direct = Predictor(managed.ready(), resolution="keep:96").predict(frames, layout="BHWC")
    assert float((mask - direct).abs().max()) < 1e-4  # batch 2 against batch 1: other summation orders
    binary, _, _ = nodes["BiRefNetSegment"]().segment(managed, frames, **widgets, binary_mask=True)
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    native, _, _ = nodes["BiRefNetSegment"]().segment(managed, frames[:1], **{**widgets, "resolution": "native"})
    official_rule = Predictor(managed.ready(), resolution="short:512:2048").predict(frames[:1], layout="BHWC")
    assert native.shape == (1, 48, 64) and float((native - official_rule).abs().max()) < 1e-5
    video = nodes["BiRefNetVideoMatte"]().matte(managed, frames, 2, "keep_aspect", 64, 64, 96, "off", 0.5, "none",
                                                "#ffffff", node_id="focus-test")
    assert float((video[0] - direct).abs().max()) < 1e-4


def test_bench_focus_resize_reports_the_difference(capsys):
    import argparse
    import re

    from birefnet_core import bench

    bench.bench_focus_resize(argparse.Namespace(model=SMALL, weights=None, sizes=["96x64"], seed=0, device="cpu",
                                                threads=0))
    line = capsys.readouterr().out.splitlines()[-1]
    match = re.fullmatch(r"96x64 -> 768x512: input levels differ on ([\d.]+)% of values \(max (\d+)\); soft map \|d\| "
                         r"max ([\d.]+) mean ([\d.]+); binary mask differs on ([\d.]+)% of pixels", line)
    assert match, line
    assert int(match.group(2)) <= 1 and float(match.group(1)) < 0.1 and float(match.group(3)) < 0.5
