"""Small helpers shared by FOCUS's parts: token <-> map layout, grid reference points, the sine
position encoding of Mask2Former."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

Shape = Tuple[int, int]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C] (row-major tokens)."""
    return x.flatten(2).transpose(1, 2)


def to_map(x: torch.Tensor, shape: Shape) -> torch.Tensor:
    """[B, H*W, C] -> [B, C, H, W]; for contiguous tokens a view with channels-last strides (the
    token layout is channels-last; convolutions and resizes keep that layout)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], shape[0], shape[1])


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (every resize in FOCUS is this one).

    The input is made NCHW-contiguous first: for a channels-last input (the layout of maps made
    from tokens) torch's CPU kernel returns an NCHW output through a transposing copy of the
    output that takes several times longer than the resize itself."""
    return F.interpolate(x.contiguous(), size=tuple(size), mode="bilinear", align_corners=False)


def cell_centres(shapes: Sequence[Shape], device: torch.device) -> torch.Tensor:
    """Reference points of grids: ((j + 0.5) / W, (i + 0.5) / H) for every cell of every grid,
    row-major, grids concatenated: [sum(H*W), 2] as (x, y) in (0, 1), float32 whatever the
    model's dtype (the deformable attention adds half-precision offsets to them in float32)."""
    points = []
    for h, w in shapes:  # a handful of (H, W) pairs: builds metadata, not a loop over data
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        points.append(torch.stack([x.expand(h, w), y[:, None].expand(h, w)], dim=-1).reshape(h * w, 2))
    return torch.cat(points)


def sine_position_encoding(shape: Shape, device: torch.device, dtype: torch.dtype,
                           features: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """Mask2Former's ``PositionEmbeddingSine(features, normalize=True)`` of an unmasked H x W map,
    as tokens [H*W, 2 * features]: channels [pos_y, pos_x], each sin/cos interleaved, with
    coordinates 1..H (1..W) scaled by 2 pi / (last + 1e-6). Computed in float32, then cast."""
    h, w = shape
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, w + 1, device=device, dtype=torch.float32)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(features, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / features)

    def interleave(t: torch.Tensor) -> torch.Tensor:  # [n] -> [n, features]: sin, cos, sin, ...
        t = t[:, None] / dim_t
        return torch.stack((t[:, 0::2].sin(), t[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = interleave(y)[:, None, :].expand(h, w, features)
    pos_x = interleave(x)[None, :, :].expand(h, w, features)
    return torch.cat([pos_y, pos_x], dim=-1).reshape(h * w, 2 * features).to(dtype)
