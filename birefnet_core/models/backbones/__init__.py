"""Backbones of BiRefNet: Swin-v1 and PVT-v2 feature pyramids (strides 4, 8, 16, 32)."""

from __future__ import annotations

from torch import nn

from ...config import backbone_spec


def build_backbone(name: str) -> nn.Module:
    """The backbone ``name`` (see ``birefnet_core.config.BACKBONES``), randomly initialised.
    Its forward returns four NCHW maps, shallowest first."""
    spec = backbone_spec(name)
    if spec.family == "swin_v1":
        from .swin_v1 import SWIN_V1_CONFIGS, SwinTransformerV1

        return SwinTransformerV1(**SWIN_V1_CONFIGS[name])
    from .pvt_v2 import PVT_V2_CONFIGS, PyramidVisionTransformerV2

    return PyramidVisionTransformerV2(**PVT_V2_CONFIGS[name])
