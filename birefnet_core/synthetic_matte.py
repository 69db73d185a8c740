"""A synthetic matting scene with a known answer, and the error measures used on it.

:func:`make_scene` draws an alpha matte with a soft-edged blob and many thin (1-2 px) curved
strands of fractional coverage (hair), a smooth foreground colour field and a textured
background, and composites them: I = alpha F + (1 - alpha) B. Everything is a deterministic
function of (size, seed). :func:`degrade_alpha` turns the true matte into a stand-in for a
network's mask (blurred and quantised). Used by ``python -m birefnet_core bench matting`` and
the tests; pure torch, CPU generation.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

Size = Union[int, Tuple[int, int]]


def _size(size: Size) -> Tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 16 or w < 16:
        raise ValueError(f"scene size must be at least 16x16, got {size!r}")
    return h, w


def _uniform(g: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)


def _smooth_field(g: torch.Generator, yy: torch.Tensor, xx: torch.Tensor, scale: float, base, amplitude: float,
                  waves: int = 3, cycles: Tuple[float, float] = (0.5, 2.5)) -> torch.Tensor:
    """[3, H, W]: per channel, ``base`` plus a few low-frequency plane waves."""
    channels = []
    for c in range(3):
        value = torch.full_like(xx, float(base[c]))
        for _ in range(waves):
            angle = float(_uniform(g, 0, 2 * math.pi, 1))
            freq = float(_uniform(g, *cycles, 1)) * 2 * math.pi / scale
            phase = float(_uniform(g, 0, 2 * math.pi, 1))
            value += amplitude / waves * torch.sin(freq * (math.cos(angle) * xx + math.sin(angle) * yy) + phase)
        channels.append(value)
    return torch.stack(channels)


def _strands(g: torch.Generator, h: int, w: int, centre, radius_of, count: int, scale: float) -> torch.Tensor:
    """[H, W] coverage of ``count`` thin curved strands growing out of the blob's boundary.

    Each strand is a curve sampled every 0.25 px; a pixel's coverage by one strand is
    opacity * clamp(width / 2 + 0.5 - distance, 0, 1) (the area of a width-wide line over a
    unit pixel, approximately) with the distance from the pixel centre to the nearest sample;
    strands combine as 1 - prod(1 - coverage)."""
    step = 0.25
    cy, cx = centre
    keys, values = [], []
    for s in range(count):
        theta = float(_uniform(g, 0, 2 * math.pi, 1))
        root_r = radius_of(torch.tensor([theta], dtype=torch.float64)).item() * float(_uniform(g, 0.85, 0.97, 1))
        length = float(_uniform(g, 0.04, 0.2, 1)) * scale
        width = float(_uniform(g, 0.7, 2.0, 1))
        opacity = float(_uniform(g, 0.35, 0.95, 1))
        bend = float(_uniform(g, -1.5, 1.5, 1)) / max(length, 1.0)
        wiggle = float(_uniform(g, 0.0, 0.25, 1))
        wavelength = float(_uniform(g, 0.2, 0.6, 1)) * length + 1.0
        phase = float(_uniform(g, 0, 2 * math.pi, 1))
        tilt = float(_uniform(g, -0.5, 0.5, 1))
        t = torch.arange(0.0, length, step, dtype=torch.float64)
        heading = theta + tilt + bend * t + wiggle * torch.sin(2 * math.pi * t / wavelength + phase)
        py = cy + root_r * math.sin(theta) + torch.cumsum(step * torch.sin(heading), 0)
        px = cx + root_r * math.cos(theta) + torch.cumsum(step * torch.cos(heading), 0)
        strength = opacity * (1.0 - t / length).clamp(min=0).sqrt()  # tapers to the tip
        reach = int(math.ceil(width / 2 + 0.5))
        offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
        iy = (py.round().view(-1, 1, 1) + offsets.view(1, -1, 1)).expand(-1, offsets.numel(), offsets.numel())
        ix = (px.round().view(-1, 1, 1) + offsets.view(1, 1, -1)).expand(-1, offsets.numel(), offsets.numel())
        distance = torch.sqrt((iy - py.view(-1, 1, 1)) ** 2 + (ix - px.view(-1, 1, 1)) ** 2)
        cover = (width / 2 + 0.5 - distance).clamp(0, 1) * strength.view(-1, 1, 1)
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w) & (cover > 0)
        pixel = (iy[inside] * w + ix[inside]).long()
        keys.append(pixel + s * h * w)
        values.append(cover[inside])
    key = torch.cat(keys)
    value = torch.cat(values)
    unique, inverse = torch.unique(key, return_inverse=True)
    best = torch.zeros(unique.numel(), dtype=torch.float64).scatter_reduce(0, inverse, value, "amax")
    log_clear = torch.zeros(h * w, dtype=torch.float64)
    log_clear.index_add_(0, unique % (h * w), torch.log1p(-best.clamp(max=0.999)))
    return (1.0 - torch.exp(log_clear)).view(h, w)


def make_scene(size: Size, *, seed: int = 0, device: Union[str, torch.device] = "cpu",
               dtype: torch.dtype = torch.float32):
    """(image, alpha, foreground, background) for a synthetic matting scene.

    ``size``: N (square) or (H, W). Returns image [1, 3, H, W], alpha [1, 1, H, W], foreground
    [1, 3, H, W], background [1, 3, H, W], all in 0..1, with image = alpha F + (1 - alpha) B
    exactly (computed in float64, then cast). Deterministic per (size, seed).
    alpha: a wobbly blob whose edge is a Gaussian-blurred step (sigma ~1.5 px at 1024) united
    with ~0.3 x size thin curved strands (0.7-2 px wide, opacity 0.35-0.95, tapering).
    F: smooth warm colours (low-frequency waves); B: a cool-coloured textured pattern
    (a low-frequency field, a rotated grating, a checkerboard and fine noise).
    """
    h, w = _size(size)
    g = torch.Generator().manual_seed(int(seed))
    scale = float(min(h, w))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")

    # blob: r(theta) = R (1 + sum_k a_k sin(k theta + phi_k)); soft edge Phi(d / sigma)
    cy = h * float(_uniform(g, 0.45, 0.6, 1))
    cx = w * float(_uniform(g, 0.42, 0.58, 1))
    big_r = scale * float(_uniform(g, 0.22, 0.28, 1))
    amps = _uniform(g, 0.0, 0.06, 5) / torch.arange(1, 6, dtype=torch.float64)
    phases = _uniform(g, 0, 2 * math.pi, 5)
    ks = torch.arange(2, 7, dtype=torch.float64)

    def radius_of(theta: torch.Tensor) -> torch.Tensor:
        return big_r * (1 + (amps * torch.sin(ks * theta.unsqueeze(-1) + phases)).sum(-1))

    rho = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    theta = torch.atan2(yy - cy, xx - cx)
    sigma_edge = max(0.7, 1.5 * scale / 1024)
    blob = 0.5 * torch.erfc((rho - radius_of(theta)) / (sigma_edge * math.sqrt(2)))
    strands = _strands(g, h, w, (cy, cx), radius_of, max(8, round(0.3 * scale)), scale)
    alpha = 1 - (1 - blob) * (1 - strands)

    fg = _smooth_field(g, yy, xx, scale, base=_uniform(g, 0.55, 0.8, 1).tolist() + [0.42, 0.25],
                       amplitude=0.25, waves=3, cycles=(0.5, 2.0))
    low = _smooth_field(g, yy, xx, scale, base=[0.25, 0.45, 0.6], amplitude=0.3, waves=3, cycles=(0.5, 2.5))
    period = max(6.0, scale / float(_uniform(g, 24, 40, 1)))
    angle = float(_uniform(g, 0.2, 1.2, 1))
    grating = torch.sin(2 * math.pi * (math.cos(angle) * xx + math.sin(angle) * yy) / period)
    cell = max(4, round(scale / 20))
    checker = (((yy // cell) + (xx // cell)) % 2) * 2 - 1
    noise = torch.randn(1, 1, h, w, generator=g, dtype=torch.float64)
    noise = F.avg_pool2d(noise, 3, 1, 1, count_include_pad=False)[0, 0]
    tint = torch.tensor([0.6, 1.0, 0.8], dtype=torch.float64).view(3, 1, 1)
    bg = low + tint * (0.1 * grating + 0.06 * checker + 0.05 * noise)

    fg, bg = fg.clamp(0.02, 0.98), bg.clamp(0.02, 0.98)
    image = alpha * fg + (1 - alpha) * bg
    out = [image, alpha.unsqueeze(0), fg, bg]
    return tuple(t.unsqueeze(0).to(device=device, dtype=dtype) for t in out)


def degrade_alpha(alpha: torch.Tensor, *, blur: Optional[float] = None, levels: int = 16) -> torch.Tensor:
    """A stand-in for a network's mask: ``alpha`` [B, 1, H, W] Gaussian-blurred (sigma ``blur``
    px, default 2 px per 1024 px of the short side) and quantised to ``levels`` values."""
    h, w = alpha.shape[-2:]
    sigma = 2.0 * min(h, w) / 1024 if blur is None else float(blur)
    a = alpha.to(torch.float64)
    if sigma > 0:
        half = max(1, math.ceil(3 * sigma))
        x = torch.arange(-half, half + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = (k / k.sum()).to(a.device)
        a = F.pad(a, (half, half, half, half), mode="replicate")
        a = F.conv2d(F.conv2d(a, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    a = torch.round(a.clamp(0, 1) * (levels - 1)) / (levels - 1)
    return a.to(alpha.dtype)


# ---------------------------------------------------------------------------------------------
# Error measures
# ---------------------------------------------------------------------------------------------

def foreground_error(estimate: torch.Tensor, truth: torch.Tensor, alpha: torch.Tensor,
                     low: float = 0.05, high: float = 0.95) -> float:
    """Alpha-weighted mean squared colour error in the band low < alpha < high:
    sum(alpha |F - F*|^2 / 3) / sum(alpha) over band pixels (colours in 0..1, true alpha)."""
    a = alpha.to(torch.float64)
    weight = a * ((a > low) & (a < high))
    sq = (estimate.to(torch.float64) - truth.to(torch.float64)).pow(2).mean(1, keepdim=True)
    return float((weight * sq).sum() / weight.sum().clamp(min=1e-12))


def sad(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Sum of absolute alpha differences, in thousands (the matting literature's unit)."""
    return float((estimate.to(torch.float64) - truth.to(torch.float64)).abs().sum() / 1000)


def gradient_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """sum over pixels of |grad(alpha) - grad(alpha*)|^2 with forward differences (x and y), in
    thousands: sum((dx e - dx t)^2) + sum((dy e - dy t)^2), / 1000."""
    d = estimate.to(torch.float64) - truth.to(torch.float64)
    dx = d[..., :, 1:] - d[..., :, :-1]
    dy = d[..., 1:, :] - d[..., :-1, :]
    return float((dx.pow(2).sum() + dy.pow(2).sum()) / 1000)
