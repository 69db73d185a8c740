"""The FOCUS network against the official code: state-dict contract (L built, G on the meta
device), configuration inference, every intermediate of a DINOv2-L forward, the mask-of-interest
rule, sizes, batches, half precision and the OpenCV requirement. CPU only."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birefnet_core.models.focus import (FOCUS_CONFIGS, FocusConfig, OpenCVMissingError, build_focus,
                                        config_from_state_dict, edge_input, mask_of_interest)
from birefnet_core.models.focus.adapter import DWConv

from reference import FOCUS_REFERENCE, REPO, load_focus_npz, load_make_weights

make_weights = load_make_weights()
SMALL = FocusConfig(width=128, depth=4, ffn_hidden=512, adapter_heads=4)  # 2 ViT heads
FEATURE_TOL = 2e-3  # README: res*, pixdec_*, mask_features, pred_masks, ... (values up to ~30)
LOGIT_TOL = 1e-4  # README: pred_logits, aux_pred_logits, sem_seg, prob_fg


def manifest(size):
    return json.loads((FOCUS_REFERENCE / f"state_dict_focus_dinov2_{size}.json").read_text())


def meta_state_dict(layout):
    return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in layout.items()}


def assert_matches_manifest(sd, layout):
    assert list(sd) == list(layout)  # keys and their order
    for key, meta in layout.items():
        assert list(sd[key].shape) == meta["shape"], key
        assert str(sd[key].dtype).replace("torch.", "") == meta["dtype"], key


# ------------------------------------------------------------------------ DINOv2-L vs official

@pytest.fixture(scope="module")
def focus_l():
    """FOCUS-L with the conformance weights, run once on the reference input: the model and
    ``{npz key: our tensor}`` for every intermediate the reference stores."""
    model = build_focus("focus_dinov2_l")
    model.load_state_dict(make_weights(model.state_dict(), seed=0, scale=1.0), strict=True)
    data = load_focus_npz("focus_l_1x224x224.npz")
    seen = {}
    hooks = [model.backbone.edge.register_forward_hook(lambda m, i, out: seen.update(edge=out)),
             model.backbone.interactions[3].register_forward_hook(lambda m, i, out: seen.update(stage3=out))]
    with torch.no_grad():
        features = model.forward_features(data["input"])
        out = model.decode(features, aux=True)
    for hook in hooks:
        hook.remove()
    c1, c2, c3, c4 = seen["edge"]
    vit_tokens, adapter_tokens, _ = seen["stage3"]
    res2, res3, res4, res5 = features.backbone
    s32, s16, s8 = features.pixel_decoder.multi_scale_features
    size = tuple(data["input"].shape[-2:])  # 224x224: padded = resized = original
    soft, binary = mask_of_interest(out.class_logits, out.mask_logits, size, size, size)
    ours = {
        "edge_input": features.edges, "edge_c4": c4, "edge_c1_ch0-15": c1[:, :16],
        "edge_c2_ch0-15": c2[..., :16], "edge_c3_ch0-15": c3[..., :16],
        "vit_x3_ch0-15": vit_tokens[..., :16], "adapter_c3_ch0-15": adapter_tokens[..., :16],
        "res2_ch0-15": res2[:, :16], "res3_ch0-15": res3[:, :16], "res4_ch0-15": res4[:, :16], "res5": res5,
        "pixdec_ms0": s32, "pixdec_ms1": s16, "pixdec_ms2": s8, "mask_features": features.pixel_decoder.mask_features,
        "pred_logits": out.class_logits, "pred_masks": out.mask_logits,
        "aux_pred_logits": out.aux_class_logits, "aux_pred_masks": out.aux_mask_logits,
        "prob_fg": soft[0], "mask_binary": binary[0],
    }
    return model, data, ours


def test_l_state_dict_is_the_official_inference_state_dict(focus_l):
    model, _, _ = focus_l
    assert_matches_manifest(model.state_dict(), manifest("l"))


def test_l_edge_input_is_byte_exact(focus_l):
    _, data, ours = focus_l
    assert ours["edge_input"].dtype == torch.float32
    assert torch.equal(ours["edge_input"], data["edge_input"])


@pytest.mark.parametrize("key", [
    "edge_c1_ch0-15", "edge_c2_ch0-15", "edge_c3_ch0-15", "edge_c4", "vit_x3_ch0-15", "adapter_c3_ch0-15",
    "res2_ch0-15", "res3_ch0-15", "res4_ch0-15", "res5", "pixdec_ms0", "pixdec_ms1", "pixdec_ms2",
    "mask_features", "pred_masks", "aux_pred_masks"])
def test_l_features_match_the_official_code(focus_l, key):
    _, data, ours = focus_l
    assert ours[key].shape == data[key].shape
    assert (ours[key] - data[key]).abs().max().item() <= FEATURE_TOL


@pytest.mark.parametrize("key", ["pred_logits", "aux_pred_logits", "prob_fg"])
def test_l_logits_and_soft_mask_match_the_official_code(focus_l, key):
    _, data, ours = focus_l
    assert ours[key].shape == data[key].shape
    assert (ours[key] - data[key]).abs().max().item() <= LOGIT_TOL
    if key == "prob_fg":  # the official sem_seg[0]
        assert (ours[key] - data["sem_seg"][0]).abs().max().item() <= LOGIT_TOL


def test_l_binary_mask_matches_except_at_the_threshold(focus_l):
    _, data, ours = focus_l
    binary, want = ours["mask_binary"], data["mask_binary"].bool()
    assert binary.dtype == torch.bool and binary.shape == want.shape
    # the logits that decide a pixel (fallback: one query's logit vs 0; two queries: their difference)
    logits = F.interpolate(ours["pred_masks"], size=tuple(want.shape), mode="bilinear", align_corners=False)[0]
    near = (logits.abs() < 1e-3).any(0) | ((logits[0] - logits[1]).abs() < 1e-3)
    assert bool(((binary != want) <= near).all())
    assert 0 < int(want.sum()) < want.numel()  # a real mask, not all one value


# --------------------------------------------------------------------- G and config inference

def test_g_state_dict_on_the_meta_device_is_the_official_one():
    with torch.device("meta"):
        model = build_focus("focus_dinov2_g")
    assert_matches_manifest(model.state_dict(), manifest("g"))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(1235.2e6, rel=1e-3)


@pytest.mark.parametrize("size", ["l", "g"])
def test_config_from_the_official_manifest_is_the_preset(size):
    config = config_from_state_dict(meta_state_dict(manifest(size)))
    assert config == FOCUS_CONFIGS[f"focus_dinov2_{size}"]
    assert config.name == f"focus_dinov2_{size}"


def test_config_from_state_dict_of_another_size():
    with torch.device("meta"):
        sd = build_focus(SMALL).state_dict()
    config = config_from_state_dict(sd)
    assert config == SMALL and config.heads == 2 and config.interaction_ranges == ((0, 0), (1, 1), (2, 2), (3, 3))


def test_a_wrong_shape_is_named_with_expected_and_found_shapes():
    sd = meta_state_dict(manifest("g"))
    key = "backbone.interactions.2.extractor.ffn.fc2.weight"
    sd[key] = torch.empty(1536, 383, device="meta")
    with pytest.raises(ValueError) as error:
        config_from_state_dict(sd)
    message = str(error.value)
    assert "\n" not in message
    assert key in message and "[1536, 383]" in message and "[1536, 384]" in message


@pytest.mark.parametrize("change, words", [
    (lambda sd: sd.pop("backbone.pos_embed"), "'backbone.pos_embed' is missing"),
    (lambda sd: sd.pop("backbone.blocks.7.attn.qkv.bias"), "'backbone.blocks.7.attn.qkv.bias'"),
    (lambda sd: sd.update({"decoder.extra.weight": torch.empty(1, device="meta")}), "'decoder.extra.weight'"),
])
def test_not_focus_or_inconsistent_state_dicts_are_refused(change, words):
    sd = meta_state_dict(manifest("l"))
    change(sd)
    with pytest.raises(ValueError, match="FOCUS") as error:
        config_from_state_dict(sd)
    assert words in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------------ post-processing

def test_mask_of_interest_reproduces_the_official_cases_one_by_one_and_batched():
    with np.load(FOCUS_REFERENCE / "focus_postprocess_cases.npz") as data:  # "branch" holds strings
        cases = {k: data[k] if k == "branch" else torch.from_numpy(data[k]) for k in data.files}
    size = tuple(cases["mask_pred"].shape[-2:])
    assert cases["mask_pred"].shape[0] == 12
    singles = [mask_of_interest(cases["mask_cls"][i:i + 1], cases["mask_pred"][i:i + 1], size, size, size)
               for i in range(12)]
    for i, (soft, binary) in enumerate(singles):
        assert (soft[0] - cases["sem_seg"][i, 0]).abs().max().item() <= 1e-5, cases["branch"][i]
        assert torch.equal(binary[0], cases["mask_binary"][i].bool()), cases["branch"][i]
    soft, binary = mask_of_interest(cases["mask_cls"], cases["mask_pred"], size, size, size)
    assert torch.equal(soft, torch.cat([s for s, _ in singles]))
    assert torch.equal(binary, torch.cat([b for _, b in singles]))


def test_mask_of_interest_crops_the_padding_and_resizes():
    """Logits that are foreground only in the padding leave no foreground once cropped."""
    class_logits = torch.tensor([[[6.0, 0.0, 0.0], [6.0, 0.0, 0.0]]])  # both queries "foreground"
    mask = torch.full((1, 2, 16, 24), -20.0)
    mask[..., 12:, :] = 20.0  # rows 48.. of the 64-row padded image
    soft, binary = mask_of_interest(class_logits, mask, (64, 96), (40, 96), (20, 48))
    assert soft.shape == binary.shape == (1, 20, 48)
    assert not binary.any() and soft.max().item() < 1e-6
    soft, binary = mask_of_interest(class_logits, mask, (64, 96), (64, 96), (32, 48))
    assert binary[0, -4:].all() and not binary[0, :20].any()


# ------------------------------------------------------------------ small model: sizes, batches

@pytest.fixture(scope="module")
def small():
    model = build_focus(SMALL)
    model.load_state_dict(make_weights(model.state_dict(), seed=0), strict=True)
    return model


def normalised_images(batch, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=g) * 255
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return (image - mean) / std


@pytest.mark.parametrize("height, width", [(256, 320), (96, 160), (32, 64)])
def test_sizes_that_are_not_multiples_of_14_give_the_right_shapes(small, height, width):
    with torch.no_grad():
        out = small(normalised_images(1, height, width), aux=True)
    assert out.class_logits.shape == (1, 2, 3)
    assert out.mask_logits.shape == (1, 2, height // 4, width // 4)
    assert out.aux_class_logits.shape == (9, 1, 2, 3)
    assert out.aux_mask_logits.shape == (9, 1, 2, height // 4, width // 4)
    assert torch.isfinite(out.mask_logits).all()


def test_the_swiglu_ffn_of_the_giant_model_runs_in_a_small_model():
    config = FocusConfig(width=128, depth=4, ffn="swiglu", ffn_hidden=256, adapter_heads=4)
    model = build_focus(config)
    assert {"backbone.blocks.3.mlp.w12.weight", "backbone.blocks.3.mlp.w3.bias"} <= model.state_dict().keys()
    model.load_state_dict(make_weights(model.state_dict(), seed=0), strict=True)
    with torch.no_grad():
        out = model(normalised_images(1, 64, 96))
    assert out.mask_logits.shape == (1, 2, 16, 24) and torch.isfinite(out.mask_logits).all()
    assert config_from_state_dict(model.state_dict()) == config


def test_a_batch_equals_its_images_one_by_one(small):
    x = normalised_images(2, 96, 160)
    with torch.no_grad():
        both = small(x)
        first, second = small(x[:1]), small(x[1:])
    assert (both.mask_logits[0] - both.mask_logits[1]).abs().max() > 1e-2  # the images differ
    for index, single in enumerate((first, second)):
        assert torch.allclose(both.class_logits[index], single.class_logits[0], atol=1e-4, rtol=1e-4)
        assert torch.allclose(both.mask_logits[index], single.mask_logits[0], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("shape", [(1, 3, 100, 128), (1, 3, 128, 0), (1, 3, 14, 28), (1, 1, 64, 64), (3, 64, 64)])
def test_sizes_that_are_not_positive_multiples_of_32_are_refused(small, shape):
    with pytest.raises(ValueError, match="FOCUS"):
        small(torch.zeros(shape))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_stays_close(small, dtype):
    x = normalised_images(1, 64, 96)
    with torch.no_grad():
        want = small(x)
        out = small.to(dtype)(x)  # x stays float32: the edge input is computed from it
        small.to(torch.float32)
    assert out.mask_logits.dtype == dtype
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.class_logits).all()
    scale = want.mask_logits.abs().max().item()  # ~8; measured: bf16 max 0.37, mean 0.10; fp16 0.22, 0.05
    error = (out.mask_logits.float() - want.mask_logits).abs()
    assert error.max().item() < 0.1 * scale and error.mean().item() < 0.03 * scale
    assert (out.class_logits.float() - want.class_logits).abs().max().item() < 0.1


def test_dwconv_packing_equals_three_separate_convolutions():
    torch.manual_seed(0)
    conv = DWConv(8)
    shapes = ((8, 12), (4, 6), (2, 3))
    tokens = torch.randn(2, sum(h * w for h, w in shapes), 8)
    with torch.no_grad():
        want = torch.cat([conv.dwconv(t.transpose(1, 2).reshape(2, 8, h, w)).flatten(2).transpose(1, 2)
                          for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], 1), shapes)], 1)
        assert (conv(tokens, shapes) - want).abs().max().item() < 1e-6


# -------------------------------------------------------------------------------------- OpenCV

def test_without_opencv_the_error_says_what_to_install(monkeypatch, small):
    monkeypatch.setitem(sys.modules, "cv2", None)  # "import cv2" now fails
    for attempt in (lambda: build_focus(SMALL), lambda: small(torch.zeros(1, 3, 32, 32)),
                    lambda: edge_input(torch.zeros(1, 3, 32, 32))):
        with pytest.raises(ImportError) as error:
            attempt()
        assert isinstance(error.value, OpenCVMissingError)
        assert "pip install opencv-python-headless" in str(error.value) and "\n" not in str(error.value)


def test_birefnet_and_the_focus_package_import_without_opencv():
    code = ("import sys; sys.modules['cv2'] = None; import torch\n"
            "import birefnet_core.models.focus as focus; from birefnet_core.models import build_model\n"
            "with torch.device('meta'): build_model('swin_v1_t')\n"
            "assert focus.FOCUS_CONFIGS\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
