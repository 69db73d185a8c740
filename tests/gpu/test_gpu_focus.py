"""FOCUS on CUDA: the official DINOv2-L outputs in float32 (TF32 off), bfloat16 and float16
against float32, every multi-scale deformable attention backend against the portable one on
FOCUS's shapes (forward and gradients), and the Predictor's batching with a small FOCUS.

Dry run on the CPU (BIREFNET_GPU_TESTS_ON_CPU=1): the conformance check is the real one (about
30 s on 2 cores: building the weights 12 s, the forward 9 s), bfloat16 runs (float16 is emulated
there: skipped), the attention backends run on tiny shapes (Triton through its interpreter), the
Predictor at an eighth of the official resolution."""

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from birefnet_core import Predictor
from birefnet_core.bench import _focus_photo
from birefnet_core.models import build_model
from birefnet_core.models.focus import FocusConfig, build_focus, mask_of_interest
from birefnet_core.ops import msda
from birefnet_core.ops.msda_portable import DEFAULT_MEMORY_BUDGET, ms_deform_attn_portable
from birefnet_core.ops.msda_spec import check_msda_arguments

from reference import FOCUS_REFERENCE, HAVE_REFERENCE, load_focus_npz, load_make_weights

NPZ = "focus_l_1x224x224.npz"
# shared/reference/focus/README.md, "Tolerances observed"
LOGIT_TOL = 1e-4  # pred_logits, aux_pred_logits, prob_fg (= sem_seg[0])
FEATURE_TOL = 2e-3  # pred_masks, aux_pred_masks, mask_features, pixdec_*, res* (values up to ~30)
TOLERANCES = {"edge_input": 0.0, "pred_logits": LOGIT_TOL, "aux_pred_logits": LOGIT_TOL, "prob_fg": LOGIT_TOL,
              "pred_masks": FEATURE_TOL, "aux_pred_masks": FEATURE_TOL, "mask_features": FEATURE_TOL,
              "pixdec_ms0": FEATURE_TOL, "pixdec_ms1": FEATURE_TOL, "pixdec_ms2": FEATURE_TOL, "res5": FEATURE_TOL}
SMALL = FocusConfig(width=128, depth=4, ffn_hidden=256, adapter_heads=4)  # the Predictor tests' model
DRY_RUN_RESOLUTION = "short:64:256"  # the official rule at an eighth of its size (150x210 -> 64x90, padded 64x96)


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------- FOCUS-L against the official code

@pytest.fixture(scope="module")
def focus_l(device, no_tf32_module):
    """FOCUS-L with the conformance weights (make_weights, seed 0, scale 1) in float32 on the
    device, run once on the reference input: (model, input on the device, reference data,
    {npz key: our tensor on the CPU})."""
    if not HAVE_REFERENCE or not (FOCUS_REFERENCE / NPZ).is_file():
        pytest.skip(f"FOCUS conformance data not found: {FOCUS_REFERENCE / NPZ} (copy ../shared/reference into "
                    "<repo>/shared/reference, see tests/gpu/README.md)")
    model = build_focus("focus_dinov2_l")
    model.load_state_dict(load_make_weights()(model.state_dict(), seed=0, scale=1.0), strict=True)
    model = model.to(device).eval()
    data = load_focus_npz(NPZ)
    x = data["input"].to(device)
    with torch.no_grad():
        features = model.forward_features(x)
        out = model.decode(features, aux=True)
    size = tuple(x.shape[-2:])  # 224x224: padded = resized = original
    soft, binary = mask_of_interest(out.class_logits, out.mask_logits, size, size, size)
    s32, s16, s8 = features.pixel_decoder.multi_scale_features
    ours = {"edge_input": features.edges, "res5": features.backbone[3], "pixdec_ms0": s32, "pixdec_ms1": s16,
            "pixdec_ms2": s8, "mask_features": features.pixel_decoder.mask_features,
            "pred_logits": out.class_logits, "pred_masks": out.mask_logits, "aux_pred_logits": out.aux_class_logits,
            "aux_pred_masks": out.aux_mask_logits, "prob_fg": soft[0], "mask_binary": binary[0]}
    return model, x, data, {key: value.cpu() for key, value in ours.items()}


@pytest.mark.parametrize("key", list(TOLERANCES))
def test_focus_l_float32_matches_the_official_code(key, focus_l, device, record_property):
    _, _, data, ours = focus_l
    assert ours[key].dtype == torch.float32 and ours[key].shape == data[key].shape
    difference = (ours[key] - data[key]).abs().max().item()
    attention = msda.select_backend(device, torch.float32).name
    print(f"\nFOCUS-L {key} on {device} float32 (TF32 off, attention: {attention}): max |difference| "
          f"{difference:.2e} (tolerance {TOLERANCES[key]:g})", end="")
    record_property("max_abs_difference", difference)
    record_property("msda_backend", attention)
    if key == "edge_input":
        import cv2

        record_property("opencv", cv2.__version__)  # the Canny input is OpenCV's fixed-point arithmetic
        assert torch.equal(ours[key], data[key]), f"the edge input must be byte-exact (OpenCV {cv2.__version__})"
    assert difference <= TOLERANCES[key]
    if key == "prob_fg":  # the official sem_seg[0]
        assert (ours[key] - data["sem_seg"][0]).abs().max().item() <= LOGIT_TOL


def test_focus_l_binary_mask_matches_except_at_the_threshold(focus_l, record_property):
    _, _, data, ours = focus_l
    binary, want = ours["mask_binary"], data["mask_binary"].bool()
    assert binary.dtype == torch.bool and binary.shape == want.shape
    logits = F.interpolate(ours["pred_masks"], size=tuple(want.shape), mode="bilinear", align_corners=False)[0]
    near = (logits.abs() < 1e-3).any(0) | ((logits[0] - logits[1]).abs() < 1e-3)
    record_property("pixels_differing", int((binary != want).sum()))
    assert bool(((binary != want) <= near).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_name)
def test_focus_l_half_precision_is_close_to_float32(dtype, focus_l, device, record_property):
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("float16 is emulated on a CPU (minutes for FOCUS-L): checked on CUDA")
    model, x, _, ours = focus_l
    half = copy.deepcopy(model).to(dtype)
    try:
        with torch.no_grad():
            out = half(x)  # x stays float32: the edge input is computed from it
    finally:
        del half
        if device.type == "cuda":
            torch.cuda.empty_cache()
    assert out.mask_logits.dtype == dtype
    assert bool(torch.isfinite(out.mask_logits).all()) and bool(torch.isfinite(out.class_logits).all())
    size = tuple(x.shape[-2:])
    soft, _ = mask_of_interest(out.class_logits.float(), out.mask_logits.float(), size, size, size)
    difference = (soft[0].cpu() - ours["prob_fg"]).abs()
    worst, mean = difference.max().item(), difference.mean().item()
    logits = (out.mask_logits.float().cpu() - ours["pred_masks"]).abs().max().item()
    # measured on the CPU, bfloat16: max |dprob| 0.031, mean 0.0074; mask logits max |d| 0.34
    print(f"\nFOCUS-L on {device} {dtype_name(dtype)} vs float32: max |dprob| {worst:.4f}, mean {mean:.5f}; "
          f"mask logits max |d| {logits:.3f}", end="")
    record_property("max_abs_dprob", worst)
    record_property("mean_abs_dprob", mean)
    record_property("max_abs_mask_logit_difference", logits)
    assert worst < 0.1 and mean < 0.03


# ------------------------------------------------------- multi-scale deformable attention

# FOCUS at its default test size (a 4:3 photo at short side 512, padded to 512x704)
FOCUS_SHAPES = {
    # pixel decoder: 6 encoder layers over s32, s16, s8; every token is a query
    "pixel_decoder": dict(shapes=((16, 22), (32, 44), (64, 88)), queries=None, heads=8, points=4, head_dim=32),
    # adapter injector: the 36x50 ViT tokens sample c2, c3, c4 (value width 512 = 16 heads x 32)
    "injector": dict(shapes=((64, 88), (32, 44), (16, 22)), queries=1800, heads=16, points=4, head_dim=32),
}
# the dry run: the same structure, tiny (the Triton interpreter runs each program in Python)
TINY_SHAPES = {
    "pixel_decoder": dict(shapes=((2, 3), (4, 6), (8, 12)), queries=None, heads=2, points=4, head_dim=8),
    "injector": dict(shapes=((8, 12), (4, 6), (2, 3)), queries=30, heads=4, points=4, head_dim=8),
}
OTHER_MSDA_BACKENDS = [name for name in msda.BACKEND_NAMES if name != "portable"]


def attention_case(batch, shapes, queries, heads, points, head_dim, dtype, device, seed=0):
    """(value, shapes, locations, weights) as the model passes them: value and weights in
    ``dtype``, locations in float32 (the module computes them so), some points outside the
    maps, weights positive and summing to 1 over levels and points per (query, head)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    queries = tokens if queries is None else queries
    value = torch.randn(batch, tokens, heads, head_dim, generator=gen)
    loc = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=gen) * 1.2 - 0.1
    attn = torch.rand(batch, queries, heads, len(shapes), points, generator=gen)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return value.to(device, dtype), shapes, loc.to(device), attn.to(device, dtype)


def msda_outputs_and_gradients(case, backend, grad_out):
    value, shapes, loc, attn = case
    leaves = [t.detach().requires_grad_(True) for t in (value, loc, attn)]
    out = msda.ms_deform_attn(leaves[0], shapes, leaves[1], leaves[2], backend=backend)
    out.backward(grad_out)
    return {"output": out.detach().float(), "value_grad": leaves[0].grad.float(),
            "locations_grad": leaves[1].grad.float(), "weights_grad": leaves[2].grad.float()}


def relative_error(got, want):
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def fail_with_the_reason(backend, device, dtype):
    """The backend is installed but not usable: run it on the self-check's problem here so that
    its own error (or its disagreement) is what the test reports."""
    impl = msda.BACKENDS[backend].load()  # an import error propagates
    if impl is None:
        pytest.fail(f"{backend} is installed but its ms_deform_attn kernel did not load")
    value, shapes, loc, attn = msda.self_check_problem(device, dtype)
    spec = check_msda_arguments(value, shapes, loc, attn)
    with torch.no_grad():
        got = impl(value, loc, attn, spec, DEFAULT_MEMORY_BUDGET)  # a kernel error propagates
        want = ms_deform_attn_portable(value, loc, attn, spec)
    difference = (got.float() - want.float()).abs().max().item()
    pytest.fail(f"{backend} failed its self-check against the portable kernel on {device} {dtype_name(dtype)}: "
                f"max |difference| {difference:.3g} (scale {want.float().abs().max().item():.3g})")


@pytest.mark.parametrize("shape", list(FOCUS_SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_name)
@pytest.mark.parametrize("backend", OTHER_MSDA_BACKENDS)
def test_msda_backend_matches_portable_on_focus_shapes(backend, dtype, shape, device, dry_run, no_tf32,
                                                       record_property):
    if backend not in msda.available_backends(device, dtype):
        installed = backend != "triton" or importlib.util.find_spec("triton") is not None
        if device.type == "cuda" and installed:
            fail_with_the_reason(backend, device, dtype)  # installed on CUDA: it must work
        pytest.skip(f"{backend} is not available on {device} {dtype_name(dtype)} (available: "
                    f"{', '.join(msda.available_backends(device, dtype))})")
    geometry = (TINY_SHAPES if dry_run else FOCUS_SHAPES)[shape]
    case = attention_case(2, dtype=dtype, device=device, **geometry)
    assert msda.select_backend(device, dtype, backend).name == backend
    queries = case[2].shape[1]
    grad_out = torch.randn(2, queries, geometry["heads"] * geometry["head_dim"],
                           generator=torch.Generator().manual_seed(5)).to(device, dtype)

    got = msda_outputs_and_gradients(case, backend, grad_out)
    portable = msda_outputs_and_gradients(case, "portable", grad_out)
    # the portable kernel in float32 on the same (rounded) values: how far rounding alone takes it
    value, shapes, loc, attn = case
    exact = msda_outputs_and_gradients((value.float(), shapes, loc, attn.float()), "portable", grad_out.float())

    # both kernels compute in float32 and round once to the dtype: the difference is within an ulp.
    # (Triton's CPU interpreter truncates when it stores bfloat16, compiled kernels round to
    # nearest: in the dry run triton's bfloat16 output differs by about 2.5x portable's rounding.)
    floor = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    for name in got:
        assert bool(torch.isfinite(got[name]).all()), name
        difference = relative_error(got[name], portable[name])
        rounding = relative_error(portable[name], exact[name])
        print(f"\n{backend} vs portable, {device} {dtype_name(dtype)}, {shape} ({queries} queries), {name}: "
              f"relative L2 {difference:.1e}, portable's own rounding {rounding:.1e}, "
              f"bound {max(4 * rounding, floor):.1e}", end="")
        record_property(f"relative_l2_{name}", difference)
        assert difference <= max(4 * rounding, floor), (name, difference, rounding)


# -------------------------------------------------------------------- Predictor, small FOCUS

@pytest.fixture(scope="module")
def small_focus(device):
    """A small FOCUS (width 128, depth 4) in float32 on the device, seeded random weights, the
    decoder's predictor scaled up so that its two queries differ."""
    torch.manual_seed(0)
    model = build_model(SMALL)
    with torch.no_grad():
        for p in model.sem_seg_head.predictor.parameters():
            p.mul_(3.0)
    return model.to(device).eval()


def eight_photos():
    """uint8 [8, 150, 210, 3]: the synthetic photo, shifted and mirrored differently each time."""
    photo = torch.from_numpy(_focus_photo(150, 210, seed=0))
    images = [photo.roll(shifts=(11 * i, 23 * i), dims=(0, 1)) for i in range(8)]
    return torch.stack([im.flip(1) if i % 2 else im for i, im in enumerate(images)])


def test_focus_predictor_batch_of_8_equals_8_batches_of_1(small_focus, device, dry_run, no_tf32, record_property):
    resolution = DRY_RUN_RESOLUTION if dry_run else None  # None: the official rule, short side 512
    images = eight_photos()
    one = Predictor(small_focus, resolution=resolution, batch_size=1).predict(images, layout="BHWC")
    on_device = images.to(device)
    eight = Predictor(small_focus, resolution=resolution, batch_size=8).predict(on_device, layout="BHWC")
    assert one.shape == eight.shape == (8, 150, 210)
    assert one.device.type == "cpu" and eight.device == on_device.device  # the output follows the input
    assert (one[0] - one[1]).abs().max().item() > 1e-3, "the eight images should give different masks"
    difference = (eight.cpu() - one).abs().max().item()
    print(f"\nsmall FOCUS, batch 8 vs batch 1 on {device} float32: max |dprob| {difference:.2e}", end="")
    record_property("max_abs_dprob", difference)
    assert difference <= 1e-4


def test_focus_predictor_bfloat16_runs_and_is_close(small_focus, device, dry_run, no_tf32, record_property):
    resolution = DRY_RUN_RESOLUTION if dry_run else None
    images = eight_photos().to(device)
    want = Predictor(small_focus, resolution=resolution, batch_size=8).predict(images, layout="BHWC")
    half = copy.deepcopy(small_focus)
    got = Predictor(half, resolution=resolution, batch_size=8, dtype=torch.bfloat16).predict(images, layout="BHWC")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert got.dtype == torch.float32 and got.device == images.device and bool(torch.isfinite(got).all())
    assert float(got.min()) >= 0 and float(got.max()) <= 1
    difference = (got - want).abs()
    worst, mean = difference.max().item(), difference.mean().item()
    print(f"\nsmall FOCUS on {device} bfloat16 vs float32: max |dprob| {worst:.4f}, mean {mean:.5f}", end="")
    record_property("max_abs_dprob", worst)
    record_property("mean_abs_dprob", mean)
    assert mean < 0.05
