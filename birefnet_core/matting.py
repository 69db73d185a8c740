"""Matte operations on [B, C, H, W] / [B, H, W] tensors, on any device, batched.

So far: thresholding and compositing (straight-alpha RGBA, over a colour). Foreground colour
estimation, guided refinement and mask operations build on these.
"""

from __future__ import annotations

import re
from typing import Sequence, Tuple, Union

import torch

Color = Union[str, Sequence[float]]


def parse_color(color: Color) -> Tuple[float, float, float]:
    """"#rrggbb", "#rgb", "r,g,b" (0..255) or a sequence of three floats in 0..1 -> RGB in 0..1."""
    if isinstance(color, str):
        text = color.strip().lower()
        if re.fullmatch(r"#?[0-9a-f]{6}", text):
            text = text.lstrip("#")
            return tuple(int(text[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
        if re.fullmatch(r"#?[0-9a-f]{3}", text):
            text = text.lstrip("#")
            return tuple(int(c * 2, 16) / 255.0 for c in text)  # type: ignore[return-value]
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        if len(parts) == 3 and all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts):
            values = [float(p) for p in parts]
            if all(0 <= v <= 255 for v in values):
                return tuple(v / 255.0 for v in values)  # type: ignore[return-value]
        raise ValueError(f"colour must be '#rrggbb', '#rgb' or 'r,g,b' (0-255), got {color!r}")
    values = [float(v) for v in color]
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"colour must be three values in 0..1, got {color!r}")
    return values[0], values[1], values[2]


def threshold(alpha: torch.Tensor, level: float) -> torch.Tensor:
    """A hard mask (alpha >= level) in alpha's dtype; ``level`` 0 keeps the soft mask."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"threshold must be in 0..1, got {level}")
    return alpha if level == 0 else (alpha >= level).to(alpha.dtype)


def _color_like(image: torch.Tensor, color: Color) -> torch.Tensor:
    return torch.tensor(parse_color(color), dtype=image.dtype, device=image.device).view(1, 3, 1, 1)


def rgba(image: torch.Tensor, alpha: torch.Tensor, fill: Union[None, Color] = None) -> torch.Tensor:
    """Straight-alpha RGBA [B, 4, H, W] from RGB [B, 3, H, W] and alpha [B, H, W].

    ``fill``: None keeps the image's colours everywhere (lossless); a colour replaces them where
    the subject is absent (the RGB channels then equal :func:`over_color`)."""
    colors = image if fill is None else over_color(image, alpha, fill)
    return torch.cat([colors, alpha.unsqueeze(1).to(image.dtype)], dim=1)


def over_color(image: torch.Tensor, alpha: torch.Tensor, color: Color) -> torch.Tensor:
    """The image over a solid colour: image * alpha + colour * (1 - alpha), [B, 3, H, W]."""
    a = alpha.unsqueeze(1).to(image.dtype)
    return torch.lerp(_color_like(image, color).expand_as(image), image, a)
