"""A synthetic video with a known alpha, a model of per-frame mask errors, and temporal metrics.

:func:`make_clip` moves the matte of :func:`~birefnet_core.synthetic_matte.make_scene` (a soft
blob with thin, fractional-coverage strands: hair) over a panning textured background:
translation, a slow rotation and a sway of the strands, with two bursts of fast motion (where a
temporal filter that lags would leave ghosts) and a stretch where the body holds still (where
smoothing has the most to gain). Frames are composited I = alpha F + (1 - alpha) B from the same
warped matte (then sensor noise is added), so the ground truth is exact. By default the
foreground and background are of similar mean brightness and differ in hue (warm on cool): the
hard case for a motion detector that looks at grey levels only.

:func:`noisy_predictions` is a *model of per-frame errors*, not a trained network: the true
alpha degraded independently in every frame (a small random warp of the edges, a random blur, a
random change of the fractional levels, smooth noise in the soft regions, occasional blotches).
Errors that are independent from frame to frame are what a per-frame segmentation network
produces on video, and what shows as flicker; a temporal filter can only be judged on them
together with real motion, which is why the clip moves.

Metrics (``pred`` and ``gt`` are [T, H, W] alpha in 0..1; ``mask`` is an optional [T, H, W]
bool selecting the pixels that count, per frame): :func:`mad`, :func:`dtssd` (RVM's
formulas), :func:`flicker`, :func:`excess_flicker`; :func:`moving_region` gives the pixels that
moved recently (where lag would show as ghosts).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .synthetic_matte import Size, _size, make_scene

# Motion profile, as fractions of the clip: (start, stop, kind). "fast" = a burst along a random
# direction ("fast back" returns along it), "still" = the body holds (strands still sway).
_SEGMENTS = ((0.0, 0.3, "slow"), (0.3, 0.4, "still"), (0.4, 0.5, "fast"), (0.5, 0.7, "slow"),
             (0.7, 0.8, "fast back"), (0.8, 1.0, "slow"))


def _grid(h: int, w: int, dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")


def _sample(image: torch.Tensor, y: torch.Tensor, x: torch.Tensor, padding: str) -> torch.Tensor:
    """Bilinear sample [C, h, w] at pixel coordinates y, x [T, H, W] -> [T, C, H, W]."""
    h, w = image.shape[-2:]
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), -1)
    source = image.unsqueeze(0).expand(len(y), -1, -1, -1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def motion_kinds(frames: int) -> List[str]:
    """The body's motion in each frame of a :func:`make_clip` clip of ``frames`` frames: "slow",
    "still", "fast" or "fast back" (displacement from the previous frame)."""
    return [next(k for a, b, k in _SEGMENTS if a <= t / max(frames, 1) < b) for t in range(frames)]


def _velocities(frames: int, g: torch.Generator, scale: float, slow: float, fast: float):
    """Per-frame displacement [T, 2] (dy, dx) in px."""
    base_heading = float(torch.rand(1, generator=g, dtype=torch.float64)) * 2 * math.pi
    burst_heading = float(torch.rand(1, generator=g, dtype=torch.float64)) * 2 * math.pi
    wander = float(torch.rand(1, generator=g, dtype=torch.float64)) * 2 * math.pi
    steps = torch.zeros(frames, 2, dtype=torch.float64)
    for t, kind in enumerate(motion_kinds(frames)):
        u = t / max(frames, 1)
        if kind == "slow":
            heading, speed = base_heading + 1.5 * math.sin(2 * math.pi * u + wander), slow
        elif kind == "still":
            heading, speed = 0.0, 0.0
        else:
            heading, speed = burst_heading + (math.pi if kind == "fast back" else 0.0), fast
        steps[t] = torch.tensor([math.sin(heading), math.cos(heading)]) * speed * scale / 256
    steps[0] = 0
    return steps


def make_clip(frames: int, size: Size, *, seed: int = 0, device: Union[str, torch.device] = "cpu",
              dtype: torch.dtype = torch.float32, slow: float = 0.3, fast: float = 6.0, pan: float = 0.3,
              rotation: float = 0.06, sway: float = 0.6, camera_noise: float = 0.01,
              brightness: float = 0.0):
    """(frames [T, 3, H, W], alpha [T, H, W]), both in 0..1, deterministic per arguments.

    ``size``: N or (H, W), at least 16. Speeds are in px per frame at a 256-px short side (and
    scale with it): the body drifts at ``slow``, with bursts at ``fast`` during 10 % of the
    frames twice (out and back) and a still stretch (10 %); it rotates by up to ``rotation`` rad
    (a slow sine); strands sway by up to ``sway`` px (growing with the distance from the body,
    a wave travelling along them); the background pans at ``pan`` px per frame. Composited in
    float64 from the same warped matte and foreground colour field, I = alpha F + (1 - alpha) B,
    then sensor noise is added (Gaussian, s.d. ``camera_noise``, independent per pixel and
    frame; clamped to 0..1): a motion detector must not mistake it for motion. ``brightness`` is
    added to the foreground colours (0: foreground and background differ mostly in hue).
    The matte is warped with bilinear interpolation, so a thin strand's coverage moves between
    pixels as it moves; that is part of the true alpha (and of its flicker).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    h, w = _size(size)
    scale = float(min(h, w))
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)

    # one scene on a canvas larger than the frame: its matte and foreground colours are warped
    # into every frame, its textured background is panned behind them
    pan_heading = float(torch.rand(1, generator=g, dtype=torch.float64)) * 2 * math.pi
    pan_step = torch.tensor([math.sin(pan_heading), math.cos(pan_heading)], dtype=torch.float64) * pan * scale / 256
    travel = pan_step * (frames - 1)
    margin = int(math.ceil(float(travel.abs().max()) / 2)) + 4
    _, template, fg, canvas = (t[0] for t in make_scene((h + 2 * margin, w + 2 * margin), seed=seed,
                                                        dtype=torch.float64))

    # the body: centroid and radius of the solid part of the matte (canvas coordinates)
    cyy, cxx = _grid(h + 2 * margin, w + 2 * margin)
    solid = template[0] > 0.5
    cy, cx = float(cyy[solid].mean()), float(cxx[solid].mean())
    radius = math.sqrt(float(solid.sum()) / math.pi)

    steps = _velocities(frames, g, scale, slow, fast)
    offsets = torch.cumsum(steps, 0)  # [T, 2] (dy, dx)
    offsets -= offsets.mean(0)  # keep the path centred on the frame
    phase = torch.rand(3, generator=g, dtype=torch.float64) * 2 * math.pi
    t = torch.arange(frames, dtype=torch.float64)
    angles = rotation * torch.sin(2 * math.pi * t / max(frames, 24) * 1.3 + phase[0])

    # inverse warp: output pixel -> canvas pixel (undo translation and rotation, then sway); the
    # body's centre sits at (cy, cx) - margin in the frame, plus the path
    yy, xx = _grid(h, w)
    oy = yy.unsqueeze(0) + margin - cy - offsets[:, 0].view(-1, 1, 1)
    ox = xx.unsqueeze(0) + margin - cx - offsets[:, 1].view(-1, 1, 1)
    cos, sin = torch.cos(angles).view(-1, 1, 1), torch.sin(angles).view(-1, 1, 1)
    ty, tx = cos * oy + sin * ox, -sin * oy + cos * ox
    rho = torch.sqrt(ty ** 2 + tx ** 2)
    reach = ((rho - 0.9 * radius) / (0.25 * scale)).clamp(0, 1)  # 0 on the body, 1 at the strand tips
    wave = 2 * math.pi * (t.view(-1, 1, 1) / 14.0 + rho / (0.15 * scale))
    ty = ty + sway * scale / 256 * reach * torch.sin(wave + phase[1])
    tx = tx + sway * scale / 256 * reach * torch.cos(0.8 * wave + phase[2])
    alpha = _sample(template, ty + cy, tx + cx, "zeros")[:, 0].clamp(0, 1)
    colour = (_sample(fg, ty + cy, tx + cx, "border") + brightness).clamp(0, 1)

    start = margin - travel / 2
    by = yy.unsqueeze(0) + start[0] + pan_step[0] * t.view(-1, 1, 1)
    bx = xx.unsqueeze(0) + start[1] + pan_step[1] * t.view(-1, 1, 1)
    background = _sample(canvas, by, bx, "border")

    a = alpha.unsqueeze(1)
    images = a * colour + (1 - a) * background
    if camera_noise > 0:
        images = images + camera_noise * torch.randn(images.shape, generator=g, dtype=torch.float64)
    return images.clamp(0, 1).to(device=device, dtype=dtype), alpha.to(device=device, dtype=dtype)


def _gaussian_blur(x: torch.Tensor, sigma) -> torch.Tensor:
    """Separable Gaussian blur of [N, 1, H, W] with one sigma per image (a number or [N]),
    replicate borders."""
    n = len(x)
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(n).clamp(min=1e-3)
    half = max(1, math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).view(n, 1, 1, -1)
    x = F.pad(x.transpose(0, 1), (half, half, half, half), mode="replicate")  # [1, N, H', W']
    x = F.conv2d(F.conv2d(x, k, groups=n), k.transpose(-1, -2), groups=n)
    return x.transpose(0, 1)


def noisy_predictions(alpha: torch.Tensor, *, seed: int = 0, jitter: float = 0.5,
                      blur: Tuple[float, float] = (0.4, 1.2), levels: float = 0.25, noise: float = 0.08,
                      blotch_rate: float = 0.2, blotch_strength: Tuple[float, float] = (0.3, 0.7)) -> torch.Tensor:
    """A stand-in for a per-frame segmentation network's output on ``alpha`` [T, H, W]: the true
    alpha degraded **independently in every frame** (a model of per-frame errors, not a trained
    network). Returns [T, H, W] in 0..1 (same dtype and device), deterministic per ``seed``.

    Per frame, lengths in px at a 256-px short side (scaled with it):
    - edge jitter: a random shift (s.d. ``jitter``) plus a smooth random warp (s.d. ``jitter``);
    - a Gaussian blur with sigma drawn uniformly from ``blur``;
    - fractional levels: alpha ** gamma with log gamma ~ N(0, ``levels``) (0 and 1 stay);
    - smooth noise (s.d. ``noise``) weighted by 4 a (1 - a): only in the soft regions;
    - with probability ``blotch_rate`` a blotch: a Gaussian bump (radius 2-6 % of the short side)
      of strength drawn from ``blotch_strength``, a false positive or a hole.
    """
    if alpha.dim() != 3:
        raise ValueError(f"alpha must be [T, H, W], got {tuple(alpha.shape)}")
    frames, h, w = alpha.shape
    scale = float(min(h, w))
    px = scale / 256
    g = torch.Generator().manual_seed(int(seed) * 104729 + 3)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g)

    shift = torch.randn(frames, 2, 1, 1, generator=g) * jitter * px
    field = F.interpolate(torch.randn(frames, 2, 4, 4, generator=g), size=(h, w), mode="bicubic",
                          align_corners=True) * jitter * px
    sigma = uniform(blur[0], blur[1], frames) * px
    gamma = torch.exp(torch.randn(frames, 1, 1, 1, generator=g) * levels)
    smooth = _gaussian_blur(torch.randn(frames, 1, h, w, generator=g), 1.5 * px)
    smooth = smooth / smooth.flatten(1).std(1).clamp(min=1e-12).view(-1, 1, 1, 1)
    blotch = torch.rand(frames, generator=g) < blotch_rate
    centre = torch.rand(frames, 2, generator=g) * torch.tensor([h, w], dtype=torch.float32)
    radius = uniform(0.02, 0.06, frames) * scale
    amp = uniform(*blotch_strength, frames) * torch.where(torch.rand(frames, generator=g) < 0.5, 1.0, -1.0)

    dev = alpha.device
    yy, xx = (c.to(dev) for c in _grid(h, w, torch.float32))
    offset = (shift + field).to(dev)
    y, x = yy + offset[:, 0], xx + offset[:, 1]
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), -1)
    a = F.grid_sample(alpha.detach().float().unsqueeze(1), grid, mode="bilinear", padding_mode="border",
                      align_corners=False)
    a = _gaussian_blur(a, sigma.to(dev)).clamp(0, 1).pow(gamma.to(dev))
    a = a + noise * smooth.to(dev) * 4 * a * (1 - a)
    cy, cx = (c.to(dev).view(-1, 1, 1) for c in centre.unbind(1))
    r = radius.to(dev).view(-1, 1, 1)
    bump = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    a = a[:, 0] + (amp * blotch).to(dev).view(-1, 1, 1) * bump
    return a.clamp(0, 1).to(alpha.dtype)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def _check(pred: torch.Tensor, gt: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None) -> None:
    if pred.dim() != 3:
        raise ValueError(f"alpha must be [T, H, W], got {tuple(pred.shape)}")
    for other, name in ((gt, "ground truth"), (mask, "mask")):
        if other is not None and other.shape != pred.shape:
            raise ValueError(f"{name} shape {tuple(other.shape)} differs from {tuple(pred.shape)}")


def _pair_means(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Per frame t >= 1: the mean of ``values`` [T-1, H, W] over mask[t] (frames with an empty
    mask dropped)."""
    if mask is None:
        return values.flatten(1).mean(1)
    weight = mask[1:].to(values.dtype)
    count = weight.flatten(1).sum(1)
    keep = count > 0
    return (values * weight).flatten(1).sum(1)[keep] / count[keep]


def mad(pred: torch.Tensor, gt: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Mean absolute difference x 1e3 (RVM's MAD), over ``mask`` if given."""
    _check(pred, gt, mask)
    diff = (pred.double() - gt.double()).abs()
    if mask is None:
        return float(diff.mean() * 1e3)
    return float(diff[mask.bool()].mean() * 1e3) if mask.any() else float("nan")


def dtssd(pred: torch.Tensor, gt: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """RVM's dtSSD: per frame t >= 1, 1e2 sqrt(mean_p ((a_t - a_{t-1}) - (a*_t - a*_{t-1}))^2),
    then the mean over t >= 1 (RVM's spreadsheet also averages frame 0 as 0, i.e. x (T-1)/T).
    With ``mask``, the mean over p runs over mask[t]."""
    _check(pred, gt, mask)
    if len(pred) < 2:
        return 0.0
    p, g = pred.double(), gt.double()
    sq = ((p[1:] - p[:-1]) - (g[1:] - g[:-1])) ** 2
    per_frame = _pair_means(sq, mask)
    return float((per_frame.sqrt() * 1e2).mean()) if per_frame.numel() else float("nan")


def flicker(alpha: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Mean over t >= 1 of mean_p |a_t - a_{t-1}| (over mask[t] if given); needs no ground truth."""
    _check(alpha, None, mask)
    if len(alpha) < 2:
        return 0.0
    a = alpha.double()
    per_frame = _pair_means((a[1:] - a[:-1]).abs(), mask)
    return float(per_frame.mean()) if per_frame.numel() else float("nan")


def excess_flicker(pred: torch.Tensor, gt: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """flicker(pred) - flicker(gt): the frame-to-frame change that the true motion does not explain."""
    _check(pred, gt, mask)
    return flicker(pred, mask) - flicker(gt, mask)


def moving_region(gt: torch.Tensor, *, span: int = 3, threshold: float = 0.02, grow: int = 1) -> torch.Tensor:
    """[T, H, W] bool: pixels whose true alpha changed by more than ``threshold`` over the last
    ``span`` frames (max over j = 1..span of |a*_t - a*_{t-j}|), grown by ``grow`` px: where the
    matte moved recently, hence where a lagging filter leaves ghosts. Frame 0 is all False."""
    _check(gt)
    g = gt.double()
    change = torch.zeros_like(g)
    for j in range(1, span + 1):
        if j < len(g):
            change[j:] = torch.maximum(change[j:], (g[j:] - g[:-j]).abs())
    moving = change > threshold
    if grow > 0:
        moving = F.max_pool2d(moving.double().unsqueeze(1), 2 * grow + 1, 1, grow)[:, 0] > 0
    moving[0] = False
    return moving
