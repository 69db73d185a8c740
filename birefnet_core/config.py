"""BiRefNet configuration: the backbones and the one flag that differs between checkpoints.

Every released checkpoint uses the same architecture flags (multi-scale "cat" input, three
context maps, squeeze block, ASPP with deformable convolutions, inward and outward reference);
only the backbone, the input resolution and the channel order of the inward reference's image
patches differ. Those are what this module describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Tuple


class PatchOrder(str, Enum):
    """Channel order of the image patches fed to the decoder (the inward reference).

    The image [B, 3, H, W] is cut into a G x G grid of patches stacked on channels.
    ``CURRENT`` (official code since 2024-11-05): channel = c*G*G + row*G + col.
    ``LEGACY`` (checkpoints trained before then): channel = (col*G + row)*3 + c.
    """

    LEGACY = "legacy"
    CURRENT = "current"

    @classmethod
    def parse(cls, value: "PatchOrder | str") -> "PatchOrder":
        try:
            return cls(value.value if isinstance(value, PatchOrder) else str(value).lower())
        except ValueError:
            raise ValueError(f"patch_order must be 'legacy' or 'current', got {value!r}") from None


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone: its family, the channels of its four outputs (strides 4, 8, 16, 32) and the
    smallest network input side it runs at (a multiple of 32)."""

    name: str
    family: str  # "swin_v1" or "pvt_v2"
    channels: Tuple[int, int, int, int]
    # The network also sees the image at half size; PVT-v2's first stage reduces its keys with an
    # 8x8 stride-8 convolution of the stride-4 map, so the half-size image needs 32 px per side.
    # Swin pads every stage to its window and runs at any multiple of 32.
    min_side: int = 32


BACKBONES = {
    spec.name: spec
    for spec in (
        BackboneSpec("swin_v1_t", "swin_v1", (96, 192, 384, 768)),
        BackboneSpec("swin_v1_s", "swin_v1", (96, 192, 384, 768)),
        BackboneSpec("swin_v1_b", "swin_v1", (128, 256, 512, 1024)),
        BackboneSpec("swin_v1_l", "swin_v1", (192, 384, 768, 1536)),
        BackboneSpec("pvt_v2_b0", "pvt_v2", min_side=64, channels=(32, 64, 160, 256)),
        BackboneSpec("pvt_v2_b1", "pvt_v2", min_side=64, channels=(64, 128, 320, 512)),
        BackboneSpec("pvt_v2_b2", "pvt_v2", min_side=64, channels=(64, 128, 320, 512)),
        BackboneSpec("pvt_v2_b5", "pvt_v2", min_side=64, channels=(64, 128, 320, 512)),
    )
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


@dataclass(frozen=True)
class BiRefNetConfig:
    backbone: str = "swin_v1_l"
    patch_order: PatchOrder = PatchOrder.CURRENT

    def __post_init__(self) -> None:
        backbone_spec(self.backbone)
        object.__setattr__(self, "patch_order", PatchOrder.parse(self.patch_order))

    @property
    def spec(self) -> BackboneSpec:
        return backbone_spec(self.backbone)
