"""Multi-scale deformable attention: both backends against the official cases and an
independent grid_sample reference, gradients, half precision, chunking, dispatch, errors."""

import importlib.util
import logging

import pytest
import torch
import torch.nn.functional as F

from birefnet_core.ops import MultiScaleDeformableAttention, ms_deform_attn
from birefnet_core.ops import msda
from birefnet_core.ops.msda_portable import bytes_per_query, ms_deform_attn_portable, plan_chunks
from birefnet_core.ops.msda_spec import check_msda_arguments

from memory_tracking import LiveTensorBytes
from reference import FOCUS_REFERENCE, load_focus_npz

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
CASES = "focus_msda_cases.npz"
needs_cases = pytest.mark.skipif(not (FOCUS_REFERENCE / CASES).is_file(),
                                 reason=f"FOCUS conformance data not found: {FOCUS_REFERENCE / CASES}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REDUCTIONS = ("embedding_bag", "gather")


def grid_sample_reference(value, shapes, loc, attn):
    """The semantics of focus-reference.md §9, level by level with grid_sample."""
    n, _, m, dh = value.shape
    lq, points = loc.shape[1], loc.shape[4]
    out = torch.zeros(n * m, dh, lq, dtype=value.dtype)
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * m, dh, h, w)
        start += h * w
        grid = loc[:, :, :, level].transpose(1, 2).reshape(n * m, lq, points, 2).to(value.dtype) * 2 - 1
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out += (sampled * attn[:, :, :, level].transpose(1, 2).reshape(n * m, 1, lq, points).to(value.dtype)).sum(-1)
    return out.view(n, m, dh, lq).permute(0, 3, 1, 2).reshape(n, lq, m * dh)


def make_case(batch=2, shapes=((5, 7), (3, 4), (2, 2)), queries=9, heads=3, points=4, head_dim=5,
              spread=1.4, dtype=torch.float64, seed=0):
    """Random arguments; locations in [-(spread-1)/2, 1+(spread-1)/2]: some points outside."""
    gen = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, head_dim, generator=gen, dtype=torch.float64)
    loc = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=gen, dtype=torch.float64)
    loc = loc * spread - (spread - 1) / 2
    attn = torch.rand(batch, queries, heads, len(shapes), points, generator=gen, dtype=torch.float64)
    return value.to(dtype), tuple(shapes), loc.to(dtype), attn.to(dtype)


def portable(value, shapes, loc, attn, budget=10**9, reduction=None):
    spec = check_msda_arguments(value, shapes, loc, attn)
    return ms_deform_attn_portable(value, loc, attn, spec, budget, reduction)


def to(case, device=DEVICE, dtype=None):
    value, shapes, loc, attn = case
    return value.to(device, dtype), shapes, loc.to(device, dtype), attn.to(device, dtype)


# ------------------------------------------------------------------ the official cases


@needs_cases
@pytest.mark.parametrize("backend", ["portable", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("shapes_as", ["tensor", "tuples"])
def test_core_matches_the_official_cases(backend, shapes_as):
    t = load_focus_npz(CASES)
    shapes = t["spatial_shapes"] if shapes_as == "tensor" else tuple(map(tuple, t["spatial_shapes"].tolist()))
    starts = [0] + [h * w for h, w in t["spatial_shapes"].tolist()][:-1]
    assert t["level_start_index"].tolist() == torch.tensor(starts).cumsum(0).tolist()
    case = to((t["core_value"], shapes, t["core_sampling_locations"], t["core_attention_weights"]))
    loc = t["core_sampling_locations"]
    assert bool(((loc < 0) | (loc > 1)).any()), "the cases include points outside the maps"
    assert msda.select_backend(DEVICE, torch.float32, backend).name == backend
    got = ms_deform_attn(*case, backend=backend).cpu()
    want = t["core_output"]
    assert got.shape == want.shape == (2, 10, 32)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@needs_cases
def test_module_matches_the_official_case():
    t = load_focus_npz(CASES)
    state = {k[len("module_sd."):]: v for k, v in t.items() if k.startswith("module_sd.")}
    module = MultiScaleDeformableAttention(64, 3, 4, 4, value_ratio=0.5)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    module.load_state_dict(state, strict=True)
    shapes = tuple(map(tuple, t["spatial_shapes"].tolist()))
    want = t["module_output"]
    with torch.no_grad():
        got = module(t["module_query"], t["module_reference_points"], t["module_input_flatten"], shapes)
        got_tensor_shapes = module(t["module_query"], t["module_reference_points"], t["module_input_flatten"],
                                   t["spatial_shapes"])
        module64 = module.double()
        got64 = module64(t["module_query"].double(), t["module_reference_points"].double(),
                         t["module_input_flatten"].double(), shapes)
    assert got.shape == want.shape == (2, 10, 64)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    torch.testing.assert_close(got_tensor_shapes, got, atol=0, rtol=0)
    assert (got64 - want.double()).abs().max().item() <= 1e-5 * want.abs().max().item()


# ------------------------------------------------------------- portable kernel, float64


GEOMETRIES = [
    # batch, shapes, queries, heads, points, head_dim
    (1, ((4, 6),), 7, 2, 4, 8),
    (2, ((5, 7), (3, 4), (2, 2)), 9, 3, 4, 5),
    (3, ((1, 1), (2, 9), (6, 1)), 5, 1, 1, 3),
    (2, ((8, 8), (4, 4)), 11, 4, 2, 2),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("batch,shapes,queries,heads,points,head_dim", GEOMETRIES)
def test_portable_matches_grid_sample_float64(reduction, batch, shapes, queries, heads, points, head_dim):
    case = make_case(batch, shapes, queries, heads, points, head_dim)
    got = portable(*case, reduction=reduction)
    want = grid_sample_reference(*case)
    assert got.shape == (batch, queries, heads * head_dim) and got.dtype == torch.float64
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_batch_items_are_independent():
    value, shapes, loc, attn = make_case(batch=3, seed=3)
    whole = portable(value, shapes, loc, attn)
    for i in range(3):
        alone = portable(value[i:i + 1], shapes, loc[i:i + 1], attn[i:i + 1])
        torch.testing.assert_close(whole[i:i + 1], alone, atol=0, rtol=0)
    # and they differ from one another (a batch mix-up would make them equal or swapped)
    assert (whole[0] - whole[1]).abs().max() > 0.1


def _border_locations(shapes, heads, points):
    """Locations on every special place of each level: 0 and 1 (the maps' outer edges, pixel
    coordinate -0.5 and W - 0.5), pixel centres (j + 0.5) / W, pixel edges j / W, pixel
    coordinates exactly -1, 0, W - 1 and W, just inside and outside those, and far outside."""
    xs = []
    for h, w in shapes:
        per_level = [0.0, 1.0, 0.5 / w, (w - 0.5) / w, 1.0 / w, (w - 1.0) / w, -0.5 / w, (w + 0.5) / w,
                     -0.5 / w + 1e-9, (w + 0.5) / w - 1e-9, -0.5 / w - 1e-9, (w + 0.5) / w + 1e-9,
                     0.5, 3.0, -2.0, 1.5 / w, 2.0 / w]
        xs.append(torch.tensor(per_level, dtype=torch.float64))
    count = len(xs[0])
    # every pair (x special, y special) once, for each head and point
    grid = torch.stack(torch.meshgrid(torch.arange(count), torch.arange(count), indexing="ij"), -1).view(-1, 2)
    loc = torch.empty(1, grid.shape[0], heads, len(shapes), points, 2, dtype=torch.float64)
    for level, (h, w) in enumerate(shapes):
        fx = xs[level]
        # the same special places in y, measured in rows
        fy = torch.tensor([0.0, 1.0, 0.5 / h, (h - 0.5) / h, 1.0 / h, (h - 1.0) / h, -0.5 / h, (h + 0.5) / h,
                           -0.5 / h + 1e-9, (h + 0.5) / h - 1e-9, -0.5 / h - 1e-9, (h + 0.5) / h + 1e-9,
                           0.5, 3.0, -2.0, 1.5 / h, 2.0 / h], dtype=torch.float64)
        loc[0, :, :, level, :, 0] = fx[grid[:, 0]].view(-1, 1, 1)
        loc[0, :, :, level, :, 1] = fy[grid[:, 1]].view(-1, 1, 1)
    return loc


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_points_on_borders_pixel_centres_and_outside(reduction):
    shapes = ((3, 5), (4, 2), (1, 1))
    value, _, _, _ = make_case(batch=1, shapes=shapes, heads=2, head_dim=3)
    loc = _border_locations(shapes, 2, 1)
    gen = torch.Generator().manual_seed(2)
    attn = torch.rand(loc.shape[:-1], generator=gen, dtype=torch.float64)
    got = portable(value, shapes, loc, attn, reduction=reduction)
    torch.testing.assert_close(got, grid_sample_reference(value, shapes, loc, attn), atol=1e-12, rtol=1e-12)

    # exact values, level 0 alone (3 x 5), head 0: one point, weight 1
    v = value[0, :15, 0].view(3, 5, 3)

    def sample(x, y):
        one = torch.tensor([[[[[[x, y]]]]]], dtype=torch.float64).expand(1, 1, 1, 1, 1, 2)
        return portable(value[:, :15, :1], ((3, 5),), one, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64),
                        reduction=reduction)[0, 0]

    torch.testing.assert_close(sample(2.5 / 5, 1.5 / 3), v[1, 2], atol=1e-14, rtol=0)  # a pixel centre
    torch.testing.assert_close(sample(0.5 / 5, 0.5 / 3), v[0, 0], atol=1e-14, rtol=0)  # the first centre
    torch.testing.assert_close(sample(4.5 / 5, 2.5 / 3), v[2, 4], atol=1e-14, rtol=0)  # the last centre
    torch.testing.assert_close(sample(0.0, 0.0), 0.25 * v[0, 0], atol=1e-14, rtol=0)  # top-left edge
    torch.testing.assert_close(sample(1.0, 1.0), 0.25 * v[2, 4], atol=1e-14, rtol=0)  # bottom-right edge
    torch.testing.assert_close(sample(1.0, 1.5 / 3), 0.5 * v[1, 4], atol=1e-14, rtol=0)  # right edge
    torch.testing.assert_close(sample(2.0 / 5, 1.5 / 3), 0.5 * (v[1, 1] + v[1, 2]), atol=1e-14, rtol=0)  # pixel edge
    for x, y in [(-0.5 / 5, 0.5), (5.5 / 5, 0.5), (0.5, -0.5 / 3), (0.5, 3.5 / 3), (7.0, 0.5), (-3.0, -3.0)]:
        assert sample(x, y).abs().max() == 0  # pixel coordinate -1, W, H or beyond: nothing
    assert sample(-0.5 / 5 + 1e-6, 1.5 / 3).abs().max() > 0  # just inside -1


def test_nan_and_infinite_locations_sample_zero():
    value, shapes, loc, attn = make_case(batch=1)
    loc[0, 2] = float("nan")
    loc[0, 3, :, :, :, 0] = float("inf")
    loc[0, 4, :, :, :, 1] = -float("inf")
    for reduction in REDUCTIONS:
        out = portable(value, shapes, loc, attn, reduction=reduction)
        assert torch.isfinite(out).all()
        assert out[0, 2:5].abs().max() == 0
        assert out[0, 0].abs().max() > 0


def test_empty_calls_give_empty_or_zero_results():
    value, shapes, loc, attn = make_case(queries=0)
    assert ms_deform_attn(value, shapes, loc, attn).shape == (2, 0, 15)
    value, shapes, loc, attn = make_case(points=0)
    out = ms_deform_attn(value, shapes, loc, attn)
    assert out.shape == (2, 9, 15) and out.abs().max() == 0


# ------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("budget", [10**9, 1])  # one chunk; one query per chunk, each checkpointed
def test_portable_gradcheck_float64(reduction, budget):
    value, shapes, loc, attn = make_case(batch=2, shapes=((3, 4), (2, 3)), queries=3, heads=2, points=2, head_dim=2)
    inputs = [t.detach().requires_grad_(True) for t in (value, loc, attn)]

    def fn(v, l, a):
        return portable(v, shapes, l, a, budget=budget, reduction=reduction)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gradients_match_grid_sample():
    case = make_case(batch=2, queries=6, dtype=torch.float64, seed=4)
    grads = []
    for fn in (lambda *c: ms_deform_attn(*c, backend="portable"), grid_sample_reference):
        value, loc, attn = [t.detach().requires_grad_(True) for t in (case[0], case[2], case[3])]
        out = fn(value, case[1], loc, attn)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype))
        grads.append((value.grad, loc.grad, attn.grad))
    for got, want in zip(*grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_gradients_after_a_first_call_under_inference_mode():
    """The per-geometry constants are cached: made under inference_mode they must still be
    usable by a later call that records gradients."""
    value, shapes, loc, attn = make_case(shapes=((7, 3), (2, 5)), dtype=torch.float32, seed=6)
    with torch.inference_mode():
        first = ms_deform_attn(value, shapes, loc, attn)
    loc = loc.clone().requires_grad_(True)
    out = ms_deform_attn(value, shapes, loc, attn)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), first)
    assert loc.grad.abs().max() > 0


# ------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_float32_on_rounded_inputs(dtype):
    """Coordinates, weights and sums are float32 inside; the only error left is the final
    rounding to the output dtype: at most half an ulp of each element."""
    low = make_case(batch=2, shapes=((24, 30), (12, 15), (6, 8)), queries=200, heads=2, head_dim=16, dtype=dtype)
    rounded = to(low, "cpu", torch.float32)
    got = ms_deform_attn(*low, backend="portable")
    want = ms_deform_attn(*rounded, backend="portable")
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    error = (got.float() - want).abs()
    # half an ulp is at most eps/2 * |x|; the float32 sum may sit a hair away from the rounding
    # boundary, hence the float32-sized slack
    assert (error <= 0.5 * eps * want.abs() + 1e-6 * want.abs().max()).all(), error.max()
    # and float32 on rounded inputs is what a float64 computation gives
    torch.testing.assert_close(want.double(), ms_deform_attn(*to(rounded, "cpu", torch.float64)), atol=1e-5, rtol=1e-5)


def test_float32_locations_with_bfloat16_values():
    """Under autocast the locations stay float32 while the values are bfloat16: the locations
    are used at float32 precision (bfloat16 would move a point of a 88-pixel map by 0.17 px)."""
    value, shapes, loc, attn = make_case(shapes=((40, 88),), queries=50, dtype=torch.float32, seed=7)
    value16 = value.bfloat16()
    got = ms_deform_attn(value16, shapes, loc, attn, backend="portable")
    assert got.dtype == torch.bfloat16
    want = ms_deform_attn(value16.float(), shapes, loc, attn, backend="portable")
    assert ((got.float() - want).abs() <= 2**-8 * want.abs() + 1e-6).all()
    coarse = ms_deform_attn(value16.float(), shapes, loc.bfloat16().float(), attn, backend="portable")
    assert (coarse - want).abs().max() > 0.01  # rounding the locations would have mattered


# ----------------------------------------------------------------------- chunking


def test_chunking_gives_the_same_result_and_gradients(monkeypatch):
    case = make_case(batch=2, queries=13)
    spec = check_msda_arguments(*case)
    one = bytes_per_query(spec, torch.float64)
    for budget in (1, one, 3 * one + 1, 10**9):
        chunks = list(plan_chunks(spec, torch.float64, budget))
        covered = torch.zeros(spec.queries, dtype=torch.int64)
        for q0, q1 in chunks:
            assert q1 - q0 <= max(1, budget // one)
            covered[q0:q1] += 1
        assert bool((covered == 1).all()), "every query exactly once"
    assert len(list(plan_chunks(spec, torch.float64, 1))) == 13
    results = []
    for megabytes in ("0.000001", "1000"):
        monkeypatch.setenv("BIREFNET_MSDA_MEMORY_MB", megabytes)
        value, loc, attn = [t.detach().requires_grad_(True) for t in (case[0], case[2], case[3])]
        out = ms_deform_attn(value, case[1], loc, attn, backend="portable")
        out.square().sum().backward()
        results.append([out.detach(), value.grad, loc.grad, attn.grad])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    monkeypatch.setenv("BIREFNET_MSDA_MEMORY_MB", "-3")
    with pytest.raises(ValueError, match="BIREFNET_MSDA_MEMORY_MB must be positive"):
        ms_deform_attn(*case)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_portable_memory_stays_within_budget(reduction):
    """Measured: the peak of tensor memory the call allocates, output excluded, is within the
    budget, where the unchunked temporaries are many times larger."""
    shapes = ((16, 22), (32, 44))
    case = make_case(batch=1, shapes=shapes, queries=352 + 1408, heads=8, points=4, head_dim=32, dtype=torch.float32)
    spec = check_msda_arguments(*case)
    budget = 4 * 2**20
    with torch.no_grad(), LiveTensorBytes() as tracker:
        out = portable(*case, budget=budget, reduction=reduction)
    temporaries = tracker.peak - out.nbytes
    assert 0 < temporaries <= budget
    assert bytes_per_query(spec, torch.float32, reduction) * spec.queries > 2 * budget
    torch.testing.assert_close(out, portable(*case, reduction=reduction))


# -------------------------------------------------------------------------- triton


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_matches_portable(dtype):
    case = to(make_case(batch=2, shapes=((5, 7), (3, 4), (1, 2)), queries=70, heads=2, points=3, head_dim=12,
                        dtype=torch.float32, seed=8), DEVICE, dtype)
    assert msda.select_backend(DEVICE, dtype, "triton").name == "triton"
    got = ms_deform_attn(*case, backend="triton")
    want = ms_deform_attn(*case, backend="portable")
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    scale = want.float().abs().max().item()
    tol = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps  # one rounding of the output
    assert (got.float() - want.float()).abs().max().item() <= tol * scale


@needs_triton
def test_triton_on_non_contiguous_and_mixed_dtype_inputs():
    value, shapes, loc, attn = to(make_case(batch=2, queries=20, heads=2, head_dim=4, dtype=torch.float32, seed=9))
    value = value.transpose(2, 3).contiguous().transpose(2, 3)  # heads innermost
    loc = loc.permute(1, 0, 2, 3, 4, 5).contiguous().permute(1, 0, 2, 3, 4, 5)
    attn = torch.cat([attn, attn], dim=1)[:, : attn.shape[1]]  # batch stride twice the size
    assert not (value.is_contiguous() or loc.is_contiguous() or attn.is_contiguous())
    want = ms_deform_attn(value.contiguous(), shapes, loc.contiguous(), attn.contiguous(), backend="portable")
    torch.testing.assert_close(ms_deform_attn(value, shapes, loc, attn, backend="triton"), want, atol=1e-5, rtol=1e-5)
    got16 = ms_deform_attn(value.bfloat16(), shapes, loc, attn, backend="triton")
    want16 = ms_deform_attn(value.bfloat16(), shapes, loc, attn, backend="portable")
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.float(), want16.float(), atol=1e-2 * want.abs().max().item(), rtol=0)


@needs_triton
def test_triton_gradients_match_portable():
    case = to(make_case(batch=2, queries=12, heads=2, head_dim=4, dtype=torch.float32, seed=10))
    grads = []
    for backend in ("triton", "portable"):
        value, loc, attn = [t.detach().requires_grad_(True) for t in (case[0], case[2], case[3])]
        out = ms_deform_attn(value, case[1], loc, attn, backend=backend)
        out.square().sum().backward()
        grads.append([out.detach(), value.grad, loc.grad, attn.grad])
    for got, want in zip(*grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # only the tensors that ask for gradients get them
    value, loc, attn = case[0], case[2].detach().requires_grad_(True), case[3]
    ms_deform_attn(value, case[1], loc, attn, backend="triton").sum().backward()
    want = torch.autograd.grad(ms_deform_attn(value, case[1], loc, attn, backend="portable").sum(), loc)[0]
    torch.testing.assert_close(loc.grad, want, atol=1e-5, rtol=1e-5)
    assert value.grad is None and attn.grad is None


# ------------------------------------------------------------------------- dispatch


def chosen(dtype=torch.float32, backend=None, device="cpu"):
    return msda.select_backend(device, dtype, backend).name


def test_automatic_choice_environment_variable_and_errors(monkeypatch):
    monkeypatch.delenv("BIREFNET_MSDA_BACKEND", raising=False)
    assert chosen() == "portable"  # the CPU order has only the portable kernel
    assert msda.candidate_order(torch.device("cuda")) == ["triton", "portable"]
    assert msda.candidate_order(torch.device("mps")) == ["portable"]
    case = make_case(dtype=torch.float32)
    monkeypatch.setenv("BIREFNET_MSDA_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="BIREFNET_MSDA_BACKEND"):
        ms_deform_attn(*case)
    monkeypatch.delenv("BIREFNET_MSDA_BACKEND")
    with pytest.raises(ValueError, match="unknown ms_deform_attn backend 'fast'"):
        ms_deform_attn(*case, backend="fast")
    assert "portable" in msda.available_backends("cpu", torch.float64)
    assert msda.backend_statuses("cpu", torch.float32) == {"portable": "reference"}


@needs_triton
def test_environment_variable_puts_triton_first_and_falls_through(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("BIREFNET_MSDA_BACKEND", " Triton ")
    assert chosen() == "triton"
    assert chosen(torch.float64) == "portable"  # no float64 Triton kernel
    assert msda.backend_statuses("cpu", torch.float64) == {"triton": "not for this device", "portable": "reference"}
    assert msda.backend_statuses("cpu", torch.float32) == {"triton": "ok", "portable": "reference"}
    assert chosen(backend="portable") == "portable"  # the argument wins over the environment
    assert "triton" in msda.available_backends("cpu", torch.bfloat16)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton is then for CUDA tensors only
    assert chosen() == "portable"
    assert "triton" not in msda.available_backends("cpu", torch.float32)


def test_a_backend_failing_its_self_check_is_skipped(monkeypatch, caplog):
    def wrong(value, loc, attn, spec, budget):
        return ms_deform_attn_portable(value, loc * 0.9, attn, spec)  # samples at the wrong places

    broken = msda.Backend("broken", lambda device, dtype: True, lambda: wrong, differentiable=False)
    crashing = msda.Backend("crashing", lambda device, dtype: True, lambda: None, differentiable=False)
    monkeypatch.setitem(msda.BACKENDS, "broken", broken)
    monkeypatch.setitem(msda.BACKENDS, "crashing", crashing)
    monkeypatch.setitem(msda.DEFAULT_ORDER, "cpu", ("crashing", "broken", "portable"))
    monkeypatch.delenv("BIREFNET_MSDA_BACKEND", raising=False)
    with caplog.at_level(logging.WARNING, logger="birefnet_core.ops.msda"):
        assert chosen() == "portable"
        assert chosen() == "portable"
    assert len([r for r in caplog.records if "disagrees with the portable kernel" in r.getMessage()]) == 1  # once
    assert broken.self_check_results() == {("cpu", torch.float32): False}
    assert msda.backend_statuses("cpu", torch.float32) == {
        "crashing": "not installed", "broken": "self-check failed", "portable": "reference"}
    # a backend that agrees is used, and its forward-only output still gets gradients
    good = msda.Backend("good", lambda device, dtype: True, lambda: ms_deform_attn_portable, differentiable=False)
    monkeypatch.setitem(msda.BACKENDS, "good", good)
    monkeypatch.setitem(msda.DEFAULT_ORDER, "cpu", ("good", "portable"))
    assert chosen() == "good"
    value, shapes, loc, attn = make_case(dtype=torch.float32)
    loc.requires_grad_(True)
    ms_deform_attn(value, shapes, loc, attn).sum().backward()
    assert loc.grad.abs().max() > 0


# --------------------------------------------------------------------------- errors


BAD_ARGUMENTS = [
    ("value", lambda c: c["value"][0], r"value must have shape \[N, S, M, Dh\]"),
    ("value", lambda c: c["value"][:, :-1], r"spatial_shapes has 51 tokens \(5x7 \+ 3x4 \+ 2x2\) but value has 50"),
    ("value", lambda c: c["value"].long(), r"value must be a floating-point tensor"),
    ("shapes", lambda c: ((5, 7), (3, 4)), r"spatial_shapes has 47 tokens"),
    ("shapes", lambda c: ((5, 7, 1), (3, 4), (2, 2)), r"spatial_shapes must be a sequence of \(H, W\) pairs"),
    ("shapes", lambda c: ((5.0, 7), (3, 4), (2, 2)), r"spatial_shapes must be a sequence of \(H, W\) pairs"),
    ("shapes", lambda c: ((0, 7), (3, 4), (2, 2)), r"spatial_shapes must be a sequence of \(H, W\) pairs"),
    ("shapes", lambda c: torch.tensor([[5.0, 7.0]]), r"got a tensor of dtype torch.float32"),
    ("shapes", lambda c: torch.tensor([5, 7]), r"got a tensor of shape \[2\]"),
    ("shapes", lambda c: (), r"got no level"),
    ("loc", lambda c: c["loc"][..., :1], r"sampling_locations must have shape \[N, Lq, M, L, P, 2\] = \[2, Lq, 3, 3, P, 2\]"),
    ("loc", lambda c: c["loc"][:, :, :2], r"sampling_locations must have shape .* got \[2, 9, 2, 3, 4, 2\]"),
    ("loc", lambda c: c["loc"][:, :, :, :2], r"sampling_locations must have shape"),
    ("loc", lambda c: c["loc"][0], r"sampling_locations must have shape"),
    ("loc", lambda c: c["loc"].to("meta"), r"sampling_locations is on meta but value is on cpu"),
    ("attn", lambda c: c["attn"][:, :-1], r"attention_weights must have shape \[N, Lq, M, L, P\] = \[2, 9, 3, 3, 4\]"),
    ("attn", lambda c: c["attn"][..., None], r"attention_weights must have shape"),
    ("attn", lambda c: c["attn"] > 0.5, r"attention_weights must be a floating-point tensor"),
]


@pytest.mark.parametrize("name,change,message", BAD_ARGUMENTS)
def test_bad_arguments_raise_a_clear_value_error(name, change, message):
    value, shapes, loc, attn = make_case()
    case = dict(value=value, shapes=shapes, loc=loc, attn=attn)
    case[name] = change(case)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(case["value"], case["shapes"], case["loc"], case["attn"])


# --------------------------------------------------------------------------- module


def test_module_reference_points_per_level_or_shared_and_errors():
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(16, 2, 2, 3).double()
    with torch.no_grad():
        module.sampling_offsets.weight.normal_(0, 0.3)
        module.attention_weights.weight.normal_(0, 0.3)
    shapes = ((6, 5), (3, 2))
    query = torch.randn(2, 7, 16, dtype=torch.float64)
    memory = torch.randn(2, 36, 16, dtype=torch.float64)
    shared = torch.rand(2, 7, 1, 2, dtype=torch.float64)
    out = module(query, shared, memory, shapes)
    torch.testing.assert_close(out, module(query, shared.expand(2, 7, 2, 2), memory, torch.tensor(shapes)))
    # the same through the core function with the locations written out (§9)
    n, lq = 2, 7
    value = module.value_proj(memory).view(n, 36, 2, 8)
    offsets = module.sampling_offsets(query).view(n, lq, 2, 2, 3, 2)
    weights = module.attention_weights(query).view(n, lq, 2, 6).softmax(-1).view(n, lq, 2, 2, 3)
    loc = shared[:, :, None, :, None, :] + offsets / torch.tensor([[5.0, 6.0], [2.0, 3.0]], dtype=torch.float64)[:, None]
    torch.testing.assert_close(out, module.output_proj(grid_sample_reference(value, shapes, loc, weights)))
    with pytest.raises(ValueError, match=r"reference_points must have shape \[2, 7, 2 or 1, 2\]"):
        module(query, shared.expand(2, 7, 3, 2), memory, shapes)
    with pytest.raises(ValueError, match="spatial_shapes has 1 levels but the module was built for 2"):
        module(query, shared, memory[:, :30], ((6, 5),))
    with pytest.raises(ValueError, match=r"input_flatten must have shape \[2, S, 16\]"):
        module(query, shared, memory[..., :8], shapes)
    with pytest.raises(ValueError, match="value width divisible by the heads"):
        MultiScaleDeformableAttention(16, 2, 3, 3)


def test_module_initialisation_is_deformable_detr():
    module = MultiScaleDeformableAttention(32, 2, 4, 3)
    bias = module.sampling_offsets.bias.view(4, 2, 3, 2)
    # head h points along angle 2*pi*h/4, scaled onto the unit square; point p is p + 1 away
    torch.testing.assert_close(bias[:, 0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[:, 1], bias[:, 0])
    torch.testing.assert_close(bias[:, :, 2], 3 * bias[:, :, 0])
    assert module.sampling_offsets.weight.abs().max() == 0 and module.attention_weights.weight.abs().max() == 0
    assert module.value_proj.bias.abs().max() == 0 and module.value_proj.weight.abs().max() > 0


def test_module_under_cpu_autocast():
    torch.manual_seed(1)
    module = MultiScaleDeformableAttention(32, 2, 2, 2)
    shapes = ((6, 8), (3, 4))
    query, memory = torch.randn(1, 10, 32), torch.randn(1, 60, 32)
    ref = torch.rand(1, 10, 1, 2)
    want = module(query, ref, memory, shapes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module(query, ref, memory, shapes)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()
