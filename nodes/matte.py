"""``BiRefNetMatteRefine``: clean alpha and true foreground colours for any IMAGE + MASK."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from ..birefnet_core.matting import FOREGROUND_METHODS, MatteOptions, over_color, over_image, parse_color, refine_matte
from . import comfy
from .tensors import comfy_pixels, image_and_mask

logger = logging.getLogger(__name__)

ALPHA_METHODS = ["none", "guided"]
FOREGROUND_TOOLTIP = (
    "Foreground colour estimation, which removes background colour bleeding into soft edges (halos). "
    "blur_fusion: the official BiRefNet refine_foreground (Forte & Pitie), light on memory; multilevel: "
    "Germer et al.'s multi-level estimator, lower colour error on our benchmark, more memory; none: the image."
)


def run_matte(pixels: torch.Tensor, alpha: torch.Tensor, options: MatteOptions, batch_size: int,
              device: Optional[torch.device] = None, description: str = "matte"):
    """Refine in chunks on ``device`` (default ComfyUI's): (foreground [B,3,H,W], alpha [B,H,W])
    on the CPU, with progress and a cancel check per chunk."""
    device = device if device is not None else comfy.torch_device("auto")
    foreground = torch.empty_like(pixels, device="cpu", memory_format=torch.contiguous_format)
    refined = torch.empty(alpha.shape, dtype=torch.float32)
    report = comfy.progress_reporter(int(pixels.shape[0]), description)
    for start in range(0, pixels.shape[0], batch_size):
        stop = min(start + batch_size, pixels.shape[0])
        fg, a = refine_matte(pixels[start:stop].to(device), alpha[start:stop].to(device), options)
        foreground[start:stop] = fg.cpu()
        refined[start:stop] = a.cpu()
        report(stop, pixels.shape[0])
    comfy.free_cached_memory()
    return foreground, refined


class BiRefNetMatteRefine:
    DESCRIPTION = (
        "Refines a mask and estimates the true foreground colours, removing the grey or coloured halos around "
        "hair and edges. Works with any image and mask (BiRefNet Segment, or any other node). Mask operations, "
        "then optional guided-filter refinement of the edge band, then blur-fusion foreground estimation "
        "(Forte & Pitié), batched on the GPU when there is one."
    )
    CATEGORY = "BiRefNet"
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("rgba", "composite", "mask")
    OUTPUT_TOOLTIPS = (
        "Estimated foreground colours with the refined mask as straight alpha [B,H,W,4].",
        "The foreground over the background image (or background_color) [B,H,W,3].",
        "The refined mask [B,H,W].",
    )
    FUNCTION = "refine"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The original images."}),
                "mask": ("MASK", {"tooltip": "Their masks (resized to the images if the sizes differ)."}),
                "foreground": (list(FOREGROUND_METHODS), {
                    "default": "blur_fusion",
                    "tooltip": FOREGROUND_TOOLTIP,
                }),
                "fg_radius_large": ("INT", {"default": 90, "min": 1, "max": 1024,
                                            "tooltip": "Box window of the first blur-fusion pass, in pixels "
                                                       "(official: 90)."}),
                "fg_radius_small": ("INT", {"default": 6, "min": 1, "max": 256,
                                            "tooltip": "Box window of the second blur-fusion pass (official: 6)."}),
                "alpha_refine": (ALPHA_METHODS, {
                    "default": "none",
                    "tooltip": "guided: snap the mask's edge band to image edges with a guided filter (the "
                               "band's width scales with the resolution); none: keep the mask.",
                }),
                "guided_radius": ("INT", {"default": 0, "min": 0, "max": 256,
                                          "tooltip": "Guided filter radius in pixels; 0 picks one from the size."}),
                "guided_eps": ("FLOAT", {"default": 1e-4, "min": 1e-8, "max": 1.0, "step": 1e-5,
                                         "tooltip": "Guided filter regularisation: smaller follows edges closer."}),
                "black_point": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Mask values at or below this become 0."}),
                "white_point": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Mask values at or above this become 1."}),
                "grow": ("INT", {"default": 0, "min": -256, "max": 256,
                                 "tooltip": "Grow (positive) or shrink (negative) the mask by this many pixels."}),
                "feather": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 256.0, "step": 0.5,
                                      "tooltip": "Soften the mask edge (blur radius in pixels)."}),
                "fill_holes": ("BOOLEAN", {"default": False,
                                           "tooltip": "Fill background regions enclosed by the subject."}),
                "invert": ("BOOLEAN", {"default": False, "tooltip": "Swap subject and background."}),
                "background_color": ("STRING", {"default": "#ffffff",
                                                "tooltip": "Colour behind the subject in the composite when no "
                                                           "background image is connected: #rrggbb or r,g,b."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256,
                                       "tooltip": "Images refined at once on the device."}),
            },
            "optional": {
                "background": ("IMAGE", {"tooltip": "Background image for the composite (scaled to cover)."}),
            },
        }

    def refine(self, image, mask, foreground, fg_radius_large, fg_radius_small, alpha_refine, guided_radius,
               guided_eps, black_point, white_point, grow, feather, fill_holes, invert, background_color,
               batch_size, background: Optional[torch.Tensor] = None):
        parse_color(background_color)
        options = MatteOptions(
            black_point=black_point, white_point=white_point, fill_holes=fill_holes, grow=grow, feather=feather,
            invert=invert, guided=alpha_refine == "guided", guided_radius=guided_radius or None,
            guided_eps=guided_eps, foreground=foreground, foreground_radii=(fg_radius_large, fg_radius_small),
        )
        pixels, alpha = image_and_mask(image, mask)
        fg, refined = run_matte(pixels, alpha, options, batch_size)
        if background is not None:
            backdrop = comfy_pixels(background)
            composite = over_image(fg, refined, backdrop)
        else:
            composite = over_color(fg, refined, background_color)
        target = comfy.intermediate_device()
        rgba_out = torch.cat([fg, refined.unsqueeze(1)], dim=1)
        return (rgba_out.movedim(1, -1).to(target), composite.movedim(1, -1).to(target), refined.to(target))
