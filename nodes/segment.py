"""``BiRefNetSegment``: masks, cut-outs and composites for an IMAGE batch."""

from __future__ import annotations

from typing import Optional

import torch

from ..birefnet_core.inference import Predictor, Resolution
from ..birefnet_core.matting import FOREGROUND_METHODS, MatteOptions, over_color, parse_color, rgba, threshold
from . import comfy
from .matte import FOREGROUND_TOOLTIP, run_matte
from .tensors import comfy_pixels

RESOLUTIONS = ["native", "custom", "keep_aspect"]
BACKGROUNDS = ["transparent", "color"]
BINARY_TOOLTIP = ("Off: the soft mask (probability). On: the model's own 0/1 mask; for FOCUS the official "
                  "mask of interest (its foreground and background queries merged, what its benchmarks score), "
                  "for BiRefNet probability > 0.5.")


def resolution_for(model: comfy.ManagedModel, resolution: str, width: int, height: int,
                   long_side: int) -> Optional[Resolution]:
    """The Resolution for the widgets; None for native (the model's own, which its family's
    pipeline knows: a BiRefNet variant's training size, FOCUS's short side 512)."""
    if resolution == "custom":
        return Resolution.fixed(width, height)
    if resolution == "keep_aspect":
        return Resolution.keep_aspect(long_side)
    if resolution != "native":
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    return None


def resolution_inputs() -> dict:
    """The resolution widgets Segment and Video Frames share (names and order are saved in workflows)."""
    size = {"min": 32, "max": 8192, "step": 32}
    return {
        "resolution": (RESOLUTIONS, {
            "default": "native",
            "tooltip": "Size the network sees. native: the model's training size (1024x1024 for most, "
                       "2048x2048 for HR, 2560x1440 for lite-2K; FOCUS: the image's aspect ratio with the short "
                       "side 512, long side at most 2048); custom: width x height; keep_aspect: the image's "
                       "aspect ratio with the long side below (best for BiRefNet_dynamic). FOCUS pads any size "
                       "to multiples of 32.",
        }),
        "width": ("INT", {"default": 1024, **size, "tooltip": "Network width for resolution = custom."}),
        "height": ("INT", {"default": 1024, **size, "tooltip": "Network height for resolution = custom."}),
        "long_side": ("INT", {"default": 1024, **size,
                              "tooltip": "Long side for resolution = keep_aspect (multiple of 32)."}),
    }


class BiRefNetSegment:
    DESCRIPTION = (
        "Segments the main subject of every image in the batch with a BiRefNet model, or with a FOCUS model "
        "the region its task names (salient object, camouflaged object, shadow, defocus-blurred region, "
        "forged region; see the loader's tooltip). Outputs the mask, "
        "the image with the mask as alpha (RGBA, for saving with transparency or alpha video) and the image "
        "composited on a colour (RGB, for nodes that expect three channels). Runs in chunks of batch_size "
        "with a progress bar; Cancel stops at the next chunk."
    )
    CATEGORY = "BiRefNet"
    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("mask", "rgba", "composite")
    OUTPUT_TOOLTIPS = (
        "Subject mask [B,H,W], 0..1 (soft unless mask_threshold > 0).",
        "Straight-alpha RGBA image [B,H,W,4]: VideoHelperSuite and Save nodes keep the transparency.",
        "The subject over background_color [B,H,W,3].",
    )
    FUNCTION = "segment"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("BIREFNET_MODEL", {"tooltip": "From Load BiRefNet Model."}),
                "image": ("IMAGE", {"tooltip": "Images to segment (a batch of any size)."}),
                **resolution_inputs(),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 256,
                                       "tooltip": "Images per forward pass. Larger is faster on a GPU; halved "
                                                  "automatically when the GPU runs out of memory."}),
                "mask_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                             "tooltip": "0 keeps the soft mask; above 0, pixels at or above the "
                                                        "threshold become 1 and the rest 0."}),
                "background": (BACKGROUNDS, {
                    "default": "transparent",
                    "tooltip": "Colour channels of the RGBA output where the subject is absent. transparent: the "
                               "image's own colours (lossless, straight alpha); color: background_color, so "
                               "programs that ignore alpha show the subject on that colour.",
                }),
                "background_color": ("STRING", {"default": "#ffffff",
                                                "tooltip": "Colour behind the subject in the composite output "
                                                           "(and in the RGBA output with background = color): "
                                                           "#rrggbb or r,g,b."}),
                "foreground": (list(FOREGROUND_METHODS), {"default": "blur_fusion", "tooltip": FOREGROUND_TOOLTIP
                                                          + " Used for the rgba and composite outputs."}),
            },
            "optional": {
                "binary_mask": ("BOOLEAN", {"default": False, "tooltip": BINARY_TOOLTIP}),
            },
        }

    def segment(self, model: comfy.ManagedModel, image: torch.Tensor, resolution: str, width: int, height: int,
                long_side: int, batch_size: int, mask_threshold: float, background: str, background_color: str,
                foreground: str = "blur_fusion", binary_mask: bool = False):
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
        parse_color(background_color)  # a bad colour fails before the model runs
        size = resolution_for(model, resolution, width, height, long_side)
        predictor = Predictor(model.ready(), resolution=size, batch_size=batch_size, binary=binary_mask)
        pixels = comfy_pixels(image)
        report = comfy.progress_reporter(int(pixels.shape[0]), "segment")
        out = torch.empty(pixels.shape[0], *pixels.shape[2:], dtype=torch.float32)  # CPU, written per chunk
        alpha = threshold(predictor.predict(pixels, progress=report, out=out, layout="BCHW"), mask_threshold)
        comfy.free_cached_memory()
        if foreground != "none":  # true foreground colours in the soft edges, on the model's device
            pixels, _ = run_matte(pixels, alpha, MatteOptions(foreground=foreground), batch_size, model.device,
                                  "foreground")

        target = comfy.intermediate_device()
        cutout = rgba(pixels, alpha, fill=background_color if background == "color" else None)
        composite = over_color(pixels, alpha, background_color)
        return (alpha.to(target), cutout.movedim(1, -1).to(target), composite.movedim(1, -1).to(target))
