"""Fused multi-scale deformable attention forward in Triton (the "triton" backend).

Each program owns a block of queries of one (batch item, head). It loops over levels and
points; for each it reads the sampling location and attention weight, computes the bilinear
corners in float32, loads the corners' [Dh] value rows straight from ``value`` (masked where a
corner lies outside its map) and accumulates weight x value in float32 registers. Nothing of
size [.., points, Dh] is ever written to memory: the only traffic is the value rows read and
the [N, Lq, M * Dh] output written.

Imported lazily: importing this module imports triton. Under ``TRITON_INTERPRET=1`` (set before
this module is first imported) the kernel runs on CPU tensors through Triton's interpreter,
which is how CI tests it.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import triton
import triton.language as tl

from .msda_spec import LevelShapes, MSDASpec

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _msda_forward(
    value_ptr, loc_ptr, attn_ptr, levels_ptr, out_ptr,
    queries, heads, head_dim,
    sv_n, sv_s, sv_m, sv_d,
    sl_n, sl_q, sl_m, sl_l, sl_p, sl_c,
    sa_n, sa_q, sa_m, sa_l, sa_p,
    so_n, so_q,
    LEVELS: tl.constexpr, POINTS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_nm = tl.program_id(1)
    n = (pid_nm // heads).to(tl.int64)
    m = pid_nm % heads
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = q < queries
    d = tl.arange(0, BLOCK_D)
    d_ok = (d < head_dim)[None, :]
    q64 = q.to(tl.int64)

    value_head = value_ptr + n * sv_n + m * sv_m
    channel = (d * sv_d)[None, :]
    loc_q = loc_ptr + n * sl_n + q64 * sl_q + m * sl_m
    attn_q = attn_ptr + n * sa_n + q64 * sa_q + m * sa_m
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for level in tl.static_range(LEVELS):
        # levels table: (H, W, first token) per level, int32
        h = tl.load(levels_ptr + 3 * level)
        w = tl.load(levels_ptr + 3 * level + 1)
        start = tl.load(levels_ptr + 3 * level + 2)
        hf = h.to(tl.float32)
        wf = w.to(tl.float32)
        for point in tl.static_range(POINTS):
            loc = loc_q + level * sl_l + point * sl_p
            x = tl.load(loc, mask=q_ok, other=0.0).to(tl.float32) * wf - 0.5
            y = tl.load(loc + sl_c, mask=q_ok, other=0.0).to(tl.float32) * hf - 0.5
            a = tl.load(attn_q + level * sa_l + point * sa_p, mask=q_ok, other=0.0).to(tl.float32)
            # NaN compares false, so NaN locations sample zero like points outside the map
            inside = (x > -1.0) & (x < wf) & (y > -1.0) & (y < hf) & q_ok
            x = tl.where(inside, x, 0.0)
            y = tl.where(inside, y, 0.0)
            a = tl.where(inside, a, 0.0)
            x0f = tl.floor(x)
            y0f = tl.floor(y)
            fx = x - x0f
            fy = y - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            low = a * fy
            high = a - low
            # y0 <= H - 1 and x0 <= W - 1 hold for every inside point
            top = inside & (y0 >= 0)
            bottom = inside & (y0 + 1 < h)
            left = x0 >= 0
            right = x0 + 1 < w
            corner = value_head + (start + y0 * w + x0).to(tl.int64)[:, None] * sv_s + channel
            v = tl.load(corner, mask=(top & left)[:, None] & d_ok, other=0.0).to(tl.float32)
            acc += v * (high - high * fx)[:, None]
            v = tl.load(corner + sv_s, mask=(top & right)[:, None] & d_ok, other=0.0).to(tl.float32)
            acc += v * (high * fx)[:, None]
            v = tl.load(corner + w * sv_s, mask=(bottom & left)[:, None] & d_ok, other=0.0).to(tl.float32)
            acc += v * (low - low * fx)[:, None]
            v = tl.load(corner + (w + 1) * sv_s, mask=(bottom & right)[:, None] & d_ok, other=0.0).to(tl.float32)
            acc += v * (low * fx)[:, None]
    out = out_ptr + n * so_n + q64[:, None] * so_q + (m * head_dim + d)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok)


@lru_cache(maxsize=64)
def _levels_table(shapes: LevelShapes, device: torch.device) -> torch.Tensor:
    """(H, W, first token) per level as int32 on ``device``: copied there once per geometry."""
    with torch.inference_mode(False), torch.no_grad():
        rows, start = [], 0
        for h, w in shapes:
            rows.append((h, w, start))
            start += h * w
        return torch.tensor(rows, dtype=torch.int32).reshape(-1).to(device)


def ms_deform_attn_triton(value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                          spec: MSDASpec, memory_budget: int = 0) -> torch.Tensor:
    """Forward only; [N, Lq, M * Dh] in value's dtype. Any strides; needs no temporaries."""
    if spec.tokens >= 2**31:
        raise NotImplementedError("the Triton kernel indexes tokens with int32")
    out = value.new_empty(spec.batch, spec.queries, spec.heads * spec.head_dim)
    block_d = max(16, triton.next_power_of_2(spec.head_dim))
    block_q = 64 if INTERPRETED else max(16, min(128, 4096 // block_d))
    grid = (triton.cdiv(spec.queries, block_q), spec.batch * spec.heads)
    _msda_forward[grid](
        value, sampling_locations, attention_weights, _levels_table(spec.shapes, value.device), out,
        spec.queries, spec.heads, spec.head_dim,
        *value.stride(), *sampling_locations.stride(), *attention_weights.stride(),
        out.stride(0), out.stride(1),
        LEVELS=spec.levels, POINTS=spec.points, BLOCK_Q=block_q, BLOCK_D=block_d,
    )
    return out
