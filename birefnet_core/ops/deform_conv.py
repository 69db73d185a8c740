"""Modulated deformable convolution (DCNv2): one function, three backends, one dispatcher.

``deform_conv2d`` has the argument meaning of ``torchvision.ops.deform_conv2d``. Backends:

* ``"triton"``: fused kernels, no im2col buffer (CUDA; CPU under ``TRITON_INTERPRET=1``): the
  forward, and a backward of its own (checked once per device and dtype against the portable
  kernel's hand-written backward, which is used instead where it disagrees).
* ``"torchvision"``: ``torchvision.ops.deform_conv2d`` where torchvision has a kernel for the
  device and dtype (none for bfloat16 on CPU, none on MPS before torchvision 0.23, none on CUDA
  when a CPU-only torchvision sits beside a CUDA torch).
* ``"portable"``: plain PyTorch, every device and float dtype, memory bounded by chunking.

With ``backend=None`` the first backend of the device's order that supports the call is used;
``BIREFNET_DEFORM_BACKEND`` (or the ``backend`` argument) puts one backend first. A backend that
is missing, cannot handle the device or dtype, or fails its one-time self-check falls through
to the next, ending at ``"portable"``, which always works. Automatic choice also skips a backend
whose temporary memory would exceed the budget (``memory_budget`` argument, else
``BIREFNET_DEFORM_MEMORY_MB``, else 256 MiB); a backend named explicitly is used regardless.

Gradients: ``BIREFNET_DEFORM_BACKWARD=manual`` (the default) uses the hand-written backward of
:mod:`.portable`, computed per chunk from the saved inputs; ``autograd`` the previous way,
autograd through the portable kernel's gather formulation with activation checkpointing (the
reference of the tests, the baseline of ``python -m birefnet_core bench train``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import dispatch
from .dispatch import CheckedBackend, KernelBackward, RecomputeBackward, needs_grad
from .portable import (DEFAULT_MEMORY_BUDGET, backward_mode, deform_conv2d_portable,
                       deform_conv2d_portable_backward)
from .spec import DeformSpec, IntPair, check_arguments

BACKEND_NAMES = ("triton", "torchvision", "portable")
BACKEND_ENV = "BIREFNET_DEFORM_BACKEND"
MEMORY_ENV = "BIREFNET_DEFORM_MEMORY_MB"

# Fastest first, per device type. On this project's CPU measurements the portable kernel beats
# torchvision's im2col in every decoder shape (see `python -m birefnet_core bench deform`).
DEFAULT_ORDER: Dict[str, Tuple[str, ...]] = {
    "cuda": ("triton", "torchvision", "portable"),
    "cpu": ("portable", "torchvision"),
}
OTHER_DEVICES_ORDER = ("torchvision", "portable")


def _item_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class Backend(CheckedBackend):
    """One way of computing the convolution.

    ``supports`` is the static capability (device type, dtype, groups); ``workspace`` estimates
    the temporary bytes of one call; ``load`` imports the implementation (``None`` when it is
    missing); the self-check runs once per (device, dtype) on a tiny problem and must agree with
    the portable kernel, or the backend is skipped for that device and dtype (see
    :class:`.dispatch.CheckedBackend`).
    """

    op_name = "deform_conv2d"
    name: str
    supports: Callable[[torch.device, torch.dtype, DeformSpec], bool]
    workspace: Callable[[DeformSpec, torch.dtype], int]
    load: Callable[[], Optional[Callable]]
    differentiable: bool
    self_checked: bool = True  # False only for the reference itself
    # a forward-only kernel's own backward (None: the portable kernel's hand-written one)
    load_backward: Optional[Callable[[], Optional[Callable]]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._backwards: Dict[Tuple[str, torch.dtype], Callable] = {}

    def run(self, input, offset, weight, bias, mask, spec: DeformSpec, budget: int) -> torch.Tensor:
        impl = self.implementation()
        if self.differentiable or not needs_grad(input, offset, weight, bias, mask):
            return impl(input, offset, weight, bias, mask, spec, budget)
        if backward_mode() == "autograd":
            return RecomputeBackward.apply(impl, deform_conv2d_portable, (spec, budget), input, offset, weight, bias,
                                           mask)
        kernel = self.backward_implementation(input.device, input.dtype)

        def backward(grad_out, needs, *tensors):
            return kernel(grad_out, needs, *tensors, spec, budget)

        return KernelBackward.apply(impl, backward, (spec, budget), input, offset, weight, bias, mask)

    def backward_implementation(self, device: torch.device, dtype: torch.dtype) -> Callable:
        """The backward of a forward-only kernel: its own where it loads and agrees with the
        portable kernel's hand-written backward on (device, dtype) (checked once), else that one.
        Called as ``fn(grad_out, needs, input, offset, weight, bias, mask, spec, budget)``."""
        key = (str(device), dtype)
        if key not in self._backwards:
            kernel = None
            if self.load_backward is not None:
                try:
                    kernel = self.load_backward()
                except Exception as exc:  # a broken install must not break training
                    self._logger.warning("%s backend %r: its backward cannot be loaded: %s", self.op_name, self.name,
                                         exc)
                if kernel is not None and not self._backward_check(kernel, device, dtype):
                    kernel = None
            self._backwards[key] = kernel or deform_conv2d_portable_backward
        return self._backwards[key]

    def _check_arguments(self, device: torch.device, dtype: torch.dtype):
        gen = torch.Generator().manual_seed(0)
        shapes = dict(input=(2, 4, 5, 6), offset=(2, 18, 5, 6), weight=(3, 4, 3, 3), mask=(2, 9, 5, 6))
        args = {k: torch.rand(s, generator=gen) for k, s in shapes.items()}
        args["offset"] = (args["offset"] - 0.5) * 4
        args["bias"] = torch.rand(3, generator=gen)
        args = {k: v.to(device=device, dtype=dtype) for k, v in args.items()}
        spec = check_arguments(args["input"], args["offset"], args["weight"], args["bias"], 1, 1, 1, args["mask"])
        return args, spec

    def _backward_check(self, kernel: Callable, device: torch.device, dtype: torch.dtype) -> bool:
        args, spec = self._check_arguments(device, dtype)
        tensors = (args["input"], args["offset"], args["weight"], args["bias"], args["mask"])
        grad_out = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
        try:
            with torch.no_grad():
                got = kernel(grad_out, [True] * 5, *tensors, spec, DEFAULT_MEMORY_BUDGET)
                want = deform_conv2d_portable_backward(grad_out, [True] * 5, *tensors, spec)
            ok = all(torch.allclose(g.float(), w.float(), atol=0.05, rtol=0.05) for g, w in zip(got, want))
        except Exception as exc:  # e.g. no kernel for this device or dtype
            self._logger.info("%s backend %r: its backward is unavailable on %s %s: %s", self.op_name, self.name,
                              device, dtype, exc)
            return False
        if not ok:
            self._logger.warning("%s backend %r: its backward disagrees with the portable one on %s %s; using the "
                                 "portable backward", self.op_name, self.name, device, dtype)
        return ok

    def _self_check(self, device: torch.device, dtype: torch.dtype) -> bool:
        args, spec = self._check_arguments(device, dtype)
        try:
            with torch.no_grad():
                got = self.implementation()(args["input"], args["offset"], args["weight"], args["bias"], args["mask"], spec,
                                            DEFAULT_MEMORY_BUDGET)
                want = deform_conv2d_portable(args["input"], args["offset"], args["weight"], args["bias"], args["mask"], spec)
            return self._report_check(bool(torch.allclose(got.float(), want.float(), atol=0.05, rtol=0.05)), device, dtype)
        except Exception as exc:  # e.g. no kernel for this device or dtype
            return self._report_unavailable(exc, device, dtype)


def _load_portable():
    return deform_conv2d_portable


def _load_torchvision():
    if importlib.util.find_spec("torchvision") is None:
        return None
    import torchvision.ops

    def run(input, offset, weight, bias, mask, spec, memory_budget):
        return torchvision.ops.deform_conv2d(
            input.contiguous(), offset.contiguous(), weight.contiguous(),
            None if bias is None else bias.contiguous(),
            stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
            mask=None if mask is None else mask.contiguous(),
        )

    return run


def _load_triton():
    if importlib.util.find_spec("triton") is None:
        return None
    from .triton_kernel import deform_conv2d_triton

    return deform_conv2d_triton


def _load_triton_backward():
    if importlib.util.find_spec("triton") is None:
        return None
    from .triton_kernel import deform_conv2d_triton_backward

    return deform_conv2d_triton_backward


def _triton_supports(device: torch.device, dtype: torch.dtype, spec: DeformSpec) -> bool:
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    on_device = device.type == "cuda" or (interpreted and device.type == "cpu")
    return (
        on_device
        and dtype in (torch.float32, torch.float16, torch.bfloat16)
        and spec.groups == 1
        and spec.offset_groups == 1
    )


def _torchvision_workspace(spec: DeformSpec, dtype: torch.dtype) -> int:
    # torchvision's im2col: C_in * taps rows x (up to 32 images) * H_out * W_out columns
    images = max(d for d in range(1, min(spec.batch, 32) + 1) if spec.batch % d == 0) if spec.batch else 1
    return spec.in_channels * spec.taps * images * spec.out_h * spec.out_w * _item_size(dtype)


def _triton_workspace(spec: DeformSpec, dtype: torch.dtype) -> int:
    # the channels-last copy of the input
    return spec.batch * spec.in_channels * spec.height * spec.width * _item_size(dtype)


BACKENDS: Dict[str, Backend] = {
    "triton": Backend("triton", _triton_supports, _triton_workspace, _load_triton, differentiable=False,
                      load_backward=_load_triton_backward),
    "torchvision": Backend(
        "torchvision",
        lambda device, dtype, spec: True,  # the self-check finds the missing kernels
        _torchvision_workspace,
        _load_torchvision,
        differentiable=True,
    ),
    "portable": Backend("portable", lambda device, dtype, spec: True, lambda spec, dtype: 0, _load_portable,
                        differentiable=True, self_checked=False),
}


def memory_budget_from_env() -> int:
    return dispatch.memory_budget_from_env(MEMORY_ENV, DEFAULT_MEMORY_BUDGET)


def candidate_order(device: torch.device, preferred: Optional[str] = None) -> Sequence[str]:
    """Backends to try for ``device``, the preferred one (argument or environment) first."""
    return dispatch.candidate_order(device, preferred, DEFAULT_ORDER, OTHER_DEVICES_ORDER)


def select_backend(
    input: torch.Tensor, spec: DeformSpec, backend: Optional[str] = None, memory_budget: Optional[int] = None
) -> Backend:
    """The backend ``deform_conv2d`` would use for this call."""
    preferred = dispatch.preferred_backend(backend, BACKEND_ENV, "deform_conv2d", BACKEND_NAMES)
    budget = memory_budget_from_env() if memory_budget is None else memory_budget
    for name in candidate_order(input.device, preferred):
        candidate = BACKENDS[name]
        if not candidate.supports(input.device, input.dtype, spec):
            continue
        if name != preferred and candidate.workspace(spec, input.dtype) > budget:
            continue
        if candidate.usable(input.device, input.dtype):
            return candidate
    return BACKENDS["portable"]


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
    memory_budget: Optional[int] = None,
) -> torch.Tensor:
    """Modulated deformable convolution with torchvision's semantics.

    Args:
        input: [B, C_in, H, W].
        offset: [B, 2 * offset_groups * kH * kW, H_out, W_out], (dy, dx) in pixels per kernel
            tap, taps in row-major order.
        weight: [C_out, C_in / groups, kH, kW].
        bias: [C_out] or None.
        stride, padding, dilation: int or (h, w).
        mask: [B, offset_groups * kH * kW, H_out, W_out] modulation per tap, or None (all ones).
        backend: ``"triton"``, ``"torchvision"``, ``"portable"`` or None (automatic).
        memory_budget: bytes of temporaries allowed (portable chunking, automatic choice).

    Returns:
        [B, C_out, H_out, W_out] in the input's dtype. Sampling is bilinear; points outside
        the image contribute zero. Raises ``ValueError`` for inconsistent arguments.
    """
    spec = check_arguments(input, offset, weight, bias, stride, padding, dilation, mask)
    budget = memory_budget_from_env() if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if input.numel() == 0 or weight.numel() == 0:
        out = input.new_zeros(spec.batch, spec.out_channels, spec.out_h, spec.out_w)
        return out + bias.view(-1, 1, 1) if bias is not None else out
    chosen = select_backend(input, spec, backend, budget)
    return chosen.run(input, offset, weight, bias, mask, spec, budget)


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tuple[str, ...]:
    """Backends that load and pass their self-check on ``device`` and ``dtype``."""
    device = torch.device(device)
    probe_spec = DeformSpec(1, 4, 3, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1, 1, 5, 6)
    return tuple(
        name for name in BACKEND_NAMES
        if BACKENDS[name].supports(device, dtype, probe_spec) and BACKENDS[name].usable(device, dtype)
    )


class DeformableConv2d(nn.Module):
    """Modulated deformable convolution that predicts its own offsets and mask.

    Parameter layout of BiRefNet's ``DeformableConv2d`` (keys ``offset_conv``,
    ``modulator_conv``, ``regular_conv``), so released checkpoints load unchanged: offsets
    come from a k x k conv (2 * k * k channels), the mask is ``2 * sigmoid`` of another
    (k * k channels, 1.0 at initialisation), and ``regular_conv`` holds the kernel. Offset and
    modulator convs start at zero, so an untrained layer is an ordinary convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        bias: bool = False,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        taps = kernel_size * kernel_size
        self.stride = stride
        self.padding = padding
        self.backend = backend
        self.offset_conv = nn.Conv2d(in_channels, 2 * taps, kernel_size, stride, padding, bias=True)
        self.modulator_conv = nn.Conv2d(in_channels, taps, kernel_size, stride, padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        for conv in (self.offset_conv, self.modulator_conv):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # offsets and modulation from one convolution with both weights side by side: the same
        # numbers as two convs, with one pass over x forward and backward
        taps = self.modulator_conv.out_channels
        both = F.conv2d(x, torch.cat([self.offset_conv.weight, self.modulator_conv.weight]),
                        torch.cat([self.offset_conv.bias, self.modulator_conv.bias]), self.stride, self.padding)
        offset, modulation = both.split([2 * taps, taps], dim=1)
        mask = 2.0 * torch.sigmoid(modulation)
        # Under autocast the convs above may return a lower precision than x: compute the
        # deformable convolution in one dtype, the one autocast chose when it is active.
        dtype = offset.dtype
        weight = self.regular_conv.weight
        bias = self.regular_conv.bias
        return deform_conv2d(
            x.to(dtype), offset, weight.to(dtype), None if bias is None else bias.to(dtype),
            stride=self.stride, padding=self.padding, mask=mask.to(dtype), backend=self.backend,
        )
