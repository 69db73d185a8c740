"""Mask2Former's multi-scale deformable-attention pixel decoder (``sem_seg_head.pixel_decoder``).

From ``shared/notes/focus-reference.md`` section 4: res5, res4, res3 projected to 256 channels
(1x1 conv + GroupNorm 32), sine position encoding + per-level embedding, 6 post-norm encoder
layers of deformable self-attention (3 levels, 8 heads, 4 points) and a ReLU FFN, split back to
maps at strides 32, 16, 8; one FPN level to stride 4 on res2; ``mask_features`` = 1x1 conv.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.msda import MultiScaleDeformableAttention
from .common import Shape, cell_centres, resize, sine_position_encoding, to_map, to_tokens
from .config import FocusConfig

GN_GROUPS = 32


class ConvNorm(nn.Conv2d):
    """detectron2's ``Conv2d`` with a ``norm`` submodule (GroupNorm): conv -> norm (keys
    ``weight``, ``norm.weight``, ``norm.bias``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.norm = nn.GroupNorm(GN_GROUPS, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class EncoderLayer(nn.Module):
    """src = LN1(src + MSDA(src + pos -> src)); src = LN2(src + FFN(src)); [B, S, C] -> [B, S, C]."""

    def __init__(self, dim: int, heads: int, points: int, ffn: int, levels: int = 3) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: Sequence[Shape]) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class Encoder(nn.Module):
    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config.conv_dim, config.encoder_heads, config.encoder_points, config.encoder_ffn)
            for _ in range(config.encoder_layers))


class EncoderOnly(nn.Module):
    """Holds ``level_embed`` [3, C] and ``encoder.layers`` (official ``MSDeformAttnTransformerEncoderOnly``)."""

    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.randn(3, config.conv_dim))
        self.encoder = Encoder(config)

    def forward(self, maps: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """maps (s32, s16, s8), each [B, C, H_l, W_l] -> the encoded maps, same shapes."""
        shapes = tuple(tuple(m.shape[-2:]) for m in maps)
        b, device, dtype = maps[0].shape[0], maps[0].device, maps[0].dtype
        src = torch.cat([to_tokens(m) for m in maps], dim=1)  # [B, S, C]
        pos = torch.cat([sine_position_encoding(s, device, dtype, src.shape[-1] // 2) + self.level_embed[level]
                         for level, s in enumerate(shapes)])[None]  # [1, S, C]
        reference_points = cell_centres(shapes, device)[None, :, None].expand(b, -1, -1, -1)  # [B, S, 1, 2]
        for layer in self.encoder.layers:
            src = layer(src, pos, reference_points, shapes)
        return tuple(to_map(t, s) for t, s in zip(src.split([h * w for h, w in shapes], dim=1), shapes))


class PixelDecoderOutput(NamedTuple):
    mask_features: torch.Tensor  # [B, C, Hp/4, Wp/4]
    multi_scale_features: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # strides 32, 16, 8: [B, C, H_l, W_l]


class PixelDecoder(nn.Module):
    """``forward((res2, res3, res4, res5))`` -> :class:`PixelDecoderOutput`."""

    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        dim, width = config.conv_dim, config.width
        self.input_proj = nn.ModuleList(  # for res5, res4, res3
            nn.Sequential(nn.Conv2d(width, dim, 1), nn.GroupNorm(GN_GROUPS, dim)) for _ in range(3))
        self.transformer = EncoderOnly(config)
        self.mask_features = nn.Conv2d(dim, dim, 1)
        self.adapter_1 = ConvNorm(width, dim, 1)
        self.layer_1 = ConvNorm(dim, dim, 3, padding=1)

    def forward(self, features: Sequence[torch.Tensor]) -> PixelDecoderOutput:
        res2, res3, res4, res5 = features
        s32, s16, s8 = self.transformer([proj(f) for proj, f in zip(self.input_proj, (res5, res4, res3))])
        s4 = F.relu(self.layer_1(self.adapter_1(res2) + resize(s8, res2.shape[-2:])))
        return PixelDecoderOutput(self.mask_features(s4), (s32, s16, s8))
