"""What the operators' dispatchers share: backends loaded lazily and self-checked once per device
and dtype, the device's order of backends with the preferred one first, the memory budget from
the environment, and gradients for forward-only kernels: by a hand-written backward of the saved
inputs, or by recomputing the portable kernel under autograd.

Each operator (:mod:`.deform_conv`, :mod:`.msda`) keeps its own backends, order and checks; this
module holds the mechanism once.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

class CheckedBackend:
    """Mixin for a backend dataclass with ``name``, ``load`` (returns the implementation or None
    when it is missing) and ``self_checked`` (False only for the reference kernel): the
    implementation is imported once, and :meth:`usable` runs the subclass's ``_self_check`` once
    per (device, dtype)."""

    op_name = "operator"  # for messages, logged under the subclass's module

    @property
    def _logger(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)

    def __post_init__(self) -> None:
        self._impl: Optional[Callable] = None
        self._loaded = False
        self._verified: Dict[Tuple[str, torch.dtype], bool] = {}

    def implementation(self) -> Optional[Callable]:
        if not self._loaded:
            try:
                self._impl = self.load()
            except Exception as exc:  # a broken install must not break the model
                self._logger.warning("%s backend %r cannot be loaded: %s", self.op_name, self.name, exc)
                self._impl = None
            self._loaded = True
        return self._impl

    def usable(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Loaded, and passed its self-check on this device and dtype (checked once)."""
        key = (str(device), dtype)
        if key not in self._verified:
            loaded = self.implementation() is not None
            self._verified[key] = loaded and (not self.self_checked or self._self_check(device, dtype))
        return self._verified[key]

    def self_check_results(self) -> Dict[Tuple[str, torch.dtype], bool]:
        """The self-checks run so far: {(device, dtype): passed}."""
        return dict(self._verified)

    def _self_check(self, device: torch.device, dtype: torch.dtype) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _report_check(self, ok: bool, device: torch.device, dtype: torch.dtype) -> bool:
        if not ok:
            self._logger.warning("%s backend %r disagrees with the portable kernel on %s %s; not using it",
                           self.op_name, self.name, device, dtype)
        return ok

    def _report_unavailable(self, exc: BaseException, device: torch.device, dtype: torch.dtype) -> bool:
        self._logger.info("%s backend %r unavailable on %s %s: %s", self.op_name, self.name, device, dtype, exc)
        return False


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class RecomputeBackward(torch.autograd.Function):
    """Forward through a forward-only kernel; backward by recomputing ``reference`` (the
    portable kernel, differentiable) on the saved inputs. ``tensors`` may hold None."""

    @staticmethod
    def forward(ctx, forward_fn, reference, extra, *tensors):
        ctx.reference, ctx.extra = reference, extra
        ctx.save_for_backward(*tensors)
        return forward_fn(*tensors, *extra)

    @staticmethod
    def backward(ctx, grad_out):
        wanted = ctx.needs_input_grad[3:]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(w) if t is not None else None
                      for t, w in zip(ctx.saved_tensors, wanted)]
            out = ctx.reference(*leaves, *ctx.extra)
            inputs = [t for t in leaves if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(out, inputs, grad_out) if inputs else ())
        return (None, None, None) + tuple(next(grads) if t is not None and t.requires_grad else None
                                          for t in leaves)


class KernelBackward(torch.autograd.Function):
    """Forward through a forward-only kernel; backward through a hand-written function of the
    saved inputs, ``backward_fn(grad_out, needs_input_grad, *tensors)``, which returns one
    gradient (or None) per tensor. Unlike :class:`RecomputeBackward` nothing is run forward again
    under autograd. ``tensors`` may hold None."""

    @staticmethod
    def forward(ctx, forward_fn, backward_fn, extra, *tensors):
        ctx.backward_fn = backward_fn
        ctx.save_for_backward(*tensors)
        return forward_fn(*tensors, *extra)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grads = ctx.backward_fn(grad_out, ctx.needs_input_grad[3:], *ctx.saved_tensors)
        return (None, None, None) + tuple(grads)


def memory_budget_from_env(variable: str, default: int) -> int:
    """``variable`` (MiB) as bytes, else ``default``; a value that is not a positive number is an error."""
    value = os.environ.get(variable)
    if not value:
        return default
    try:
        megabytes = float(value)
    except ValueError:
        raise ValueError(f"{variable} must be a number of MiB, got {value!r}") from None
    if not megabytes > 0:
        raise ValueError(f"{variable} must be positive, got {value!r}")
    return int(megabytes * 2**20)


def check_backend_name(name: str, source: str, op_name: str, names: Sequence[str]) -> str:
    name = name.strip().lower()
    if name not in names:
        raise ValueError(f"unknown {op_name} backend {name!r} ({source}); choose one of {', '.join(names)}")
    return name


def preferred_backend(backend: Optional[str], variable: str, op_name: str, names: Sequence[str]) -> Optional[str]:
    """The backend named by the argument, else by the environment ``variable``, else None."""
    if backend is not None:
        return check_backend_name(backend, "backend argument", op_name, names)
    if os.environ.get(variable, "").strip():
        return check_backend_name(os.environ[variable], f"environment variable {variable}", op_name, names)
    return None


def candidate_order(device: torch.device, preferred: Optional[str], orders: Mapping[str, Tuple[str, ...]],
                    other_devices: Tuple[str, ...]) -> Sequence[str]:
    """Backends to try for ``device`` (its order, else ``other_devices``), ``preferred`` first,
    always ending with "portable"."""
    order = list(orders.get(device.type, other_devices))
    if preferred is not None:
        order = [preferred] + [n for n in order if n != preferred]
    if "portable" not in order:
        order.append("portable")
    return order
