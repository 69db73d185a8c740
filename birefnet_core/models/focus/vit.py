"""DINOv2 ViT blocks as FOCUS uses them (``backbone.blocks.i``, ``backbone.patch_embed``).

Pre-norm block (``shared/notes/focus-reference.md`` section 3.4): LayerNorm eps 1e-6, fused qkv
with bias, softmax attention (head width 64, scale 64^-0.5) through
``F.scaled_dot_product_attention``, LayerScale ``gamma1``/``gamma2`` on the two residual
branches, FFN Mlp (exact GELU, ViT-L) or SwiGLU (ViT-g).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention, [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, 64], strided views
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, 64]
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """w12 (rows [0:h] gate, [h:2h] linear) -> silu(gate) * linear -> w3."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, linear = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * linear)


class Block(nn.Module):
    """x + gamma1 * attn(norm1(x)), then x + gamma2 * mlp(norm2(x)); [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, heads: int, ffn: str, hidden: int) -> None:
        super().__init__()
        self.gamma1 = nn.Parameter(torch.full((dim,), 1e-5))
        self.gamma2 = nn.Parameter(torch.full((dim,), 1e-5))
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, hidden) if ffn == "mlp" else SwiGLUFFN(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv p x p, stride p: [B, 3, H, W] -> [B, (H//p) * (W//p), D] (remainder rows/cols ignored)."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)
