"""Mask2Former's masked-attention transformer decoder as FOCUS uses it (``sem_seg_head.predictor``).

From ``shared/notes/focus-reference.md`` section 5: 2 queries, hidden 256, 8 heads, 9 post-norm
layers; layer i attends to memory level i % 3 (strides 32, 16, 8) with the mask of the previous
prediction head (a query only sees pixels where its mask's sigmoid >= 0.5; a query that would
see nothing sees everything), then self-attention, then a ReLU FFN. A prediction head (decoder
norm, class Linear, 3-layer mask MLP dotted with the mask features) runs on the initial queries
and after every layer: 10 heads, the last is the output, the 9 others are auxiliary.

Attention runs batch-first through ``F.scaled_dot_product_attention`` with the parameters of
``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import Shape, resize, sine_position_encoding, to_tokens
from .config import FocusConfig


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s maths and keys, batch-first: query [B, Lq, C], key and value
    [B, S, C], ``allowed`` None or bool [B, 1, Lq, S] (True = may attend) -> [B, Lq, C]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, heads, L, C / heads] (a view)."""
        b, length, c = t.shape
        return t.view(b, length, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, lq, c = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._split_heads(F.linear(query, w_q, b_q))  # [B, h, Lq, C/h]
        k = self._split_heads(F.linear(key, w_k, b_k))  # [B, h, S, C/h]
        v = self._split_heads(F.linear(value, w_v, b_v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, c))


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt))


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_key: torch.Tensor, allowed: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        """memory_key = memory + its position encoding."""
        return self.norm(tgt + self.multihead_attn(tgt + query_pos, memory_key, memory, allowed))


class FFNLayer(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """Linear layers with ReLU between (keys ``layers.i``)."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DecoderOutput(NamedTuple):
    class_logits: torch.Tensor  # [heads, B, Q, K + 1], heads = layers + 1, last = final
    mask_logits: torch.Tensor  # [heads, B, Q, Hp/4, Wp/4]


class MaskedTransformerDecoder(nn.Module):
    """``forward(multi_scale_features (s32, s16, s8), mask_features, aux=False)`` ->
    :class:`DecoderOutput`, the prediction heads stacked: all 10 with ``aux``, else only the last."""

    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        dim, heads, layers = config.conv_dim, config.decoder_heads, config.decoder_layers
        self.transformer_self_attention_layers = nn.ModuleList(SelfAttentionLayer(dim, heads) for _ in range(layers))
        self.transformer_cross_attention_layers = nn.ModuleList(CrossAttentionLayer(dim, heads) for _ in range(layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(dim, config.decoder_ffn) for _ in range(layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.query_feat = nn.Embedding(config.num_queries, dim)
        self.query_embed = nn.Embedding(config.num_queries, dim)
        self.level_embed = nn.Embedding(3, dim)
        self.class_embed = nn.Linear(dim, config.num_classes + 1)
        self.mask_embed = MLP(dim, 3)

    def prediction_head(self, tgt: torch.Tensor, pixels: torch.Tensor, size: Shape):
        """tgt [B, Q, C], pixels = mask features as tokens [B, h*w, C] -> class logits [B, Q, K+1],
        mask logits [B, Q, h, w] (per query, the mask embedding's dot product with every pixel)."""
        out = self.decoder_norm(tgt)
        masks = torch.bmm(pixels, self.mask_embed(out).transpose(1, 2))  # [B, h*w, Q]
        return self.class_embed(out), masks.transpose(1, 2).reshape(tgt.shape[0], tgt.shape[1], *size)

    @staticmethod
    def allowed_pixels(mask_logits: torch.Tensor, size: Shape) -> torch.Tensor:
        """Attention mask of the next layer: [B, Q, h, w] logits -> bool [B, 1, Q, H*W], True where
        sigmoid(resized logits) >= 0.5 (in float32), every pixel for a query with none."""
        blocked = resize(mask_logits.float(), size).sigmoid().flatten(2) < 0.5  # [B, Q, HW]
        return (~blocked | blocked.all(-1, keepdim=True))[:, None]

    def forward(self, multi_scale_features: Sequence[torch.Tensor], mask_features: torch.Tensor,
                aux: bool = False) -> DecoderOutput:
        b = mask_features.shape[0]
        device, dtype = mask_features.device, mask_features.dtype
        size = tuple(mask_features.shape[-2:])
        pixels = mask_features.permute(0, 2, 3, 1).reshape(b, size[0] * size[1], -1)  # [B, h*w, C], once
        shapes = [tuple(m.shape[-2:]) for m in multi_scale_features]
        memory = [to_tokens(m) + self.level_embed.weight[level] for level, m in enumerate(multi_scale_features)]
        memory_key = [mem + sine_position_encoding(s, device, dtype, mem.shape[-1] // 2)
                      for mem, s in zip(memory, shapes)]  # [B, S_l, C]
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)  # [B, Q, C]
        tgt = self.query_feat.weight[None].expand(b, -1, -1)

        classes: List[torch.Tensor] = []
        masks: List[torch.Tensor] = []
        cls, mask = self.prediction_head(tgt, pixels, size)
        for i, (cross, self_attn, ffn) in enumerate(zip(self.transformer_cross_attention_layers,
                                                       self.transformer_self_attention_layers,
                                                       self.transformer_ffn_layers)):
            if aux:
                classes.append(cls)
                masks.append(mask)
            level = i % len(shapes)
            allowed = self.allowed_pixels(mask, shapes[level])
            tgt = ffn(self_attn(cross(tgt, memory[level], memory_key[level], allowed, query_pos), query_pos))
            cls, mask = self.prediction_head(tgt, pixels, size)
        classes.append(cls)
        masks.append(mask)
        return DecoderOutput(torch.stack(classes), torch.stack(masks))
