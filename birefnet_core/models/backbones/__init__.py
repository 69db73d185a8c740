"""Backbones of BiRefNet: Swin-v1 and PVT-v2 feature pyramids (strides 4, 8, 16, 32)."""

from __future__ import annotations

from typing import Tuple

from torch import nn

from ...config import backbone_spec
from .stochastic_depth import DropPath, set_drop_path_rate

__all__ = ["DropPath", "backbone_signature", "build_backbone", "set_drop_path_rate"]


def build_backbone(name: str, drop_path_rate: float = 0.0) -> nn.Module:
    """The backbone ``name`` (see ``birefnet_core.config.BACKBONES``), randomly initialised.
    Its forward returns four NCHW maps, shallowest first. ``drop_path_rate``: stochastic depth
    of the last block in training (0 for the first, linear between; see :mod:`.stochastic_depth`)."""
    spec = backbone_spec(name)
    if spec.family == "swin_v1":
        from .swin_v1 import SWIN_V1_CONFIGS, SwinTransformerV1

        return SwinTransformerV1(**SWIN_V1_CONFIGS[name], drop_path_rate=drop_path_rate)
    from .pvt_v2 import PVT_V2_CONFIGS, PyramidVisionTransformerV2

    return PyramidVisionTransformerV2(**PVT_V2_CONFIGS[name], drop_path_rate=drop_path_rate)


def backbone_signature(name: str) -> Tuple[str, str, int, int]:
    """What identifies backbone ``name`` in a BiRefNet state dict: the key of its first
    patch-embedding weight, the key prefix of its third stage's blocks, the embedding width
    (that weight's first dimension) and the number of third-stage blocks."""
    spec = backbone_spec(name)
    if spec.family == "swin_v1":
        from .swin_v1 import SWIN_V1_CONFIGS

        return "bb.patch_embed.proj.weight", "bb.layers.2.blocks.", spec.channels[0], SWIN_V1_CONFIGS[name]["depths"][2]
    from .pvt_v2 import PVT_V2_CONFIGS

    return "bb.patch_embed1.proj.weight", "bb.block3.", spec.channels[0], PVT_V2_CONFIGS[name]["depths"][2]
