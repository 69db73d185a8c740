"""The ComfyUI nodes, called directly on real tensors through the standalone fallback."""

import inspect
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from memory_tracking import LiveTensorBytes
from reference import load_make_weights

make_weights = load_make_weights()
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


@pytest.fixture(scope="module")
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def core(pack):
    """The pack's own copy of the core (the nodes import it package-relatively)."""
    return pack.birefnet_core


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "birefnet"
    folder.mkdir()
    monkeypatch.setenv("BIREFNET_MODELS_DIR", str(folder))
    return folder


def place(weights: Path, folder: Path, name: str = "tiny.safetensors") -> str:
    (folder / name).write_bytes(weights.read_bytes())
    return name


def images(batch=2, h=50, w=70, channels=3, seed=0):
    return torch.rand(batch, h, w, channels, generator=torch.Generator().manual_seed(seed))


SEGMENT_DEFAULTS = dict(resolution="custom", width=64, height=64, long_side=64, batch_size=2, mask_threshold=0.0,
                        background="transparent", background_color="#ffffff", foreground="none")


@pytest.mark.parametrize("name", ["BiRefNetLoader", "BiRefNetSegment", "BiRefNetMatteRefine", "BiRefNetVideoMatte"])
def test_node_contract(nodes, pack, name):
    cls = nodes[name]
    assert cls.CATEGORY == "BiRefNet" and cls.DESCRIPTION
    assert name in pack.NODE_DISPLAY_NAME_MAPPINGS
    inputs = cls.INPUT_TYPES()
    declared = {**inputs["required"], **inputs.get("optional", {})}
    signature = inspect.signature(getattr(cls, cls.FUNCTION))
    hidden = list(inputs.get("hidden", {}))
    assert list(signature.parameters)[1:] == list(declared) + hidden  # the widgets' names and order
    for input_name, (kind, options) in declared.items():
        assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        if isinstance(kind, list):
            assert options["default"] in kind or name == "BiRefNetLoader"
        elif kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"]
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)


def test_widget_names_and_order_are_stable(nodes):
    """Saved workflows store widget values by position: this order is part of the interface
    (new widgets go at the end of the optional inputs)."""
    assert list(nodes["BiRefNetLoader"].INPUT_TYPES()["required"]) == ["model", "device", "dtype", "patch_order"]
    assert list(nodes["BiRefNetSegment"].INPUT_TYPES()["required"]) == [
        "model", "image", "resolution", "width", "height", "long_side", "batch_size", "mask_threshold",
        "background", "background_color", "foreground"]
    assert list(nodes["BiRefNetSegment"].INPUT_TYPES()["optional"]) == ["binary_mask", "output_precision", "refine"]
    assert list(nodes["BiRefNetVideoMatte"].INPUT_TYPES()["required"]) == [
        "model", "frames", "batch_size", "resolution", "width", "height", "long_side", "temporal_smoothing",
        "smoothing_strength", "foreground", "background_color"]
    assert list(nodes["BiRefNetVideoMatte"].INPUT_TYPES()["optional"]) == ["output_precision", "refine"]


def test_loader_and_segment_on_a_checkpoint_in_the_model_folder(nodes, core, models_dir, tiny_checkpoint):
    name = place(tiny_checkpoint, models_dir)
    choices = nodes["BiRefNetLoader"].INPUT_TYPES()["required"]["model"][0]
    assert choices[0] == name and "BiRefNet_lite (download)" in choices
    (model,) = nodes["BiRefNetLoader"]().load(name, "cpu", "float32", "auto")
    batch = images()
    mask, cutout, composite = nodes["BiRefNetSegment"]().segment(model, batch, **SEGMENT_DEFAULTS)
    assert mask.shape == (2, 50, 70) and mask.dtype == torch.float32 and mask.device.type == "cpu"
    assert cutout.shape == (2, 50, 70, 4) and composite.shape == (2, 50, 70, 3)
    assert 0 <= mask.min() and mask.max() <= 1 and mask.std() > 0
    torch.testing.assert_close(cutout[..., 3], mask)
    torch.testing.assert_close(cutout[..., :3], batch)
    a = mask.unsqueeze(-1)
    torch.testing.assert_close(composite, batch * a + (1 - a), atol=1e-6, rtol=1e-6)
    # the node's mask is the core Predictor's
    want = core.Predictor(model.ready(), resolution=64).predict(batch.movedim(-1, 1))
    torch.testing.assert_close(mask, want)


def test_segment_and_video_refine_run_the_core_two_pass(nodes, core, models_dir, tiny_checkpoint):
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "float32", "auto")
    batch = images(batch=1, h=40, w=60)
    seen = []
    hook = model.ready().register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    mask, _, _ = nodes["BiRefNetSegment"]().segment(model, batch, **SEGMENT_DEFAULTS, refine="1024")
    # pass 1 at the 64x64 resolution widget, pass 2 on the cut-out at 1024 (the tiny model finds a subject)
    assert seen == [(1, 3, 64, 64), (1, 3, 1024, 1024)]
    want = core.Predictor(model.ready(), resolution=64, refine="1024").predict(batch.movedim(-1, 1))
    torch.testing.assert_close(mask, want)
    seen.clear()
    nodes["BiRefNetVideoMatte"]().matte(model, batch, **VIDEO_DEFAULTS, refine="1024")
    hook.remove()
    assert seen == [(1, 3, 64, 64), (1, 3, 1024, 1024)]
    with pytest.raises(ValueError, match="refine must be one of off, native"):
        nodes["BiRefNetSegment"]().segment(model, batch, **SEGMENT_DEFAULTS, refine="4096")


def test_segment_options(nodes, models_dir, tiny_checkpoint):
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "auto", "auto", "legacy")
    batch = images(batch=3)
    seen = []
    hook = model.ready().register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    segment = nodes["BiRefNetSegment"]()
    soft, _, _ = segment.segment(model, batch, **SEGMENT_DEFAULTS)
    assert seen == [(2, 3, 64, 64), (1, 3, 64, 64)]  # chunks of batch_size
    seen.clear()
    options = {**SEGMENT_DEFAULTS, "resolution": "keep_aspect", "long_side": 96, "batch_size": 4}
    segment.segment(model, batch, **options)
    assert seen == [(3, 3, 64, 96)]
    hook.remove()
    hard, cutout, composite = segment.segment(model, batch, **{**SEGMENT_DEFAULTS, "mask_threshold": 0.5,
                                                               "background": "color",
                                                               "background_color": "#ff0000"})
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(hard, (soft >= 0.5).float())
    red = torch.tensor([1.0, 0.0, 0.0])
    outside = hard == 0
    torch.testing.assert_close(composite[outside], red.expand(int(outside.sum()), 3))
    torch.testing.assert_close(cutout[..., :3], composite)  # background = color fills the RGBA's colours
    # a 4-channel IMAGE: the alpha channel is ignored
    rgba_in = torch.cat([batch, torch.rand(3, 50, 70, 1)], dim=-1)
    torch.testing.assert_close(segment.segment(model, rgba_in, **SEGMENT_DEFAULTS)[0], soft)


def test_loader_downloads_a_registry_model_from_a_local_hub_cache(nodes, core, models_dir, tmp_path, monkeypatch):
    """'BiRefNet_lite (download)' through the real hub code, from a Hugging Face cache made here
    (offline: no network)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hf"
    snapshot = cache / "models--ZhengPeng7--BiRefNet_lite" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--ZhengPeng7--BiRefNet_lite" / "refs").mkdir()
    (cache / "models--ZhengPeng7--BiRefNet_lite" / "refs" / "main").write_text("0" * 40)
    with torch.device("meta"):
        shapes = core.build_model("swin_v1_t").state_dict()
    save_file({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}, snapshot / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    loader = nodes["BiRefNetLoader"]
    assert loader.VALIDATE_INPUTS(model="BiRefNet_lite (download)") is True
    (model,) = loader().load("BiRefNet_lite (download)", "cpu", "float32", "auto")
    assert (models_dir / "BiRefNet_lite.safetensors").is_file()
    assert model.variant.name == "BiRefNet_lite" and model.ready().patch_order.value == "legacy"
    choices = loader.INPUT_TYPES()["required"]["model"][0]
    assert "BiRefNet_lite.safetensors" in choices and "BiRefNet_lite (download)" not in choices
    # a workflow saved before the download still loads
    (again,) = loader().load("BiRefNet_lite (download)", "cpu", "float32", "auto")
    assert again.source == str(models_dir / "BiRefNet_lite.safetensors")
    # an interrupted earlier download under the final name is fetched again, by either value
    whole = (models_dir / "BiRefNet_lite.safetensors").read_bytes()
    for value in ("BiRefNet_lite.safetensors", "BiRefNet_lite (download)"):
        (models_dir / "BiRefNet_lite.safetensors").unlink()  # a new file: the old one is linked to the cache
        (models_dir / "BiRefNet_lite.safetensors").write_bytes(whole[:1000])
        loader().load(value, "cpu", "float32", "auto")
        assert (models_dir / "BiRefNet_lite.safetensors").read_bytes() == whole


def test_offline_registry_model_gives_one_clear_error(nodes, core, models_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(core.ModelNotAvailableError) as info:
        nodes["BiRefNetLoader"]().load("BiRefNet (download)", "cpu", "auto", "auto")
    message = str(info.value)
    assert "\n" not in message
    assert "https://huggingface.co/ZhengPeng7/BiRefNet/resolve/main/model.safetensors" in message
    assert str(models_dir) in message and "BiRefNet.safetensors" in message


@pytest.mark.parametrize("value", ["../tiny.safetensors", "sub/../../tiny.safetensors", "/etc/passwd",
                                   "background_removal/../x.safetensors"])
def test_model_names_never_leave_the_model_folders(nodes, models_dir, tiny_checkpoint, value):
    place(tiny_checkpoint, models_dir.parent)  # a real file one level up: it must stay unreachable
    assert isinstance(nodes["BiRefNetLoader"].VALIDATE_INPUTS(model=value), str)
    with pytest.raises((ValueError, FileNotFoundError)):
        nodes["BiRefNetLoader"]().load(value, "cpu", "auto", "auto")


def test_loader_bad_inputs(nodes, models_dir, tiny_checkpoint):
    loader = nodes["BiRefNetLoader"]()
    with pytest.raises(ValueError, match="device 'cuda:7' is not available"):
        loader.load(place(tiny_checkpoint, models_dir), "cuda:7", "auto", "auto")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
              models_dir / "sd.safetensors")
    with pytest.raises(ValueError, match="Stable Diffusion"):
        loader.load("sd.safetensors", "cpu", "auto", "auto")
    with pytest.raises(FileNotFoundError, match="neither in the birefnet model folder"):
        loader.load("missing.safetensors", "cpu", "auto", "auto")


def test_segment_bad_inputs_and_cancel(nodes, pack, models_dir, tiny_checkpoint, monkeypatch):
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "auto", "auto")
    segment = nodes["BiRefNetSegment"]()
    with pytest.raises(ValueError, match="colour must be"):
        segment.segment(model, images(), **{**SEGMENT_DEFAULTS, "background_color": "blueish"})
    with pytest.raises(ValueError, match="ComfyUI IMAGE"):
        segment.segment(model, torch.rand(2, 50, 70), **SEGMENT_DEFAULTS)

    class Cancelled(Exception):
        pass

    def cancelling_reporter(total, description=""):
        def report(done, _total):
            if done >= 2:
                raise Cancelled()
        return report

    monkeypatch.setattr(pack.nodes.comfy, "progress_reporter", cancelling_reporter)
    with pytest.raises(Cancelled):
        segment.segment(model, images(batch=5), **SEGMENT_DEFAULTS)


def test_the_node_package_is_the_only_place_that_imports_comfyui():
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in list((root / "birefnet_core").rglob("*.py")) + list((root / "nodes").glob("*.py")):
        if path.name == "comfy.py":
            continue
        text = path.read_text()
        if any(f"import {m}" in text or f"from {m}" in text for m in ("comfy.", "folder_paths", "server")):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


MATTE_NEUTRAL = dict(foreground="none", fg_radius_large=90, fg_radius_small=6, alpha_refine="none", guided_radius=0,
                     guided_eps=1e-4, black_point=0.0, white_point=1.0, grow=0, feather=0.0, fill_holes=False,
                     invert=False, background_color="#ffffff", batch_size=2)


def soft_disc(batch=2, h=40, w=60):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    distance = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2).sqrt()
    return (12 - distance).clamp(0, 4).div(4).expand(batch, h, w).clone()


def test_matte_refine_node(nodes, core):
    refine = nodes["BiRefNetMatteRefine"]().refine
    image, mask = images(batch=2, h=40, w=60), soft_disc()
    cutout, composite, alpha = refine(image, mask, **MATTE_NEUTRAL)
    assert cutout.shape == (2, 40, 60, 4) and composite.shape == (2, 40, 60, 3) and alpha.shape == (2, 40, 60)
    torch.testing.assert_close(alpha, mask)
    torch.testing.assert_close(cutout[..., :3], image)
    a = mask.unsqueeze(-1)
    torch.testing.assert_close(composite, image * a + (1 - a), atol=1e-6, rtol=1e-6)

    options = {**MATTE_NEUTRAL, "foreground": "blur_fusion", "fg_radius_large": 21, "fg_radius_small": 5,
               "grow": 2, "feather": 1.5}
    cutout, _, alpha = refine(image, mask, **options)
    want_fg, want_alpha = core.matting.refine_matte(
        image.movedim(-1, 1), mask, core.matting.MatteOptions(grow=2, feather=1.5, foreground_radii=(21, 5)))
    torch.testing.assert_close(alpha, want_alpha)
    torch.testing.assert_close(cutout[..., :3], want_fg.movedim(1, -1))
    assert (cutout[..., :3] - image).abs().max() > 0.01  # the colours really were re-estimated

    backdrop = torch.rand(1, 80, 30, 3)
    _, composite, _ = refine(image, mask, **MATTE_NEUTRAL, background=backdrop)
    want = core.matting.over_image(image.movedim(-1, 1), mask, backdrop.movedim(-1, 1))
    torch.testing.assert_close(composite, want.movedim(1, -1))


def test_matte_refine_bad_and_mismatched_inputs(nodes, caplog):
    refine = nodes["BiRefNetMatteRefine"]().refine
    image = images(batch=3, h=40, w=60)
    small = soft_disc(batch=1, h=20, w=30)  # half size, one mask for three images
    with caplog.at_level("WARNING"):
        _, _, alpha = refine(image, small, **MATTE_NEUTRAL)
    assert alpha.shape == (3, 40, 60) and "resized" in caplog.text
    torch.testing.assert_close(alpha[0], alpha[2])
    rgba_image = torch.cat([image, torch.zeros(3, 40, 60, 1)], dim=-1)
    torch.testing.assert_close(refine(rgba_image, soft_disc(3), **MATTE_NEUTRAL)[0],
                               refine(image, soft_disc(3), **MATTE_NEUTRAL)[0])
    over = refine(image, soft_disc(3) * 3 - 1, **MATTE_NEUTRAL)[2]
    assert over.min() >= 0 and over.max() <= 1  # out-of-range mask values are clamped
    nan_mask = soft_disc(3)
    nan_mask[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        refine(image, nan_mask, **MATTE_NEUTRAL)
    with pytest.raises(ValueError, match="batch"):
        refine(image, soft_disc(2), **MATTE_NEUTRAL)
    for empty in (torch.zeros(3, 40, 60), torch.ones(3, 40, 60)):
        out = refine(image, empty, **{**MATTE_NEUTRAL, "foreground": "blur_fusion"})
        assert all(bool(torch.isfinite(t).all()) for t in out)


def test_segment_estimates_foreground_colours(nodes, core, models_dir, tiny_checkpoint):
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "float32", "auto")
    batch = images()
    mask, cutout, _ = nodes["BiRefNetSegment"]().segment(model, batch, **{**SEGMENT_DEFAULTS,
                                                                          "foreground": "blur_fusion"})
    want = core.matting.estimate_foreground(batch.movedim(-1, 1), mask)
    torch.testing.assert_close(cutout[..., :3], want.movedim(1, -1))


VIDEO_DEFAULTS = dict(batch_size=3, resolution="custom", width=64, height=64, long_side=64,
                      temporal_smoothing="strong", smoothing_strength=0.5, foreground="none",
                      background_color="#000000")


def moving_clip(n=12, h=36, w=44):
    frames = torch.full((n, h, w, 3), 0.3)
    for t in range(n):
        frames[t, 8:28, 2 + 2 * t:14 + 2 * t] = torch.tensor([0.9, 0.8, 0.1])
    return frames


def test_video_node_windows_carry_state(nodes, pack, models_dir, tiny_checkpoint):
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "float32", "auto")
    video = nodes["BiRefNetVideoMatte"]()
    frames = moving_clip()
    whole_mask, rgba, composite = video.matte(model, frames, **VIDEO_DEFAULTS, node_id="whole")
    assert whole_mask.shape == (12, 36, 44) and rgba.shape == (12, 36, 44, 4) and composite.shape == (12, 36, 44, 3)
    torch.testing.assert_close(composite, frames * whole_mask.unsqueeze(-1))
    windows = [video.matte(model, frames[a:a + 4], **VIDEO_DEFAULTS, node_id="windows")[0] for a in (0, 4, 8)]
    torch.testing.assert_close(torch.cat(windows), whole_mask, atol=1e-5, rtol=1e-5)


def test_video_node_cancel_keeps_the_stored_state(nodes, pack, models_dir, tiny_checkpoint, monkeypatch):
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "auto", "auto")
    video = nodes["BiRefNetVideoMatte"]()
    frames = moving_clip()
    reference = [video.matte(model, frames[a:a + 6], **VIDEO_DEFAULTS, node_id="ref")[0] for a in (0, 6)]
    video.matte(model, frames[:6], **VIDEO_DEFAULTS, node_id="cancelled")

    def cancel_after_first_chunk(total, description=""):
        def report(done, _total):
            raise KeyboardInterrupt
        return report

    with monkeypatch.context() as patch:
        patch.setattr(pack.nodes.comfy, "progress_reporter", cancel_after_first_chunk)
        with pytest.raises(KeyboardInterrupt):
            video.matte(model, frames[6:], **VIDEO_DEFAULTS, node_id="cancelled")
    resumed = video.matte(model, frames[6:], **VIDEO_DEFAULTS, node_id="cancelled")[0]
    torch.testing.assert_close(resumed, reference[1])


def test_integer_images_and_masks_are_scaled_like_video_frames(nodes, models_dir, tiny_checkpoint):
    """A uint8 (or other integer) IMAGE/MASK holds 8-bit levels: Segment, Matte Refine and Video
    Frames divide by 255 alike, none saturates it to white."""
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "float32", "auto")
    levels = (images(batch=2, h=40, w=60) * 255).round()
    as_float = levels / 255
    segment = nodes["BiRefNetSegment"]().segment
    want = segment(model, as_float, **SEGMENT_DEFAULTS)
    video = nodes["BiRefNetVideoMatte"]().matte
    options = {**VIDEO_DEFAULTS, "temporal_smoothing": "off"}
    for dtype in (torch.uint8, torch.int32):
        got = segment(model, levels.to(dtype), **SEGMENT_DEFAULTS)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(video(model, levels.to(dtype), **options, node_id="int")[0], want[0])
    refine = nodes["BiRefNetMatteRefine"]().refine
    mask_levels = (soft_disc(2) * 255).round()
    want = refine(as_float, mask_levels / 255, **MATTE_NEUTRAL)
    for dtype in (torch.uint8, torch.int64):
        for a, b in zip(refine(levels.to(dtype), mask_levels.to(dtype), **MATTE_NEUTRAL), want):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="8-bit levels"):
        refine(as_float, (mask_levels * 4).to(torch.int32), **MATTE_NEUTRAL)


# ---- only the outputs a workflow links, in float32 or float16 ----

def api_prompt(node_class, *slots, node_id="5"):
    """A ComfyUI API prompt: the node under test (id 5) fed by ids 1 and 2, one consumer per
    linked output slot, and a consumer of another node's output."""
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "2": {"class_type": "BiRefNetLoader", "inputs": {"model": "tiny.safetensors"}},
              node_id: {"class_type": node_class, "inputs": {"model": ["2", 0], "frames": ["1", 0]}},
              "9": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    for i, slot in enumerate(slots):
        prompt[str(20 + i)] = {"class_type": "PreviewImage", "inputs": {"images": [node_id, slot]}}
    return prompt


def test_linked_outputs_are_read_from_the_prompt(pack, caplog):
    comfy, segment = pack.nodes.comfy, pack.nodes.segment
    prompt = api_prompt("BiRefNetVideoMatte", 2, 1, 2)
    prompt["30"] = {"class_type": "Note", "inputs": {"text": ["5", "not a slot"], "other": ["50", 0]}}
    assert comfy.linked_outputs(prompt, "5") == {1, 2}
    assert comfy.linked_outputs(prompt, 5) == {1, 2}  # ids arrive as strings; an int finds the same node
    assert comfy.linked_outputs(api_prompt("BiRefNetVideoMatte", 0.0), "5") == {0}  # JSON may give 0.0
    assert comfy.linked_outputs(api_prompt("BiRefNetVideoMatte"), "5") == frozenset()
    for unknown in (None, {}, api_prompt("BiRefNetVideoMatte", 0, node_id="6")):
        assert comfy.linked_outputs(unknown, "5") is None  # no prompt, or a node made at run time
    names = ("mask", "rgba", "composite")
    assert segment.outputs_to_compute(names, prompt, "5") == ("rgba", "composite")
    assert segment.outputs_to_compute(names, None, "5") == names
    with caplog.at_level("WARNING"):
        for _ in range(2):
            nowhere = api_prompt("X", node_id="linked-nowhere")
            assert segment.outputs_to_compute(names, nowhere, "linked-nowhere") == names
    assert caplog.text.count("none of its outputs is linked") == 1


@pytest.mark.parametrize("name", ["BiRefNetSegment", "BiRefNetVideoMatte"])
def test_linking_another_output_changes_the_cache_fingerprint(nodes, name):
    """ComfyUI keys its output cache on IS_CHANGED's value and the node's own inputs, never on
    the nodes downstream (nodes/comfy.py): the linked outputs must change the value."""
    cls = nodes[name]
    widgets = {"model": None, "batch_size": 4, "resolution": "native"}  # as ComfyUI passes them: links are None
    rgba = cls.IS_CHANGED(node_id="5", prompt=api_prompt(name, 1), **widgets)
    rgba_again = cls.IS_CHANGED(node_id="5", prompt=api_prompt(name, 1, 1), **widgets)
    rgba_and_mask = cls.IS_CHANGED(node_id="5", prompt=api_prompt(name, 1, 0), **widgets)
    assert rgba == rgba_again == "outputs:rgba" and rgba_and_mask == "outputs:mask,rgba"
    assert cls.IS_CHANGED(node_id="5", prompt=api_prompt(name), **widgets) == "outputs:mask,rgba,composite"
    assert cls.IS_CHANGED(node_id="77", prompt=api_prompt(name, 1), **widgets) == "outputs:mask,rgba,composite"
    # ComfyUI gives IS_CHANGED an empty PROMPT; where the running prompt cannot be read either
    # (here: no ComfyUI), the node reruns every time rather than risk a stale placeholder
    assert math.isnan(cls.IS_CHANGED(node_id="5", prompt={}, **widgets))


def test_video_node_computes_only_the_linked_outputs(nodes, models_dir, tiny_checkpoint):
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "auto", "auto")
    video = nodes["BiRefNetVideoMatte"]()
    frames = moving_clip(n=6, h=72, w=96)
    options = {**VIDEO_DEFAULTS, "temporal_smoothing": "off"}
    peaks = {}
    with torch.no_grad(), LiveTensorBytes() as tracker:
        everything = video.matte(model, frames, **options, node_id="5", prompt=api_prompt("BiRefNetVideoMatte"))
    peaks["all"] = tracker.peak
    with torch.no_grad(), LiveTensorBytes() as tracker:
        mask, rgba, composite = video.matte(model, frames, **options, output_precision="float16", node_id="5",
                                            prompt=api_prompt("BiRefNetVideoMatte", 1))
    peaks["rgba16"] = tracker.peak
    assert [tuple(t.shape) for t in everything] == [(6, 72, 96), (6, 72, 96, 4), (6, 72, 96, 3)]
    assert tuple(mask.shape) == (6, 1, 1) and tuple(composite.shape) == (6, 1, 1, 3)  # placeholders
    assert not mask.any() and not composite.any() and mask.dtype == composite.dtype == rgba.dtype == torch.float16
    torch.testing.assert_close(rgba.float(), everything[1], rtol=0, atol=2.0 ** -12)
    # the outputs left out are never made: the peak falls by their bytes (float32 mask + composite
    # + half the RGBA), up to the placeholders' few bytes
    saved = 6 * 72 * 96 * 4 * (1 + 3) + 6 * 72 * 96 * 4 * 2
    assert abs((peaks["all"] - peaks["rgba16"]) - saved) < 0.02 * saved, (peaks, saved)
    mask2, rgba2, composite2 = video.matte(model, frames, **options, node_id="5",
                                           prompt=api_prompt("BiRefNetVideoMatte", 2, 0))
    torch.testing.assert_close(mask2, everything[0], rtol=0, atol=0)
    torch.testing.assert_close(composite2, everything[2], rtol=0, atol=0)
    assert tuple(rgba2.shape) == (6, 1, 1, 4) and rgba2.dtype == torch.float32


def test_segment_computes_only_the_linked_outputs_in_either_precision(nodes, models_dir, tiny_checkpoint):
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "float32", "auto")
    segment = nodes["BiRefNetSegment"]()
    batch = images(batch=3)
    options = {**SEGMENT_DEFAULTS, "foreground": "blur_fusion", "background": "color", "background_color": "#102030"}
    everything = segment.segment(model, batch, **options)
    mask, rgba, composite = segment.segment(model, batch, **options, node_id="5",
                                            prompt=api_prompt("BiRefNetSegment", 0))
    torch.testing.assert_close(mask, everything[0], rtol=0, atol=0)
    assert tuple(rgba.shape) == (3, 1, 1, 4) and tuple(composite.shape) == (3, 1, 1, 3)
    half = segment.segment(model, batch, **options, output_precision="float16", node_id="5",
                           prompt=api_prompt("BiRefNetSegment", 0, 1, 2))
    for got, want in zip(half, everything):
        assert got.dtype == torch.float16 and got.shape == want.shape
        torch.testing.assert_close(got.float(), want, rtol=0, atol=2.0 ** -12)
    with pytest.raises(ValueError, match="output_precision must be one of float32, float16"):
        segment.segment(model, batch, **options, output_precision="bfloat16")


def test_a_prompt_linking_none_of_the_outputs_gets_all_of_them(nodes, models_dir, tiny_checkpoint, caplog):
    """ComfyUI runs a node only when something needs it: a prompt that shows no link to any of the
    video node's outputs hides its consumer (e.g. a node made at run time), so all outputs are
    computed, and that is said once."""
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "auto", "auto")
    with caplog.at_level("WARNING"):
        outputs = nodes["BiRefNetVideoMatte"]().matte(model, moving_clip(n=3), **VIDEO_DEFAULTS, node_id="41",
                                                      prompt=api_prompt("BiRefNetVideoMatte", node_id="41"))
    assert [tuple(t.shape) for t in outputs] == [(3, 36, 44), (3, 36, 44, 4), (3, 36, 44, 3)]
    assert "none of its outputs is linked" in caplog.text


def test_float16_is_refused_for_consumers_that_break_on_it(nodes, models_dir, tiny_checkpoint):
    """Image Blur and Grow Mask fail on float16 tensors in ComfyUI, and VideoHelperSuite's 16-bit
    input overflows to a broken video: the node says so before it runs."""
    (model,) = nodes["BiRefNetLoader"]().load(place(tiny_checkpoint, models_dir), "cpu", "auto", "auto")
    video = nodes["BiRefNetVideoMatte"]().matte
    frames = moving_clip(n=2)
    cases = {"ImageBlur": {"image": ["5", 1]}, "GrowMask": {"mask": ["5", 0]},
             "VHS_VideoCombine": {"images": ["5", 1], "format": "video/ffv1-mkv"}}
    for kind, inputs in cases.items():
        prompt = {**api_prompt("BiRefNetVideoMatte"), "30": {"class_type": kind, "inputs": inputs}}
        with pytest.raises(ValueError, match=r"output_precision float16: .*\(node 30\) needs float32"):
            video(model, frames, **VIDEO_DEFAULTS, output_precision="float16", node_id="5", prompt=prompt)
        video(model, frames, **VIDEO_DEFAULTS, node_id="5", prompt=prompt)  # float32: fine
    eight_bit = {**api_prompt("BiRefNetVideoMatte"), "30": {"class_type": "VHS_VideoCombine", "inputs": {
        "images": ["5", 1], "format": "video/ProRes"}}}
    _, rgba, _ = video(model, frames, **VIDEO_DEFAULTS, output_precision="float16", node_id="5", prompt=eight_bit)
    assert rgba.dtype == torch.float16 and rgba.shape == (2, 36, 44, 4)
    sixteen_bit = {**eight_bit, "30": {"class_type": "VHS_VideoCombine", "inputs": {
        "images": ["5", 1], "format": "video/h265-mp4", "input_color_depth": "16bit"}}}
    with pytest.raises(ValueError, match="16-bit input"):
        nodes["BiRefNetSegment"]().segment(model, images(), **SEGMENT_DEFAULTS, output_precision="float16",
                                           node_id="5", prompt=sixteen_bit)


def test_the_loader_validates_only_the_model_so_comfyui_checks_the_other_lists(nodes):
    """ComfyUI (execution.py, validate_inputs) leaves an input to VALIDATE_INPUTS when the method
    names it, and every input when it takes **kwargs: found in a real ComfyUI 0.3.64, where a
    bad compile or dtype value passed /prompt and failed only at run time."""
    spec = inspect.getfullargspec(nodes["BiRefNetLoader"].VALIDATE_INPUTS)
    assert spec.varkw is None and spec.args[1:] == ["model"]
    lists = {**nodes["BiRefNetLoader"].INPUT_TYPES()["required"], **nodes["BiRefNetLoader"].INPUT_TYPES()["optional"]}
    assert {"device", "dtype", "patch_order", "compile"} <= {name for name, value in lists.items()
                                                             if isinstance(value[0], list) and name != "model"}
