"""ComfyUI's tensor conventions: IMAGE [B,H,W,C] and MASK [B,H,W] (or [H,W]) in, the core's
[B,C,H,W] / [B,H,W] out. Views where possible: no copy of a video batch."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def comfy_pixels(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE [B,H,W,C] -> a [B,3,H,W] float view (an alpha channel is ignored)."""
    if image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be a ComfyUI IMAGE [B,H,W,C] with 1, 3 or 4 channels, got {list(image.shape)}")
    pixels = image[..., :3].movedim(-1, 1).float()
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def image_and_mask(image: torch.Tensor, mask: torch.Tensor):
    """ComfyUI IMAGE [B,H,W,C] and MASK [B,H,W] or [H,W] -> [B,3,H,W] and [B,H,W] (a mask of
    another size is resized to the image, with a note; batch 1 broadcasts against batch N)."""
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ValueError(f"mask must be a ComfyUI MASK [B,H,W] or [H,W], got {list(mask.shape)}")
    pixels = comfy_pixels(image)
    if mask.shape[-2:] != pixels.shape[-2:]:
        logger.warning("mask %dx%d resized to the image's %dx%d", mask.shape[-1], mask.shape[-2], pixels.shape[-1],
                       pixels.shape[-2])
        mask = torch.nn.functional.interpolate(mask.unsqueeze(1).float(), size=pixels.shape[-2:], mode="bilinear",
                                               align_corners=False).squeeze(1)
    b_img, b_mask = pixels.shape[0], mask.shape[0]
    if b_img != b_mask and 1 not in (b_img, b_mask):
        raise ValueError(f"image batch {b_img} and mask batch {b_mask} differ (one of them may be 1)")
    n = max(b_img, b_mask)
    return pixels.expand(n, -1, -1, -1), mask.float().expand(n, -1, -1)
