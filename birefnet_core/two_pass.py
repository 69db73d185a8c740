"""Two-pass segmentation for large images: locate the subject small, segment it again large.

A network that sees a 4000-pixel photo at 1024 pixels loses every structure thinner than four
pixels. BiRefNet's authors advise, for 4K and more, to find the subject at the model's size,
cut it out of the full-resolution image and segment the cut-out again (upstream issue #247;
tiling was tried upstream and dropped: tiles lose the context that tells subject from
background). :class:`Predictor` does it per chunk when given ``refine``:

1. pass 1: the whole image at the predictor's resolution, probabilities at the image's size;
2. the subject's box: every pixel of pass 1 at or above ``threshold`` (all parts, not only the
   largest), grown by ``margin`` (a fraction of the box's sides) on each side, then grown to the
   aspect ratio of the pass-2 network size (so the cut-out is resized without distortion) and
   moved inside the image; where the image is too small for that aspect in one direction the
   cut-out takes the image's whole extent there (and is resized with some distortion, as pass 1
   is);
3. pass 2: every image's cut-out, taken from the full-resolution image and resized to the
   pass-2 size (one batch, whatever the cut-outs' sizes), through the same pipeline;
4. the merge: pass 2 inside the cut-out, pass 1 outside, and a feathered blend across a band
   ``feather`` x the cut-out's shorter side wide along the cut-out's edges that lie inside the
   image (edges on the image's border need none), so no seam shows.

Defined cases: nothing above the threshold (no subject found): pass 2 is skipped for that image,
its mask is pass 1's (logged once per call); a box covering the whole image at the pass-1 size:
pass 2 would repeat pass 1 exactly, so it is skipped (the result *is* pass 1); a cut-out smaller
than the network is enlarged to it; 1-pixel images work like any other.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

Box = Tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)

REFINE_SIZES = ("native", "1024", "1536", "2048", "2560")  # offered by the nodes (any size works in the core)


@dataclass(frozen=True)
class TwoPass:
    """Settings of the second pass.

    ``size``: the pass-2 network size as a resolution string or value ``Resolution.parse``
    accepts as a fixed size ("native": the model's own; "N" or N: N x N; "WxH"); "keep:" and
    "short:" sizes are refused (one batch of cut-outs needs one size). ``threshold``: pass-1
    probability that counts as subject for the box. ``margin``: added on each side of the box,
    as a fraction of its height (top, bottom) and width (left, right), at least
    ``min_margin_px``. ``feather``: width of the blend band, as a fraction of the cut-out's
    shorter side (at least 1 pixel)."""

    size: Union[None, str, int, Tuple[int, int]] = None
    threshold: float = 0.5
    margin: float = 0.1
    feather: float = 0.05
    min_margin_px: int = 8

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"refine threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if not 0.0 <= self.margin <= 10.0 or not math.isfinite(self.margin):
            raise ValueError(f"refine margin must be a fraction of the box in 0..10, got {self.margin}")
        if not 0.0 <= self.feather <= 0.5:
            raise ValueError(f"refine feather must be a fraction of the cut-out in 0..0.5, got {self.feather}")
        if self.min_margin_px < 0:
            raise ValueError(f"refine min_margin_px must be >= 0, got {self.min_margin_px}")

    @classmethod
    def parse(cls, value) -> Optional["TwoPass"]:
        """None, False, "off", "none", "" -> None (one pass); True, "native", "on" -> the model's
        size; an int, "N", "WxH" or (W, H) -> that size; a TwoPass -> itself."""
        if isinstance(value, TwoPass):
            return value
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("", "off", "none", "false", "no"):
                return None
            if text in ("native", "on", "true", "yes", "model"):
                return cls()
            if text.startswith(("keep", "long", "short")):
                raise ValueError(f"refine size must be a fixed size (native, N or WxH), got {value!r}: the cut-outs "
                                 "of one batch run at one size")
        if isinstance(value, (int, str, tuple, list)) and not isinstance(value, bool):
            return cls(size=value)
        raise ValueError(f"refine must be off, native, N or WxH, got {value!r}")


def subject_boxes(probs: torch.Tensor, threshold: float) -> List[Optional[Box]]:
    """The box around every pixel of ``probs`` [n, h, w] at or above ``threshold``, per image
    (None where there is none)."""
    hit = probs >= threshold
    rows, cols = hit.any(dim=2), hit.any(dim=1)  # [n, h], [n, w]
    found = rows.any(dim=1)
    h, w = probs.shape[-2:]
    # first and last True index per row of the [n, h] / [n, w] maps (argmax finds the first True)
    y0 = rows.float().argmax(dim=1)
    y1 = h - rows.flip(1).float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = w - cols.flip(1).float().argmax(dim=1)
    table = torch.stack([y0, y1, x0, x1], dim=1).tolist()
    return [tuple(int(v) for v in box) if ok else None for box, ok in zip(table, found.tolist())]


def _grow(start: float, end: float, length: float, limit: int) -> Tuple[int, int]:
    """The span [start, end) widened about its centre to ``length`` (at most ``limit``), moved
    inside [0, limit), in whole pixels."""
    length = min(max(length, end - start), limit)
    centre = (start + end) / 2
    lo = centre - length / 2
    lo = min(max(lo, 0.0), limit - length)
    a = max(0, int(math.floor(lo + 1e-6)))
    b = min(limit, int(math.ceil(lo + length - 1e-6)))
    return a, max(b, a + 1)


def crop_box(box: Box, height: int, width: int, aspect: float, margin: float, min_margin_px: int) -> Box:
    """The cut-out for a subject ``box`` in a ``height`` x ``width`` image: the box plus its
    margins, grown to ``aspect`` (width / height) where the image allows, inside the image."""
    y0, y1, x0, x1 = box
    bh, bw = y1 - y0, x1 - x0
    my = max(margin * bh, min_margin_px)
    mx = max(margin * bw, min_margin_px)
    top, bottom, left, right = y0 - my, y1 + my, x0 - mx, x1 + mx
    ch, cw = min(bottom - top, height), min(right - left, width)
    # grow the short direction to the aspect; where the image ends, the other direction does not shrink
    if cw / ch < aspect:
        cw = min(ch * aspect, width)
    else:
        ch = min(cw / aspect, height)
    cy0, cy1 = _grow(max(top, 0.0), min(bottom, float(height)), ch, height)
    cx0, cx1 = _grow(max(left, 0.0), min(right, float(width)), cw, width)
    return cy0, cy1, cx0, cx1


def feather_weights(box: Box, height: int, width: int, feather: float, device: torch.device) -> torch.Tensor:
    """[ch, cw] weights of pass 2 in the cut-out ``box``: 1 inside, falling linearly to 0 across
    the band along each edge that lies inside the image (not along the image's own border)."""
    y0, y1, x0, x1 = box
    ch, cw = y1 - y0, x1 - x0
    band = max(1.0, feather * min(ch, cw))

    def ramp(n: int, start_inside: bool, end_inside: bool) -> torch.Tensor:
        centres = torch.arange(n, device=device, dtype=torch.float32) + 0.5
        distance = torch.full((n,), float("inf"), device=device)
        if start_inside:
            distance = torch.minimum(distance, centres)
        if end_inside:
            distance = torch.minimum(distance, n - centres)
        return (distance / band).clamp_(max=1.0)

    wy = ramp(ch, y0 > 0, y1 < height)
    wx = ramp(cw, x0 > 0, x1 < width)
    return wy[:, None] * wx[None, :]


def resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [n, c, h, w] to ``size``, averaging when it shrinks (as the pipelines)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)


def refine(images: torch.Tensor, pass1: torch.Tensor, settings: TwoPass, network_size: Tuple[int, int],
           pass1_sizes: Sequence[Tuple[int, int]], run_pass2) -> Tuple[torch.Tensor, List[int]]:
    """Pass 2 and the merge for one chunk.

    ``images`` [n, 3, H, W] float 0..1 on the device; ``pass1`` [n, H, W] its pass-1
    probabilities; ``network_size`` (h, w) of pass 2; ``pass1_sizes`` the network size pass 1
    used per image (a cut-out equal to the whole image at that size repeats pass 1 and is
    skipped); ``run_pass2(batch [m, 3, h, w]) -> [m, h, w]`` the pipeline's probabilities.
    Returns the merged probabilities (``pass1`` updated in place) and the indices of the images
    where no subject was found."""
    n, _, height, width = images.shape
    aspect = network_size[1] / network_size[0]
    boxes = subject_boxes(pass1, settings.threshold)
    empty = [i for i, box in enumerate(boxes) if box is None]
    crops: List[Tuple[int, Box]] = []
    for i, box in enumerate(boxes):
        if box is None:
            continue
        crop = crop_box(box, height, width, aspect, settings.margin, settings.min_margin_px)
        if crop == (0, height, 0, width) and tuple(pass1_sizes[i]) == tuple(network_size):
            continue  # pass 2 would compute exactly pass 1
        crops.append((i, crop))
    if not crops:
        return pass1, empty
    batch = torch.cat([resize(images[i:i + 1, :, y0:y1, x0:x1], network_size) for i, (y0, y1, x0, x1) in crops])
    probs = run_pass2(batch)  # [m, h, w]
    for (i, box), p in zip(crops, probs):
        y0, y1, x0, x1 = box
        p = resize(p[None, None], (y1 - y0, x1 - x0))[0, 0]
        weight = feather_weights(box, height, width, settings.feather, p.device)
        region = pass1[i, y0:y1, x0:x1]
        region.add_(weight * (p - region))
    return pass1.clamp_(0.0, 1.0), empty
