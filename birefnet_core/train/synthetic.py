"""A deterministic DIS-like dataset: one foreground object per image, with its soft mask.

:func:`make_sample` draws one ``(image, mask)`` pair as a function of (size, seed) only;
:func:`write_dataset` writes ``<root>/im/<stem>.jpg`` and ``<root>/gt/<stem>.png``, the layout
:mod:`birefnet_core.train.data` reads. ``python -m birefnet_core.train.synthetic --out ROOT
--count N`` does the same from the shell. Used to show that the training script learns and by
the tests; it needs numpy and Pillow, and uses scikit-image's bundled photos when installed.

The object (its alpha is drawn at 4x4 supersampling and box-reduced, so edges are truly soft):

* a body: a smooth star-shaped blob, a union of ellipses, a thresholded smooth-noise blob
  (with natural holes), a ring (annulus), a lattice or fence panel (bars around real holes),
  or scikit-image's horse silhouette, scaled and rotated; plus up to two smaller attached
  parts (ellipses, blobs, rings, lattices) and sometimes elliptical holes punched into it;
* thin structures: cubic Bezier strokes and branching polylines (twigs) 1-3 px wide growing
  out of the body, Bezier handles that leave the body and return to it (closing a hole),
  and hair: bundles of random-walk curves (0.75-1.5 px wide) growing out of its boundary.

Appearance: the background is a random crop (rotated, zoomed, mirrored) of a scikit-image photo
or texture (astronaut, chelsea, coffee, rocket, motorcycle, immunohistochemistry; grass, gravel,
brick, camera, moon, coins, clock, cell, page) or a procedural texture (fractal noise, warped
stripes, warped checks, blotches, a smooth gradient with grain), recoloured (hue rotation,
saturation, mean colour and contrast drawn at random); the foreground is another source,
recoloured the same way and lit by a linear shading ramp; thin structures get a solid strand
colour. Foreground and background colours come from the same distribution, so colour alone
does not tell the classes apart; per image they differ in texture, mean colour and contrast,
and the background may be defocused and carry the object's drop shadow. The composite is
I = alpha F + (1 - alpha) B, plus Gaussian pixel noise, and optionally a JPEG round trip.
Without scikit-image only procedural textures are used and the horse is skipped (exactly the
output of ``use_skimage=False``).

``difficulty`` in [0, 1] (or a preset name: easy 0.1, default 0.25, medium 0.5, hard 0.9)
changes, linearly in d:

* the body's target area: uniform in [0.16 - 0.06 d, 0.46 - 0.12 d] of the image, less where
  an elongated body must shrink to fit the frame; after holes and thin structures the mask
  covers 10-50 % of the image for d <= 0.5 (measured over 200 seeds at 256x256: 12-43 % at
  d = 0.25, 11-40 % at d = 0.5, 9-36 % at d = 0.9);
* the minimum distance between the foreground's and background's mean RGB colours:
  0.3 (1 - d) (0..1 units); the strand colour likewise keeps 0.3 (1 - d) from the background;
* the chance that the background is defocused (Gaussian blur 1-2.5 px): 0.6 (1 - d);
* the chance that foreground and background are cut from the same source (camouflage): 0.4 d^2;
* the amount of thin structure: 0..(1 + round(3 d)) strokes, twigs or handles; a hair bundle
  with chance 0.25 + 0.5 d (8 + 12 d to 8 + 24 d strands), a second one with chance 0.5 d;
  lattices get finer (3 to 4 + round(4 d) cells across);
* distractors: 0..3 textured shapes in the background (not in the mask) when d > 0.3,
  each with chance (d - 0.3) / 0.7;
* pixel noise: standard deviation uniform in [0, 0.005 + 0.025 d].

At the default (0.25) a small model separates most objects by their contrast and edges; hair
and strokes hold a few per cent of the mask, so they show in thin-structure recall and HCE but
barely move IoU.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

Size = Tuple[int, int]  # (W, H)
Difficulty = Union[float, str]

PRESETS: Dict[str, float] = {"easy": 0.1, "default": 0.25, "medium": 0.5, "hard": 0.9}
DEFAULT_DIFFICULTY = PRESETS["default"]
SUPERSAMPLE = 4  # alpha is drawn on a canvas this many times larger per side, then box-reduced

_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "stereo_motorcycle")
_GREYS = ("grass", "gravel", "brick", "camera", "moon", "coins", "clock", "cell", "page")
_PROCEDURAL = ("fractal", "stripes", "checks", "blotches", "plain")
_SEED_TAG = 0x5D15  # keeps this module's streams apart from other users of the same seeds


def resolve_difficulty(value: Difficulty) -> float:
    """A preset name ("easy", "default", "medium", "hard") or a number in [0, 1] -> float."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        try:
            value = float(key)
        except ValueError:
            raise ValueError(f"difficulty must be a number in [0, 1] or one of {', '.join(PRESETS)}; "
                             f"got {value!r}") from None
    d = float(value)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"difficulty must be within [0, 1], got {d}")
    return d


def sample_seed(seed: int, index: int) -> int:
    """The 64-bit seed of sample ``index`` of a dataset seeded with ``seed`` (both >= 0)."""
    state = np.random.SeedSequence([int(seed), int(index), _SEED_TAG]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1]) << 32)


def _rng(seed: int, stream: int) -> np.random.Generator:
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SEED_TAG, stream]))


def _check_size(size: Size) -> Size:
    w, h = (int(size[0]), int(size[1]))
    if w < 16 or h < 16:
        raise ValueError(f"size (W, H) must be at least 16x16, got {tuple(size)!r}")
    return w, h


# ---------------------------------------------------------------------------------------------
# Texture sources
# ---------------------------------------------------------------------------------------------

def _skimage_data():
    try:
        import skimage.data as data  # optional: photos, textures and the horse
    except ImportError:
        return None
    return data


def _library(use_skimage: bool) -> Dict[str, Image.Image]:
    """name -> PIL image ('RGB' photos, 'L' textures) read from scikit-image; {} without it."""
    return _read_library(_skimage_data() if use_skimage else None)


def _horse(use_skimage: bool) -> Optional[Image.Image]:
    """The horse silhouette (see :func:`_read_horse`); None without scikit-image."""
    return _read_horse(_skimage_data() if use_skimage else None)


# keyed on the module itself, so that a process where scikit-image stops importing (a test
# blocking it) falls back instead of reusing what was read before
@lru_cache(maxsize=2)
def _read_library(data) -> Dict[str, Image.Image]:
    found: Dict[str, Image.Image] = {}
    if data is None:
        return found
    for name in _PHOTOS + _GREYS:
        try:
            array = getattr(data, name)()
        except Exception:  # a file this scikit-image release lacks or would download
            continue
        if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
            array = array[0]
        array = np.asarray(array)
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float64), 0, 1) * 255).astype(np.uint8) \
                if array.dtype.kind == "f" else array.astype(np.uint8)
        found[name] = Image.fromarray(array[..., :3] if array.ndim == 3 else array)
    return found


@lru_cache(maxsize=2)
def _read_horse(data) -> Optional[Image.Image]:
    """The horse silhouette as an 'F' image (1 inside, 0 outside, slightly smoothed so it
    scales up without stairs), cropped to its box with a margin."""
    if data is None:
        return None
    try:
        inside = ~np.asarray(data.horse(), dtype=bool)  # the file is a black horse on white
    except Exception:
        return None
    ys, xs = np.nonzero(inside)
    pad = 6
    crop = inside[max(0, ys.min() - pad):ys.max() + pad + 1, max(0, xs.min() - pad):xs.max() + pad + 1]
    image = Image.fromarray(crop.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1.0))
    return Image.fromarray(np.asarray(image, dtype=np.float32) / 255.0, "F")


def _upsampled_noise(rng: np.random.Generator, w: int, h: int, cell: float) -> np.ndarray:
    """[H, W] float32 smooth noise: a standard-normal grid with ``cell``-px spacing, bicubic."""
    gw, gh = max(2, int(math.ceil(w / cell)) + 2), max(2, int(math.ceil(h / cell)) + 2)
    grid = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), "F")
    # crop a random sub-cell offset so grid points do not always sit at the same pixels
    ox, oy = rng.uniform(0, 1), rng.uniform(0, 1)
    box = (ox, oy, ox + w / cell, oy + h / cell)
    return np.asarray(grid.resize((w, h), Image.BICUBIC, box=box), dtype=np.float32)


def _fractal(rng: np.random.Generator, w: int, h: int, base: float, octaves: int, persistence: float) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    amp, cell = 1.0, base
    for _ in range(octaves):
        if cell < 1.5:
            break
        out += amp * _upsampled_noise(rng, w, h, cell)
        amp *= persistence
        cell /= 2
    return out


def _procedural(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    """[H, W] float32 scalar texture (any scale) of the given kind."""
    side = min(w, h)
    if kind == "fractal":
        return _fractal(rng, w, h, side * rng.uniform(0.08, 0.5), int(rng.integers(3, 7)), rng.uniform(0.4, 0.75))
    if kind in ("stripes", "checks"):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        warp = _fractal(rng, w, h, side * rng.uniform(0.2, 0.6), 3, 0.5) * rng.uniform(0, 2.5)
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(4, 24) * side / 256
        u = (xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period) + warp
        sharp = rng.uniform(0.5, 6)
        value = np.tanh(sharp * np.sin(u))
        if kind == "checks":
            v = (-xx * math.sin(theta) + yy * math.cos(theta)) * (2 * math.pi / (period * rng.uniform(0.6, 1.6))) + warp
            value = value * np.tanh(sharp * np.sin(v))
        return value + 0.3 * _fractal(rng, w, h, side * 0.05, 2, 0.5)
    if kind == "blotches":
        field = _fractal(rng, w, h, side * rng.uniform(0.05, 0.25), 3, 0.5)
        levels = np.tanh(rng.uniform(2, 8) * field)
        return levels + 0.2 * _fractal(rng, w, h, 4.0, 2, 0.5)
    # "plain": a smooth gradient with fine grain
    grain = rng.uniform(0.02, 0.2) * rng.standard_normal((h, w)).astype(np.float32)
    return _fractal(rng, w, h, side * 1.5, 2, 0.5) + grain


def _photo_crop(rng: np.random.Generator, source: Image.Image, w: int, h: int) -> np.ndarray:
    """[H, W, C] float32 0..1: a rotated, zoomed, maybe mirrored crop that stays inside ``source``."""
    sw, sh = source.size
    angle = rng.uniform(-math.pi, math.pi) if rng.random() < 0.5 else rng.uniform(-0.2, 0.2)
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    fit = min(sw / (c * w + s * h), sh / (s * w + c * h))  # source px per output px that fits
    scale = min(fit, 1.5) * rng.uniform(0.3, 1.0)
    half_w = scale * (c * w + s * h) / 2
    half_h = scale * (s * w + c * h) / 2
    cx = rng.uniform(half_w, max(half_w, sw - half_w))
    cy = rng.uniform(half_h, max(half_h, sh - half_h))
    ca, sa = math.cos(angle) * scale, math.sin(angle) * scale
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    # output (x, y) -> source: centre + R (mirror (x - w/2), y - h/2) * scale
    a, b, d, e = ca * mirror, -sa, sa * mirror, ca
    data = (a, b, cx - a * w / 2 - b * h / 2, d, e, cy - d * w / 2 - e * h / 2)
    crop = source.transform((w, h), Image.AFFINE, data, resample=Image.BILINEAR)
    return np.asarray(crop, dtype=np.float32) / 255.0


def _hue_rotation(angle: float) -> np.ndarray:
    """3x3 rotation about the grey axis (1, 1, 1) / sqrt(3) (Rodrigues)."""
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) * math.cos(angle) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(k, k)


def _recolour(rng: np.random.Generator, texture: np.ndarray, mean: np.ndarray, std: float) -> np.ndarray:
    """[H, W, 3] float32 0..1 with about the given mean colour and standard deviation.

    RGB textures: hue rotation and saturation change of their chroma; scalar textures ([H, W]):
    tinted along a colour direction near ``mean``, with a second independent tint sometimes."""
    if texture.ndim == 2:
        t = texture - texture.mean()
        direction = np.clip(mean + rng.normal(0, 0.25, 3), 0.05, None)
        out = t[..., None] * (direction / np.linalg.norm(direction)).astype(np.float32)
        if rng.random() < 0.5:  # a second scalar pattern along another colour direction
            turned = t[::-1, ::-1] if rng.random() < 0.5 else t[::-1, :]  # seamless, unlike a roll
            out += 0.5 * turned[..., None] * rng.normal(0, 1, 3).astype(np.float32) / math.sqrt(3)
    else:
        grey = np.full((3, 3), 1 / 3)
        matrix = grey + rng.uniform(0.2, 1.6) * _hue_rotation(rng.uniform(0, 2 * math.pi)) @ (np.eye(3) - grey)
        out = (texture - texture.reshape(-1, 3).mean(0)) @ matrix.T.astype(np.float32)
    spread = float(out.std())
    out *= std / max(spread, 1e-4)
    out += mean.astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def _texture(rng: np.random.Generator, source: str, w: int, h: int, library: Dict[str, Image.Image],
             mean: np.ndarray, std: float) -> np.ndarray:
    if source in library:
        raw = _photo_crop(rng, library[source], w, h)
    else:
        raw = _procedural(rng, source, w, h)
    return _recolour(rng, raw, mean, std)


def _pick_sources(rng: np.random.Generator, library: Dict[str, Image.Image], d: float) -> Tuple[str, str, str]:
    """(background, foreground, distractor) source names; foreground differs from background
    unless the camouflage draw (chance 0.4 d^2) says otherwise."""
    photos = [n for n in _PHOTOS if n in library]
    greys = [n for n in _GREYS if n in library]

    def draw(weights: Sequence[float], exclude: Tuple[str, ...] = ()) -> str:
        groups = [g for g in (photos, greys, list(_PROCEDURAL))]
        while True:
            p = np.array([wt if groups[i] else 0.0 for i, wt in enumerate(weights)])
            group = groups[int(rng.choice(3, p=p / p.sum()))]
            options = [n for n in group if n not in exclude] or [n for n in _PROCEDURAL if n not in exclude]
            if options:
                return str(options[int(rng.integers(len(options)))])

    background = draw((0.5, 0.2, 0.3))
    foreground = background if rng.random() < 0.4 * d * d else draw((0.3, 0.3, 0.4), (background,))
    distractor = draw((0.3, 0.3, 0.4), (foreground,))
    return background, foreground, distractor


def _colour_pair(rng: np.random.Generator, min_distance: float) -> Tuple[np.ndarray, np.ndarray]:
    """Two mean colours (RGB 0..1) at least ``min_distance`` apart (best of 32 tries)."""
    first = rng.uniform(0.12, 0.88, 3)
    best, best_distance = None, -1.0
    for _ in range(32):
        second = rng.uniform(0.12, 0.88, 3)
        distance = float(np.linalg.norm(second - first))
        if distance > best_distance:
            best, best_distance = second, distance
        if distance >= min_distance:
            break
    return first, best


def _far_colour(rng: np.random.Generator, other: np.ndarray, min_distance: float, near: np.ndarray) -> np.ndarray:
    """A colour near ``near`` (or random) at least ``min_distance`` from ``other``."""
    best, best_distance = None, -1.0
    for attempt in range(32):
        base = near if attempt < 16 and rng.random() < 0.5 else rng.uniform(0.05, 0.95, 3)
        colour = np.clip(base * rng.uniform(0.3, 1.3) + rng.normal(0, 0.1, 3), 0.02, 0.98)
        distance = float(np.linalg.norm(colour - other))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= min_distance:
            break
    return best


# ---------------------------------------------------------------------------------------------
# Shapes: planned in the object's unit coordinates, drawn on a supersampled canvas
# ---------------------------------------------------------------------------------------------

@dataclass
class _Polys:
    """Polygons drawn in order (fill 255 adds, 0 cuts) on their own layer, then united."""
    items: List[Tuple[np.ndarray, int]]  # ([N, 2] unit coordinates, fill)


@dataclass
class _Raster:
    """An 'F' image covering the unit square [-extent, extent]^2 (row 0 at -extent), inside
    where its value exceeds ``threshold`` (> 0: outside the image counts as outside)."""
    image: Image.Image
    extent_x: float
    extent_y: float
    threshold: float


class _Frame:
    """Unit coordinates u -> output pixels centre + M u (M: scale, rotation, mirror); drawing
    happens at ``factor`` canvas pixels per output pixel."""

    def __init__(self, centre: Sequence[float], scale: float, angle: float, mirror: bool, factor: float) -> None:
        c, s = math.cos(angle), math.sin(angle)
        self.matrix = scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
        self.centre = np.asarray(centre, dtype=np.float64)
        self.factor = factor

    def canvas(self, u: np.ndarray) -> np.ndarray:
        return self.factor * (u @ self.matrix.T + self.centre)

    def unit(self, pixels: np.ndarray) -> np.ndarray:
        return (pixels - self.centre) @ np.linalg.inv(self.matrix).T

    def raster_affine(self, raster: _Raster) -> Tuple[float, ...]:
        """PIL AFFINE data: canvas pixel -> pixel of ``raster.image``."""
        iw, ih = raster.image.size
        k = np.diag([iw / (2 * raster.extent_x), ih / (2 * raster.extent_y)])
        inverse = np.linalg.inv(self.matrix)
        linear = k @ inverse / self.factor
        offset = -k @ inverse @ self.centre + k @ np.array([raster.extent_x, raster.extent_y])
        return (linear[0, 0], linear[0, 1], offset[0], linear[1, 0], linear[1, 1], offset[1])


def _flat(points: np.ndarray) -> List[float]:
    return points.reshape(-1).tolist()


def _draw_parts(parts: Sequence[Union[_Polys, _Raster]], frame: _Frame, canvas_size: Size) -> Image.Image:
    """'L' canvas (0/255) of the union of ``parts``."""
    canvas = Image.new("L", canvas_size, 0)
    for part in parts:
        if isinstance(part, _Raster):
            field = part.image.transform(canvas_size, Image.AFFINE, frame.raster_affine(part), resample=Image.BILINEAR)
            inside = (np.asarray(field) > part.threshold).astype(np.uint8) * 255
            canvas = ImageChops.lighter(canvas, Image.fromarray(inside))
            continue
        if all(fill for _, fill in part.items):
            layer = canvas
        else:
            layer = Image.new("L", canvas_size, 0)
        draw = ImageDraw.Draw(layer)
        for points, fill in part.items:
            draw.polygon(_flat(frame.canvas(points)), fill=fill)
        if layer is not canvas:
            canvas = ImageChops.lighter(canvas, layer)
    return canvas


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _star(rng: np.random.Generator, n: int = 128, roughness: float = 0.22) -> np.ndarray:
    """A smooth star-shaped blob of mean radius ~1: r(t) = 1 + sum_k a_k sin(k t + phi_k)."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 8):
        r += rng.uniform(0, roughness) / k ** 0.7 * np.sin(k * t + rng.uniform(0, 2 * math.pi))
    r = np.maximum(r, 0.25)
    aspect = rng.uniform(0.55, 1.0)
    return np.stack([r * np.cos(t), aspect * r * np.sin(t)], 1)


def _place(points: np.ndarray, centre: np.ndarray, scale: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ (scale * np.array([[c, -s], [s, c]])).T + centre


def _clip_chord(polygon: np.ndarray, point: np.ndarray, direction: np.ndarray) -> Optional[Tuple[float, float]]:
    """Parameter range [t0, t1] of the line point + t direction inside a convex polygon
    (counter-clockwise or clockwise), or None (Cyrus-Beck)."""
    t0, t1 = -np.inf, np.inf
    area = 0.5 * np.sum(polygon[:, 0] * np.roll(polygon[:, 1], -1) - np.roll(polygon[:, 0], -1) * polygon[:, 1])
    sign = 1.0 if area > 0 else -1.0
    for i in range(len(polygon)):
        p, q = polygon[i], polygon[(i + 1) % len(polygon)]
        edge = q - p
        normal = sign * np.array([edge[1], -edge[0]])  # outward
        denominator = float(normal @ direction)
        numerator = float(normal @ (p - point))
        if abs(denominator) < 1e-12:
            if numerator < 0:
                return None
            continue
        t = numerator / denominator
        if denominator > 0:
            t1 = min(t1, t)
        else:
            t0 = max(t0, t)
    return (t0, t1) if t1 > t0 else None


def _lattice(rng: np.random.Generator, d: float) -> _Polys:
    """A panel (rectangle or ellipse, long half-axis 1) with a frame and a grid, fence or
    diagonal lattice of bars; the cells between the bars are holes."""
    half_w, half_h = 1.0, rng.uniform(0.45, 1.0)
    rect = rng.random() < 0.6
    region = (np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
              if rect else _ellipse(0, 0, half_w, half_h, 0.0, 64))
    cells = int(rng.integers(3, 5 + round(4 * d)))
    period = 2 * half_w / cells
    bar = period * rng.uniform(0.2, 0.45)
    frame = bar * rng.uniform(1.0, 2.0)
    inner_w, inner_h = half_w - frame, half_h - frame
    inset = (np.array([[-inner_w, -inner_h], [inner_w, -inner_h], [inner_w, inner_h], [-inner_w, inner_h]])
             if rect else _ellipse(0, 0, inner_w, inner_h, 0.0, 64))
    style = rng.choice(["grid", "fence", "diagonal"], p=[0.45, 0.35, 0.2])
    if style == "grid":
        families = [(0.0, period), (math.pi / 2, period * rng.uniform(0.7, 1.4))]
    elif style == "fence":  # pickets and two or three rails
        families = [(0.0, period), (math.pi / 2, 2 * half_h / int(rng.integers(2, 4)))]
    else:
        families = [(math.pi / 4, period), (-math.pi / 4, period)]
    items: List[Tuple[np.ndarray, int]] = [(region, 255), (inset, 0)]
    for angle, step in families:
        normal = np.array([math.cos(angle), math.sin(angle)])  # bars run perpendicular to this
        along = np.array([-normal[1], normal[0]])
        reach = math.hypot(half_w, half_h)
        for offset in np.arange(-reach + step / 2 * rng.uniform(0.5, 1.5), reach, step):
            point = normal * offset
            chord = _clip_chord(inset, point, along)
            if chord is None:
                continue
            t0, t1 = chord[0] - bar, chord[1] + bar  # into the frame
            half = normal * bar / 2
            ends = (point + along * t0, point + along * t1)
            items.append((np.array([ends[0] - half, ends[1] - half, ends[1] + half, ends[0] + half]), 255))
    return _Polys(items)


def _ring(rng: np.random.Generator) -> _Polys:
    """An annulus: a blob with a smaller, slightly offset copy of it cut out."""
    outer = _star(rng, roughness=0.12)
    inner = outer * rng.uniform(0.4, 0.72) + rng.uniform(-0.1, 0.1, 2)
    return _Polys([(outer, 255), (inner, 0)])


def _ellipse_union(rng: np.random.Generator) -> _Polys:
    items = [(_ellipse(0, 0, 1.0, rng.uniform(0.35, 0.9), rng.uniform(0, math.pi)), 255)]
    for _ in range(int(rng.integers(1, 5))):
        anchor = items[int(rng.integers(len(items)))][0]
        at = anchor[int(rng.integers(len(anchor)))] * rng.uniform(0.6, 1.0)
        axes = rng.uniform(0.25, 0.7), rng.uniform(0.15, 0.5)
        items.append((_ellipse(at[0], at[1], axes[0], axes[1], rng.uniform(0, math.pi)), 255))
    return _Polys(items)


def _noise_blob(rng: np.random.Generator) -> _Raster:
    """Thresholded smooth noise on a radial envelope: lobes, bays and the odd natural hole."""
    n, extent = 96, 1.4
    noise = np.asarray(Image.fromarray(rng.standard_normal((7, 7)).astype(np.float32), "F")
                       .resize((n, n), Image.BICUBIC), dtype=np.float32)
    axis = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 * extent - extent
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    envelope = 1.0 - (xx ** 2 + yy ** 2)
    field = envelope + rng.uniform(0.4, 0.8) * noise / max(float(noise.std()), 1e-3)
    # threshold 1 after shifting: the transform's zero fill outside counts as outside
    return _Raster(Image.fromarray((field + 1.0).astype(np.float32), "F"), extent, extent, 1.0)


def _horse_part(horse: Image.Image) -> _Raster:
    w, h = horse.size
    scale = max(w, h)
    return _Raster(horse, w / scale, h / scale, 0.5)


def _plan_body(rng: np.random.Generator, d: float, horse: Optional[Image.Image]) -> Tuple[str, list]:
    kinds = ["star", "ellipses", "noise", "ring", "lattice", "horse"]
    weights = np.array([0.24, 0.2, 0.18, 0.12, 0.12, 0.14 if horse is not None else 0.0])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    if kind == "star":
        parts: list = [_Polys([(_star(rng), 255)])]
    elif kind == "ellipses":
        parts = [_ellipse_union(rng)]
    elif kind == "noise":
        parts = [_noise_blob(rng)]
    elif kind == "ring":
        parts = [_ring(rng)]
    elif kind == "lattice":
        parts = [_lattice(rng, d)]
    else:
        parts = [_horse_part(horse)]
    if kind != "horse":
        for _ in range(int(rng.choice(3, p=[0.5, 0.35, 0.15]))):
            at = _ellipse(0, 0, 1, 1, 0, 360)[int(rng.integers(360))] * rng.uniform(0.6, 1.1)
            size, angle = rng.uniform(0.3, 0.6), rng.uniform(0, 2 * math.pi)
            extra = rng.choice(["ellipse", "star", "ring", "lattice"], p=[0.4, 0.3, 0.15, 0.15])
            if extra == "ellipse":
                items = [(_ellipse(0, 0, 1.0, rng.uniform(0.3, 1.0), 0.0), 255)]
            elif extra == "star":
                items = [(_star(rng), 255)]
            elif extra == "ring":
                items = _ring(rng).items
            else:
                items = _lattice(rng, d).items
            parts.append(_Polys([(_place(points, at, size, angle), fill) for points, fill in items]))
    return kind, parts


# ---------------------------------------------------------------------------------------------
# Thin structures, in output pixels
# ---------------------------------------------------------------------------------------------

def _interior(mask: np.ndarray, size: int) -> np.ndarray:
    """[H, W] bool: pixels whose size x size box (odd size) lies wholly inside ``mask``
    (an erosion by a square, from an integral image: its cost does not grow with size)."""
    h, w = mask.shape
    r = size // 2
    table = np.zeros((h + 1, w + 1), np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    out = np.zeros_like(mask)
    if h <= 2 * r or w <= 2 * r:
        return out
    inside = (table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]) == size * size
    out[r:h - r, r:w - r] = inside
    return out


def _boundary(body: Image.Image) -> Tuple[np.ndarray, np.ndarray]:
    """Boundary pixels ([N, 2] x, y) of a 1x 'L' alpha and their outward unit normals."""
    a = np.asarray(body)
    inside = a >= 128
    edge = inside & ~(np.asarray(body.filter(ImageFilter.MinFilter(3))) >= 128)
    h, w = a.shape
    edge[:2, :] = edge[-2:, :] = False  # the frame's edge is no boundary of the object
    edge[:, :2] = edge[:, -2:] = False
    ys, xs = np.nonzero(edge)
    if len(xs) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    smooth = np.asarray(body.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
    gy, gx = np.gradient(smooth)
    normals = -np.stack([gx[ys, xs], gy[ys, xs]], 1).astype(np.float64)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    keep = length[:, 0] > 1e-3
    return np.stack([xs, ys], 1)[keep].astype(np.float64), normals[keep] / length[keep]


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _bezier(p: Sequence[np.ndarray], count: int) -> np.ndarray:
    t = np.linspace(0, 1, count)[:, None]
    return ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3])


def _line(draw: ImageDraw.ImageDraw, points: np.ndarray, width: float, factor: float) -> None:
    if len(points) >= 2:
        draw.line(_flat(points * factor), fill=255, width=max(1, int(round(width * factor))), joint="curve")


def _draw_thin(rng: np.random.Generator, draw: ImageDraw.ImageDraw, points: np.ndarray, normals: np.ndarray,
               side: float, factor: float, d: float) -> None:
    """Strokes, twigs, handles and hair bundles growing out of the boundary (points, normals)."""
    n = len(points)
    if n == 0:
        return
    unit = side / 256.0

    def root() -> Tuple[np.ndarray, np.ndarray]:
        i = int(rng.integers(n))
        return points[i] - normals[i] * rng.uniform(1.5, 4.0), normals[i]

    for _ in range(int(rng.integers(0, 2 + round(3 * d)))):
        style = rng.choice(["bezier", "twig", "handle"], p=[0.45, 0.35, 0.2])
        width = rng.uniform(1.0, 3.0)
        if style == "bezier":
            start, normal = root()
            length = rng.uniform(0.12, 0.4) * side
            end = start + _rotate(normal, rng.uniform(-0.9, 0.9)) * length
            c1 = start + _rotate(normal, rng.uniform(-0.5, 0.5)) * length * rng.uniform(0.2, 0.5)
            c2 = end + _rotate(normal, rng.uniform(0, 2 * math.pi)) * length * rng.uniform(0.1, 0.5)
            _line(draw, _bezier([start, c1, c2, end], max(12, int(length / 2))), width, factor)
        elif style == "twig":
            start, normal = root()
            branches = [(start, math.atan2(normal[1], normal[0]) + rng.normal(0, 0.3), width, 0)]
            while branches:
                at, heading, w, depth = branches.pop()
                path = [at]
                for _ in range(int(rng.integers(3, 7))):
                    heading += rng.normal(0, 0.45)
                    step = rng.uniform(0.03, 0.08) * side
                    path.append(path[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
                    if depth == 0 and rng.random() < 0.3:
                        branches.append((path[-1], heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0),
                                         max(1.0, 0.7 * w), 1))
                _line(draw, np.array(path), w, factor)
        else:  # a handle: leaves the body and comes back, enclosing a hole
            i = int(rng.integers(n))
            near = np.linalg.norm(points - points[i], axis=1)
            candidates = np.nonzero((near > 0.12 * side) & (near < 0.4 * side))[0]
            if len(candidates) == 0:
                continue
            j = int(candidates[int(rng.integers(len(candidates)))])
            mean_normal = normals[i] + normals[j]
            if np.linalg.norm(mean_normal) < 0.5:
                continue
            mean_normal /= np.linalg.norm(mean_normal)
            height = near[j] * rng.uniform(0.4, 0.9)
            ends = (points[i] - normals[i] * 3, points[j] - normals[j] * 3)
            curve = _bezier([ends[0], points[i] + mean_normal * height, points[j] + mean_normal * height, ends[1]],
                            max(16, int(near[j])))
            _line(draw, curve, width, factor)

    bundles = int(rng.random() < 0.25 + 0.5 * d) + int(rng.random() < 0.5 * d)
    for _ in range(bundles):
        i = int(rng.integers(n))
        near = np.nonzero(np.linalg.norm(points - points[i], axis=1) < rng.uniform(6, 24) * unit)[0]
        base = _rotate(normals[i], rng.uniform(-0.5, 0.5))
        curl = rng.normal(0, 0.03) / unit
        length_scale = rng.uniform(10, 40) * unit
        for _ in range(int(8 + 24 * d * rng.uniform(0.5, 1.0))):
            j = int(near[int(rng.integers(len(near)))])
            position = points[j] - normals[j] * rng.uniform(1.0, 3.0)
            heading = math.atan2(base[1] + 0.5 * normals[j][1], base[0] + 0.5 * normals[j][0]) + rng.normal(0, 0.25)
            bend = curl + rng.normal(0, 0.02) / unit
            steps = max(4, int(length_scale * rng.uniform(0.5, 1.3)))
            jitter = rng.normal(0, 0.08, steps)
            path = [position]
            for k in range(steps):
                heading += bend + jitter[k]
                path.append(path[-1] + np.array([math.cos(heading), math.sin(heading)]))
            _line(draw, np.array(path), rng.uniform(0.75, 1.5), factor)


# ---------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticLayers:
    """One scene's layers, float32 in 0..1: ``image`` [H, W, 3] = alpha F + (1 - alpha) B
    exactly (before noise, quantisation and JPEG), ``alpha`` [H, W] (multiples of 1/255),
    ``foreground`` [H, W, 3], ``background`` [H, W, 3]; ``noise_sigma``: the pixel noise
    :func:`make_sample` adds; ``kind``: the body's kind (star, ellipses, noise, ring, lattice,
    horse)."""
    image: np.ndarray
    alpha: np.ndarray
    foreground: np.ndarray
    background: np.ndarray
    noise_sigma: float
    kind: str


def make_layers(size: Size, seed: int, *, difficulty: Difficulty = DEFAULT_DIFFICULTY,
                use_skimage: bool = True) -> SyntheticLayers:
    """The layers of sample ``seed`` at ``size`` = (W, H) (see the module docstring)."""
    w, h = _check_size(size)
    d = resolve_difficulty(difficulty)
    rng = _rng(seed, 0)
    library = _library(use_skimage)
    horse = _horse(use_skimage)
    side = float(min(w, h))

    # --- the body: planned in unit coordinates, measured at 1x, then scaled to its target area
    kind, parts = _plan_body(rng, d, horse)
    angle = rng.uniform(-0.45, 0.45) if kind == "horse" else rng.uniform(0, 2 * math.pi)
    mirror = bool(rng.random() < 0.5)
    trial_scale = 0.18 * side
    trial = _Frame((w / 2, h / 2), trial_scale, angle, mirror, 1.0)
    trial_canvas = _draw_parts(parts, trial, (w, h))
    trial_mask = np.asarray(trial_canvas) > 127
    trial_area = max(int(trial_mask.sum()), 1) / trial_scale ** 2  # in unit^2
    ys, xs = np.nonzero(trial_mask) if trial_mask.any() else (np.array([h / 2]), np.array([w / 2]))
    # the drawing's extent around the centre, in output pixels per unit of scale
    extent_lo = np.array([xs.min() - w / 2, ys.min() - h / 2]) / trial_scale
    extent_hi = np.array([xs.max() + 1 - w / 2, ys.max() + 1 - h / 2]) / trial_scale

    target = rng.uniform(0.16 - 0.06 * d, 0.46 - 0.12 * d) * w * h
    scale = math.sqrt(target / trial_area)
    span = np.maximum(extent_hi - extent_lo, 1e-6)
    scale = min(scale, 0.96 * w / span[0], 0.96 * h / span[1])
    low = -extent_lo * scale
    high = np.array([w, h]) - extent_hi * scale
    centre = np.where(high > low, low + (high - low) * rng.uniform(0, 1, 2), (low + high) / 2)

    # holes punched where the body is thick (their places found on the trial drawing)
    holes: List[Tuple[np.ndarray, int]] = []
    if kind in ("star", "ellipses", "noise", "horse") and rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 4))):
            radius_px = rng.uniform(0.1, 0.3) * math.sqrt(trial_area) * trial_scale
            yy, xx = np.nonzero(_interior(trial_mask, int(2.6 * radius_px) | 1))
            if radius_px < 1 or len(xx) == 0:
                continue
            k = int(rng.integers(len(xx)))
            at = trial.unit(np.array([[xx[k] + 0.5, yy[k] + 0.5]]))[0]
            r = radius_px / trial_scale
            holes.append((_ellipse(at[0], at[1], r, r * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)), 0))

    f = SUPERSAMPLE
    frame = _Frame(centre, scale, angle, mirror, float(f))
    canvas = _draw_parts(parts, frame, (w * f, h * f))
    draw = ImageDraw.Draw(canvas)
    for points, _ in holes:  # cut through every part
        draw.polygon(_flat(frame.canvas(points)), fill=0)
    body = canvas.reduce(f)

    thin = Image.new("L", canvas.size, 0)
    points, normals = _boundary(body)
    _draw_thin(rng, ImageDraw.Draw(thin), points, normals, side, float(f), d)
    full = ImageChops.lighter(canvas, thin).reduce(f)
    alpha = np.asarray(full, dtype=np.float32) / 255.0
    body_alpha = np.asarray(body, dtype=np.float32) / 255.0
    thin_share = np.clip((alpha - body_alpha) / np.maximum(alpha, 1e-6), 0.0, 1.0)[..., None]

    # --- appearance
    bg_source, fg_source, distractor_source = _pick_sources(rng, library, d)
    bg_mean, fg_mean = _colour_pair(rng, 0.3 * (1 - d))
    background = _texture(rng, bg_source, w, h, library, bg_mean, rng.uniform(0.05, 0.2))
    if rng.random() < 0.6 * (1 - d):  # defocused background
        blur = ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5))
        blurred = Image.fromarray((background * 255).astype(np.uint8)).filter(blur)
        background = np.asarray(blurred, dtype=np.float32) / 255.0
    foreground = _texture(rng, fg_source, w, h, library, fg_mean, rng.uniform(0.05, 0.2))

    for _ in range(3):  # distractors: textured shapes in the background, not in the mask
        if d <= 0.3 or rng.random() >= (d - 0.3) / 0.7:
            continue
        shape = _Polys([(_star(rng), 255)]) if rng.random() < 0.5 else _ellipse_union(rng)
        where = rng.uniform(0, 1, 2) * np.array([w, h])
        layer = _draw_parts([shape], _Frame(where, rng.uniform(0.05, 0.15) * side, rng.uniform(0, 2 * math.pi),
                                            False, 2.0), (2 * w, 2 * h)).reduce(2)
        cover = np.asarray(layer, dtype=np.float32)[..., None] / 255.0
        _, colour = _colour_pair(rng, 0.0)
        texture = _texture(rng, distractor_source, w, h, library, colour, rng.uniform(0.05, 0.2))
        background = cover * texture + (1 - cover) * background

    if rng.random() < 0.4:  # the object's drop shadow on the background
        shift = rng.uniform(2, 8, 2) * (side / 256) * rng.choice([-1, 1], 2)
        shadow = full.filter(ImageFilter.GaussianBlur(rng.uniform(2, 6) * side / 256))
        shadow = shadow.transform(shadow.size, Image.AFFINE, (1, 0, -shift[0], 0, 1, -shift[1]),
                                  resample=Image.BILINEAR)
        background = background * (1 - rng.uniform(0.2, 0.5) * np.asarray(shadow, dtype=np.float32)[..., None] / 255.0)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - centre[0]) * math.cos(light) + (yy - centre[1]) * math.sin(light)) / (scale * 1.5)
    foreground = np.clip(foreground * (1 + rng.uniform(0.0, 0.25) * np.clip(ramp, -1, 1))[..., None], 0, 1)
    strand = _far_colour(rng, bg_mean, 0.3 * (1 - d), fg_mean).astype(np.float32)
    foreground = (1 - thin_share) * foreground + thin_share * strand

    a3 = alpha[..., None]
    image = a3 * foreground + (1 - a3) * background
    sigma = rng.uniform(0, 0.005 + 0.025 * d)
    return SyntheticLayers(image.astype(np.float32), alpha, foreground.astype(np.float32),
                           background.astype(np.float32), float(sigma), kind)


def make_sample(size: Size, seed: int, *, difficulty: Difficulty = DEFAULT_DIFFICULTY,
                use_skimage: bool = True, jpeg_quality: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(image [H, W, 3] uint8, mask [H, W] uint8 0..255 with soft edges) for ``size`` = (W, H).

    A deterministic function of (size, seed, difficulty, use_skimage, jpeg_quality): the same
    arguments give the same bytes (a process-global random state is never used). ``seed`` >= 0.
    ``jpeg_quality`` (1-95): round-trip the image through JPEG at that quality; None: no JPEG.
    """
    layers = make_layers(size, seed, difficulty=difficulty, use_skimage=use_skimage)
    noise = _rng(seed, 1).standard_normal(layers.image.shape).astype(np.float32) * layers.noise_sigma
    image = np.clip(layers.image + noise, 0, 1)
    image = (image * 255 + 0.5).astype(np.uint8)
    if jpeg_quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(jpeg_quality))
        image = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    mask = (layers.alpha * 255 + 0.5).astype(np.uint8)
    return image, mask


def jittered_size(size: Size, jitter: float, seed: int) -> Size:
    """(W, H) with each side scaled by a factor uniform in [1 - jitter, 1 + jitter] (at least
    32 px), drawn from ``seed``; ``size`` itself when jitter is 0."""
    w, h = _check_size(size)
    if not 0 <= jitter < 1:
        raise ValueError(f"size_jitter must be within [0, 1), got {jitter}")
    if jitter == 0:
        return w, h
    factors = _rng(seed, 2).uniform(1 - jitter, 1 + jitter, 2)
    return max(32, int(round(w * factors[0]))), max(32, int(round(h * factors[1])))


def write_dataset(root: Union[str, Path], count: int, size: Size = (256, 256), seed: int = 0, *,
                  start: int = 0, difficulty: Difficulty = DEFAULT_DIFFICULTY, size_jitter: float = 0.0,
                  jpeg_quality: Optional[int] = 90, use_skimage: bool = True, progress=None) -> List[str]:
    """Write samples ``start .. start + count - 1`` as ``<root>/im/<stem>.jpg`` (RGB, JPEG at
    ``jpeg_quality``; ``.png`` when it is None or 0) and ``<root>/gt/<stem>.png`` (8-bit L);
    stems ``synth_000123`` (the sample index). Sample i is ``make_sample(size_i,
    sample_seed(seed, i))``, so sets with different seeds, or the same seed and disjoint index
    ranges, share no sample; ``size_i`` is ``size`` or, with ``size_jitter`` > 0, a jittered
    size (see :func:`jittered_size`). ``progress``: an object with ``update(steps, note)`` such
    as :class:`birefnet_core.progress.ConsoleProgress`, called once per sample. Returns the stems.
    """
    if count < 0 or start < 0:
        raise ValueError(f"count and start must be >= 0, got count={count}, start={start}")
    d = resolve_difficulty(difficulty)
    root = Path(root)
    im_dir, gt_dir = root / "im", root / "gt"
    im_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    suffix, other = (".jpg", ".png") if jpeg_quality else (".png", ".jpg")
    stems: List[str] = []
    for index in range(start, start + count):
        own_seed = sample_seed(seed, index)
        image, mask = make_sample(jittered_size(size, size_jitter, own_seed), own_seed, difficulty=d,
                                  use_skimage=use_skimage)
        stem = f"synth_{index:06d}"
        stale = im_dir / (stem + other)  # the loader would pair the stale file instead
        if stale.exists():
            stale.unlink()
        if jpeg_quality:
            Image.fromarray(image).save(im_dir / (stem + suffix), quality=int(jpeg_quality))
        else:
            Image.fromarray(image).save(im_dir / (stem + suffix), compress_level=1)
        Image.fromarray(mask, "L").save(gt_dir / (stem + ".png"), compress_level=1)
        stems.append(stem)
        if progress is not None:
            progress.update(1, stem)
    return stems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet_core.train.synthetic",
        description="Write a deterministic synthetic DIS-like dataset: ROOT/im/*.jpg and ROOT/gt/*.png.")
    parser.add_argument("--out", required=True, help="dataset root; im/ and gt/ are created in it")
    parser.add_argument("--count", type=int, required=True, help="number of samples")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"),
                        help="image size (256 256)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (0); use another for a disjoint set")
    parser.add_argument("--start", type=int, default=0, help="first sample index (0)")
    parser.add_argument("--difficulty", default=str(DEFAULT_DIFFICULTY),
                        help=f"0..1 or one of {', '.join(PRESETS)} (default {DEFAULT_DIFFICULTY})")
    parser.add_argument("--size-jitter", type=float, default=0.0, help="scale each side by 1 +- this (0: off)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the images; 0 writes PNG (90)")
    parser.add_argument("--no-skimage", action="store_true", help="procedural textures only, no horse")
    args = parser.parse_args(argv)
    try:
        difficulty = resolve_difficulty(args.difficulty)
        _check_size(args.size)
    except ValueError as error:
        parser.error(str(error))
    from ..progress import ConsoleProgress

    began = time.monotonic()
    with ConsoleProgress(args.count, "synthetic") as bar:
        write_dataset(args.out, args.count, tuple(args.size), args.seed, start=args.start, difficulty=difficulty,
                      size_jitter=args.size_jitter, jpeg_quality=args.jpeg_quality or None,
                      use_skimage=not args.no_skimage, progress=bar)
    elapsed = time.monotonic() - began
    print(f"wrote {args.count} samples to {args.out} in {elapsed:.1f} s "
          f"({args.count / max(elapsed, 1e-9):.1f} samples/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
