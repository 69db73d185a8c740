"""The released checkpoints (BiRefNet and FOCUS): where they live, what they were trained for and
how to run them.

All data is in :data:`VARIANTS`, one frozen :class:`Variant` per Hugging Face repository. Users type
the repository name (``"BiRefNet"``, ``"BiRefNet_lite"``, ``"RMBG-2.0"``, ``"focus_large_sod"``);
:func:`get_variant` looks names up case-insensitively and also accepts the full repo id
(``"ZhengPeng7/BiRefNet_lite"``, ``"geshang/focus_large_sod"``).

FOCUS (``family="focus"``): one network per size (DINOv2-L ``focus_dinov2_l``, DINOv2-G
``focus_dinov2_g``), one checkpoint per task. The released files are detectron2 checkpoints
(``.pth``, 5 GB for L, 15 GB for G, optimiser state included); :mod:`birefnet_core.hub` keeps only
their inference weights as ``<name>.safetensors``.

Patch orders (see :class:`~birefnet_core.config.PatchOrder`): checkpoints trained before the official
code changed on 2024-11-05 use ``LEGACY``, later ones ``CURRENT``. The per-checkpoint attribution
follows the training dates and is not verified against real weights for every variant.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .config import PatchOrder

MIT = "MIT"
CC_BY_NC = "CC BY-NC 4.0"
APACHE = "Apache-2.0"

#: FOCUS's test-time resize: shortest side to ``Variant.width`` (512), longest side at most this
FOCUS_MAX_SIDE = 2048


@dataclass(frozen=True)
class Variant:
    """One released checkpoint.

    ``family``: ``"birefnet"`` or ``"focus"`` (see :mod:`birefnet_core.models.families`);
    ``backbone``: the architecture the family builds (a BiRefNet backbone such as ``"swin_v1_l"``,
    a FOCUS configuration such as ``"focus_dinov2_l"``); ``task``: what the mask marks, for
    families with one checkpoint per task (FOCUS: sod, cod, sd, dbd, fd), else "".

    ``width`` x ``height``: for BiRefNet the native (training) resolution, the size images are
    resized to; ``size_range`` is set for the dynamic-resolution checkpoint: it was trained on any
    size in that range (both sides multiples of 32), so callers may keep the image's aspect ratio
    instead of resizing to the native size. For FOCUS, ``width == height == 512`` means the
    official test-time resize: the *shortest* side to 512, the longest at most
    :data:`FOCUS_MAX_SIDE` (2048), aspect ratio kept (see :attr:`max_side`, :attr:`test_size`).

    ``patch_order``: BiRefNet's image-patch channel order; None for FOCUS (no image patches).
    ``filename``: the file in the repository (FOCUS: ``<name>.pth``, a detectron2 checkpoint).
    ``gated`` repositories need an accepted licence on the Hub and a token (``HF_TOKEN``).
    """

    name: str
    repo_id: str
    backbone: str
    width: int
    height: int
    patch_order: Optional[PatchOrder]
    licence: str
    description: str
    filename: str = "model.safetensors"
    size_range: Optional[Tuple[int, int]] = None
    gated: bool = False
    family: str = "birefnet"
    task: str = ""

    @property
    def resolution(self) -> Tuple[int, int]:
        """Native resolution as (width, height) (FOCUS: (512, 512), the shortest side's size)."""
        return self.width, self.height

    @property
    def max_side(self) -> Optional[int]:
        """FOCUS: the longest side's limit of the test-time resize (2048); None for BiRefNet, whose
        images are resized to ``width`` x ``height``."""
        return FOCUS_MAX_SIDE if self.family == "focus" else None

    @property
    def test_size(self) -> str:
        """The test-time resize in words."""
        if self.family == "focus":
            return f"shortest side {self.width}, longest at most {self.max_side}, aspect ratio kept"
        if self.size_range is not None:
            return (f"any size from {self.size_range[0]} to {self.size_range[1]} (multiples of 32), aspect ratio "
                    f"kept; {self.width}x{self.height} native")
        return f"{self.width}x{self.height} (W x H)"

    @property
    def dynamic(self) -> bool:
        """True when the checkpoint was trained on many sizes (use keep-aspect resizing)."""
        return self.size_range is not None

    @property
    def url(self) -> str:
        """Direct download URL of the weights file."""
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"

    @property
    def page(self) -> str:
        """The repository's page on the Hub (where a gated licence is accepted)."""
        return f"https://huggingface.co/{self.repo_id}"


def _zp(name: str, backbone: str, size: Tuple[int, int], order: PatchOrder, description: str,
        size_range: Optional[Tuple[int, int]] = None) -> Variant:
    """A ``ZhengPeng7/<name>`` checkpoint (MIT licence)."""
    return Variant(name, f"ZhengPeng7/{name}", backbone, size[0], size[1], order, MIT, description,
                   size_range=size_range)


#: FOCUS tasks: registry suffix -> what the mask (the official class 0, "foreground") marks
FOCUS_TASKS = {
    "sod": "Salient object detection: the mask marks the salient (most eye-catching) objects.",
    "cod": "Camouflaged object detection: the mask marks objects hidden in their surroundings.",
    "sd": "Shadow detection: the mask marks the shadows.",
    "dbd": ("Defocus blur detection: the mask marks the region the DBD ground truth marks white (the in-focus vs "
            "blurred split as in the DBD datasets the model was trained on)."),
    "fd": "Forgery detection: the mask marks the forged (manipulated) regions of an image.",
}
_FOCUS_SIZES = {"large": ("focus_dinov2_l", "DINOv2-L, 374 M parameters, 1.5 GB once slimmed"),
                "giant": ("focus_dinov2_g", "DINOv2-G, 1.2 B parameters, 5 GB once slimmed")}


def _focus(size: str, task: str) -> Variant:
    """A ``geshang/focus_<size>_<task>`` checkpoint (Apache-2.0), a detectron2 ``.pth``."""
    name = f"focus_{size}_{task}"
    architecture, about = _FOCUS_SIZES[size]
    return Variant(name, f"geshang/{name}", architecture, 512, 512, None, APACHE,
                   f"FOCUS ({about}). {FOCUS_TASKS[task]}", filename=f"{name}.pth", family="focus", task=task)


_L, _C = PatchOrder.LEGACY, PatchOrder.CURRENT
_1K, _2K = (1024, 1024), (2048, 2048)

VARIANTS: Tuple[Variant, ...] = (
    _zp("BiRefNet", "swin_v1_l", _1K, _L, "General-purpose dichotomous segmentation / background removal."),
    _zp("BiRefNet_lite", "swin_v1_t", _1K, _L, "General use, Swin-T backbone: about 5x smaller and 4x faster."),
    _zp("BiRefNet_lite-2K", "swin_v1_t", (2560, 1440), _L, "General use, Swin-T, trained at 2560x1440 (W x H)."),
    _zp("BiRefNet_HR", "swin_v1_l", _2K, _C, "General use at high resolution (trained at 2048x2048)."),
    _zp("BiRefNet_HR-matting", "swin_v1_l", _2K, _C, "Soft alpha mattes at high resolution (2048x2048)."),
    _zp("BiRefNet-matting", "swin_v1_l", _1K, _L, "General matting: soft alpha (hair, fur, glass)."),
    _zp("BiRefNet_lite-matting", "swin_v1_t", _1K, _L,
        "Matting with the Swin-T backbone (resolution and patch order as best known)."),
    _zp("BiRefNet-portrait", "swin_v1_l", _1K, _L, "Portrait matting (people)."),
    _zp("BiRefNet_dynamic", "swin_v1_l", _1K, _C,
        "General use, trained on any resolution from 256 to 2304 (multiples of 32): keep the aspect ratio.",
        size_range=(256, 2304)),
    _zp("BiRefNet_512x512", "swin_v1_l", (512, 512), _C, "General use at low resolution (512x512), fast."),
    _zp("BiRefNet-DIS5K", "swin_v1_l", _1K, _L, "Trained on DIS5K-TR only (dichotomous image segmentation benchmark)."),
    _zp("BiRefNet-DIS5K-TR_TEs", "swin_v1_l", _1K, _L, "Trained on DIS5K-TR plus the DIS5K test sets."),
    _zp("BiRefNet-HRSOD", "swin_v1_l", _1K, _L, "High-resolution salient object detection (HRSOD benchmark)."),
    _zp("BiRefNet-COD", "swin_v1_l", _1K, _L, "Camouflaged object detection."),
    _zp("BiRefNet-legacy", "swin_v1_l", _1K, _L, "The first general-use release (DIS5K + HRSOD + UHRSD training)."),
    Variant("RMBG-2.0", "briaai/RMBG-2.0", "swin_v1_l", 1024, 1024, _L, CC_BY_NC,
            "BRIA background removal (BiRefNet trained on licensed data); non-commercial licence. Gated: accept "
            "the licence on https://huggingface.co/briaai/RMBG-2.0 and set HF_TOKEN (or pass token=).",
            gated=True),
    *(_focus(size, task) for size in _FOCUS_SIZES for task in FOCUS_TASKS),
)

_BY_KEY: Dict[str, Variant] = {
    **{v.repo_id.lower(): v for v in VARIANTS},
    **{v.name.lower(): v for v in VARIANTS},
}


def variant_names() -> Tuple[str, ...]:
    """The registry keys, in table order."""
    return tuple(v.name for v in VARIANTS)


def find_variant(name: str) -> Optional[Variant]:
    """The variant called ``name`` (its registry name or repo id, any case), else None."""
    return _BY_KEY.get(str(name).strip().lower())


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (its registry name or repo id, any case).

    Raises ValueError naming close matches when there is none.
    """
    found = find_variant(name)
    if found is not None:
        return found
    lowered = {v.name.lower(): v.name for v in VARIANTS}
    query = str(name).strip().lower()
    matches = difflib.get_close_matches(query, list(lowered), n=4, cutoff=0.5)
    matches += [key for key in lowered if query and query in key and key not in matches]
    close = [lowered[m] for m in matches[:5]]
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown BiRefNet model {name!r}; {hint}known models: {', '.join(variant_names())}")
