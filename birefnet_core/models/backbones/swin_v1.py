"""Swin Transformer v1, detection-style feature pyramid, as used by BiRefNet's encoder.

Swin Transformer: Hierarchical Vision Transformer using Shifted Windows (Liu et al., ICCV 2021,
arXiv:2103.14030). This is the "detection" flavour: any input size (right/bottom zero padding to
the patch size, the window size and even sizes), shift masks computed on the padded size, and
four LayerNorm-ed NCHW outputs at strides 4, 8, 16, 32 taken before each patch merging.

Written from the published description of the architecture and of BiRefNet's state-dict layout
(``shared/notes/birefnet-reference.md`` sections 1.2 and 2); no reference code was copied.
Dropout is left out (the original's rates are 0). Stochastic depth (``drop_path_rate``, for
training; the original Swin class, which BiRefNet trains with, defaults to 0.2) drops residual
branches per sample, the rate growing linearly over the blocks; it is the identity in eval mode
and at rate 0.

Choices (both reproduce the official detection code):

* Odd blocks are ALWAYS shifted by ``window // 2`` and the window is never shrunk, even when the
  padded map is a single window (the detection code has no "map <= window" clamp; only the
  classification code had one). The mask then splits that single window into regions.
* Tokens of different shift regions get ``-100`` added to their logit (the value the official
  code used until 2025-09 and the one most released checkpoints were trained with; the current
  code's ``-inf`` gives the same float32 result). ``-100`` is finite in float16 and bfloat16 and
  every row keeps its own token, so no row is ever fully masked.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .stochastic_depth import DropPath, linear_rates

SWIN_V1_CONFIGS: Dict[str, dict] = {
    "swin_v1_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                      window_size=7),
    "swin_v1_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                      window_size=7),
    "swin_v1_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                      window_size=12),
    "swin_v1_l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                      window_size=12),
}

MASK_VALUE = -100.0  # added to logits of token pairs from different shift regions
LN_EPS = 1e-5
_MASK_CACHE_MAX = 32  # entries per model; one forward at one input size uses 4

# (Hp, Wp, window, shift, device, dtype) -> [nW, N, N] additive mask
MaskCache = Dict[Tuple[int, int, int, int, torch.device, torch.dtype], torch.Tensor]
# attention dtype -> [nW, N, N] mask; the dtype is only known once q exists (under autocast the
# LayerNorm output and q can differ)
MaskFn = Callable[[torch.dtype], torch.Tensor]


def relative_position_index(window: int) -> torch.Tensor:
    """[w*w, w*w] int64: (dy + w-1) * (2w-1) + (dx + w-1), d = query coord - key coord."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack((ys.flatten(), xs.flatten()))  # [2, N], row-major tokens
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N], >= 0
    return rel[0] * (2 * window - 1) + rel[1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, Hp, Wp, C] -> [B*nW, w*w, C]; windows row-major, batch-major."""
    b, hp, wp, c = x.shape
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(x: torch.Tensor, window: int, b: int, hp: int, wp: int) -> torch.Tensor:
    """[B*nW, w*w, C] -> [B, Hp, Wp, C] (inverse of window_partition)."""
    c = x.shape[-1]
    x = x.view(b, hp // window, wp // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)


def shift_mask(hp: int, wp: int, window: int, shift: int,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[nW, N, N] additive mask for the rolled, padded map: 0 within a region, MASK_VALUE across.

    Regions per axis are [0, -w), [-w, -shift), [-shift, end) of the padded size; the id of a
    position is the number of those boundaries it is at or past (vectorised, no loop).
    """
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    rid = (rows >= hp - window).long() + (rows >= hp - shift).long()  # [Hp] in {0,1,2}
    cid = (cols >= wp - window).long() + (cols >= wp - shift).long()  # [Wp]
    region = (rid[:, None] * 3 + cid[None, :])[None, :, :, None]  # [1, Hp, Wp, 1]
    region = window_partition(region, window).squeeze(-1)  # [nW, N]
    differ = region[:, :, None] != region[:, None, :]  # [nW, N, N]
    zero = torch.zeros((), device=device, dtype=dtype)
    return torch.where(differ, torch.full((), MASK_VALUE, device=device, dtype=dtype), zero)


def cached_shift_mask(cache: MaskCache, hp: int, wp: int, window: int, shift: int,
                      device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = (hp, wp, window, shift, device, dtype)
    mask = cache.get(key)
    if mask is None:
        if len(cache) >= _MASK_CACHE_MAX:
            cache.pop(next(iter(cache)))  # drop the oldest entry
        mask = cache[key] = shift_mask(hp, wp, window, shift, device, dtype)
    return mask


class WindowAttention(nn.Module):
    """Multi-head self-attention inside w x w windows with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))  # [(2w-1)^2, heads]
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """[heads, N, N] gathered from the table."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).to(dtype)

    def forward(self, x: torch.Tensor, mask_fn: Optional[MaskFn] = None) -> torch.Tensor:
        """x [B*nW, N, C]; mask_fn None or dtype -> [nW, N, N] additive (windows batch-major)."""
        bw, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).view(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # [3, B*nW, h, N, d]
        q, k, v = qkv.unbind(0)
        bias = self.position_bias(q.dtype)  # [h, N, N]
        if mask_fn is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None], scale=self.scale)
        else:
            # fold windows into the head axis so the [nW*h, N, N] mask broadcasts over the batch
            # as a view: [B, nW*h, N, d], memory layout unchanged
            mask = mask_fn(q.dtype)  # [nW, N, N]
            nw = mask.shape[0]
            b = bw // nw
            full = (mask[:, None] + bias[None]).reshape(1, nw * h, n, n)  # [1, nW*h, N, N]
            q, k, v = (t.reshape(b, nw * h, n, c // h) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=self.scale)
            out = out.view(bw, h, n, c // h)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))  # [B*nW, N, C]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)  # stochastic depth of both residual branches (training)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int], cache: MaskCache) -> torch.Tensor:
        """x [B, H*W, C] -> [B, H*W, C]."""
        hgt, wid = hw
        b, _, c = x.shape
        w, s = self.window, self.shift
        y = self.norm1(x).view(b, hgt, wid, c)
        pad_b, pad_r = (-hgt) % w, (-wid) % w
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))  # zeros AFTER the norm; [B, Hp, Wp, C]
        hp, wp = hgt + pad_b, wid + pad_r
        mask_fn: Optional[MaskFn] = None
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
            mask_fn = partial(cached_shift_mask, cache, hp, wp, w, s, y.device)
        y = window_merge(self.attn(window_partition(y, w), mask_fn), w, b, hp, wp)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        y = y[:, :hgt, :wid].reshape(b, hgt * wid, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: [B, H*W, C] -> [B, ceil(H/2)*ceil(W/2), 2C]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        hgt, wid = hw
        b, _, c = x.shape
        x = F.pad(x.view(b, hgt, wid, c), (0, 0, 0, wid % 2, 0, hgt % 2))
        # phases: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.flatten(1, 2)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: bool, drop_paths: Sequence[float] = ()) -> None:
        super().__init__()
        drop_paths = tuple(drop_paths) or (0.0,) * depth
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if j % 2 == 0 else window // 2, mlp_ratio, drop_paths[j])
            for j in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, hw: Tuple[int, int], cache: MaskCache) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, hw, cache)
        return x  # patch merging is applied by the caller, after the stage output is taken


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """[B, 3, H, W] -> tokens [B, H/4*W/4, C] (ceil), (H/4, W/4)."""
        p = self.patch_size
        x = self.proj(F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p)))  # [B, C, h, w]
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class SwinTransformerV1(nn.Module):
    """Swin-v1 backbone: forward(x [B, 3, H, W]) -> 4 NCHW maps, channels ``out_channels``,
    spatial ceil(H/s) x ceil(W/s) for s = 4, 8, 16, 32."""

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7,
                 mlp_ratio: float = 4.0, patch_size: int = 4, in_chans: int = 3,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        n = len(depths)
        dims = [embed_dim * 2 ** i for i in range(n)]
        self.out_channels: Tuple[int, ...] = tuple(dims)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        rates = linear_rates(drop_path_rate, sum(depths))  # stochastic depth, block by block
        starts = [sum(depths[:i]) for i in range(n)]
        self.layers = nn.ModuleList(
            SwinStage(dims[i], depths[i], num_heads[i], window_size, mlp_ratio, i < n - 1,
                      rates[starts[i]:starts[i] + depths[i]])
            for i in range(n))
        for i, d in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(d, eps=LN_EPS))
        # shift masks, built once per (Hp, Wp, window, shift, device, dtype); not state
        self._mask_cache: MaskCache = {}

    def clear_mask_cache(self) -> None:
        self._mask_cache.clear()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x, (hgt, wid) = self.patch_embed(x)  # [B, h*w, C]
        outs: List[torch.Tensor] = []
        for i, stage in enumerate(self.layers):
            x = stage(x, (hgt, wid), self._mask_cache)
            y = getattr(self, f"norm{i}")(x)  # [B, h*w, C_i]
            outs.append(y.view(x.shape[0], hgt, wid, -1).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x, (hgt, wid))
                hgt, wid = (hgt + 1) // 2, (wid + 1) // 2
        return tuple(outs)
