"""Multi-scale deformable attention (Deformable DETR; FOCUS's adapter and pixel decoder): one
function, two backends, one dispatcher, and the attention module.

``ms_deform_attn`` computes what the official ``ms_deform_attn_core_pytorch`` and CUDA op
compute: for every (query, head), the sum over levels and points of attention weight x the
bilinear sample of that head's values at the point, with ``grid_sample(align_corners=False,
padding_mode="zeros")`` semantics (pixel coordinate ``loc * (W, H) - 0.5``, corners outside the
map contribute zero). Backends:

* ``"triton"``: fused forward kernel, never materialises the sampled values (CUDA; CPU under
  ``TRITON_INTERPRET=1``). Gradients, when asked for, come from recomputing the portable kernel.
* ``"portable"``: plain PyTorch, every device and float dtype, differentiable, temporary memory
  bounded by chunking the queries (``BIREFNET_MSDA_MEMORY_MB``, else 256 MiB).

With ``backend=None`` the first backend of the device's order that supports the call is used;
``BIREFNET_MSDA_BACKEND`` (or the ``backend`` argument) puts one backend first. A backend that is
missing, cannot handle the device or dtype, or fails its one-time self-check on that device and
dtype falls through to ``"portable"``, which always works.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from . import dispatch
from .dispatch import CheckedBackend, RecomputeBackward, needs_grad
from .msda_portable import DEFAULT_MEMORY_BUDGET, ms_deform_attn_portable
from .msda_spec import LevelShapes, MSDASpec, Shapes, check_msda_arguments, level_shapes

BACKEND_NAMES = ("triton", "portable")
BACKEND_ENV = "BIREFNET_MSDA_BACKEND"
MEMORY_ENV = "BIREFNET_MSDA_MEMORY_MB"

DEFAULT_ORDER: Dict[str, Tuple[str, ...]] = {
    "cuda": ("triton", "portable"),
    "cpu": ("portable",),
}
OTHER_DEVICES_ORDER = ("portable",)


@dataclass
class Backend(CheckedBackend):
    """One way of computing the attention.

    ``supports`` is the static capability (device type, dtype); ``load`` imports the
    implementation (``None`` when it is missing); the self-check runs once per (device, dtype)
    on a tiny problem and must agree with the portable kernel, or the backend is skipped for
    that device and dtype (see :class:`.dispatch.CheckedBackend`).
    """

    op_name = "ms_deform_attn"
    name: str
    supports: Callable[[torch.device, torch.dtype], bool]
    load: Callable[[], Optional[Callable]]
    differentiable: bool
    self_checked: bool = True  # False only for the reference itself

    def run(self, value, sampling_locations, attention_weights, spec: MSDASpec, budget: int) -> torch.Tensor:
        impl = self.implementation()
        if self.differentiable or not needs_grad(value, sampling_locations, attention_weights):
            return impl(value, sampling_locations, attention_weights, spec, budget)
        return RecomputeBackward.apply(impl, ms_deform_attn_portable, (spec, budget), value, sampling_locations,
                                       attention_weights)

    def _self_check(self, device: torch.device, dtype: torch.dtype) -> bool:
        value, shapes, loc, attn = self_check_problem(device, dtype)
        spec = check_msda_arguments(value, shapes, loc, attn)
        try:
            with torch.no_grad():
                got = self.implementation()(value, loc, attn, spec, DEFAULT_MEMORY_BUDGET)
                want = ms_deform_attn_portable(value, loc, attn, spec)
            scale = want.float().abs().max().item()
            ok = got.shape == want.shape and (got.float() - want.float()).abs().max().item() <= 0.02 * scale
            return self._report_check(bool(ok), device, dtype)
        except Exception as exc:  # e.g. no kernel for this device or dtype
            return self._report_unavailable(exc, device, dtype)


def self_check_problem(device: torch.device, dtype: torch.dtype):
    """The self-check's arguments: 2 levels (3x5, 2x2), 2 heads, 3 points, head dim 8, 7 queries,
    points inside, on and outside the maps' borders."""
    gen = torch.Generator().manual_seed(0)
    shapes = ((3, 5), (2, 2))
    value = torch.randn(1, 19, 2, 8, generator=gen)
    loc = torch.rand(1, 7, 2, 2, 3, 2, generator=gen) * 1.4 - 0.2
    attn = torch.rand(1, 7, 2, 2, 3, generator=gen)
    return value.to(device, dtype), shapes, loc.to(device, dtype), attn.to(device, dtype)


def _load_portable():
    return ms_deform_attn_portable


def _load_triton():
    if importlib.util.find_spec("triton") is None:
        return None
    from .msda_triton import ms_deform_attn_triton

    return ms_deform_attn_triton


def _triton_supports(device: torch.device, dtype: torch.dtype) -> bool:
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    on_device = device.type == "cuda" or (interpreted and device.type == "cpu")
    return on_device and dtype in (torch.float32, torch.float16, torch.bfloat16)


BACKENDS: Dict[str, Backend] = {
    "triton": Backend("triton", _triton_supports, _load_triton, differentiable=False),
    "portable": Backend("portable", lambda device, dtype: True, _load_portable, differentiable=True,
                        self_checked=False),
}


def memory_budget_from_env() -> int:
    return dispatch.memory_budget_from_env(MEMORY_ENV, DEFAULT_MEMORY_BUDGET)


def preferred_backend(backend: Optional[str] = None) -> Optional[str]:
    """The backend named by the argument, else by ``BIREFNET_MSDA_BACKEND``, else None."""
    return dispatch.preferred_backend(backend, BACKEND_ENV, "ms_deform_attn", BACKEND_NAMES)


def candidate_order(device: torch.device, preferred: Optional[str] = None) -> Sequence[str]:
    """Backends to try for ``device``, the preferred one (argument or environment) first."""
    return dispatch.candidate_order(device, preferred, DEFAULT_ORDER, OTHER_DEVICES_ORDER)


def select_backend(device: torch.device | str, dtype: torch.dtype, backend: Optional[str] = None) -> Backend:
    """The backend ``ms_deform_attn`` uses for values on ``device`` in ``dtype``."""
    device = torch.device(device)
    for name in candidate_order(device, preferred_backend(backend)):
        candidate = BACKENDS[name]
        if candidate.supports(device, dtype) and candidate.usable(device, dtype):
            return candidate
    return BACKENDS["portable"]


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tuple[str, ...]:
    """Backends that load and pass their self-check on ``device`` and ``dtype``."""
    device = torch.device(device)
    return tuple(
        name for name in BACKEND_NAMES if BACKENDS[name].supports(device, dtype) and BACKENDS[name].usable(device, dtype)
    )


def backend_statuses(device: torch.device | str, dtype: torch.dtype) -> Dict[str, str]:
    """For ``doctor``: each backend the dispatcher would consider on ``device`` and ``dtype``, in
    its order, with its status: "ok" (passed its self-check), "self-check failed",
    "not installed", "not for this device", or "reference" (the portable kernel)."""
    device = torch.device(device)
    statuses = {}
    for name in candidate_order(device, preferred_backend()):
        backend = BACKENDS[name]
        if not backend.self_checked:
            statuses[name] = "reference"
        elif backend.implementation() is None:
            statuses[name] = "not installed"
        elif not backend.supports(device, dtype):
            statuses[name] = "not for this device"
        else:
            statuses[name] = "ok" if backend.usable(device, dtype) else "self-check failed"
    return statuses


def ms_deform_attn(value: torch.Tensor, spatial_shapes: Shapes, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Multi-scale deformable attention (the official ``ms_deform_attn_core_pytorch``).

    Args:
        value: [N, S, M, Dh]: the values of every level, concatenated in the order of
            ``spatial_shapes``, each level row-major (y, then x); M heads of Dh channels.
        spatial_shapes: L x (H_l, W_l), python ints (no device sync) or an integer tensor [L, 2].
        sampling_locations: [N, Lq, M, L, P, 2], (x, y) in 0..1 of each level (0 = the left/top
            edge, 1 = the right/bottom edge); points outside sample zero.
        attention_weights: [N, Lq, M, L, P], used as given (the caller normalises them).
        backend: ``"triton"``, ``"portable"`` or None (automatic; see the module docstring).

    Returns:
        [N, Lq, M * Dh] in value's dtype, channel ``m * Dh + d``. Locations and weights may have
        another floating dtype than ``value`` (e.g. float32 locations with bfloat16 values under
        autocast); both kernels compute coordinates, weights and sums in float32 (float64 for
        float64 values). Raises ``ValueError`` for inconsistent arguments.
    """
    spec = check_msda_arguments(value, spatial_shapes, sampling_locations, attention_weights)
    budget = memory_budget_from_env()
    if spec.batch * spec.queries * spec.heads * spec.head_dim * spec.points == 0:
        return value.new_zeros(spec.batch, spec.queries, spec.heads * spec.head_dim)
    chosen = select_backend(value.device, value.dtype, backend)
    return chosen.run(value, sampling_locations, attention_weights, spec, budget)


@lru_cache(maxsize=64)
def _normaliser(shapes: LevelShapes, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[L, 1, 2] (W_l, H_l): turns offsets in pixels of level l into fractions of that level."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor([[w, h] for h, w in shapes], dtype=dtype).view(len(shapes), 1, 2).to(device)


class MultiScaleDeformableAttention(nn.Module):
    """The attention module: offsets and weights from the query, values from ``input_flatten``.

    Keys (official names): ``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``. ``value_ratio`` < 1 is the ViT-Adapter variant (value width dim * ratio).
    The initialisation is Deformable DETR's (offsets fanning out from the reference point, one
    direction per head, the p-th point p + 1 pixels away; uniform attention; Xavier projections).
    """

    def __init__(self, dim: int, levels: int, heads: int, points: int, value_ratio: float = 1.0) -> None:
        super().__init__()
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.value_dim = int(dim * value_ratio)
        if min(dim, levels, heads, points) < 1 or self.value_dim < 1 or self.value_dim % heads:
            raise ValueError(
                f"MultiScaleDeformableAttention needs positive sizes and a value width divisible by the heads; "
                f"got dim {dim}, value_ratio {value_ratio} (value width {self.value_dim}), levels {levels}, "
                f"heads {heads}, points {points}"
            )
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, self.value_dim)
        self.output_proj = nn.Linear(self.value_dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.heads, dtype=torch.float32) * (2.0 * torch.pi / self.heads)
        direction = torch.stack((angle.cos(), angle.sin()), dim=-1)
        direction = direction / direction.abs().amax(dim=-1, keepdim=True)  # onto the unit square
        distance = torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, self.points, 1)
        grid = direction.view(self.heads, 1, 1, 2) * distance
        self.sampling_offsets.bias.copy_(grid.expand(self.heads, self.levels, self.points, 2).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: Shapes) -> torch.Tensor:
        """query [N, Lq, dim]; reference_points [N, Lq, L or 1, 2] (x, y) in 0..1; input_flatten
        [N, S, dim] with S = sum H_l * W_l; spatial_shapes L x (H_l, W_l) (python ints avoid a
        device sync) -> [N, Lq, dim]."""
        shapes = level_shapes(spatial_shapes)
        if query.dim() != 3 or query.shape[-1] != self.dim:
            raise ValueError(f"query must have shape [N, Lq, {self.dim}], got {list(query.shape)}")
        n, lq, _ = query.shape
        if input_flatten.dim() != 3 or input_flatten.shape[0] != n or input_flatten.shape[-1] != self.dim:
            raise ValueError(f"input_flatten must have shape [{n}, S, {self.dim}], got {list(input_flatten.shape)}")
        if len(shapes) != self.levels:
            raise ValueError(f"spatial_shapes has {len(shapes)} levels but the module was built for {self.levels}")
        if reference_points.dim() != 4 or tuple(reference_points.shape[:2]) != (n, lq) or \
                reference_points.shape[2] not in (1, self.levels) or reference_points.shape[3] != 2:
            raise ValueError(f"reference_points must have shape [{n}, {lq}, {self.levels} or 1, 2] ((x, y) in 0..1), "
                             f"got {list(reference_points.shape)}")
        value = self.value_proj(input_flatten)
        value = value.view(n, input_flatten.shape[1], self.heads, self.value_dim // self.heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(n, lq, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(n, lq, self.heads, self.levels, self.points)
        dtype = torch.float64 if torch.float64 in (offsets.dtype, reference_points.dtype) else torch.float32
        normaliser = _normaliser(shapes, offsets.device, dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser
        return self.output_proj(ms_deform_attn(value, shapes, locations, weights))


__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "BACKEND_NAMES",
    "MEMORY_ENV",
    "MultiScaleDeformableAttention",
    "available_backends",
    "backend_statuses",
    "candidate_order",
    "ms_deform_attn",
    "select_backend",
]
