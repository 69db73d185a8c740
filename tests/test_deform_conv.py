"""The modulated deformable convolution: every backend against torchvision's semantics."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from birefnet_core.ops import DeformableConv2d, available_backends, deform_conv2d, select_backend
from birefnet_core.ops.portable import (BACKWARD_ENV, CPU_CHUNK_BYTES, REDUCTIONS, bytes_per_position,
                                        deform_conv2d_portable, plan_chunks)
from birefnet_core.ops.spec import check_arguments

from memory_tracking import LiveTensorBytes

tv_ops = pytest.importorskip("torchvision.ops")
DEFAULT_TEST_BUDGET = 20000  # bytes: several chunks on the tests' small shapes
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def make_case(batch=2, c_in=5, c_out=4, h=9, w=11, k=3, stride=1, padding=1, dilation=1,
              offset_groups=1, groups=1, offset_scale=3.0, dtype=torch.float64, seed=0, with_mask=True):
    gen = torch.Generator().manual_seed(seed)
    s = stride if isinstance(stride, tuple) else (stride, stride)
    p = padding if isinstance(padding, tuple) else (padding, padding)
    d = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    ho = (h + 2 * p[0] - d[0] * (k - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - d[1] * (k - 1) - 1) // s[1] + 1
    case = dict(
        input=torch.randn(batch, c_in, h, w, generator=gen),
        offset=torch.randn(batch, 2 * offset_groups * k * k, ho, wo, generator=gen) * offset_scale,
        weight=torch.randn(c_out, c_in // groups, k, k, generator=gen),
        bias=torch.randn(c_out, generator=gen),
        mask=torch.rand(batch, offset_groups * k * k, ho, wo, generator=gen) if with_mask else None,
    )
    case = {key: (v.to(dtype) if v is not None else None) for key, v in case.items()}
    case.update(stride=stride, padding=padding, dilation=dilation)
    return case


def chosen_backend(case, backend=None, **kwargs):
    spec = check_arguments(case["input"], case["offset"], case["weight"], case["bias"], case["stride"],
                           case["padding"], case["dilation"], case["mask"])
    return select_backend(case["input"], spec, backend, **kwargs).name


def torchvision_reference(case):
    return tv_ops.deform_conv2d(**case)


GEOMETRIES = [
    # k, stride, padding, dilation
    (1, 1, 0, 1),
    (3, 1, 1, 1),
    (7, 1, 3, 1),
    (3, 2, 0, 1),
    (3, 1, 2, 2),
    (3, (2, 1), (1, 0), (1, 2)),
    (7, 2, 1, 1),
]


@pytest.mark.parametrize("k,stride,padding,dilation", GEOMETRIES)
def test_portable_matches_torchvision_float64(k, stride, padding, dilation):
    case = make_case(k=k, stride=stride, padding=padding, dilation=dilation, h=13, w=10)
    got = deform_conv2d(**case, backend="portable")
    want = torchvision_reference(case)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("groups,offset_groups", [(1, 2), (2, 1), (2, 2)])
def test_portable_groups_and_offset_groups(groups, offset_groups):
    case = make_case(c_in=8, c_out=6, groups=groups, offset_groups=offset_groups)
    torch.testing.assert_close(deform_conv2d(**case, backend="portable"), torchvision_reference(case),
                               atol=1e-10, rtol=1e-10)


def test_without_mask_and_bias():
    case = make_case(with_mask=False)
    case["bias"] = None
    torch.testing.assert_close(deform_conv2d(**case, backend="portable"), torchvision_reference(case),
                               atol=1e-10, rtol=1e-10)


def test_offsets_outside_the_image_and_on_pixel_borders():
    """Integer and half-pixel offsets, points exactly at -1, 0, H-1 and H, far outside, and a
    mask with zeros."""
    case = make_case(batch=1, h=6, w=7, k=3, padding=1)
    ho, wo = 6, 7
    values = torch.tensor([0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 6.0, -7.0, 100.0, -100.0, 1e-7])
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, len(values), (1, 18, ho, wo), generator=gen)
    case["offset"] = values[idx].double()
    # sampling point of tap (u, v) at output (i, j): y = i - 1 + u + dy, x = j - 1 + v + dx
    case["offset"][0, 0, 0, :] = 0.0  # tap (0, 0), row 0: y = -1 exactly
    case["offset"][0, 8, 1, :] = -2.0  # tap (1, 1), row 1: y = -1 exactly
    case["offset"][0, 8, 4, :] = 2.0  # tap (1, 1), row 4: y = 6 = H exactly
    case["offset"][0, 8, 5, :] = 0.0  # tap (1, 1), row 5: y = 5 = H - 1 exactly
    case["offset"][0, 9, :, 2] = -3.0  # tap (1, 1), column 2: x = -1 exactly
    case["offset"][0, 9, :, 5] = 2.0  # tap (1, 1), column 5: x = 7 = W exactly
    case["offset"][0, 17, :, 0] = 0.0  # tap (2, 2), column 0: x = 1, an integer
    case["mask"][0, ::2] = 0.0
    got = deform_conv2d(**case, backend="portable")
    torch.testing.assert_close(got, torchvision_reference(case), atol=1e-10, rtol=1e-10)


GRAD_NAMES = ("input", "offset", "mask", "weight", "bias")


def _grad_inputs(case):
    return [case[name].detach().requires_grad_(True) for name in GRAD_NAMES]


@pytest.mark.parametrize("k,stride,padding,dilation", [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 2)])
def test_portable_gradcheck_float64(k, stride, padding, dilation):
    # offsets away from integers: the bilinear weights have kinks there
    case = make_case(batch=2, c_in=2, c_out=2, h=5, w=4, k=k, stride=stride, padding=padding,
                     dilation=dilation, offset_scale=1.0)
    case["offset"] = case["offset"].round() + 0.37

    spec = check_arguments(case["input"], case["offset"], case["weight"], case["bias"], stride, padding, dilation,
                           case["mask"])
    assert len(list(plan_chunks(spec, torch.float64, 4096, "embedding_bag", backward=True))) > 1

    def fn(input, offset, mask, weight, bias):
        return deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask, backend="portable",
                             memory_budget=4096)  # several chunks, forward and hand-written backward

    assert torch.autograd.gradcheck(fn, _grad_inputs(case), eps=1e-6, atol=1e-7)


def _function(case, spec, reduction, backward, memory_budget=DEFAULT_TEST_BUDGET):
    """fn(*tensors) of the case's tensors that are not None, in GRAD_NAMES order (see _inputs)."""
    names = [n for n in GRAD_NAMES if case[n] is not None]

    def fn(*tensors):
        t = dict(zip(names, tensors))
        return deform_conv2d_portable(t["input"], t["offset"], t["weight"], t.get("bias"), t.get("mask"), spec,
                                      memory_budget, reduction=reduction, backward=backward)
    return fn


def _spec(case):
    return check_arguments(case["input"], case["offset"], case["weight"], case["bias"], case["stride"],
                           case["padding"], case["dilation"], case["mask"])


# name: make_case arguments (the shapes kept tiny: gradcheck differentiates every input number)
BACKWARD_CASES = {
    "k3": dict(k=3, padding=1),
    "k1-no-padding": dict(k=1, padding=0),
    "stride-dilation": dict(k=3, stride=2, padding=2, dilation=2),
    "asymmetric": dict(k=3, stride=(2, 1), padding=(1, 0), dilation=(1, 2), w=7),
    "groups-and-offset-groups": dict(k=3, padding=1, c_in=4, c_out=4, groups=2, offset_groups=2),
    "offset-groups": dict(k=3, padding=1, c_in=4, c_out=2, offset_groups=2),
    "weight-groups": dict(k=3, padding=1, c_in=4, c_out=2, groups=2),
    "no-mask-no-bias": dict(k=3, padding=1, with_mask=False),
}


def _backward_case(name, dtype=torch.float64, **shape):
    kwargs = dict(batch=2, c_in=2, c_out=2, h=5, w=4, offset_scale=1.0, seed=3)
    kwargs.update(BACKWARD_CASES[name])
    kwargs.update(shape)
    case = make_case(dtype=dtype, **kwargs)
    # offsets away from integers (the bilinear weights have kinks there); some points land in
    # (-1, 0) and (H-1, H), where two corners read the zero border, and some far outside
    case["offset"] = case["offset"].round() + 0.37
    case["offset"][:, 0::7, 0, :] = 9.37
    case["offset"][:, 1::5, -1, :] = -11.63
    if name == "no-mask-no-bias":
        case["bias"] = None
    return case


def _inputs(case):
    names = [n for n in GRAD_NAMES if case[n] is not None]
    return [case[n].detach().requires_grad_(True) for n in names]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(BACKWARD_CASES))
def test_manual_backward_gradcheck_float64(name, reduction):
    """The hand-written backward against finite differences: every input, every geometry, both
    reductions, one output row per chunk (the smallest budget). Fast mode (a random projection
    of the Jacobian: a wrong entry shows with probability 1); the full Jacobian is checked by
    test_portable_gradcheck_float64."""
    case = _backward_case(name)
    spec = _spec(case)
    assert len(list(plan_chunks(spec, torch.float64, 1, reduction, backward=True))) == spec.batch * spec.out_h
    fn = _function(case, spec, reduction, "manual", memory_budget=1)
    inputs = _inputs(case)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)
    assert out_grad_fn_name(fn(*inputs)) == "_DeformConv2dFunctionBackward"


def out_grad_fn_name(out):
    return type(out.grad_fn).__name__


def test_autograd_reference_gradcheck_float64():
    """The reference the hand-written backward is compared with: autograd through the gather."""
    case = _backward_case("groups-and-offset-groups")
    spec = _spec(case)
    fn = _function(case, spec, "gather", "autograd", memory_budget=1)
    inputs = _inputs(case)
    assert out_grad_fn_name(fn(*inputs)) != "_DeformConv2dFunctionBackward"
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def _outputs_and_grads(case, spec, backward, grad_out, reduction=None, memory_budget=20000):
    tensors = dict(zip(GRAD_NAMES, _grad_inputs(case)))
    out = deform_conv2d_portable(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
                                 tensors["mask"], spec, memory_budget, reduction=reduction, backward=backward)
    out.backward(grad_out)
    return {"output": out.detach().double(), **{n: tensors[n].grad.double() for n in GRAD_NAMES}}


def _relative(got, want):
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k,groups,offset_groups", [(1, 1, 1), (3, 1, 1), (7, 1, 1), (3, 2, 2)])
def test_manual_backward_matches_autograd(dtype, k, groups, offset_groups):
    """Decoder-like values (mask in 0..2, offsets of several pixels), chunked: the hand-written
    gradients equal autograd's through the gather in float32, and in bfloat16 they are as close
    to the float64 gradients of the same rounded numbers as autograd's are."""
    case = make_case(k=k, padding=k // 2, c_in=16, c_out=8, h=12, w=10, groups=groups, offset_groups=offset_groups,
                     dtype=torch.float32, offset_scale=3.0, seed=k)
    case["mask"] = 2 * case["mask"]
    case["offset"][:, :, :2] += 12.0  # coordinates beyond the image and far from 0 (bfloat16 would round them)
    low = {key: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for key, v in case.items()}
    exact_case = {key: (v.double() if isinstance(v, torch.Tensor) else v) for key, v in low.items()}
    spec = _spec(low)
    grad_out = torch.randn(spec.batch, spec.out_channels, spec.out_h, spec.out_w,
                           generator=torch.Generator().manual_seed(7)).to(dtype)
    manual = _outputs_and_grads(low, spec, "manual", grad_out)
    autograd = _outputs_and_grads(low, spec, "autograd", grad_out)
    exact = _outputs_and_grads(exact_case, spec, "autograd", grad_out.double())
    for name in ("output",) + GRAD_NAMES:
        assert bool(torch.isfinite(manual[name]).all()), name
        if dtype == torch.float32:
            assert _relative(manual[name], autograd[name]) <= 1e-5, name
        else:
            floor = 4 * torch.finfo(dtype).eps
            assert _relative(manual[name], exact[name]) <= max(2 * _relative(autograd[name], exact[name]), floor), name


def test_reductions_and_backward_modes_agree_float64():
    case = make_case(batch=2, c_in=6, c_out=4, h=9, w=7, k=3, padding=1, offset_groups=3, groups=2,
                     offset_scale=4.0)
    spec = _spec(case)
    grad_out = torch.randn(spec.batch, spec.out_channels, spec.out_h, spec.out_w,
                           generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = _outputs_and_grads(case, spec, "autograd", grad_out, reduction="gather")
    for reduction in REDUCTIONS:
        got = _outputs_and_grads(case, spec, "manual", grad_out, reduction=reduction, memory_budget=3000)
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-12, rtol=1e-12, msg=f"{reduction} {name}")


def test_backward_environment_variable(monkeypatch):
    case = make_case(batch=1, c_in=4, c_out=4, h=6, w=5)
    monkeypatch.setenv(BACKWARD_ENV, "autograd")
    tensors = _grad_inputs(case)
    out = deform_conv2d(tensors[0], tensors[1], tensors[3], tensors[4], 1, 1, 1, tensors[2], backend="portable")
    assert out_grad_fn_name(out) != "_DeformConv2dFunctionBackward"
    monkeypatch.setenv(BACKWARD_ENV, "manual")
    out = deform_conv2d(tensors[0], tensors[1], tensors[3], tensors[4], 1, 1, 1, tensors[2], backend="portable")
    assert out_grad_fn_name(out) == "_DeformConv2dFunctionBackward"
    monkeypatch.setenv(BACKWARD_ENV, "fast")
    with pytest.raises(ValueError, match=BACKWARD_ENV):
        deform_conv2d(tensors[0], tensors[1], tensors[3], tensors[4], 1, 1, 1, tensors[2], backend="portable")
    with torch.no_grad():  # no backward, no choice to make
        deform_conv2d(tensors[0], tensors[1], tensors[3], tensors[4], 1, 1, 1, tensors[2], backend="portable")


def test_manual_backward_keeps_nothing_between_forward_and_backward():
    """The forward saves its inputs only (no padded copy, no columns): what it leaves alive is
    the output. Autograd with checkpointing keeps at least the padded copy of the input."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 20, 20, generator=gen, requires_grad=True)
    offset = torch.randn(2, 18, 20, 20, generator=gen, requires_grad=True)
    weight = torch.randn(8, 16, 3, 3, generator=gen, requires_grad=True)
    kept = {}
    for backward in ("manual", "autograd"):
        with LiveTensorBytes() as tracker:
            out = deform_conv2d_portable(x, offset, weight, None, None, _spec_of(x, offset, weight), backward=backward)
            kept[backward] = tracker.current - out.untyped_storage().nbytes()
        out.sum().backward()
    assert kept["manual"] == 0
    assert kept["autograd"] >= 2 * 16 * 22 * 22 * 4


def _spec_of(x, offset, weight):
    return check_arguments(x, offset, weight, None, 1, 1, 1, None)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("k", [3, 7])
def test_manual_backward_memory_stays_within_budget(k, reduction):
    """Measured: the peak of tensor memory the backward allocates, gradients excluded, is
    within the budget, where the columns of the call would be many times larger."""
    size, c_in, c_out = 64, 64, 128
    gen = torch.Generator().manual_seed(0)
    leaves = [t.requires_grad_(True) for t in (
        torch.randn(1, c_in, size, size, generator=gen), torch.randn(1, 2 * k * k, size, size, generator=gen),
        torch.randn(c_out, c_in, k, k, generator=gen), torch.rand(1, k * k, size, size, generator=gen))]
    x, offset, weight, mask = leaves
    budget = 12 * 2**20
    assert budget < CPU_CHUNK_BYTES
    spec = check_arguments(x, offset, weight, None, 1, k // 2, 1, mask)
    out = deform_conv2d_portable(x, offset, weight, None, mask, spec, budget, reduction=reduction)
    grad_out = torch.randn(out.shape, generator=gen)
    with LiveTensorBytes() as tracker:
        out.backward(grad_out)
    gradients = sum(t.grad.untyped_storage().nbytes() for t in leaves)
    assert 0 < tracker.peak - gradients <= budget
    if k == 7:
        assert c_in * k * k * size * size * 4 > 4 * budget  # the columns of the call


def test_gradients_of_nan_and_infinite_offsets_are_zero_and_finite():
    case = make_case(batch=1)
    case["offset"][0, :, 2, 3] = float("nan")
    case["offset"][0, :, 4, 4] = float("inf")
    spec = _spec(case)
    grads = _outputs_and_grads(case, spec, "manual", torch.ones(1, 4, 9, 11, dtype=torch.float64))
    for name, g in grads.items():
        assert bool(torch.isfinite(g).all()), name
    assert bool((grads["offset"][0, :, 2, 3] == 0).all()) and bool((grads["offset"][0, :, 4, 4] == 0).all())
    assert bool((grads["mask"][0, :, 2, 3] == 0).all())


@pytest.mark.parametrize("k,stride,padding,dilation", GEOMETRIES)
def test_portable_float32_values_and_gradients_match_torchvision(k, stride, padding, dilation):
    case = make_case(k=k, stride=stride, padding=padding, dilation=dilation, c_in=6, c_out=5,
                     dtype=torch.float32, h=12, w=9)
    results = []
    for run in (lambda a: deform_conv2d(**a, backend="portable", memory_budget=20000), torchvision_reference):
        tensors = dict(zip(GRAD_NAMES, _grad_inputs(case)))
        args = {**case, **tensors}
        out = run(args)
        gen = torch.Generator().manual_seed(5)
        out.backward(torch.randn(out.shape, generator=gen))
        results.append([out.detach()] + [tensors[n].grad for n in GRAD_NAMES])
    for name, got, want in zip(("output",) + GRAD_NAMES, *results):
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 1e-5 * max(scale, 1.0), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_half_precision_matches_float32_on_rounded_inputs(dtype, k):
    case = make_case(k=k, padding=k // 2, dtype=torch.float32, c_in=16, c_out=8, h=24, w=30, offset_scale=6.0)
    # offsets of up to ~24 px: bfloat16 coordinates would be off by up to 0.125 px there
    case["offset"] = case["offset"] + 18.0
    low = {key: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for key, v in case.items()}
    rounded = {key: (v.float() if isinstance(v, torch.Tensor) else v) for key, v in low.items()}
    got = deform_conv2d(**low, backend="portable")
    want = deform_conv2d(**rounded, backend="portable")
    assert got.dtype == dtype
    scale = want.abs().max().item()
    eps = torch.finfo(dtype).eps
    # measured: <= 0.8 eps with float32 coordinates, >= 8 eps with coordinates in the input dtype
    assert (got.float() - want).abs().max().item() <= 2 * eps * scale


def test_chunking_gives_the_same_result_and_gradients():
    case = make_case(batch=3, c_in=4, c_out=3, h=10, w=8, dtype=torch.float64)
    spec = check_arguments(case["input"], case["offset"], case["weight"], case["bias"], 1, 1, 1, case["mask"])
    row_bytes = bytes_per_position(spec, torch.float64) * spec.out_w
    for budget in (row_bytes, 3 * row_bytes, 25 * row_bytes):
        chunks = list(plan_chunks(spec, torch.float64, budget))
        covered = torch.zeros(spec.batch, spec.out_h, dtype=torch.int64)
        for b0, b1, r0, r1 in chunks:
            covered[b0:b1, r0:r1] += 1
        assert bool((covered == 1).all()), "every output row exactly once"
    assert len(list(plan_chunks(spec, torch.float64, row_bytes))) == spec.batch * spec.out_h

    outs = []
    for budget in (1, 10**9):
        tensors = dict(zip(GRAD_NAMES, _grad_inputs(case)))
        out = deform_conv2d(**{**case, **tensors}, backend="portable", memory_budget=budget)
        out.sum().backward()
        outs.append([out.detach()] + [tensors[n].grad for n in GRAD_NAMES])
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_portable_memory_stays_within_budget(dtype, k):
    """Measured: the peak of tensor memory the call allocates, output excluded, is within the
    budget, where one im2col buffer would be many times larger."""
    size, c_in, c_out = 96, 64, 256
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, c_in, size, size, generator=gen).to(dtype)
    offset = torch.randn(1, 2 * k * k, size, size, generator=gen).to(dtype)
    mask = torch.rand(1, k * k, size, size, generator=gen).to(dtype)
    weight = torch.randn(c_out, c_in, k, k, generator=gen).to(dtype)
    budget = 16 * 2**20
    with torch.no_grad(), LiveTensorBytes() as tracker:
        out = deform_conv2d(x, offset, weight, None, padding=k // 2, mask=mask, backend="portable",
                            memory_budget=budget)
    temporaries = tracker.peak - out.nbytes
    assert 0 < temporaries <= budget
    if k == 7:
        im2col = c_in * k * k * size * size * x.element_size()
        assert im2col > 2 * budget


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,stride,padding,dilation", [(1, 1, 0, 1), (3, 1, 1, 1), (7, 1, 3, 1), (3, 2, 2, 2)])
def test_triton_matches_portable(dtype, k, stride, padding, dilation):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = make_case(k=k, stride=stride, padding=padding, dilation=dilation, dtype=torch.float32,
                     c_in=20, c_out=18, h=10, w=13)
    case = {key: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v) for key, v in case.items()}
    assert chosen_backend(case, "triton") == "triton"
    got = deform_conv2d(**case, backend="triton")
    want = deform_conv2d(**case, backend="portable")
    scale = want.float().abs().max().item()
    tol = 1e-5 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps
    assert (got.float() - want.float()).abs().max().item() <= tol * scale


@needs_triton
def test_triton_without_mask_bias_and_on_non_contiguous_input():
    case = make_case(dtype=torch.float32, c_in=16, c_out=16, with_mask=False)
    case["bias"] = None
    case["input"] = case["input"].transpose(2, 3).contiguous().transpose(2, 3)
    case["offset"] = torch.cat([case["offset"], case["offset"]], dim=3)[:, :, :, : case["input"].shape[3]]
    assert not case["offset"].is_contiguous()
    assert chosen_backend(case, "triton") == "triton"
    got = deform_conv2d(**case, backend="triton")
    torch.testing.assert_close(got, deform_conv2d(**case, backend="portable"), atol=1e-4, rtol=1e-4)


@needs_triton
def test_triton_backward_matches_portable():
    case = make_case(dtype=torch.float32, c_in=16, c_out=16)
    assert chosen_backend(case, "triton") == "triton"
    grads = []
    for backend in ("triton", "portable"):
        tensors = dict(zip(GRAD_NAMES, _grad_inputs(case)))
        deform_conv2d(**{**case, **tensors}, backend=backend).square().sum().backward()
        grads.append([tensors[n].grad for n in GRAD_NAMES])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


TRITON_BACKWARD_CASES = [
    # k, stride, padding, dilation, mask, (h, w)
    (1, 1, 0, 1, True, (9, 11)),
    (3, 1, 1, 1, True, (9, 11)),
    (3, 2, 2, 2, False, (9, 11)),
    (7, 1, 3, 1, True, (6, 7)),
]


def _triton_backward_args(dtype, k, stride, padding, dilation, with_mask, hw, device):
    case = make_case(k=k, stride=stride, padding=padding, dilation=dilation, with_mask=with_mask, dtype=torch.float32,
                     c_in=20, c_out=18, h=hw[0], w=hw[1], offset_scale=3.0, seed=k)
    if with_mask:
        case["mask"] = 2 * case["mask"]
    case = {key: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v) for key, v in case.items()}
    spec = _spec(case)
    grad_out = torch.randn(spec.batch, spec.out_channels, spec.out_h, spec.out_w,
                           generator=torch.Generator().manual_seed(5)).to(device=device, dtype=dtype)
    return grad_out, (case["input"], case["offset"], case["weight"], case["bias"], case["mask"]), spec


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k,stride,padding,dilation,with_mask,hw", TRITON_BACKWARD_CASES)
def test_triton_backward_kernel_matches_portable_backward(dtype, k, stride, padding, dilation, with_mask, hw):
    """Triton's own backward against the hand-written portable one (gradchecked above): equal in
    float32; in bfloat16 at least as close to the float64 gradients of the same numbers."""
    from birefnet_core.ops.portable import deform_conv2d_portable_backward
    from birefnet_core.ops.triton_kernel import deform_conv2d_triton_backward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    grad_out, tensors, spec = _triton_backward_args(dtype, k, stride, padding, dilation, with_mask, hw, device)
    needs = [t is not None for t in tensors]
    got = deform_conv2d_triton_backward(grad_out, needs, *tensors, spec)
    want = deform_conv2d_portable_backward(grad_out, needs, *tensors, spec)
    exact = deform_conv2d_portable_backward(grad_out.double(), needs, *(t.double() if t is not None else None
                                                                        for t in tensors), spec)
    for name, g, w, e in zip(("input", "offset", "weight", "bias", "mask"), got, want, exact):
        if w is None:
            assert g is None, name
            continue
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert bool(torch.isfinite(g).all()), name
        if dtype == torch.float32:
            assert _relative(g.double(), w.double()) <= 1e-5, name
        else:
            floor = 4 * torch.finfo(dtype).eps
            assert _relative(g.double(), e) <= max(2 * _relative(w.double(), e), floor), name


@needs_triton
def test_triton_backward_computes_only_the_gradients_asked_for():
    from birefnet_core.ops.triton_kernel import deform_conv2d_triton_backward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    grad_out, tensors, spec = _triton_backward_args(torch.float32, 3, 1, 1, 1, True, (7, 8), device)
    full = deform_conv2d_triton_backward(grad_out, [True] * 5, *tensors, spec)
    for wanted in range(5):
        needs = [i == wanted for i in range(5)]
        got = deform_conv2d_triton_backward(grad_out, needs, *tensors, spec)
        for i, (g, f) in enumerate(zip(got, full)):
            if i == wanted:
                torch.testing.assert_close(g, f, atol=1e-6, rtol=1e-6)
            else:
                assert g is None


@needs_triton
def test_triton_backend_uses_its_own_backward_unless_it_disagrees(monkeypatch):
    from birefnet_core.ops import deform_conv as dc
    from birefnet_core.ops.portable import deform_conv2d_portable_backward
    from birefnet_core.ops.triton_kernel import deform_conv2d_triton_backward

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    triton = dc.BACKENDS["triton"]
    assert triton.backward_implementation(device, torch.float32) is deform_conv2d_triton_backward

    def wrong(grad_out, needs, *args):
        grads = deform_conv2d_triton_backward(grad_out, needs, *args)
        return (grads[0] * 2,) + tuple(grads[1:])

    monkeypatch.setattr(triton, "_backwards", {})
    monkeypatch.setattr(triton, "load_backward", lambda: wrong)
    assert triton.backward_implementation(device, torch.float32) is deform_conv2d_portable_backward


def test_explicit_backend_falls_through_when_unavailable(monkeypatch):
    case = make_case(dtype=torch.bfloat16)
    # torchvision has no bfloat16 kernel on CPU: its self-check fails, portable answers
    assert chosen_backend(case, "torchvision") == "portable"
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton is then for CUDA tensors only
    assert chosen_backend(case, "triton") == "portable"
    out = deform_conv2d(**case, backend="torchvision")
    torch.testing.assert_close(out, deform_conv2d(**case, backend="portable"))


def test_environment_variable_and_automatic_choice(monkeypatch):
    case = make_case(dtype=torch.float32)
    monkeypatch.delenv("BIREFNET_DEFORM_BACKEND", raising=False)
    assert chosen_backend(case) == "portable"
    monkeypatch.setenv("BIREFNET_DEFORM_BACKEND", "torchvision")
    assert chosen_backend(case) == "torchvision"
    monkeypatch.setenv("BIREFNET_DEFORM_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="BIREFNET_DEFORM_BACKEND"):
        deform_conv2d(**case)
    with pytest.raises(ValueError, match="unknown deform_conv2d backend 'fast'"):
        deform_conv2d(**case, backend="fast")
    assert "portable" in available_backends("cpu", torch.bfloat16)
    assert "torchvision" not in available_backends("cpu", torch.bfloat16)


def test_automatic_choice_skips_backends_over_the_memory_budget(monkeypatch):
    """On CUDA torchvision would be chosen before portable, but not when its im2col buffer is
    over budget; the rule is the same on every device, so it is checked on the CPU order."""
    from birefnet_core.ops import deform_conv as dc

    case = make_case(dtype=torch.float32)
    monkeypatch.setitem(dc.DEFAULT_ORDER, "cpu", ("torchvision", "portable"))
    monkeypatch.delenv("BIREFNET_DEFORM_BACKEND", raising=False)
    assert chosen_backend(case, memory_budget=10**9) == "torchvision"
    assert chosen_backend(case, memory_budget=100) == "portable"
    assert chosen_backend(case, "torchvision", memory_budget=100) == "torchvision"


BAD_INPUTS = [
    ("offset", lambda c: c["offset"][:, :-1], r"offset must have shape \[2, 2\*offset_groups\*9, 9, 11\]"),
    ("offset", lambda c: c["offset"][:, :, :-1], r"offset must have shape \[2, 18, 9, 11\]"),
    ("offset", lambda c: c["offset"][0], r"offset must have shape"),
    ("mask", lambda c: c["mask"][:, :-1], r"mask must have shape \[2, 9, 9, 11\]"),
    ("mask", lambda c: c["mask"][:, :, :, :-2], r"mask must have shape \[2, 9, 9, 11\]"),
    ("bias", lambda c: c["bias"][:-1], r"bias must have shape \[4\]"),
    ("weight", lambda c: c["weight"][:, :3], r"weight has 3 input channels per group"),
    ("input", lambda c: c["input"][0], r"input must have shape \[B, C_in, H, W\]"),
    ("mask", lambda c: c["mask"].float(), r"mask has dtype torch.float32 but input has dtype torch.float64"),
    ("offset", lambda c: c["offset"].to("meta"), r"offset is on meta but input is on cpu"),
    ("offset", lambda c: c["offset"].long(), r"offset must be a floating-point tensor"),
    ("stride", lambda c: 0, r"stride must be >= 1"),
    ("padding", lambda c: (1, -1), r"padding must be >= 0"),
    ("dilation", lambda c: 1.5, r"dilation must be an int or a pair of ints"),
]


@pytest.mark.parametrize("name,change,message", BAD_INPUTS)
def test_bad_input_raises_a_clear_value_error(name, change, message):
    case = make_case()
    case[name] = change(case)
    with pytest.raises(ValueError, match=message):
        deform_conv2d(**case)


def test_input_too_small_for_the_kernel():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="input of size 2x2 is too small for a 7x7 kernel"):
        deform_conv2d(x, torch.zeros(1, 98, 1, 1), torch.randn(4, 4, 7, 7))


def test_non_contiguous_tensors_give_the_contiguous_result():
    case = make_case(batch=2, c_in=4, c_out=4, h=8, w=8)
    want = torchvision_reference(case)
    strided = dict(case)
    strided["input"] = case["input"].transpose(2, 3).contiguous().transpose(2, 3)
    strided["offset"] = torch.cat([case["offset"], case["offset"]], dim=1)[:, : case["offset"].shape[1]]
    strided["mask"] = case["mask"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    strided["weight"] = case["weight"].permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    assert not strided["input"].is_contiguous() and not strided["offset"].is_contiguous()
    for backend in ("portable", "torchvision"):
        torch.testing.assert_close(deform_conv2d(**strided, backend=backend), want, atol=1e-10, rtol=1e-10)


def test_empty_batch_gives_an_empty_result():
    case = make_case(batch=0)
    out = deform_conv2d(**case)
    assert out.shape == (0, 4, 9, 11)


def test_nan_offsets_sample_zero_and_never_crash():
    case = make_case(batch=1)
    case["offset"][0, :, 2, 3] = float("nan")
    case["offset"][0, :, 4, 4] = float("inf")
    out = deform_conv2d(**case, backend="portable")
    assert torch.isfinite(out).all()
    # a position whose every sample is outside the image gives exactly the bias
    torch.testing.assert_close(out[0, :, 2, 3], case["bias"])
    torch.testing.assert_close(out[0, :, 4, 4], case["bias"])


def test_deformable_conv2d_module():
    torch.manual_seed(0)
    layer = DeformableConv2d(6, 8, kernel_size=3, padding=1).double()
    assert sorted(layer.state_dict()) == [
        "modulator_conv.bias", "modulator_conv.weight", "offset_conv.bias", "offset_conv.weight",
        "regular_conv.weight",
    ]
    x = torch.randn(2, 6, 10, 7, dtype=torch.float64, requires_grad=True)
    # at initialisation offsets are 0 and the mask is 2*sigmoid(0) = 1: an ordinary convolution
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.regular_conv.weight, padding=1))
    with torch.no_grad():
        layer.offset_conv.weight.normal_(0, 0.1)
        layer.modulator_conv.weight.normal_(0, 0.1)
    out = layer(x)
    out.square().mean().backward()
    assert layer.offset_conv.weight.grad.abs().sum() > 0
    assert layer.modulator_conv.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_deformable_conv2d_under_cpu_autocast():
    torch.manual_seed(0)
    layer = DeformableConv2d(4, 4, kernel_size=7, padding=3)
    with torch.no_grad():
        layer.offset_conv.weight.normal_(0, 0.1)
    x = torch.randn(1, 4, 12, 12)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()
