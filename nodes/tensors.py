"""ComfyUI's tensor conventions: IMAGE [B,H,W,C] and MASK [B,H,W] (or [H,W]) in, the core's
[B,C,H,W] / [B,H,W] out. Views where possible: no copy of a float batch already in 0..1.

Values are read as the core reads them (:func:`~birefnet_core.inference.to_unit_float`): float
in 0..1 (values outside are clamped, with a warning the first time), uint8 and other integer
tensors as 8-bit levels (divided by 255, never saturated).
"""

from __future__ import annotations

import logging

import torch

from ..birefnet_core.inference import as_images, to_unit_float

logger = logging.getLogger(__name__)


def comfy_pixels(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE [B,H,W,C] -> a [B,3,H,W] float32 view in 0..1 (an alpha channel is ignored)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a ComfyUI IMAGE [B,H,W,C] with 1, 3 or 4 channels, got {shape}")
    return to_unit_float(as_images(image, "BHWC"))


def comfy_mask(mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI MASK [B,H,W] or [H,W] -> [B,H,W] float32 in 0..1."""
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a ComfyUI MASK [B,H,W] or [H,W], got {shape}")
    if mask.dtype == torch.bool:
        mask = mask.float()
    return to_unit_float(mask if mask.dim() == 3 else mask.unsqueeze(0))


def image_and_mask(image: torch.Tensor, mask: torch.Tensor):
    """ComfyUI IMAGE [B,H,W,C] and MASK [B,H,W] or [H,W] -> [B,3,H,W] and [B,H,W] (a mask of
    another size is resized to the image, with a note; batch 1 broadcasts against batch N)."""
    mask = comfy_mask(mask)
    pixels = comfy_pixels(image)
    if mask.shape[-2:] != pixels.shape[-2:]:
        logger.warning("mask %dx%d resized to the image's %dx%d", mask.shape[-1], mask.shape[-2], pixels.shape[-1],
                       pixels.shape[-2])
        mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=pixels.shape[-2:], mode="bilinear",
                                               align_corners=False).squeeze(1)
    b_img, b_mask = pixels.shape[0], mask.shape[0]
    if b_img != b_mask and 1 not in (b_img, b_mask):
        raise ValueError(f"image batch {b_img} and mask batch {b_mask} differ (one of them may be 1)")
    n = max(b_img, b_mask)
    return pixels.expand(n, -1, -1, -1), mask.expand(n, -1, -1)
