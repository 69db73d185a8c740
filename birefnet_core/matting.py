"""Matte operations on [B, C, H, W] / [B, H, W] tensors, on any device, batched, any float dtype.

- thresholding and compositing: :func:`threshold`, :func:`rgba`, :func:`over_color` (alpha
  [B, H, W] there), :func:`over_image`, :func:`premultiply`;
- :func:`box_blur`: O(1)-per-pixel normalised box filter (running sums, float64 accumulation);
- foreground colour: :func:`estimate_foreground` (blur-fusion, BiRefNet's ``refine_foreground``)
  and :func:`estimate_foreground_ml` (Germer et al.'s multi-level estimator);
- alpha refinement: :func:`guided_filter` (kornia), :func:`trimap_band`, :func:`refine_alpha`;
- mask operations: :func:`levels`, :func:`grow`, :func:`feather`, :func:`fill_holes`, :func:`invert`;
- the whole chain as the matte node runs it: :func:`refine_matte` with :class:`MatteOptions`.

Conventions for the functions below ``over_color``: images [B, C, H, W] in 0..1 (RGBA: the
first 3 channels are used); mattes [B, H, W] or [B, 1, H, W] (returned in the layout given),
clamped to 0..1 and resized (bilinear, with a logged note) to the image when their sizes
differ; a batch of 1 broadcasts against a batch of N; NaN or infinite inputs raise ValueError
naming the argument; float16/bfloat16 are computed in float32 and returned in their dtype.
No PIL or NumPy.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------
# Layout, dtype and input hygiene
#
# Images are [B, C, H, W] (C = 3; a 4-channel RGBA image contributes its first 3 channels).
# Alpha mattes and masks are [B, H, W] or [B, 1, H, W]; functions that return a mask return it
# in the layout they were given. Values: images and mattes in 0..1 (mattes are clamped to it).
# Batches: a batch of 1 broadcasts against a batch of N (one image with N masks, or N images
# with one mask); other unequal batch sizes are an error.
# Half-precision inputs are computed in float32 and returned in their own dtype.
# ---------------------------------------------------------------------------------------------

_EPS = 1e-5  # blur-fusion's fixed regulariser (the official refine_foreground's)
_HALF = (torch.float16, torch.bfloat16)
_CPU_BLOCK = 1 << 17  # elements per cumulative-sum block on the CPU: 1 MiB of float64, cache-sized
_DEVICE_BLOCK = 1 << 24  # elsewhere: whole planes, one kernel per axis up to 16 M elements


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _check_values(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _alpha4(alpha: torch.Tensor, name: str = "alpha") -> Tuple[torch.Tensor, bool]:
    """[B, H, W] or [B, 1, H, W] -> ([B, 1, H, W], whether it was 3-D)."""
    if alpha.dim() == 3:
        return alpha.unsqueeze(1), True
    if alpha.dim() == 4 and alpha.shape[1] == 1:
        return alpha, False
    raise ValueError(f"{name} must be [B, H, W] or [B, 1, H, W], got {tuple(alpha.shape)}")


def _layout(alpha4: torch.Tensor, three_d: bool) -> torch.Tensor:
    return alpha4.squeeze(1) if three_d else alpha4


def _clean_alpha(alpha: torch.Tensor, name: str = "alpha") -> Tuple[torch.Tensor, bool]:
    """Checks, converts to a float [B, 1, H, W] in the compute dtype and clamps to 0..1."""
    a, three_d = _alpha4(alpha, name)
    _check_values(name, a)
    a = a.to(_compute_dtype(a.dtype)).clamp(0.0, 1.0)
    return a, three_d


def _clean_image(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Checks an image [B, C, H, W]; RGBA -> its RGB channels; float, compute dtype."""
    if image.dim() != 4:
        raise ValueError(f"{name} must be [B, C, H, W], got {tuple(image.shape)}")
    if image.shape[1] == 4:
        image = image[:, :3]
    _check_values(name, image)
    return image.to(_compute_dtype(image.dtype))


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _fit_mask(alpha: torch.Tensor, size: Tuple[int, int], name: str = "alpha") -> torch.Tensor:
    """A [B, 1, h, w] mask resized (bilinear) to ``size`` when it differs, with a logged note."""
    if tuple(alpha.shape[-2:]) == tuple(size):
        return alpha
    logger.info("%s is %dx%d but the image is %dx%d: resizing it (bilinear)",
                name, alpha.shape[-1], alpha.shape[-2], size[1], size[0])
    return _resize(alpha, size).clamp_(0.0, 1.0)


def _broadcast_batch(*tensors: torch.Tensor) -> List[torch.Tensor]:
    sizes = {t.shape[0] for t in tensors}
    n = max(sizes)
    if not sizes <= {1, n}:
        raise ValueError(f"batch sizes {sorted(sizes)} differ (only a batch of 1 broadcasts)")
    return [t if t.shape[0] == n else t.expand(n, *t.shape[1:]) for t in tensors]


def _image_and_alpha(image: torch.Tensor, alpha: torch.Tensor,
                     image_name: str = "image", alpha_name: str = "alpha"):
    """(image [N, C, H, W], alpha [N, 1, H, W] at the image's size, one float dtype, one device,
    batch broadcast, alpha was 3-D)."""
    img = _clean_image(image, image_name)
    a, three_d = _clean_alpha(alpha, alpha_name)
    dtype = torch.promote_types(img.dtype, a.dtype)
    img = img.to(dtype)
    a = _fit_mask(a.to(device=img.device, dtype=dtype), tuple(img.shape[-2:]), alpha_name)
    img, a = _broadcast_batch(img, a)
    return img, a, three_d


# ---------------------------------------------------------------------------------------------
# Box filter: O(1) per pixel via cumulative sums
# ---------------------------------------------------------------------------------------------

def _pair(size: Union[int, Sequence[int]], name: str = "size") -> Tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {size!r}")
        kh, kw = (int(s) for s in size)
    else:
        kh = kw = int(size)
    if kh < 1 or kw < 1:
        raise ValueError(f"{name} must be >= 1, got {size!r}")
    return kh, kw


def _window(n: int, k: int, device: torch.device, dtype: torch.dtype):
    """For each of n positions, the window [start, end) clipped to 0..n: offsets -(k // 2) ..
    (k - 1) // 2 (centred for odd k; one more pixel before than after for even k), and
    1 / (number of pixels inside) in ``dtype``."""
    i = torch.arange(n, device=device)
    start = (i - k // 2).clamp_(min=0)
    end = (i + (k - 1) // 2 + 1).clamp_(max=n)
    return start, end, (end - start).to(dtype).reciprocal_()


def _window_mean_f64(piece: torch.Tensor, dim: int, k: int, start: torch.Tensor, end: torch.Tensor,
                     inverse_count: torch.Tensor) -> torch.Tensor:
    """Window means along ``dim`` of ``piece`` from a float64 running sum: sum[start, end) =
    C[end - 1] - C[start - 1] (C[-1] = 0)."""
    c = torch.cumsum(piece, dim, dtype=torch.float64)
    out = c.index_select(dim, end - 1)
    n = piece.shape[dim]
    first = min(n, k // 2 + 1)  # windows that start at 0 subtract nothing
    if first < n:
        out.narrow(dim, first, n - first).sub_(c.index_select(dim, start[first:] - 1))
    shape = [1] * piece.dim()
    shape[dim] = n
    return out.mul_(inverse_count.to(out.device).view(shape))


def _window_mean_compensated(x: torch.Tensor, dim: int, start: torch.Tensor, end: torch.Tensor,
                             inverse_count: torch.Tensor) -> torch.Tensor:
    """The same in float32 only (devices without float64): running sums within tiles of
    ~sqrt(n)/2 values, and the tile offsets kept as a compensated (hi, lo) pair (TwoSum), so
    rounding errors are bounded by the tile's length, not the line's (~1e-6 at 4096 px)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    tile = max(16, math.isqrt(n) // 2)
    tiles = -(-n // tile)
    padded = F.pad(x, (0, tiles * tile - n)).reshape(*x.shape[:-1], tiles, tile)
    inclusive = torch.cumsum(padded, -1)
    totals = inclusive[..., -1]
    # exclusive in-tile prefix at every index 0 .. tiles * tile (the last one is 0: tile `tiles`)
    local = F.pad(inclusive[..., :-1], (1, 0)).reshape(*x.shape[:-1], tiles * tile)
    local = F.pad(local, (0, 1))
    hi = torch.zeros(*x.shape[:-1], tiles + 1, dtype=x.dtype, device=x.device)
    lo = torch.zeros_like(hi)
    s = torch.zeros_like(hi[..., 0])
    c = torch.zeros_like(s)
    for j in range(tiles):
        y = totals[..., j]
        t = s + y
        back = t - s
        c = c + ((s - (t - back)) + (y - back))
        s = t
        hi[..., j + 1] = s
        lo[..., j + 1] = c
    te, ts = end // tile, start // tile
    out = (hi.index_select(-1, te) - hi.index_select(-1, ts)) + (lo.index_select(-1, te) - lo.index_select(-1, ts))
    out = out + (local.index_select(-1, end) - local.index_select(-1, start))
    out = out * inverse_count.to(device=x.device, dtype=x.dtype)
    return out.movedim(-1, dim)


def _blur_axis(src: torch.Tensor, dst: torch.Tensor, dim: int, k: int, compensated: bool, block: int) -> None:
    """Window means of [P, H, W] ``src`` along ``dim`` (1 or 2) written to ``dst`` (which may be
    ``src``: each block is read completely before it is written), in blocks of about ``block``
    elements (whole planes, or strips of columns / rows of one plane)."""
    P, H, W = src.shape
    n = src.shape[dim]
    start, end, inverse_count = _window(n, k, src.device, torch.float32 if compensated else torch.float64)
    if compensated:
        dst.copy_(_window_mean_compensated(src.to(torch.float32), dim, start, end, inverse_count))
        return
    if H * W <= block:
        step = max(1, block // (H * W))
        for p in range(0, P, step):
            dst[p:p + step] = _window_mean_f64(src[p:p + step], dim, k, start, end, inverse_count)
        return
    step = max(1, block // n)
    for p in range(P):
        if dim == 1:  # the independent lines are the columns: strips of columns
            for i in range(0, W, step):
                dst[p, :, i:i + step] = _window_mean_f64(src[p, :, i:i + step], 0, k, start, end, inverse_count)
        else:  # the independent lines are the rows: strips of rows
            for i in range(0, H, step):
                dst[p, i:i + step] = _window_mean_f64(src[p, i:i + step], 1, k, start, end, inverse_count)


def _accumulation(x: torch.Tensor, accumulate: str) -> Tuple[bool, int]:
    if accumulate == "auto":
        accumulate = "compensated" if x.device.type == "mps" else "float64"
    if accumulate not in ("float64", "compensated"):
        raise ValueError(f"accumulate must be 'auto', 'float64' or 'compensated', got {accumulate!r}")
    compensated = accumulate == "compensated" and x.dtype != torch.float64
    return compensated, (_CPU_BLOCK if x.device.type == "cpu" else _DEVICE_BLOCK)


def _box_blur_(x: torch.Tensor, size: Union[int, Sequence[int]], accumulate: str = "auto") -> torch.Tensor:
    """:func:`box_blur` in place, for a contiguous float32/float64 ``x`` [..., H, W]; returns x."""
    kh, kw = _pair(size)
    if x.numel() == 0:
        return x
    compensated, block = _accumulation(x, accumulate)
    planes = x.view(-1, *x.shape[-2:])
    if kh > 1:
        _blur_axis(planes, planes, 1, kh, compensated, block)
    if kw > 1:
        _blur_axis(planes, planes, 2, kw, compensated, block)
    return x


def box_blur(x: torch.Tensor, size: Union[int, Sequence[int]], *, accumulate: str = "auto") -> torch.Tensor:
    """Normalised box filter: the mean over a ``size`` x ``size`` (or (h, w)) window.

    ``x``: [..., H, W], any float dtype, any device; returns the same shape and dtype.
    Window: offsets -(size // 2) .. (size - 1) // 2 around each pixel (centred for odd sizes;
    for even sizes one more pixel before than after, OpenCV's default anchor), clipped at the
    borders and normalised by the number of pixels inside: the average over the valid part of
    the window (= ``avg_pool2d(x, size, 1, size // 2, count_include_pad=False)`` cropped to
    H x W). A window larger than the image is fine.
    Cost: O(1) per pixel whatever the size (running sums along each axis, separably).
    Precision (``accumulate``): "auto" = "float64" on devices with float64 (running sums in
    float64, so nothing degrades with the image size) and "compensated" on MPS (float32 sums
    within tiles of ~sqrt(n)/2 values plus a compensated (TwoSum) float32 sum of the tile
    offsets). float16/bfloat16 are computed in float32 and rounded once.
    Memory: the float32/float64 output plus ~1 MiB blocks on the CPU (whole axes elsewhere).
    """
    kh, kw = _pair(size)
    if x.dim() < 2:
        raise ValueError(f"box_blur needs [..., H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    compensated, block = _accumulation(x, accumulate)
    if x.numel() == 0 or (kh == 1 and kw == 1):
        return x.clone()
    H, W = x.shape[-2:]
    planes = x.reshape(-1, H, W)
    out = torch.empty(planes.shape, dtype=_compute_dtype(x.dtype), device=x.device)
    if kh > 1:
        _blur_axis(planes, out, 1, kh, compensated, block)
        if kw > 1:
            _blur_axis(out, out, 2, kw, compensated, block)
    else:
        _blur_axis(planes, out, 2, kw, compensated, block)
    return out.view(x.shape).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Foreground colour: blur-fusion (Forte & Pitie 2021), as BiRefNet's refine_foreground
# ---------------------------------------------------------------------------------------------

def _blur_fusion_fill(buffer: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, alpha: torch.Tensor,
                      rest: torch.Tensor) -> None:
    """buffer [N, 1 + 2C, H, W] <- [alpha, F alpha, B (1 - alpha)] (B may be a view of buffer)."""
    c = fg.shape[1]
    buffer[:, :1].copy_(alpha)
    torch.mul(fg, alpha, out=buffer[:, 1:1 + c])
    if bg.data_ptr() == buffer[:, 1 + c:].data_ptr():
        buffer[:, 1 + c:].mul_(rest)
    else:
        torch.mul(bg, rest, out=buffer[:, 1 + c:])


def _blur_fusion_update(image: torch.Tensor, alpha: torch.Tensor, rest: torch.Tensor, buffer: torch.Tensor,
                        size: int):
    """One pass's (F', B') from the filled buffer, blurred in place; B' is a view of the buffer."""
    c = image.shape[1]
    _box_blur_(buffer, size)
    alpha_blur = buffer[:, :1]
    fg_blur = buffer[:, 1:1 + c].div_(alpha_blur + _EPS)
    bg_blur = buffer[:, 1 + c:].div_((1.0 - alpha_blur).add_(_EPS))
    # F' = clip(F_blur + alpha * (I - alpha * F_blur - (1 - alpha) * B_blur), 0, 1)
    residual = torch.addcmul(image, alpha, fg_blur, value=-1.0).addcmul_(rest, bg_blur, value=-1.0)
    return residual.mul_(alpha).add_(fg_blur).clamp_(0.0, 1.0), bg_blur


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor, *, radii: Sequence[int] = (90, 6),
                        return_background: bool = False):
    """Foreground colours F (0..1, [N, 3, H, W], image's dtype) such that I ~ alpha F + (1 - alpha) B.

    Blur-fusion (Forte & Pitie, "Approximate Fast Foreground Colour Estimation", ICIP 2021) as
    BiRefNet's ``refine_foreground``: the first pass starts from F = B = image with box window
    ``radii[0]``, each further pass starts from the previous pass's F and B with the next
    window; the official two passes are (90, 6). Each pass, with blur = :func:`box_blur`:
    ``A = blur(a); Fb = blur(F a) / (A + 1e-5); Bb = blur(B (1 - a)) / (1 - A + 1e-5);
    F = clip(Fb + a (I - a Fb - (1 - a) Bb), 0, 1); B = Bb``.
    (The windows are box sizes, not radii, as in the original; borders use box_blur's
    clipped-window rule where the original replicates (GPU) or reflects (OpenCV) edge pixels.)
    ``image``: [B, 3 or 4, H, W]; ``alpha``: [B, H, W] or [B, 1, H, W] (resized to the image
    if needed, clamped to 0..1); a batch of 1 broadcasts. Alpha all 0 gives F = 0, all 1 gives
    F = image. ``return_background`` also returns the smooth background estimate B.
    """
    sizes = [int(r) for r in radii]
    if not sizes or any(r < 1 for r in sizes):
        raise ValueError(f"radii must be one or more window sizes >= 1, got {radii!r}")
    img, a, _ = _image_and_alpha(image, alpha)
    img, a = img.contiguous(), a.contiguous()
    rest = 1.0 - a
    # one buffer for the blurred [alpha, F alpha, B (1 - alpha)], reused by every pass
    buffer = torch.empty(img.shape[0], 1 + 2 * img.shape[1], *img.shape[-2:], dtype=img.dtype, device=img.device)
    fg, bg = img, img
    for size in sizes:
        _blur_fusion_fill(buffer, fg, bg, a, rest)
        del fg  # the previous F is no longer needed while the next one is computed
        fg, bg = _blur_fusion_update(img, a, rest, buffer, size)
    out_dtype = image.dtype if image.is_floating_point() else img.dtype
    if return_background:
        return fg.to(out_dtype), bg.clamp(0.0, 1.0).to(out_dtype)
    return fg.to(out_dtype)


def _neighbours(x: torch.Tensor):
    """The 4 neighbours (up, down, left, right) of every pixel of [N, C, h, w]; the border
    pixel itself stands in for a missing neighbour."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:]


def _weighted_sum(weights, values) -> torch.Tensor:
    out = weights[0] * values[0]
    for w, v in zip(weights[1:], values[1:]):
        out.addcmul_(w, v)
    return out


def estimate_foreground_ml(image: torch.Tensor, alpha: torch.Tensor, *, regularization: float = 1e-5,
                           gradient_weight: float = 1.0, small_size: int = 32, small_iterations: int = 10,
                           big_iterations: int = 2, return_background: bool = False):
    """Foreground colours by Germer et al.'s multi-level estimator ("Fast Multi-Level
    Foreground Estimation", ICPR 2020), vectorised in torch: same shapes, ranges, input rules
    and batching as :func:`estimate_foreground`.

    Per pixel it minimises (a F + (1 - a) B - I)^2 + sum over the 4 neighbours q of
    (regularization + gradient_weight |a - a_q|) ((F - F_q)^2 + (B - B_q)^2), a 2x2 system per
    pixel and channel, clamped to 0..1. It runs coarse to fine over L + 1 levels,
    L = ceil(log2(max(H, W))), level i of size round(H^(i/L)) x round(W^(i/L)) (nearest-neighbour
    resizing), starting from the mean colours of alpha > 0.9 (F) and alpha < 0.1 (B), with
    ``small_iterations`` sweeps on levels up to ``small_size`` px and ``big_iterations`` above.
    A sweep is red-black Gauss-Seidel (the checkerboard's two halves in turn), where the
    original updates in place in scan order.
    """
    img, a, _ = _image_and_alpha(image, alpha)
    H, W = img.shape[-2:]
    levels = max(1, math.ceil(math.log2(max(H, W, 2))))

    def masked_mean(mask: torch.Tensor) -> torch.Tensor:
        count = mask.sum((-2, -1), keepdim=True)
        mean = (img * mask).sum((-2, -1), keepdim=True) / count.clamp(min=1)
        return torch.where(count > 0, mean, img.mean((-2, -1), keepdim=True))

    fg = masked_mean((a > 0.9).to(img.dtype))
    bg = masked_mean((a < 0.1).to(img.dtype))
    for i in range(levels + 1):
        h, w = round(H ** (i / levels)), round(W ** (i / levels))
        level_img = img if (h, w) == (H, W) else F.interpolate(img, size=(h, w), mode="nearest")
        la = a if (h, w) == (H, W) else F.interpolate(a, size=(h, w), mode="nearest")
        fg = F.interpolate(fg, size=(h, w), mode="nearest")
        bg = F.interpolate(bg, size=(h, w), mode="nearest")
        rest = 1.0 - la
        weights = [(la - q).abs_().mul_(gradient_weight).add_(regularization) for q in _neighbours(la)]
        total = weights[0] + weights[1] + weights[2] + weights[3]
        a00 = la * la + total
        a11 = rest * rest + total
        a01 = la * rest
        inv = (a00 * a11).addcmul_(a01, a01, value=-1.0).reciprocal_()
        p00, p11, p01 = a00.mul_(inv), a11.mul_(inv), a01.mul_(inv)  # the inverse matrix, pre-scaled
        del total, inv
        yy = torch.arange(h, device=img.device).view(h, 1)
        xx = torch.arange(w, device=img.device).view(1, w)
        red = ((yy + xx) % 2 == 0).view(1, 1, h, w)
        sweeps = small_iterations if (h <= small_size and w <= small_size) else big_iterations
        for _ in range(sweeps):
            for half in (red, ~red):
                b0 = _weighted_sum(weights, _neighbours(fg)).addcmul_(la, level_img)
                b1 = _weighted_sum(weights, _neighbours(bg)).addcmul_(rest, level_img)
                new_fg = (p11 * b0).addcmul_(p01, b1, value=-1.0).clamp_(0.0, 1.0)
                new_bg = b1.mul_(p00).addcmul_(p01, b0, value=-1.0).clamp_(0.0, 1.0)
                del b0
                fg = torch.where(half, new_fg, fg)
                bg = torch.where(half, new_bg, bg)
                del new_fg, new_bg
    out_dtype = image.dtype if image.is_floating_point() else img.dtype
    if return_background:
        return fg.to(out_dtype), bg.to(out_dtype)
    return fg.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# Guided filter (kornia) and band-limited alpha refinement
# ---------------------------------------------------------------------------------------------

def _kornia_guided_blur():
    from kornia.filters import guided_blur

    return guided_blur, "separable" in inspect.signature(guided_blur).parameters


def auto_subsample(height: int, width: int, radius: int) -> int:
    """The Fast Guided Filter's subsampling for an image: 1, 2 or 4, halving while the
    subsampled long side stays >= 512 px and the subsampled radius >= 2 px."""
    s = 1
    while s < 4 and max(height, width) // (2 * s) >= 512 and radius // (2 * s) >= 2:
        s *= 2
    return s


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float, *,
                  subsample: Optional[int] = None) -> torch.Tensor:
    """He et al.'s guided filter of ``src`` with ``guide`` (``kornia.filters.guided_blur``).

    ``guide``: [B, 1 or 3 (or RGBA), H, W] in 0..1; ``src``: [B, C, H, W], or a mask [B, H, W]
    (returned in the layout given, src's dtype; resized to the guide if needed). Window
    (2 radius + 1)^2, replicated borders. ``eps``: regulariser in squared guide units (1e-4 ..
    1e-2 for 0..1 images; smaller keeps more edges). ``subsample``: the Fast Guided Filter's
    factor (None: :func:`auto_subsample`). The output is not clamped. Half precision is
    computed in float32.
    """
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    g = _clean_image(guide, "guide")
    three_d = src.dim() == 3
    s = src.unsqueeze(1) if three_d else src
    if s.dim() != 4:
        raise ValueError(f"src must be [B, C, H, W] or [B, H, W], got {tuple(src.shape)}")
    _check_values("src", s)
    dtype = torch.promote_types(g.dtype, _compute_dtype(s.dtype))
    g = g.to(dtype)
    s = s.to(device=g.device, dtype=dtype)
    if tuple(s.shape[-2:]) != tuple(g.shape[-2:]):
        logger.info("src is %dx%d but the guide is %dx%d: resizing it (bilinear)",
                    s.shape[-1], s.shape[-2], g.shape[-1], g.shape[-2])
        s = _resize(s, tuple(g.shape[-2:]))
    g, s = _broadcast_batch(g, s)
    out_dtype = src.dtype if src.is_floating_point() else dtype
    if radius == 0:
        out = s
    else:
        H, W = g.shape[-2:]
        factor = auto_subsample(H, W, radius) if subsample is None else int(subsample)
        if factor < 1:
            raise ValueError(f"subsample must be >= 1, got {subsample}")
        blur, has_separable = _kornia_guided_blur()
        extra = {"separable": True} if has_separable and radius >= 4 * factor else {}
        out = blur(g.contiguous(), s.contiguous(), 2 * radius + 1, float(eps), border_type="replicate",
                   subsample=factor, **extra)
    out = out.to(out_dtype)
    return out.squeeze(1) if three_d else out


def band_width_for(height: int, width: int, fraction: float = 0.01) -> int:
    """Unknown-band width in pixels for an image: ``fraction`` of the long side, at least 1."""
    if fraction < 0:
        raise ValueError(f"fraction must be >= 0, got {fraction}")
    return max(1, round(fraction * max(height, width)))


def _dilate(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grey dilation of [B, 1, H, W] by a (2 pixels + 1)^2 square (separable max-pooling)."""
    H, W = x.shape[-2:]
    ph, pw = min(pixels, H - 1), min(pixels, W - 1)
    dtype = x.dtype
    if dtype in _HALF:
        x = x.float()
    if pw > 0:
        x = _max_along(x, -1, pw)
    if ph > 0:
        x = _max_along(x, -2, ph)
    return x.to(dtype)


def _max_along(x: torch.Tensor, dim: int, r: int) -> torch.Tensor:
    """Running maximum over a window of 2 r + 1 along ``dim`` (outside the image is ignored)."""
    if r <= 8:
        kernel = (1, 2 * r + 1) if dim == -1 else (2 * r + 1, 1)
        padding = (0, r) if dim == -1 else (r, 0)
        return F.max_pool2d(x, kernel, stride=1, padding=padding)
    # van Herk / Gil-Werman: O(1) per pixel. Blocks of k = 2 r + 1; the window [i - r, i + r]
    # is covered by the suffix maximum of i - r's block and the prefix maximum of i + r's block.
    k = 2 * r + 1
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    blocks = -(-(n + 2 * r) // k)
    low = torch.finfo(x.dtype).min
    padded = F.pad(x, (r, blocks * k - n - r), value=low).reshape(*x.shape[:-1], blocks, k)
    prefix = torch.cummax(padded, -1).values.flatten(-2)
    suffix = torch.cummax(padded.flip(-1), -1).values.flip(-1).flatten(-2)
    # output i (padded position i + r) covers padded positions i .. i + 2 r
    out = torch.maximum(suffix[..., :n], prefix[..., 2 * r:2 * r + n])
    return out.movedim(-1, dim)


def _erode(x: torch.Tensor, pixels: int) -> torch.Tensor:
    return -_dilate(-x, pixels)


def trimap_band(alpha: torch.Tensor, width: int, *, low: float = 0.5, high: float = 0.5) -> torch.Tensor:
    """The unknown band of a matte: a bool mask in alpha's layout ([B, H, W] or [B, 1, H, W]).

    Sure foreground = (alpha >= high) eroded by ``width`` px, sure background = (alpha > low)
    dilated by ``width`` px, inverted; the band is everything else. With low = high = 0.5 that
    is the thresholded mask dilated minus eroded, i.e. the pixels within ``width`` px
    (Chebyshev distance, a square structuring element) of the 0.5 contour; a lower ``low`` /
    higher ``high`` also puts every soft pixel in the band. Scale ``width`` to the resolution
    (:func:`band_width_for`).
    """
    width = int(width)
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    a, three_d = _clean_alpha(alpha)
    sure_fg = _erode((a >= high).to(a.dtype), width) > 0.5
    maybe_fg = _dilate((a > low).to(a.dtype), width) > 0.5
    return _layout(maybe_fg & ~sure_fg, three_d)


def trimap(alpha: torch.Tensor, width: int, *, low: float = 0.5, high: float = 0.5) -> torch.Tensor:
    """A trimap in alpha's layout and float dtype: 0 background, 0.5 unknown (:func:`trimap_band`), 1 foreground."""
    a, three_d = _clean_alpha(alpha)
    band = _alpha4(trimap_band(a, width, low=low, high=high))[0]
    out = torch.where(band, torch.full_like(a, 0.5), (a >= max(high, 0.5)).to(a.dtype))
    return _layout(out.to(alpha.dtype if alpha.is_floating_point() else a.dtype), three_d)


def default_guided_radius(height: int, width: int) -> int:
    """Guided-filter radius for :func:`refine_alpha`: 1/64 of the long side, at least 2 (16 px at 1024)."""
    return max(2, round(max(height, width) / 64))


def refine_alpha(image: torch.Tensor, alpha: torch.Tensor, *, radius: Optional[int] = None, eps: float = 1e-4,
                 band_width: Optional[int] = None, subsample: Optional[int] = None,
                 low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """Alpha refined by a guided filter (guide: the RGB image) inside the unknown band only.

    ``image`` [B, 3 or 4, H, W]; ``alpha`` [B, H, W] or [B, 1, H, W] (returned in that layout
    and its float dtype; resized to the image if needed; a batch of 1 broadcasts).
    ``radius``: guided window (2 radius + 1)^2, default :func:`default_guided_radius`;
    ``eps``: regulariser (small, as for He et al.'s matte feathering); ``band_width``: unknown
    band half-width in px (default :func:`band_width_for`); ``low``/``high`` as in
    :func:`trimap_band` (the defaults also put every soft pixel, 0.1 < alpha < 0.9, in the
    band). Outside the band the alpha is kept; inside it is the guided filter's output clamped
    to 0..1. It sharpens edges along image edges but cannot create detail the mask lacks.
    (Defaults chosen on the synthetic scene of :mod:`.synthetic_matte`.)
    """
    img, a, three_d = _image_and_alpha(image, alpha)
    H, W = img.shape[-2:]
    radius = default_guided_radius(H, W) if radius is None else int(radius)
    band_width = band_width_for(H, W) if band_width is None else int(band_width)
    band = _alpha4(trimap_band(a, band_width, low=low, high=high))[0]
    refined = guided_filter(img, a, radius, eps, subsample=subsample).clamp_(0.0, 1.0)
    out = torch.where(band, refined, a)
    out_dtype = alpha.dtype if alpha.is_floating_point() else out.dtype
    return _layout(out.to(out_dtype), three_d)


# ---------------------------------------------------------------------------------------------
# Mask operations (layout, dtype and device preserved; values clamped to 0..1 first)
# ---------------------------------------------------------------------------------------------

def _mask_op(alpha: torch.Tensor, fn) -> torch.Tensor:
    a, three_d = _clean_alpha(alpha)
    out = fn(a)
    return _layout(out.to(alpha.dtype if alpha.is_floating_point() else out.dtype), three_d)


def levels(alpha: torch.Tensor, black: float = 0.0, white: float = 1.0) -> torch.Tensor:
    """Black/white point: (alpha - black) / (white - black), clamped to 0..1 (0 <= black <= white
    <= 1; black == white is the limit, a hard threshold: alpha > black -> 1, else 0)."""
    if not 0.0 <= black <= white <= 1.0:
        raise ValueError(f"need 0 <= black <= white <= 1, got black={black}, white={white}")
    if black == white:
        return _mask_op(alpha, lambda a: (a > black).to(a.dtype))
    return _mask_op(alpha, lambda a: ((a - black) / (white - black)).clamp_(0.0, 1.0))


def grow(alpha: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow (``pixels`` > 0) or shrink (< 0) a mask by |pixels| px: grey dilation / erosion with a
    square (2|pixels| + 1)^2, so soft masks keep their soft values; the image border neither
    grows nor erodes the mask."""
    pixels = int(pixels)
    if pixels == 0:
        return _mask_op(alpha, lambda a: a)
    if pixels > 0:
        return _mask_op(alpha, lambda a: _dilate(a, pixels))
    return _mask_op(alpha, lambda a: _erode(a, -pixels))


def _gaussian_kernel(sigma: float, half: int, dtype, device) -> torch.Tensor:
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def _normalised_conv(a: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable convolution of [B, 1, H, W] with zero padding, divided by the kernel mass
    inside the image (the same border rule as box_blur)."""
    half = kernel.numel() // 2
    kx, ky = kernel.view(1, 1, 1, -1), kernel.view(1, 1, -1, 1)
    ones = torch.ones(1, 1, *a.shape[-2:], dtype=a.dtype, device=a.device)
    x = F.conv2d(F.conv2d(a, kx, padding=(0, half)), ky, padding=(half, 0))
    w = F.conv2d(F.conv2d(ones, kx, padding=(0, half)), ky, padding=(half, 0))
    return x / w


def feather(alpha: torch.Tensor, radius: float) -> torch.Tensor:
    """Soften a mask's edges over about ``radius`` px each side: a Gaussian blur with
    sigma = radius / 3 (radius <= 24: exact separable Gaussian; larger: three box-filter passes,
    O(1) per pixel, the same sigma). Borders: average over the part inside the image."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return _mask_op(alpha, lambda a: a)
    sigma = radius / 3.0

    def blur(a: torch.Tensor) -> torch.Tensor:
        if radius <= 24:
            return _normalised_conv(a, _gaussian_kernel(sigma, max(1, math.ceil(radius)), a.dtype, a.device))
        # three boxes of odd width w = 2 q + 1 have variance 3 (w^2 - 1) / 12 = q (q + 1)
        q = max(1, round(math.sqrt(sigma * sigma + 0.25) - 0.5))
        for _ in range(3):
            a = box_blur(a, 2 * q + 1)
        return a

    return _mask_op(alpha, lambda a: blur(a).clamp_(0.0, 1.0))


def invert(alpha: torch.Tensor) -> torch.Tensor:
    """1 - alpha."""
    return _mask_op(alpha, lambda a: 1.0 - a)


def _runs_reached(reached: torch.Tensor, free: torch.Tensor, dim: int) -> torch.Tensor:
    """Extends ``reached`` to every pixel of each run of ``free`` pixels along ``dim`` that
    holds a reached pixel (bool [N, H, W])."""
    shifted = F.pad(free, (1, 0) if dim == -1 else (0, 0, 1, 0))
    shifted = shifted[..., :-1] if dim == -1 else shifted[..., :-1, :]
    run = torch.cumsum(free & ~shifted, dim)  # run ids along each line, 1, 2, ...
    seeds = reached & free
    zero = torch.zeros((), dtype=run.dtype, device=run.device)
    big = torch.full((), free.shape[dim] + 1, dtype=run.dtype, device=run.device)
    before = torch.cummax(torch.where(seeds, run, zero), dim).values == run
    after = torch.cummin(torch.where(seeds, run, big).flip(dim), dim).values.flip(dim) == run
    return free & (before | after)


def fill_holes(alpha: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Fill the holes of a mask: background pixels (alpha < threshold) that cannot reach the
    image border through background (4-connected) become 1; everything else is kept.

    Flood fill from the border, a whole run of background along a row or a column per step
    (running max/min of run ids), alternating rows and columns until nothing changes: the
    number of steps is the number of turns the fill needs, not the path length.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in 0..1, got {threshold}")

    def fill(a: torch.Tensor) -> torch.Tensor:
        free = (a < threshold).squeeze(1)
        border = torch.zeros_like(free)
        border[:, 0], border[:, -1], border[:, :, 0], border[:, :, -1] = True, True, True, True
        reached = free & border
        for _ in range(free.shape[-1] * free.shape[-2]):
            grown = _runs_reached(_runs_reached(reached, free, -1), free, -2)
            if torch.equal(grown, reached):
                break
            reached = grown
        holes = (free & ~reached).unsqueeze(1)
        return a.masked_fill(holes, 1.0)

    return _mask_op(alpha, fill)


# ---------------------------------------------------------------------------------------------
# Compositing
# ---------------------------------------------------------------------------------------------

def fit_cover(background: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``background`` [B, C, h, w] scaled (bilinear, antialiased when shrinking, aspect kept) to
    cover height x width, then centre-cropped to it."""
    h, w = background.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        background = _resize(background, (nh, nw))
    top, left = (nh - height) // 2, (nw - width) // 2
    return background[..., top:top + height, left:left + width]


def over_image(image: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``image`` over ``background``: alpha image + (1 - alpha) background, [N, 3, H, W] in the
    image's dtype. ``image`` [B, 3 or 4, H, W] (ideally the :func:`estimate_foreground`
    colours); ``alpha`` [B, H, W] or [B, 1, H, W]; ``background`` [B or 1, 3 or 4, h, w], any
    size: fitted by "cover" (:func:`fit_cover`, no distortion, centre crop). Batches of 1 broadcast.
    """
    img, a, _ = _image_and_alpha(image, alpha)
    bg = _clean_image(background, "background").to(device=img.device, dtype=img.dtype)
    bg = fit_cover(bg, *img.shape[-2:])
    img, a, bg = _broadcast_batch(img, a, bg)
    out = torch.lerp(bg, img, a)
    return out.to(image.dtype if image.is_floating_point() else out.dtype)


def premultiply(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Premultiplied colours image * alpha, [N, 3, H, W] in the image's dtype (batches of 1 broadcast)."""
    img, a, _ = _image_and_alpha(image, alpha)
    out = img * a
    return out.to(image.dtype if image.is_floating_point() else out.dtype)


# ---------------------------------------------------------------------------------------------
# The whole refinement, as the matte node runs it
# ---------------------------------------------------------------------------------------------

FOREGROUND_METHODS = ("blur_fusion", "multilevel", "none")


@dataclass
class MatteOptions:
    """Settings of :func:`refine_matte` (the defaults change nothing but the foreground colours).

    Mask operations, in this order: ``black_point``/``white_point`` (:func:`levels`),
    ``fill_holes``, ``grow`` (px, negative shrinks), ``feather`` (px), ``invert``. Then, if
    ``guided``, :func:`refine_alpha` (``guided_radius`` None: from the size; ``guided_eps``;
    ``band_width`` None: from the size). Then the foreground colours: ``foreground`` is
    "blur_fusion" (:func:`estimate_foreground` with ``foreground_radii``), "multilevel"
    (:func:`estimate_foreground_ml`) or "none" (the image itself)."""

    black_point: float = 0.0
    white_point: float = 1.0
    fill_holes: bool = False
    grow: int = 0
    feather: float = 0.0
    invert: bool = False
    guided: bool = False
    guided_radius: Optional[int] = None
    guided_eps: float = 1e-4
    band_width: Optional[int] = None
    foreground: str = "blur_fusion"
    foreground_radii: Sequence[int] = (90, 6)

    def __post_init__(self) -> None:
        if self.foreground not in FOREGROUND_METHODS:
            raise ValueError(f"foreground must be one of {', '.join(FOREGROUND_METHODS)}, got {self.foreground!r}")


def refine_matte(image: torch.Tensor, alpha: torch.Tensor, options: Optional[MatteOptions] = None):
    """(foreground [N, 3, H, W] in the image's dtype, refined alpha in alpha's layout) for an
    image [B, 3 or 4, H, W] and alpha [B, H, W] or [B, 1, H, W] (same input rules as
    :func:`estimate_foreground`), following ``options`` (:class:`MatteOptions`)."""
    o = options or MatteOptions()
    img, a, three_d = _image_and_alpha(image, alpha)
    if (o.black_point, o.white_point) != (0.0, 1.0):
        a = levels(a, o.black_point, o.white_point)
    if o.fill_holes:
        a = fill_holes(a)
    if o.grow:
        a = grow(a, o.grow)
    if o.feather > 0:
        a = feather(a, o.feather)
    if o.invert:
        a = invert(a)
    if o.guided:
        a = refine_alpha(img, a, radius=o.guided_radius, eps=o.guided_eps, band_width=o.band_width)
    if o.foreground == "blur_fusion":
        fg = estimate_foreground(img, a, radii=o.foreground_radii)
    elif o.foreground == "multilevel":
        fg = estimate_foreground_ml(img, a)
    else:
        fg = img
    out_dtype = image.dtype if image.is_floating_point() else fg.dtype
    alpha_dtype = alpha.dtype if alpha.is_floating_point() else a.dtype
    return fg.to(out_dtype), _layout(a, three_d).to(alpha_dtype)
