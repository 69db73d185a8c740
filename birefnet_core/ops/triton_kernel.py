"""Fused deformable-convolution forward in Triton (the "triton" backend).

An implicit GEMM: each program owns a tile of output positions x output channels and loops over
kernel taps and input-channel blocks. For every tap it computes the sampling coordinates in
float32, loads the four bilinear corners of a channel block straight from the input, blends
them with bilinear weight x modulation mask, and feeds the blended tile to ``tl.dot`` with the
tap's weights. The im2col buffer torchvision builds (~800 MiB in float32 for the decoder's
7x7 call at a 1024^2 input) never exists; the only temporaries are a channels-last copy of the
input and the re-laid-out weight.

Imported lazily: importing this module imports triton. Under ``TRITON_INTERPRET=1`` (set before
this module is first imported) the kernel runs on CPU tensors through Triton's interpreter,
which is how CI tests it.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .spec import DeformSpec

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _deform_conv2d_forward(
    x_ptr, offset_ptr, mask_ptr, w_ptr, bias_ptr, out_ptr,
    positions, channels, height, width, out_h, out_w, out_channels,
    sx_b, sx_c, sx_h, sx_w,
    so_b, so_c, so_h, so_w,
    sm_b, sm_c, sm_h, sm_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < positions
    b = (p // (out_h * out_w)).to(tl.int64)
    rem = p % (out_h * out_w)
    oy = rem // out_w
    ox = rem % out_w
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < out_channels

    x_image = x_ptr + b * sx_b
    o_base = offset_ptr + b * so_b + oy * so_h + ox * so_w
    m_base = mask_ptr + b * sm_b + oy * sm_h + ox * sm_w
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for t in range(KH * KW):
        u = t // KW
        v = t % KW
        dy = tl.load(o_base + (2 * t) * so_c, mask=p_ok, other=0.0).to(tl.float32)
        dx = tl.load(o_base + (2 * t + 1) * so_c, mask=p_ok, other=0.0).to(tl.float32)
        y = (oy * stride_h - pad_h + u * dil_h).to(tl.float32) + dy
        x = (ox * stride_w - pad_w + v * dil_w).to(tl.float32) + dx
        # NaN compares false, so NaN offsets sample zero like points outside the image
        inside = (y > -1.0) & (y < height) & (x > -1.0) & (x < width) & p_ok
        y = tl.where(inside, y, 0.0)
        x = tl.where(inside, x, 0.0)
        y0f = tl.floor(y)
        x0f = tl.floor(x)
        ly = y - y0f
        lx = x - x0f
        y0 = y0f.to(tl.int32)
        x0 = x0f.to(tl.int32)
        scale = tl.where(inside, 1.0, 0.0)
        if HAS_MASK:
            scale = scale * tl.load(m_base + t * sm_c, mask=p_ok, other=0.0).to(tl.float32)
        w00 = (1.0 - ly) * (1.0 - lx) * scale
        w01 = (1.0 - ly) * lx * scale
        w10 = ly * (1.0 - lx) * scale
        w11 = ly * lx * scale
        # y0 <= H-1 and x0 <= W-1 hold for every inside point
        top = inside & (y0 >= 0)
        bottom = inside & (y0 + 1 < height)
        left = x0 >= 0
        right = x0 + 1 < width
        a00 = x_image + y0 * sx_h + x0 * sx_w
        for k0 in range(0, channels, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < channels
            ck = (k * sx_c)[None, :]
            kk = k_ok[None, :]
            col = tl.load(a00[:, None] + ck, mask=(top & left)[:, None] & kk, other=0.0).to(tl.float32) * w00[:, None]
            col += tl.load(a00[:, None] + sx_w + ck, mask=(top & right)[:, None] & kk, other=0.0).to(tl.float32) * w01[:, None]
            col += tl.load(a00[:, None] + sx_h + ck, mask=(bottom & left)[:, None] & kk, other=0.0).to(tl.float32) * w10[:, None]
            col += tl.load(a00[:, None] + sx_h + sx_w + ck, mask=(bottom & right)[:, None] & kk, other=0.0).to(tl.float32) * w11[:, None]
            # weights laid out [taps, C_in, C_out]
            wt = tl.load(
                w_ptr + (t * channels + k)[:, None] * out_channels + n[None, :],
                mask=k_ok[:, None] & n_ok[None, :],
                other=0.0,
            )
            col = col.to(wt.dtype)
            if DOT_FP32:
                # Triton's interpreter multiplies 16-bit dot operands wrongly (triton 3.8):
                # the same rounded operands in float32 give the compiled kernel's numbers
                col = col.to(tl.float32)
                wt = wt.to(tl.float32)
            acc += tl.dot(col, wt, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_offsets = p.to(tl.int64)[:, None] * out_channels + n[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & n_ok[None, :])


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(n)))


def deform_conv2d_triton(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    spec: DeformSpec,
    memory_budget: int = 0,
) -> torch.Tensor:
    """Forward only, one weight group and one offset group; returns [B, C_out, H_out, W_out]
    laid out channels-last in memory. Needs no budget: it keeps no temporaries beyond a
    channels-last copy of the input."""
    if spec.groups != 1 or spec.offset_groups != 1:
        raise NotImplementedError("the Triton kernel handles groups=1 and one offset group")
    # channels-last makes the channel block of a corner one contiguous load
    x = input.contiguous(memory_format=torch.channels_last)
    w = weight.permute(2, 3, 1, 0).contiguous()  # [kH, kW, C_in, C_out]
    positions = spec.batch * spec.out_h * spec.out_w
    out = input.new_empty(spec.batch, spec.out_h, spec.out_w, spec.out_channels)
    m = mask if mask is not None else offset  # never read when HAS_MASK is false
    block_p = 64 if INTERPRETED else 128
    block_n = _block(spec.out_channels, 16, 64 if INTERPRETED else 128)
    block_k = _block(spec.in_channels, 16, 64)
    # TF32 only where torch itself allows it for float32 matmuls
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    grid = (triton.cdiv(positions, block_p), triton.cdiv(spec.out_channels, block_n))
    _deform_conv2d_forward[grid](
        x, offset, m, w, bias if bias is not None else w, out,
        positions, spec.in_channels, spec.height, spec.width, spec.out_h, spec.out_w,
        spec.out_channels,
        *x.stride(), *offset.stride(), *m.stride(),
        *spec.stride, *spec.padding, *spec.dilation,
        KH=spec.kernel_h, KW=spec.kernel_w,
        HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
        BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION=precision, DOT_FP32=INTERPRETED and input.dtype != torch.float32,
    )
    return out.permute(0, 3, 1, 2)
