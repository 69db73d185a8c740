"""Training data: ``<root>/im/`` images and ``<root>/gt/`` masks with matching file stems.

* :func:`find_pairs` pairs the files of one or more roots and checks every file's header up
  front, so that a bad file stops the run before the first epoch, with its name, instead of
  halfway through one. Images without a mask (and masks without an image) are skipped and
  listed once.
* :class:`SegmentationDataset` reads one pair, resizes both to the size its batch asks for
  (masks of another size than their image are resized too) and applies the official
  augmentations: horizontal flip (p 0.5), colour enhancement (brightness, contrast 0.5-1.5,
  colour 0-2, sharpness 0-3), rotation within +-15 degrees (p 0.2) and pepper noise (0.15 % of
  the pixels set to 0 or 255).
* :class:`BatchPlan` decides, per epoch, which samples form each batch and at which size: one
  fixed size, or for dynamic-resolution training a random (W, H) per batch in multiples of 32.

Every random choice is a function of (seed, epoch, sample index) or (seed, epoch, batch index),
never of a process-global generator: batches, sizes and augmentations are the same with any
number of data-loader workers or DDP processes, and a run resumed in the middle of an epoch
sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageEnhance

from .. import image_io
from ..inference import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
Size = Tuple[int, int]  # (W, H)


class DataError(ValueError):
    """A dataset problem the user must fix (names the file or folder)."""


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path

    @property
    def stem(self) -> str:
        return self.image.stem


def _files(folder: Path) -> dict:
    found = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            found.setdefault(path.stem, path)  # one file per stem: the first in name order
    return found


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def find_pairs(roots: Sequence[Union[str, os.PathLike]], *, check: bool = True) -> List[Pair]:
    """Image/mask pairs of every root, in root order then stem order.

    Raises :class:`DataError` for a missing folder, an unreadable file (with ``check``: every
    header is read now) or when no pair is found at all.
    """
    if not roots:
        raise DataError("no dataset given: pass --data ROOT, a folder holding im/ and gt/")
    pairs: List[Pair] = []
    for root in map(Path, roots):
        im_dir, gt_dir = root / "im", root / "gt"
        for folder in (im_dir, gt_dir):
            if not folder.is_dir():
                raise DataError(f"dataset folder {folder} not found: a dataset root holds im/ (images) and gt/ "
                                "(masks) with matching file stems")
        images, masks = _files(im_dir), _files(gt_dir)
        lonely = sorted(set(images) - set(masks))
        if lonely:
            logger.warning("%s: %d image(s) without a mask in %s are skipped: %s",
                           root, len(lonely), gt_dir, _listing(lonely))
        orphans = sorted(set(masks) - set(images))
        if orphans:
            logger.warning("%s: %d mask(s) without an image in %s are ignored: %s",
                           root, len(orphans), im_dir, _listing(orphans))
        pairs.extend(Pair(images[stem], masks[stem]) for stem in sorted(set(images) & set(masks)))
    if not pairs:
        raise DataError(f"no image/mask pairs found in {', '.join(map(str, roots))}: each root needs im/ and gt/ "
                        "folders with files of the same stem (e.g. im/cat.jpg and gt/cat.png)")
    if check:
        resized = 0
        for pair in pairs:
            image_size = _header_size(pair.image)
            resized += image_size != _header_size(pair.mask)
        if resized:
            logger.info("%d mask(s) differ in size from their image; they are resized with it", resized)
    return pairs


def _header_size(path: Path) -> Size:
    """(W, H) from the header, refused under the same decompression-bomb limit as :func:`read_image`."""
    try:
        return image_io.read_image_size(path)
    except image_io.ImageReadError as err:
        raise DataError(str(err)) from None


def read_image(path: Path) -> Image.Image:
    """An 8-bit RGB image, as the augmentations need: any mode converted (alpha dropped), 16-bit
    and float images scaled from their real range, EXIF orientation applied."""
    try:
        return Image.fromarray(image_io.to_uint8(image_io.read_rgb(path)))
    except image_io.ImageReadError as err:
        raise DataError(str(err)) from None


def read_mask(path: Path) -> Image.Image:
    """An 8-bit "L" mask from any file :func:`birefnet_core.image_io.read_mask` reads: 16-bit and
    float masks scaled, colour masks as luminance, the alpha channel when it varies."""
    try:
        return Image.fromarray(image_io.to_uint8(image_io.read_mask(path)))
    except image_io.ImageReadError as err:
        raise DataError(str(err)) from None


# ----------------------------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class Augmentation:
    """The official training augmentations; each can be switched off."""

    flip: bool = True
    enhance: bool = True
    rotate: bool = True
    pepper: bool = True

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(False, False, False, False)

    @classmethod
    def parse(cls, names: Sequence[str]) -> "Augmentation":
        """From names, e.g. ["flip", "enhance"]; "none" or an empty list turns all off."""
        wanted = {n.strip().lower() for n in names} - {"none", ""}
        unknown = wanted - {"flip", "enhance", "rotate", "pepper"}
        if unknown:
            raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose from flip, enhance, rotate, pepper, none")
        return cls(*(name in wanted for name in ("flip", "enhance", "rotate", "pepper")))


def augment(image: Image.Image, mask: Image.Image, rng: np.random.Generator,
            aug: Augmentation) -> Tuple[Image.Image, Image.Image]:
    """Apply ``aug`` to an RGB image and its L mask of the same size, drawing from ``rng``.
    Colour enhancement and pepper noise touch the image only."""
    if aug.flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if aug.enhance:
        for enhancer, low, high in ((ImageEnhance.Brightness, 0.5, 1.5), (ImageEnhance.Contrast, 0.5, 1.5),
                                    (ImageEnhance.Color, 0.0, 2.0), (ImageEnhance.Sharpness, 0.0, 3.0)):
            image = enhancer(image).enhance(float(rng.uniform(low, high)))
    if aug.rotate and rng.random() < 0.2:
        angle = float(rng.uniform(-15.0, 15.0))
        image = image.rotate(angle, Image.Resampling.BICUBIC)
        mask = mask.rotate(angle, Image.Resampling.BILINEAR)  # keep the mask's soft edges, no overshoot
    if aug.pepper:
        pixels = np.array(image)
        h, w = pixels.shape[:2]
        count = int(0.0015 * h * w)
        if count:
            ys, xs = rng.integers(0, h, count), rng.integers(0, w, count)
            pixels[ys, xs] = np.where(rng.random(count) < 0.5, 0, 255).astype(np.uint8)[:, None]
            image = Image.fromarray(pixels)
    return image, mask


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as the network's input: ImageNet-normalised [3, H, W] float32."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def to_tensors(image: Image.Image, mask: Image.Image) -> Tuple[torch.Tensor, torch.Tensor]:
    """ImageNet-normalised [3, H, W] float32 and the mask [1, H, W] in 0..1."""
    y = torch.from_numpy(np.asarray(mask, dtype=np.float32).copy()).unsqueeze(0).div_(255.0)
    return image_tensor(image), y


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class SegmentationDataset(torch.utils.data.Dataset):
    """Items are asked for as ``(index, (W, H), epoch)`` (what :class:`BatchPlan` yields) and
    come back as ``(image [3, H, W], mask [1, H, W], index)``; a plain integer index gives the
    sample at ``default_size`` without augmentation (for validation)."""

    def __init__(self, pairs: Sequence[Pair], *, augmentation: Augmentation = Augmentation(), seed: int = 0,
                 default_size: Size = (1024, 1024)) -> None:
        self.pairs = list(pairs)
        self.augmentation = augmentation
        self.seed = seed
        self.default_size = default_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item):
        if isinstance(item, tuple):
            index, size, epoch = item
            aug = self.augmentation
        else:
            index, size, epoch, aug = int(item), self.default_size, 0, Augmentation.none()
        pair = self.pairs[index]
        image = read_image(pair.image).resize(size, Image.Resampling.BILINEAR)
        mask = read_mask(pair.mask).resize(size, Image.Resampling.BILINEAR)
        image, mask = augment(image, mask, sample_rng(self.seed, epoch, index), aug)
        x, y = to_tensors(image, mask)
        return x, y, index


# ------------------------------------------------------------------------------------------ batches

def _multiple_of_32(value: int, what: str) -> int:
    if value < 32 or value % 32:
        raise ValueError(f"{what} must be a positive multiple of 32, got {value}")
    return value


@dataclass(frozen=True)
class SizePolicy:
    """A fixed (W, H), or with ``dynamic`` a random W and H per batch, each drawn uniformly
    from [low, high] and rounded down to a multiple of 32."""

    size: Size = (1024, 1024)
    dynamic: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        _multiple_of_32(int(self.size[0]), "width")
        _multiple_of_32(int(self.size[1]), "height")
        if self.dynamic is not None:
            low, high = self.dynamic
            if not 32 <= low <= high:
                raise ValueError(f"dynamic size range must satisfy 32 <= MIN <= MAX, got {low} {high}")

    def draw(self, seed: int, epoch: int, batch: int) -> Size:
        if self.dynamic is None:
            return (int(self.size[0]), int(self.size[1]))
        rng = np.random.default_rng([seed, epoch, batch, 32])
        low, high = self.dynamic
        w, h = (max(32, int(rng.integers(low, high + 1)) // 32 * 32) for _ in range(2))
        return (w, h)


class BatchPlan(torch.utils.data.Sampler):
    """The batches of one epoch for one process: the epoch's permutation (seeded by seed and
    epoch) cut into global batches of ``batch_size * world_size``; process ``rank`` takes its
    contiguous share of each. The last incomplete global batch is dropped (batch norm needs more
    than one sample, and every process must take the same number of steps). ``start`` skips
    batches already done (resuming mid-epoch)."""

    def __init__(self, length: int, batch_size: int, *, sizes: SizePolicy, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, start: int = 0, shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.length, self.batch_size, self.sizes = length, batch_size, sizes
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.start, self.shuffle = start, shuffle

    @staticmethod
    def batches_per_epoch(length: int, batch_size: int, world_size: int = 1) -> int:
        return length // (batch_size * world_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(self.length, self.batch_size, self.world_size) - self.start)

    def __iter__(self) -> Iterator[List[Tuple[int, Size, int]]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        step = self.batch_size * self.world_size
        total = self.batches_per_epoch(self.length, self.batch_size, self.world_size)
        for b in range(self.start, total):
            share = order[b * step + self.rank * self.batch_size:b * step + (self.rank + 1) * self.batch_size]
            size = self.sizes.draw(self.seed, self.epoch, b)
            yield [(int(i), size, self.epoch) for i in share]


def collate(items):
    images, masks, indices = zip(*items)
    return torch.stack(images), torch.stack(masks), torch.tensor(indices)


def loader(dataset: SegmentationDataset, plan: BatchPlan, workers: int,
           seed: Tuple[int, int] = (0, 0)) -> torch.utils.data.DataLoader:
    """A DataLoader over ``plan``. It draws its worker seeds from its own generator, so that
    the global RNG (dropout) is the same whether or not an epoch was resumed."""
    generator = torch.Generator().manual_seed(int(np.random.default_rng(list(seed)).integers(1 << 62)))
    return torch.utils.data.DataLoader(dataset, batch_sampler=plan, num_workers=workers, collate_fn=collate,
                                       persistent_workers=False, pin_memory=False, generator=generator)


def default_workers(batch_size: int) -> int:
    return max(0, min(batch_size, (os.cpu_count() or 1) - 1, 8))


__all__ = ["Augmentation", "BatchPlan", "DataError", "IMAGE_SUFFIXES", "Pair", "SegmentationDataset", "SizePolicy",
           "augment", "collate", "default_workers", "find_pairs", "image_tensor", "loader", "read_image", "read_mask",
           "to_tensors"]
