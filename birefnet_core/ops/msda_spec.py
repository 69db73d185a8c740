"""Argument checking for multi-scale deformable attention.

Every backend receives an :class:`MSDASpec` built here, so shape, device and dtype errors are
raised once, in Python, naming the argument and the shape that was expected, before any kernel
runs.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import torch

Shapes = Union[torch.Tensor, Sequence[Tuple[int, int]]]
LevelShapes = Tuple[Tuple[int, int], ...]


@dataclass(frozen=True)
class MSDASpec:
    """Normalised geometry of one multi-scale deformable attention call."""

    batch: int  # N
    tokens: int  # S = sum of H_l * W_l
    heads: int  # M
    head_dim: int  # Dh
    queries: int  # Lq
    points: int  # P
    shapes: LevelShapes  # L x (H_l, W_l)

    @property
    def levels(self) -> int:
        return len(self.shapes)

    @property
    def samples_per_query(self) -> int:
        """Sampling points of one query, all heads together (M * L * P)."""
        return self.heads * self.levels * self.points


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _as_int(v) -> int:
    if isinstance(v, bool):
        raise TypeError("bool")
    return operator.index(v)


def level_shapes(spatial_shapes: Shapes) -> LevelShapes:
    """``spatial_shapes`` as a tuple of ``(H, W)`` python ints.

    Accepts an integer tensor of shape [L, 2] (read once: a device-to-host copy when it lives
    on an accelerator; pass python ints to avoid it) or a sequence of (H, W) pairs of ints.
    """
    what = ("spatial_shapes must be a sequence of (H, W) pairs of positive ints or an integer tensor "
            "of shape [L, 2]")
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] == 0:
            raise ValueError(f"{what}, got a tensor of shape {_shape(spatial_shapes)}")
        if spatial_shapes.is_floating_point() or spatial_shapes.is_complex() or spatial_shapes.dtype == torch.bool:
            raise ValueError(f"{what}, got a tensor of dtype {spatial_shapes.dtype}")
        pairs = spatial_shapes.tolist()
    else:
        try:
            pairs = [tuple(pair) for pair in spatial_shapes]
        except TypeError:
            raise ValueError(f"{what}, got {spatial_shapes!r}") from None
    try:
        shapes = tuple((_as_int(h), _as_int(w)) for h, w in pairs)
    except (TypeError, ValueError):
        raise ValueError(f"{what}, got {spatial_shapes!r}") from None
    if not shapes:
        raise ValueError(f"{what}, got no level")
    if any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"{what}, got {list(shapes)}")
    return shapes


def check_msda_arguments(
    value: torch.Tensor,
    spatial_shapes: Shapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> MSDASpec:
    """Validate the arguments of ``ms_deform_attn`` and return the call's geometry.

    ``value`` [N, S, M, Dh] (levels concatenated, each row-major); ``spatial_shapes`` L x (H, W)
    with S = sum H*W; ``sampling_locations`` [N, Lq, M, L, P, 2] as (x, y) in 0..1;
    ``attention_weights`` [N, Lq, M, L, P]. All on one device and floating point; locations and
    weights may have another floating dtype than ``value``. Raises ``ValueError`` naming the
    offending argument and the expected shape.
    """
    tensors = {"value": value, "sampling_locations": sampling_locations, "attention_weights": attention_weights}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.device != value.device:
            raise ValueError(f"{name} is on {t.device} but value is on {value.device}: move all tensors to one device")
    if value.dim() != 4:
        raise ValueError(f"value must have shape [N, S, M, Dh] (batch, tokens, heads, head dim), got {_shape(value)}")
    shapes = level_shapes(spatial_shapes)
    batch, tokens, heads, head_dim = value.shape
    total = sum(h * w for h, w in shapes)
    if total != tokens:
        sizes = " + ".join(f"{h}x{w}" for h, w in shapes)
        raise ValueError(
            f"spatial_shapes has {total} tokens ({sizes}) but value has {tokens} (value {_shape(value)})"
        )
    levels = len(shapes)
    loc = sampling_locations
    if loc.dim() != 6 or tuple(loc.shape[:1]) + tuple(loc.shape[2:4]) + tuple(loc.shape[5:]) != (batch, heads, levels, 2):
        raise ValueError(
            f"sampling_locations must have shape [N, Lq, M, L, P, 2] = [{batch}, Lq, {heads}, {levels}, P, 2] "
            f"((x, y) per point), got {_shape(loc)}"
        )
    queries, points = loc.shape[1], loc.shape[4]
    expected = (batch, queries, heads, levels, points)
    if tuple(attention_weights.shape) != expected:
        raise ValueError(
            f"attention_weights must have shape [N, Lq, M, L, P] = [{', '.join(map(str, expected))}] "
            f"(one weight per sampling point), got {_shape(attention_weights)}"
        )
    return MSDASpec(batch, tokens, heads, head_dim, queries, points, shapes)
