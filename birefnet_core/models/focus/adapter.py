"""FOCUS's backbone (``backbone``, official ``D2DINOV2`` = ``EdgeEnhancer``): a DINOv2 ViT with a
ViT-Adapter whose convolutional side branch is a ResNet-50 on the edge image.

Written from ``shared/notes/focus-reference.md`` sections 3.2-3.6. With ``Ht, Wt = Hp//14, Wp//14``
(ViT token grid) and ``Hc, Wc = Hp/16, Wp/16``, the adapter tokens ``c`` are the edge branch's
c2, c3, c4 (grids 2Hc x 2Wc, Hc x Wc, Hc/2 x Wc/2) concatenated. Each of 4 interaction stages:

* injector: ``x += gamma * MSDA(LN(x) -> LN(c))`` (3 levels; reference = ViT token centres);
* the stage's ViT blocks on ``[cls, x]``;
* extractor: ``c += MSDA(LN(c) -> LN(x))`` (1 level), ``c += ConvFFN(LN(c))``; the last stage
  has two more extractors.

Outputs res2..res5 (D channels, strides 4, 8, 16, 32): the adapter maps (c1 = up(c2) + edge c1)
plus the bilinearly resized ViT outputs of the 4 stages, each through a BatchNorm.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.msda import MultiScaleDeformableAttention
from .common import Shape, cell_centres, resize, to_map
from .config import ADAPTER_LEVELS, FocusConfig
from .resnet import EdgePriorModule
from .vit import LN_EPS, Block, PatchEmbed


class DWConv(nn.Module):
    """Depth-wise 3x3 conv (bias, zero padding 1) applied to each adapter level separately.

    The three levels share the weights, so they are packed into one canvas and convolved in one
    call: level 0 (2Hc x 2Wc) on top, a zero row, then level 1 (Hc x Wc) and, after a zero
    column, level 2 (Hc/2 x Wc/2). Every level is bordered by zeros (or the canvas edge, where
    the conv pads with zeros), so the result equals three separately padded convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor, shapes: Sequence[Shape]) -> torch.Tensor:
        """x [B, N, C] (the three levels' tokens, row-major, concatenated) -> [B, N, C]."""
        (h0, w0), (h1, w1), (h2, w2) = shapes
        b, _, c = x.shape
        t = x.transpose(1, 2)  # [B, C, N]
        n0, n1 = h0 * w0, h1 * w1
        canvas = x.new_zeros(b, c, h0 + 1 + h1, w0)
        canvas[:, :, :h0] = t[..., :n0].view(b, c, h0, w0)
        canvas[:, :, h0 + 1:, :w1] = t[..., n0:n0 + n1].view(b, c, h1, w1)
        canvas[:, :, h0 + 1:h0 + 1 + h2, w1 + 1:w1 + 1 + w2] = t[..., n0 + n1:].view(b, c, h2, w2)
        y = self.dwconv(canvas)
        return torch.cat([y[:, :, :h0].flatten(2),
                          y[:, :, h0 + 1:, :w1].flatten(2),
                          y[:, :, h0 + 1:h0 + 1 + h2, w1 + 1:w1 + 1 + w2].flatten(2)], dim=2).transpose(1, 2)


class ConvFFN(nn.Module):
    """fc1 -> depth-wise 3x3 per level -> exact GELU -> fc2, on [B, N, D] adapter tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Shape]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Injector(nn.Module):
    """ViT tokens attend to the adapter tokens: x + gamma * MSDA(LN_q(x), LN_f(c))."""

    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        dim = config.width
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.query_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MultiScaleDeformableAttention(dim, ADAPTER_LEVELS, config.adapter_heads, config.adapter_points,
                                                  config.adapter_value_ratio)

    def forward(self, x: torch.Tensor, reference_points: torch.Tensor, c: torch.Tensor,
                c_shapes: Sequence[Shape]) -> torch.Tensor:
        """x [B, Nt, D], reference_points [B, Nt, 1, 2], c [B, Nc, D] -> [B, Nt, D]."""
        return x + self.gamma * self.attn(self.query_norm(x), reference_points, self.feat_norm(c), c_shapes)


class Extractor(nn.Module):
    """Adapter tokens attend to the ViT tokens, then a ConvFFN: c + MSDA(LN_q(c), LN_f(x)),
    then c + ConvFFN(LN_ffn(c))."""

    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        dim = config.width
        self.query_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MultiScaleDeformableAttention(dim, 1, config.adapter_heads, config.adapter_points,
                                                  config.adapter_value_ratio)
        self.ffn = ConvFFN(dim, config.adapter_ffn_hidden)
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, c: torch.Tensor, reference_points: torch.Tensor, x: torch.Tensor, token_shape: Shape,
                c_shapes: Sequence[Shape]) -> torch.Tensor:
        """c [B, Nc, D], reference_points [B, Nc, 1, 2], x [B, Nt, D] -> [B, Nc, D]."""
        c = c + self.attn(self.query_norm(c), reference_points, self.feat_norm(x), (token_shape,))
        return c + self.ffn(self.ffn_norm(c), c_shapes)


class InteractionBlock(nn.Module):
    """One interaction stage (official ``InteractionBlockWithCls``); the ViT blocks it runs
    belong to ``EdgeEnhancer.blocks`` and are passed in."""

    def __init__(self, config: FocusConfig, extra_extractors: bool) -> None:
        super().__init__()
        self.injector = Injector(config)
        self.extractor = Extractor(config)
        self.extra_extractors = (nn.ModuleList(Extractor(config) for _ in range(2)) if extra_extractors else None)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cls: torch.Tensor, blocks: Sequence[nn.Module],
                token_ref: torch.Tensor, c_ref: torch.Tensor, token_shape: Shape,
                c_shapes: Sequence[Shape]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, Nt, D] ViT tokens (no cls), c [B, Nc, D] adapter tokens, cls [B, 1, D]
        -> (x, c, cls) after the stage."""
        x = self.injector(x, token_ref, c, c_shapes)
        x = torch.cat([cls, x], dim=1)
        for block in blocks:
            x = block(x)
        cls, x = x[:, :1], x[:, 1:]
        extractors = [self.extractor] + list(self.extra_extractors or [])
        for extractor in extractors:
            c = extractor(c, c_ref, x, token_shape, c_shapes)
        return x, c, cls


class EdgeEnhancer(nn.Module):
    """The backbone: ``forward(x, edges)`` with x the normalised padded image [B, 3, Hp, Wp]
    (Hp, Wp multiples of 32) and ``edges`` its edge image (:func:`edges.edge_input`, same shape)
    -> (res2, res3, res4, res5), each [B, D, Hp/s, Wp/s] for s = 4, 8, 16, 32."""

    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        self.config = config
        dim, grid = config.width, config.pos_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.level_embed = nn.Parameter(torch.zeros(ADAPTER_LEVELS, dim))
        for p in (self.pos_embed, self.cls_token, self.level_embed):
            nn.init.normal_(p, std=0.02)
        self.patch_embed = PatchEmbed(dim, config.patch_size)
        self.blocks = nn.ModuleList(Block(dim, config.heads, config.ffn, config.ffn_hidden)
                                    for _ in range(config.depth))
        self.edge = EdgePriorModule(dim)
        self.interactions = nn.ModuleList(InteractionBlock(config, extra_extractors=k == 3) for k in range(4))
        self.up = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.norm1 = nn.BatchNorm2d(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.norm3 = nn.BatchNorm2d(dim)
        self.norm4 = nn.BatchNorm2d(dim)

    def position_embedding(self, token_shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        """[1, 1 + Ht*Wt, D]: the cls entry and the grid part resized (torch bicubic,
        align_corners False, no antialias) to the token grid; computed in float32."""
        grid, dim = self.config.pos_grid, self.config.width
        pos = self.pos_embed.float()
        patch = pos[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)  # [1, D, g, g]
        patch = F.interpolate(patch, size=token_shape, mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patch.flatten(2).transpose(1, 2)], dim=1).to(dtype)

    def add_upsampled(self, c1: torch.Tensor, tokens: torch.Tensor, shape: Shape) -> torch.Tensor:
        """c1 + up(tokens): ``self.up`` (ConvTranspose2d, kernel 2, stride 2) computed as one matmul
        on the tokens [B, h*w, D], added to c1 [B, D, 2h, 2w] without materialising its output
        as a map (the addition reads the matmul's output through a strided view)."""
        (h, w), b, d = shape, tokens.shape[0], self.config.width
        weight = self.up.weight.flatten(1)  # [D_in, D_out * 4], columns (out, ky, kx)
        y = F.linear(tokens, weight.t(), self.up.bias.repeat_interleave(4))  # [B, h*w, D_out * 4]
        y = y.view(b, h, w, d, 2, 2).permute(0, 3, 1, 4, 2, 5)  # [B, D, h, ky, w, kx]
        return (c1.view(b, d, h, 2, w, 2) + y).reshape(b, d, 2 * h, 2 * w)  # laid out as c1: a view

    def forward(self, x: torch.Tensor, edges: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        b, _, hp, wp = x.shape
        patch = self.config.patch_size
        token_shape = (hp // patch, wp // patch)  # Ht, Wt (floor: remainder pixels ignored)
        hc, wc = hp // 16, wp // 16
        c_shapes = ((2 * hc, 2 * wc), (hc, wc), (hc // 2, wc // 2))  # strides 8, 16, 32

        c1, c2, c3, c4 = self.edge(edges)  # c1 [B, D, Hp/4, Wp/4]; c2..c4 tokens
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)

        pos = self.position_embedding(token_shape, x.dtype)
        tokens = self.patch_embed(x) + pos[:, 1:]  # [B, Nt, D]
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)  # [B, 1, D]
        token_ref = cell_centres((token_shape,), x.device)[None, :, None].expand(b, -1, -1, -1)
        c_ref = cell_centres(c_shapes, x.device)[None, :, None].expand(b, -1, -1, -1)

        vit_maps: List[torch.Tensor] = []
        for stage, (first, last) in zip(self.interactions, self.config.interaction_ranges):
            tokens, c, cls = stage(tokens, c, cls, self.blocks[first:last + 1], token_ref, c_ref, token_shape, c_shapes)
            vit_maps.append(to_map(tokens, token_shape))  # [B, D, Ht, Wt]

        c2, c3, c4 = c.split([h * w for h, w in c_shapes], dim=1)
        c1 = self.add_upsampled(c1, c2, c_shapes[0])
        adapter_maps = (c1,) + tuple(to_map(t, s) for t, s in zip((c2, c3, c4), c_shapes))
        norms = (self.norm1, self.norm2, self.norm3, self.norm4)
        return tuple(norm(m + resize(v, m.shape[-2:])) for norm, m, v in zip(norms, adapter_maps, vit_maps))
