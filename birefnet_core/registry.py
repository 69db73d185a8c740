"""The released BiRefNet checkpoints: where they live, what they were trained for and how to run them.

All data is in :data:`VARIANTS`, one frozen :class:`Variant` per Hugging Face repository. Users type
the repository name (``"BiRefNet"``, ``"BiRefNet_lite"``, ``"RMBG-2.0"``); :func:`get_variant` looks
names up case-insensitively and also accepts the full repo id (``"ZhengPeng7/BiRefNet_lite"``).

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


@dataclass(frozen=True)
class Variant:
    """One released checkpoint.

    ``width`` x ``height`` is the native (training) resolution; ``size_range`` is set for the
    dynamic-resolution checkpoint: it was trained on any size in that range (both sides multiples
    of 32), so callers may keep the image's aspect ratio instead of resizing to the native size.
    ``gated`` repositories need an accepted licence on the Hub and a token (``HF_TOKEN``).
    """

    name: str
    repo_id: str
    backbone: str
    width: int
    height: int
    patch_order: PatchOrder
    licence: str
    description: str
    filename: str = "model.safetensors"
    size_range: Optional[Tuple[int, int]] = None
    gated: bool = False

    @property
    def resolution(self) -> Tuple[int, int]:
        """Native resolution as (width, height)."""
        return self.width, self.height

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
