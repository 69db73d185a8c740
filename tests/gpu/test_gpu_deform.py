"""Every deformable-convolution backend the device has, against the portable one, in every dtype:
outputs and the gradients of input, offset, mask, weight and bias, on decoder-like shapes
(64 -> 256 channels, k = 1, 3, 7)."""

import importlib.util

import pytest
import torch

from birefnet_core.ops import available_backends, check_arguments, deform_conv2d
from birefnet_core.ops.deform_conv import BACKENDS

from test_deform_conv import GRAD_NAMES, chosen_backend, make_case

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def outputs_and_gradients(case, backend, grad_out):
    tensors = {name: case[name].detach().requires_grad_(True) for name in GRAD_NAMES}
    out = deform_conv2d(**{**case, **tensors}, backend=backend)
    out.backward(grad_out)
    return {"output": out.detach().float(), **{name: tensors[name].grad.float() for name in GRAD_NAMES}}


def tiny_triton_case(device, dtype):
    """The arguments of the Triton kernel for a small case (input, offset, weight, bias, mask, spec)."""
    case = make_case(c_in=16, c_out=16, dtype=torch.float32)
    case = {key: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v) for key, v in case.items()}
    spec = check_arguments(case["input"], case["offset"], case["weight"], case["bias"], case["stride"],
                           case["padding"], case["dilation"], case["mask"])
    return case["input"], case["offset"], case["weight"], case["bias"], case["mask"], spec


def relative_error(got, want):
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["triton", "torchvision"])
def test_backend_matches_portable_forward_and_backward(backend, dtype, k, device, dry_run, no_tf32,
                                                       record_property):
    if backend not in available_backends(device, dtype):
        if backend == "triton" and device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            # Triton is installed, so its kernel must work on CUDA: run it here to show why not
            BACKENDS["triton"].implementation()(*tiny_triton_case(device, dtype))
            pytest.fail(f"triton failed its self-check against the portable kernel on {device} {dtype}")
        pytest.skip(f"{backend} is not available on {device} {dtype} (available: "
                    f"{', '.join(available_backends(device, dtype))})")
    if dry_run:  # the Triton interpreter on CPU: small shapes
        shape = dict(batch=1, c_in=8, c_out=16, h=10, w=12)
    else:  # a decoder stage: 64 -> 256 channels on a 64^2 map
        shape = dict(batch=2, c_in=64, c_out=256, h=64, w=64)
    case = make_case(k=k, padding=k // 2, dtype=torch.float32, offset_scale=4.0, seed=k, **shape)
    case["mask"] = 2 * case["mask"]  # the decoder's modulation is 2 * sigmoid, in 0..2
    low = {key: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v) for key, v in case.items()}
    assert chosen_backend(low, backend) == backend
    out_shape = (shape["batch"], shape["c_out"], shape["h"], shape["w"])
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(5)).to(device=device, dtype=dtype)

    got = outputs_and_gradients(low, backend, grad_out)
    portable = outputs_and_gradients(low, "portable", grad_out)
    # the portable kernel in float32 on the same (rounded) values: how far rounding alone takes it
    rounded = {key: (v.float() if isinstance(v, torch.Tensor) else v) for key, v in low.items()}
    exact = outputs_and_gradients(rounded, "portable", grad_out.float())

    eps = torch.finfo(dtype).eps
    floor = 1e-5 if dtype == torch.float32 else 16 * eps
    if backend == "torchvision" and dtype != torch.float32:
        # torchvision computes the sampling coordinates in the input dtype (the portable kernel and
        # Triton in float32): its points are off by up to eps * |coordinate| pixels. Measured on CPU,
        # float16: offset gradients 0.043 relative L2 where the coordinates reach 28 px.
        largest = max(shape["h"], shape["w"]) + case["offset"].abs().max().item()
        floor = max(floor, 4 * eps * largest)
    for name in ("output",) + GRAD_NAMES:
        assert bool(torch.isfinite(got[name]).all()), name
        difference = relative_error(got[name], portable[name])
        rounding = relative_error(portable[name], exact[name])
        print(f"\n{backend} vs portable, {device} {dtype}, k={k}, {name}: relative L2 {difference:.1e}, "
              f"portable's own rounding {rounding:.1e}, bound {max(4 * rounding, floor):.1e}", end="")
        record_property(f"relative_l2_{name}", difference)
        assert difference <= max(4 * rounding, floor), (name, difference, rounding)
