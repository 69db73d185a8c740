"""``BiRefNetVideoMatte``: masks and alpha frames for a whole video, streamed in chunks."""

from __future__ import annotations

import copy
import logging
from typing import Dict, Optional

import torch

from ..birefnet_core.inference import Predictor
from ..birefnet_core.matting import FOREGROUND_METHODS, MatteOptions, parse_color
from ..birefnet_core.video import SMOOTHING_PRESETS, TemporalSmoother, matte_frames
from . import comfy
from .matte import FOREGROUND_TOOLTIP
from .segment import (check_float16_consumers, node_outputs, output_dtype, outputs_fingerprint, outputs_to_compute,
                      optional_inputs, refine_setting, resolution_for, resolution_inputs)

logger = logging.getLogger(__name__)

SMOOTHING = list(SMOOTHING_PRESETS) + ["custom"]

# Temporal state per node (its unique id), carried across executions when VideoHelperSuite's Meta
# Batch Manager feeds the video window by window. The smoother itself starts afresh at a cut, a
# new video or a window out of order (a large image change) and at a new frame size.
_SMOOTHERS: Dict[str, TemporalSmoother] = {}


def smoother_for(node_id: str, strength: float) -> TemporalSmoother:
    """The node's smoother, replaced when the strength setting changed."""
    smoother = _SMOOTHERS.get(node_id)
    if smoother is None or smoother.strength != strength:
        smoother = TemporalSmoother(strength)
    return smoother


class BiRefNetVideoMatte:
    DESCRIPTION = (
        "Mattes every frame of a video (an IMAGE batch, e.g. from VideoHelperSuite's Load Video) in chunks of "
        "batch_size on the GPU, with results written straight into the outputs: memory stays the outputs plus "
        "one chunk. Only the outputs the workflow links are computed (the others are 1-pixel placeholders), in "
        "float32 or float16: 300 frames of 1080p as RGBA alone take 9.95 GB, or 4.98 GB in float16. Temporal "
        "smoothing damps flicker without ghosting moving edges; with the Meta Batch Manager its state carries "
        "from one window to the next. The rgba output plugs into Video Combine for ProRes 4444 or WebM with alpha."
    )
    CATEGORY = "BiRefNet"
    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("mask", "rgba", "composite")
    OUTPUT_TOOLTIPS = (
        "Alpha per frame [N,H,W].",
        "Frames with alpha [N,H,W,4] (foreground colours estimated when foreground is not none).",
        "Frames over background_color [N,H,W,3].",
    )
    FUNCTION = "matte"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("BIREFNET_MODEL", {"tooltip": "From Load BiRefNet Model."}),
                "frames": ("IMAGE", {"tooltip": "The video's frames (a batch, in order)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 256,
                                       "tooltip": "Frames per chunk on the device; halved automatically when the "
                                                  "GPU runs out of memory."}),
                **resolution_inputs(),
                "temporal_smoothing": (SMOOTHING, {
                    "default": "light",
                    "tooltip": "Damps frame-to-frame flicker of the alpha where the image is still; moving edges "
                               "follow at once. custom: use smoothing_strength.",
                }),
                "smoothing_strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 0.95, "step": 0.05,
                                                 "tooltip": "Strength for temporal_smoothing = custom (0 = off)."}),
                "foreground": (list(FOREGROUND_METHODS), {"default": "none", "tooltip": FOREGROUND_TOOLTIP}),
                "background_color": ("STRING", {"default": "#ffffff",
                                                "tooltip": "Colour behind the subject in the composite output."}),
            },
            "optional": optional_inputs(),
            "hidden": {"node_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    @classmethod
    def IS_CHANGED(cls, node_id=None, prompt=None, **_inputs):
        return outputs_fingerprint(cls.RETURN_NAMES, prompt, node_id)

    def matte(self, model: comfy.ManagedModel, frames: torch.Tensor, batch_size: int, resolution: str, width: int,
              height: int, long_side: int, temporal_smoothing: str, smoothing_strength: float, foreground: str,
              background_color: str, output_precision: str = "float32", refine: str = "off",
              node_id: str = "standalone", prompt: Optional[dict] = None):
        if temporal_smoothing not in SMOOTHING:
            raise ValueError(f"temporal_smoothing must be one of {', '.join(SMOOTHING)}, got {temporal_smoothing!r}")
        if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
            raise ValueError(f"frames must be a ComfyUI IMAGE [N,H,W,C], got {list(frames.shape)}")
        parse_color(background_color)
        dtype = output_dtype(output_precision)
        if dtype == torch.float16:
            check_float16_consumers(prompt, node_id)
        strength = smoothing_strength if temporal_smoothing == "custom" else SMOOTHING_PRESETS[temporal_smoothing]
        predictor = Predictor(model.ready(), resolution=resolution_for(model, resolution, width, height, long_side),
                              batch_size=batch_size, refine=refine_setting(refine))
        # work on a copy: a cancelled or failed window leaves the stored state as it was
        smoother = copy.deepcopy(smoother_for(str(node_id), strength))
        outputs = matte_frames(
            predictor, frames, smoother=smoother,
            matte=MatteOptions(foreground=foreground) if foreground != "none" else None,
            background_color=background_color,
            progress=comfy.progress_reporter(int(frames.shape[0]), "video"),
            which=outputs_to_compute(self.RETURN_NAMES, prompt, node_id), dtype=dtype,
        )
        _SMOOTHERS[str(node_id)] = smoother
        comfy.free_cached_memory()
        return node_outputs(outputs, int(frames.shape[0]), dtype)
