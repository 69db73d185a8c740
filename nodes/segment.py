"""``BiRefNetSegment``: masks, cut-outs and composites for an IMAGE batch."""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import torch

from ..birefnet_core.inference import Predictor, Resolution
from ..birefnet_core.matting import FOREGROUND_METHODS, MatteOptions, parse_color
from ..birefnet_core.two_pass import REFINE_SIZES
from ..birefnet_core.video import OUTPUT_NAMES, VideoOutputs, matte_frames
from . import comfy
from .matte import FOREGROUND_TOOLTIP

logger = logging.getLogger(__name__)

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


OUTPUT_PRECISIONS = {"float32": torch.float32, "float16": torch.float16}
PRECISION_TOOLTIP = (
    "dtype of the outputs. float32: ComfyUI's usual. float16: half the memory (300 frames of 1920x1080: "
    "RGBA 5.0 GB instead of 10.0, mask 1.2 GB instead of 2.5), values within 0.00025 of float32 (a sixteenth "
    "of an 8-bit level); Save Image, Preview, Video Combine's 8-bit formats and most image nodes take it, "
    "Image Blur, Grow Mask and Video Combine's 16-bit input (16bit-png, ffv1-mkv, input_color_depth 16bit) "
    "need float32 (the node stops with a message when it sees one linked). Outputs no link uses are never "
    "computed, whatever this says."
)
# Consumers that fail on float16 IMAGE/MASK tensors (checked with ComfyUI 0.3.64 on the CPU):
# ImageBlur convolves with a float32 kernel ("expected scalar type Half but found Float"), GrowMask
# hands the mask to scipy (no float16 support), and VideoHelperSuite's 16-bit path computes
# tensor.numpy() * 65535 in float16, which overflows to inf: a silently broken video.
_FLOAT16_BREAKS = {"ImageBlur": "Image Blur", "GrowMask": "Grow Mask"}
_VHS_16BIT_FORMATS = ("video/16bit-png", "video/ffv1-mkv")
_WARNED_NOTHING_LINKED = set()


REFINE_CHOICES = ["off", *REFINE_SIZES]
REFINE_TOOLTIP = (
    "Two passes for large photos (4K and up) and small subjects: pass 1 finds the subject at the resolution "
    "above, pass 2 segments its cut-out (all parts, with a margin) from the full-resolution image again at this "
    "size, merged with a feathered edge. native: the model's own size (FOCUS: 512x512); larger sizes suit HR and "
    "dynamic models. Costs up to a second forward pass per image; images where nothing is found keep pass 1."
)


def optional_inputs() -> dict:
    """The optional widgets Segment and Video Frames share, output dtype then two-pass refine (new
    widgets go at the end: saved workflows store widgets by position)."""
    return {"output_precision": (list(OUTPUT_PRECISIONS), {"default": "float32", "tooltip": PRECISION_TOOLTIP}),
            "refine": (REFINE_CHOICES, {"default": "off", "tooltip": REFINE_TOOLTIP})}


def refine_setting(refine: str) -> Optional[str]:
    if refine not in REFINE_CHOICES:
        raise ValueError(f"refine must be one of {', '.join(REFINE_CHOICES)}, got {refine!r}")
    return None if refine == "off" else refine


def outputs_to_compute(names: Sequence[str], prompt, node_id) -> Tuple[str, ...]:
    """The outputs a run computes: those another node's input links to in the prompt.

    All of them when the prompt does not tell (no prompt: a script or a test; a node created at
    run time by another node's expansion), and when it shows no link at all: ComfyUI only runs a
    node that something needs, so a consumer exists that the prompt does not show, and handing it
    a placeholder would be wrong (said once per node)."""
    linked = comfy.linked_outputs(prompt, node_id)
    if linked is None:
        return tuple(names)
    if not linked & set(range(len(names))):
        if node_id not in _WARNED_NOTHING_LINKED:
            _WARNED_NOTHING_LINKED.add(node_id)
            logger.warning("BiRefNet node %s runs although none of its outputs is linked in the prompt: computing "
                           "all of them (%s)", node_id, ", ".join(names))
        return tuple(names)
    return tuple(name for slot, name in enumerate(names) if slot in linked)


def outputs_fingerprint(names: Sequence[str], prompt, node_id):
    """IS_CHANGED's value: the outputs a run computes, so that linking another output changes the
    node's cache key and reruns it (a cached placeholder is never handed on). NaN ("always run")
    where the prompt cannot be read (see nodes/comfy.py)."""
    if not prompt:  # ComfyUI passes PROMPT = {} to IS_CHANGED
        prompt = comfy.running_prompt()
    if prompt is None:
        return float("nan")
    return "outputs:" + ",".join(outputs_to_compute(names, prompt, node_id))


def check_float16_consumers(prompt, node_id) -> None:
    """Refuse float16 outputs, before anything runs, when the prompt links one of them to a node
    known to fail on (or silently break with) float16 tensors."""
    if not isinstance(prompt, dict) or node_id is None:
        return
    for other_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict) or not any(comfy.is_link(v) and v[0] == str(node_id)
                                                   for v in inputs.values()):
            continue
        kind = node.get("class_type", "")
        name = _FLOAT16_BREAKS.get(kind)
        if kind.startswith("VHS_VideoCombine") and (inputs.get("input_color_depth") == "16bit"
                                                     or inputs.get("format") in _VHS_16BIT_FORMATS):
            name = f"Video Combine with 16-bit input ({inputs.get('format')})"
        if name:
            raise ValueError(f"output_precision float16: {name} (node {other_id}) needs float32 images; set "
                             "output_precision to float32")


def placeholder(name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    """What an output no link uses returns: zeros of its type, batch n, 1x1 pixel (MASK [n,1,1],
    IMAGE [n,1,1,C]). A valid tensor any node accepts, tiny, and plainly not the result (a 1-pixel
    image) should anything ever read it."""
    channels = {"mask": (), "rgba": (4,), "composite": (3,)}[name]
    return torch.zeros(n, 1, 1, *channels, dtype=dtype, device=comfy.intermediate_device())


def node_outputs(outputs: VideoOutputs, n: int, dtype: torch.dtype) -> tuple:
    """(mask, rgba, composite) on ComfyUI's intermediate device, placeholders for those not computed."""
    target = comfy.intermediate_device()
    return tuple(getattr(outputs, name).to(target) if getattr(outputs, name) is not None
                 else placeholder(name, n, dtype) for name in OUTPUT_NAMES)


def output_dtype(output_precision: str) -> torch.dtype:
    if output_precision not in OUTPUT_PRECISIONS:
        raise ValueError(f"output_precision must be one of {', '.join(OUTPUT_PRECISIONS)}, got {output_precision!r}")
    return OUTPUT_PRECISIONS[output_precision]


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
        "composited on a colour (RGB, for nodes that expect three channels). refine: a second pass on the "
        "subject's cut-out at full resolution, for 4K photos and fine detail. Runs in chunks of batch_size "
        "with a progress bar; Cancel stops at the next chunk. Only the outputs the workflow links are computed "
        "(the others are 1-pixel placeholders), in float32 or float16."
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
                **optional_inputs(),
            },
            "hidden": {"node_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    @classmethod
    def IS_CHANGED(cls, node_id=None, prompt=None, **_inputs):
        return outputs_fingerprint(cls.RETURN_NAMES, prompt, node_id)

    def segment(self, model: comfy.ManagedModel, image: torch.Tensor, resolution: str, width: int, height: int,
                long_side: int, batch_size: int, mask_threshold: float, background: str, background_color: str,
                foreground: str = "blur_fusion", binary_mask: bool = False, output_precision: str = "float32",
                refine: str = "off", node_id: Optional[str] = None, prompt: Optional[dict] = None):
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
        parse_color(background_color)  # a bad colour fails before the model runs
        dtype = output_dtype(output_precision)
        if dtype == torch.float16:
            check_float16_consumers(prompt, node_id)
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
            shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a ComfyUI IMAGE [B,H,W,C] with 1, 3 or 4 channels, got {shape}")
        if not 0.0 <= mask_threshold <= 1.0:
            raise ValueError(f"mask_threshold must be in 0..1, got {mask_threshold}")
        size = resolution_for(model, resolution, width, height, long_side)
        predictor = Predictor(model.ready(), resolution=size, batch_size=batch_size, binary=binary_mask,
                              refine=refine_setting(refine))
        n = int(image.shape[0])
        # chunk by chunk into the outputs the workflow links, each in the chosen dtype: the batch is
        # never converted or copied whole (foreground colours are estimated per chunk on the model's device)
        outputs = matte_frames(
            predictor, image, matte=MatteOptions(foreground=foreground) if foreground != "none" else None,
            background_color=background_color, progress=comfy.progress_reporter(n, "segment"),
            which=outputs_to_compute(self.RETURN_NAMES, prompt, node_id), dtype=dtype,
            mask_threshold=mask_threshold, rgba_fill=background_color if background == "color" else None,
        )
        comfy.free_cached_memory()
        return node_outputs(outputs, n, dtype)
