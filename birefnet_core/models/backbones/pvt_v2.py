"""PVT-v2 backbone (the variant with overlapping patch embeddings), as BiRefNet uses it.

Pyramid Vision Transformer v2: Wang et al., "PVT v2: Improved Baselines with Pyramid Vision
Transformer", Computational Visual Media 8(3), 2022. Written from the published description
(overlapping patch embedding, spatial-reduction attention, convolutional feed-forward) and
the layout facts of the project notes; no code was copied. Module names reproduce the
official state-dict keys (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``), so released
checkpoints load with ``strict=True``.

Shapes: tokens are ``[B, N, C]`` with ``N = H * W`` in row-major order; feature maps NCHW.
Dropout is left out (the original's rates are 0). Stochastic depth (``drop_path_rate``, for
training; the original BiRefNet trains PVT-v2 with 0.1) drops residual branches per sample,
the rate growing linearly over the blocks; it is the identity in eval mode and at rate 0.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .stochastic_depth import DropPath, linear_rates

__all__ = ["PVT_V2_CONFIGS", "PyramidVisionTransformerV2"]

_HEADS = (1, 2, 5, 8)
_SR = (8, 4, 2, 1)

PVT_V2_CONFIGS: Dict[str, dict] = {
    "pvt_v2_b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_heads=_HEADS,
                      mlp_ratios=(8, 8, 4, 4), sr_ratios=_SR),
    "pvt_v2_b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), num_heads=_HEADS,
                      mlp_ratios=(8, 8, 4, 4), sr_ratios=_SR),
    "pvt_v2_b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=_HEADS,
                      mlp_ratios=(8, 8, 4, 4), sr_ratios=_SR),
    "pvt_v2_b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), num_heads=_HEADS,
                      mlp_ratios=(4, 4, 4, 4), sr_ratios=_SR),
}


def _to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, N, C] tokens -> [B, C, H, W] map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] map -> [B, H*W, C] tokens."""
    return x.flatten(2).transpose(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows, then LayerNorm (eps 1e-5) over channels."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)                           # [B, C, H', W']
        h, w = x.shape[-2:]
        return self.norm(_to_tokens(x)), h, w      # [B, H'W', C]


class Attention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced token grid."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        hd = c // self.num_heads
        q = self.q(x).reshape(b, n, self.num_heads, hd).transpose(1, 2)        # [B, h, N, d]
        r = self.norm(_to_tokens(self.sr(_to_map(x, h, w)))) if self.sr_ratio > 1 else x
        kv = self.kv(r).reshape(b, -1, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=self.scale)  # [B, h, N, d]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """Depthwise 3x3 conv applied to tokens laid out on their grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return _to_tokens(self.dwconv(_to_map(x, h, w)))


class Mlp(nn.Module):
    """Linear -> depthwise conv -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6); both residual branches under stochastic
    depth ``drop_path`` (training only)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class PyramidVisionTransformerV2(nn.Module):
    """Four-stage PVT-v2; ``forward`` gives NCHW maps at strides 4, 8, 16, 32."""

    def __init__(self, embed_dims: Sequence[int], depths: Sequence[int], num_heads: Sequence[int],
                 mlp_ratios: Sequence[float], sr_ratios: Sequence[int], drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.out_channels: Tuple[int, ...] = tuple(embed_dims)
        self.depths: Tuple[int, ...] = tuple(depths)
        rates = iter(linear_rates(drop_path_rate, sum(depths)))  # stochastic depth, block by block
        in_dims = (3, *embed_dims[:3])
        # registration order = official state-dict order: all patch embeds, then block_i, norm_i
        for i in range(4):
            k, s = (7, 4) if i == 0 else (3, 2)
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(in_dims[i], embed_dims[i], k, s))
        for i in range(4):
            blocks = [Block(embed_dims[i], num_heads[i], mlp_ratios[i], sr_ratios[i], next(rates))
                      for _ in range(depths[i])]
            setattr(self, f"block{i + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """[B, 3, H, W] -> 4 maps [B, C_i, H_i, W_i] (H_1 = ceil(H/4), then halving, ceil)."""
        outs = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)                     # [B, N, C]
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = _to_map(getattr(self, f"norm{i}")(x), h, w).contiguous()       # [B, C, h, w]
            outs.append(x)
        return tuple(outs)
