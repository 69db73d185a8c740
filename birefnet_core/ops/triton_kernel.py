"""Fused deformable convolution in Triton (the "triton" backend): forward and backward.

An implicit GEMM: each program owns a tile of output positions x output channels and loops over
kernel taps and input-channel blocks. For every tap it computes the sampling coordinates in
float32, loads the four bilinear corners of a channel block straight from the input, blends
them with bilinear weight x modulation mask, and feeds the blended tile to ``tl.dot`` with the
tap's weights. The im2col buffer torchvision builds (~800 MiB in float32 for the decoder's
7x7 call at a 1024^2 input) never exists; the only temporaries are a channels-last copy of the
input and the re-laid-out weight. The backward kernels (below the forward) work the same way.

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
def _tap_sampling(o_base, m_base, so_c, sm_c, t, oy, ox, p_ok, height, width,
                  stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                  KW: tl.constexpr, HAS_MASK: tl.constexpr):
    """Top-left corner, fractions, inside flag and scale (inside x mask) of tap t at positions
    (oy, ox), in float32: the one sampling rule of the forward and backward kernels."""
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
    inside_f = tl.where(inside, 1.0, 0.0)
    scale = inside_f
    if HAS_MASK:
        scale = scale * tl.load(m_base + t * sm_c, mask=p_ok, other=0.0).to(tl.float32)
    return y0f.to(tl.int32), x0f.to(tl.int32), y - y0f, x - x0f, inside, inside_f, scale


@triton.jit
def _positions(p, out_h, out_w):
    """Batch item (int64), output row and column of flat output positions p."""
    rem = p % (out_h * out_w)
    return (p // (out_h * out_w)).to(tl.int64), rem // out_w, rem % out_w


@triton.jit
def _corners(y0, x0, ly, lx, inside, scale, height, width):
    """Which of the four corners (top-left, top-right, bottom-left, bottom-right) lie in the
    image, and their weights (bilinear weight x scale)."""
    # y0 <= H-1 and x0 <= W-1 hold for every inside point
    top = inside & (y0 >= 0)
    bottom = inside & (y0 + 1 < height)
    left = x0 >= 0
    right = x0 + 1 < width
    return (top & left, top & right, bottom & left, bottom & right,
            (1.0 - ly) * (1.0 - lx) * scale, (1.0 - ly) * lx * scale, ly * (1.0 - lx) * scale, ly * lx * scale)


@triton.jit
def _columns(a00, ck, kk, sx_h, sx_w, ok00, ok01, ok10, ok11, w00, w01, w10, w11):
    """The float32 column tile [P, K]: the four corners' channels ``ck`` (offsets from the
    top-left corner's address ``a00``) weighted and summed."""
    col = tl.load(a00[:, None] + ck, mask=ok00[:, None] & kk, other=0.0).to(tl.float32) * w00[:, None]
    col += tl.load(a00[:, None] + sx_w + ck, mask=ok01[:, None] & kk, other=0.0).to(tl.float32) * w01[:, None]
    col += tl.load(a00[:, None] + sx_h + ck, mask=ok10[:, None] & kk, other=0.0).to(tl.float32) * w10[:, None]
    col += tl.load(a00[:, None] + sx_h + sx_w + ck, mask=ok11[:, None] & kk, other=0.0).to(tl.float32) * w11[:, None]
    return col


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
    b, oy, ox = _positions(p, out_h, out_w)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < out_channels

    x_image = x_ptr + b * sx_b
    o_base = offset_ptr + b * so_b + oy * so_h + ox * so_w
    m_base = mask_ptr + b * sm_b + oy * sm_h + ox * sm_w
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for t in range(KH * KW):
        y0, x0, ly, lx, inside, inside_f, scale = _tap_sampling(
            o_base, m_base, so_c, sm_c, t, oy, ox, p_ok, height, width,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KW, HAS_MASK)
        ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _corners(y0, x0, ly, lx, inside, scale, height, width)
        a00 = x_image + y0 * sx_h + x0 * sx_w
        for k0 in range(0, channels, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < channels
            col = _columns(a00, (k * sx_c)[None, :], k_ok[None, :], sx_h, sx_w, ok00, ok01, ok10, ok11,
                           w00, w01, w10, w11)
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


# ------------------------------------------------------------------------------------- backward
#
# Two kernels, from the saved inputs and grad_out (no im2col buffer here either):
#
# * data: a program owns a tile of output positions; per tap and input-channel block it forms the
#   tile of grad_columns = grad_out @ W_tap^T with ``tl.dot``, adds grad_columns x corner weight
#   into the four corners of grad_input (float32 atomics on a channels-last buffer), and
#   accumulates the dot products of grad_columns with the four corner rows, which give the
#   offset and mask gradients of (position, tap) once the channel blocks are done;
# * weight: a program owns a tile of (tap, input channels) x output channels and a share of the
#   positions; it samples the column tile as the forward does and accumulates
#   columns^T @ grad_out with ``tl.dot``, then adds its share into a float32 buffer.


@triton.jit
def _deform_conv2d_backward_data(
    x_ptr, offset_ptr, mask_ptr, w_ptr, go_ptr, gx_ptr, goff_ptr, gmask_ptr,
    positions, channels, height, width, out_h, out_w, out_channels,
    sx_b, sx_c, sx_h, sx_w,
    so_b, so_c, so_h, so_w,
    sm_b, sm_c, sm_h, sm_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr,
    NEED_INPUT: tl.constexpr, NEED_OFFSET: tl.constexpr, NEED_MASK: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < positions
    b, oy, ox = _positions(p, out_h, out_w)
    x_image = x_ptr + b * sx_b
    # grad_input: float32, channels-last and contiguous [B, H, W, C]
    gx_image = gx_ptr + b * height * width * channels  # int64 from b on
    o_base = offset_ptr + b * so_b + oy * so_h + ox * so_w
    m_base = mask_ptr + b * sm_b + oy * sm_h + ox * sm_w
    go_rows = go_ptr + p.to(tl.int64)[:, None] * out_channels  # grad_out rows, channels-last
    for t in range(KH * KW):
        y0, x0, ly, lx, inside, inside_f, scale = _tap_sampling(
            o_base, m_base, so_c, sm_c, t, oy, ox, p_ok, height, width,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KW, HAS_MASK)
        ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _corners(y0, x0, ly, lx, inside, scale, height, width)
        a00 = x_image + y0 * sx_h + x0 * sx_w
        g00 = gx_image + (y0 * width + x0).to(tl.int64) * channels
        d00 = tl.zeros((BLOCK_P,), dtype=tl.float32)
        d01 = tl.zeros((BLOCK_P,), dtype=tl.float32)
        d10 = tl.zeros((BLOCK_P,), dtype=tl.float32)
        d11 = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for k0 in range(0, channels, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < channels
            # grad_columns tile [P, K] = grad_out [P, C_out] @ W[t]^T [C_out, K]
            gcol = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
            for n0 in range(0, out_channels, BLOCK_N):
                n = n0 + tl.arange(0, BLOCK_N)
                n_ok = n < out_channels
                go = tl.load(go_rows + n[None, :], mask=p_ok[:, None] & n_ok[None, :], other=0.0)
                # weights laid out [taps, C_in, C_out]; this tile transposed: [N, K]
                wt = tl.load(w_ptr + (t * channels + k)[None, :] * out_channels + n[:, None],
                             mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                go = go.to(wt.dtype)
                if DOT_FP32:
                    go = go.to(tl.float32)
                    wt = wt.to(tl.float32)
                gcol += tl.dot(go, wt, input_precision=PRECISION)
            ck = k[None, :]
            kk = k_ok[None, :]
            m00 = ok00[:, None] & kk
            m01 = ok01[:, None] & kk
            m10 = ok10[:, None] & kk
            m11 = ok11[:, None] & kk
            if NEED_OFFSET or NEED_MASK:
                v00 = tl.load(a00[:, None] + ck * sx_c, mask=m00, other=0.0).to(tl.float32)
                v01 = tl.load(a00[:, None] + sx_w + ck * sx_c, mask=m01, other=0.0).to(tl.float32)
                v10 = tl.load(a00[:, None] + sx_h + ck * sx_c, mask=m10, other=0.0).to(tl.float32)
                v11 = tl.load(a00[:, None] + sx_h + sx_w + ck * sx_c, mask=m11, other=0.0).to(tl.float32)
                d00 += tl.sum(gcol * v00, axis=1)
                d01 += tl.sum(gcol * v01, axis=1)
                d10 += tl.sum(gcol * v10, axis=1)
                d11 += tl.sum(gcol * v11, axis=1)
            if NEED_INPUT:
                tl.atomic_add(g00[:, None] + ck, gcol * w00[:, None], mask=m00)
                tl.atomic_add(g00[:, None] + channels + ck, gcol * w01[:, None], mask=m01)
                tl.atomic_add(g00[:, None] + width * channels + ck, gcol * w10[:, None], mask=m10)
                tl.atomic_add(g00[:, None] + (width + 1) * channels + ck, gcol * w11[:, None], mask=m11)
        # d.. = dL/d(corner weight) / scale; the corner weights are bilinear weight x scale
        top_d = d00 + lx * (d01 - d00)
        bottom_d = d10 + lx * (d11 - d10)
        if NEED_OFFSET:
            gy = scale * (bottom_d - top_d)
            gxo = scale * ((1.0 - ly) * (d01 - d00) + ly * (d11 - d10))
            # grad_offset: contiguous [B, 2 * taps, H_out, W_out]
            goff = goff_ptr + b * (2 * KH * KW) * out_h * out_w + oy * out_w + ox
            tl.store(goff + (2 * t) * (out_h * out_w), gy.to(goff_ptr.dtype.element_ty), mask=p_ok)
            tl.store(goff + (2 * t + 1) * (out_h * out_w), gxo.to(goff_ptr.dtype.element_ty), mask=p_ok)
        if NEED_MASK:
            gm = inside_f * (top_d + ly * (bottom_d - top_d))
            gmk = gmask_ptr + b * (KH * KW) * out_h * out_w + t * (out_h * out_w) + oy * out_w + ox
            tl.store(gmk, gm.to(gmask_ptr.dtype.element_ty), mask=p_ok)


@triton.jit
def _deform_conv2d_backward_weight(
    x_ptr, offset_ptr, mask_ptr, go_ptr, gw_ptr,
    positions, channels, height, width, out_h, out_w, out_channels, positions_per_split,
    sx_b, sx_c, sx_h, sx_w,
    so_b, so_c, so_h, so_w,
    sm_b, sm_c, sm_h, sm_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
):
    k_blocks = tl.cdiv(channels, BLOCK_K)
    pid_tk = tl.program_id(0)
    t = pid_tk // k_blocks
    k = (pid_tk % k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < channels
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < out_channels
    p_first = tl.program_id(2) * positions_per_split
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for p0 in range(p_first, p_first + positions_per_split, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = (p < positions) & (p < p_first + positions_per_split)
        b, oy, ox = _positions(p, out_h, out_w)
        o_base = offset_ptr + b * so_b + oy * so_h + ox * so_w
        m_base = mask_ptr + b * sm_b + oy * sm_h + ox * sm_w
        y0, x0, ly, lx, inside, inside_f, scale = _tap_sampling(
            o_base, m_base, so_c, sm_c, t, oy, ox, p_ok, height, width,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KW, HAS_MASK)
        ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _corners(y0, x0, ly, lx, inside, scale, height, width)
        a00 = x_ptr + b * sx_b + y0 * sx_h + x0 * sx_w
        col = _columns(a00, (k * sx_c)[None, :], k_ok[None, :], sx_h, sx_w, ok00, ok01, ok10, ok11,
                       w00, w01, w10, w11)
        go = tl.load(go_ptr + p.to(tl.int64)[:, None] * out_channels + n[None, :],
                     mask=p_ok[:, None] & n_ok[None, :], other=0.0)
        col = col.to(go.dtype)
        if DOT_FP32:
            col = col.to(tl.float32)
            go = go.to(tl.float32)
        acc += tl.dot(tl.trans(col), go, input_precision=PRECISION)
    # grad of the weights laid out [taps, C_in, C_out], float32
    tl.atomic_add(gw_ptr + (t * channels + k)[:, None] * out_channels + n[None, :], acc,
                  mask=k_ok[:, None] & n_ok[None, :])


def deform_conv2d_triton_backward(
    grad_out: torch.Tensor,
    needs,
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    spec: DeformSpec,
    memory_budget: int = 0,
):
    """Gradients of (input, offset, weight, bias, mask) (None where ``needs`` says not wanted),
    one weight group and one offset group. Temporaries: channels-last copies of the input and
    grad_out, float32 buffers for grad_input and the weight's gradient."""
    if spec.groups != 1 or spec.offset_groups != 1:
        raise NotImplementedError("the Triton kernel handles groups=1 and one offset group")
    need_input, need_offset, need_weight, need_bias, need_mask = (
        bool(n) and t is not None for n, t in zip(needs, (input, offset, weight, bias, mask)))
    grad_bias = grad_out.sum((0, 2, 3)) if need_bias else None
    x = input.contiguous(memory_format=torch.channels_last)
    go = grad_out.permute(0, 2, 3, 1).contiguous()  # [B, H_out, W_out, C_out]
    w = weight.permute(2, 3, 1, 0).contiguous()  # [kH, kW, C_in, C_out]
    m = mask if mask is not None else offset  # never read when HAS_MASK is false
    positions = spec.batch * spec.out_h * spec.out_w
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    dot_fp32 = INTERPRETED and input.dtype != torch.float32
    block_p = 32 if INTERPRETED else 64
    block_n = _block(spec.out_channels, 16, 32 if INTERPRETED else 64)
    block_k = _block(spec.in_channels, 16, 32 if INTERPRETED else 64)
    common = dict(KH=spec.kernel_h, KW=spec.kernel_w, HAS_MASK=mask is not None, BLOCK_P=block_p,
                  BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision, DOT_FP32=dot_fp32)
    geometry = (*x.stride(), *offset.stride(), *m.stride(), *spec.stride, *spec.padding, *spec.dilation)

    grad_input = grad_offset = grad_mask = grad_weight = None
    if need_input or need_offset or need_mask:
        gx = torch.zeros(spec.batch, spec.height, spec.width, spec.in_channels, device=input.device,
                         dtype=torch.float32) if need_input else x
        goff = input.new_empty(offset.shape) if need_offset else x
        gmask = input.new_empty(mask.shape) if need_mask else x
        _deform_conv2d_backward_data[(triton.cdiv(positions, block_p),)](
            x, offset, m, w, go, gx, goff, gmask,
            positions, spec.in_channels, spec.height, spec.width, spec.out_h, spec.out_w, spec.out_channels,
            *geometry,
            NEED_INPUT=need_input, NEED_OFFSET=need_offset, NEED_MASK=need_mask, **common,
        )
        if need_input:
            grad_input = gx.permute(0, 3, 1, 2).to(input.dtype)
        grad_offset = goff if need_offset else None
        grad_mask = gmask if need_mask else None
    if need_weight:
        gw = torch.zeros(spec.taps, spec.in_channels, spec.out_channels, device=input.device, dtype=torch.float32)
        tiles = spec.taps * triton.cdiv(spec.in_channels, block_k) * triton.cdiv(spec.out_channels, block_n)
        # enough programs to fill the device: the positions are split, each share's sum added atomically
        splits = max(1, min(triton.cdiv(positions, block_p), 1024 // tiles))
        per_split = triton.cdiv(triton.cdiv(positions, splits), block_p) * block_p
        splits = triton.cdiv(positions, per_split)
        grid = (spec.taps * triton.cdiv(spec.in_channels, block_k), triton.cdiv(spec.out_channels, block_n), splits)
        _deform_conv2d_backward_weight[grid](
            x, offset, m, go, gw,
            positions, spec.in_channels, spec.height, spec.width, spec.out_h, spec.out_w, spec.out_channels,
            per_split, *geometry, **common,
        )
        grad_weight = gw.view(spec.kernel_h, spec.kernel_w, spec.in_channels, spec.out_channels)
        grad_weight = grad_weight.permute(3, 2, 0, 1).to(weight.dtype)
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask
