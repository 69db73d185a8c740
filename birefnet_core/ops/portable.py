"""Modulated deformable convolution in plain PyTorch (the "portable" backend).

No compiled extension: it runs wherever torch runs (CPU, CUDA, MPS, XPU, DirectML) in every
floating dtype, and autograd differentiates it in input, offset, mask, weight and bias.

How it works, per chunk of output positions:

1. Sampling coordinates ``y = oy*stride - pad + u*dilation + dy`` (and ``x`` alike) are computed
   in float32 (float64 for float64 input) whatever the input dtype: in bfloat16 a coordinate of
   24 px would be off by up to 0.125 px.
2. The input is copied once into a channels-last layout with a one-pixel zero border. Every
   point strictly inside (-1, H) x (-1, W) then has its 2x2 bilinear neighbourhood in memory,
   and corners outside the image read the zero border. Points outside get weight 0, which is
   torchvision's rule (``y <= -1 or y >= H or x <= -1 or x >= W`` samples 0).
3. The four corners of every (position, tap) are gathered as whole channel rows
   (``index_select``), weighted by bilinear weight x modulation mask, and summed into a
   [positions, taps * C_in] column block, which one matmul turns into the output rows.

The column block of a whole 1024^2 decoder call (64 channels, 7x7 taps, 256^2 positions) would
be ~800 MiB in float32; chunking the positions keeps every temporary under ``memory_budget``.
When gradients are needed each chunk runs under activation checkpointing, so the backward pass
recomputes a chunk instead of keeping every chunk's columns alive.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from .spec import DeformSpec

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of temporaries per call


def coordinate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sampling coordinates and bilinear weights are computed in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def bytes_per_position(spec: DeformSpec, dtype: torch.dtype) -> int:
    """Upper estimate of the temporaries one output position costs inside a chunk."""
    item = torch.empty((), dtype=dtype).element_size()
    coord = torch.empty((), dtype=coordinate_dtype(dtype)).element_size()
    samples = spec.taps * spec.offset_groups
    # columns + one gathered corner + a second gathered corner while addcmul runs
    columns = 3 * spec.taps * spec.in_channels * item
    # a weight-group slice copied for its matmul, and the output rows before they are stored
    columns += (spec.taps * spec.in_channels * item) if spec.groups > 1 else 0
    rows = 2 * spec.out_channels * item
    # coordinates, fractions, bilinear weights (4 corners), int64 base index, and temporaries
    indexing = samples * (12 * coord + 4 * coord + 2 * 8 + 4 * item)
    return columns + rows + indexing


def plan_chunks(spec: DeformSpec, dtype: torch.dtype, memory_budget: int) -> Iterator[Tuple[int, int, int, int]]:
    """Yield ``(b0, b1, r0, r1)``: batch items ``b0:b1`` and output rows ``r0:r1`` per chunk.

    A chunk is either several whole images or a band of rows of one image, so that offset,
    mask and output slices stay views. At least one output row is processed per chunk, so a
    budget smaller than one row is exceeded by that row, never by more.
    """
    per_row = bytes_per_position(spec, dtype) * spec.out_w
    rows_per_chunk = max(1, memory_budget // per_row)
    if rows_per_chunk >= spec.out_h:
        images = max(1, rows_per_chunk // spec.out_h)
        for b0 in range(0, spec.batch, images):
            yield b0, min(spec.batch, b0 + images), 0, spec.out_h
    else:
        for b in range(spec.batch):
            for r0 in range(0, spec.out_h, rows_per_chunk):
                yield b, b + 1, r0, min(spec.out_h, r0 + rows_per_chunk)


def _padded_channels_last(input: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H+2, W+2, C] with a zero border, contiguous."""
    b, c, h, w = input.shape
    padded = input.new_zeros(b, h + 2, w + 2, c)
    padded[:, 1:-1, 1:-1, :] = input.permute(0, 2, 3, 1)
    return padded


def _weight_matrix(weight: torch.Tensor, spec: DeformSpec) -> torch.Tensor:
    """[C_out, C_in/G, kH, kW] -> [G, taps * C_in/G, C_out/G], rows ordered (tap, channel)."""
    g = spec.groups
    c_out, c_in_g = spec.out_channels // g, spec.in_channels // g
    w = weight.reshape(g, c_out, c_in_g, spec.taps).permute(0, 3, 2, 1)
    return w.reshape(g, spec.taps * c_in_g, c_out)


def _chunk(
    padded: torch.Tensor,
    offset: torch.Tensor,
    mask: Optional[torch.Tensor],
    weight_matrix: torch.Tensor,
    spec: DeformSpec,
    b0: int,
    r0: int,
) -> torch.Tensor:
    """Output rows [positions, C_out] for ``offset`` (and ``mask``), a slice starting at (b0, r0)."""
    dtype = padded.dtype
    cdtype = coordinate_dtype(dtype)
    device = padded.device
    nb, _, nr, wo = offset.shape
    og, taps, kw = spec.offset_groups, spec.taps, spec.kernel_w
    (sh, sw), (ph, pw), (dh, dw) = spec.stride, spec.padding, spec.dilation
    hp, wp = spec.height + 2, spec.width + 2

    # Sampling coordinates, laid out like the offset tensor: [nb, og, taps, nr, wo].
    tap = torch.arange(taps, device=device)
    tap_y = (tap // kw * dh).to(cdtype).view(1, 1, taps, 1, 1)
    tap_x = (tap % kw * dw).to(cdtype).view(1, 1, taps, 1, 1)
    row = (torch.arange(r0, r0 + nr, device=device, dtype=cdtype) * sh - ph).view(1, 1, 1, nr, 1)
    col = (torch.arange(wo, device=device, dtype=cdtype) * sw - pw).view(1, 1, 1, 1, wo)
    pairs = offset.view(nb, og, taps, 2, nr, wo).to(cdtype)
    y = pairs[:, :, :, 0] + (tap_y + row)
    x = pairs[:, :, :, 1] + (tap_x + col)

    # Points outside (-1, H) x (-1, W), and NaN offsets, sample zero.
    inside = (y > -1) & (y < spec.height) & (x > -1) & (x < spec.width)
    y = torch.where(inside, y, torch.zeros((), dtype=cdtype, device=device))
    x = torch.where(inside, x, torch.zeros((), dtype=cdtype, device=device))
    y0 = y.floor()
    x0 = x.floor()
    ly, lx = y - y0, x - x0
    scale = inside.to(cdtype)
    if mask is not None:
        scale = scale * mask.view(nb, og, taps, nr, wo).to(cdtype)
    hy, hx = 1 - ly, 1 - lx
    corner_weights = (hy * hx * scale, hy * lx * scale, ly * hx * scale, ly * lx * scale)

    # Row index of the top-left corner in the padded, flattened input.
    image = torch.arange(b0, b0 + nb, device=device).view(nb, 1, 1, 1, 1) * (hp * wp)
    base = image + (y0.long() + 1) * wp + (x0.long() + 1)

    # [nb, og, taps, nr, wo] -> [positions, og, taps]: one row of columns per output position.
    def rows_first(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 3, 4, 1, 2).reshape(-1, og, taps)

    base = rows_first(base)
    corner_weights = [rows_first(w).to(dtype) for w in corner_weights]
    positions = base.shape[0]

    channels = padded.shape[-1]
    flat = padded.view(-1, channels)
    group_columns = []
    cg = channels // og
    for g in range(og):
        source = flat if og == 1 else flat[:, g * cg : (g + 1) * cg]
        index = base[:, g].reshape(-1)
        columns = None
        for corner, shift in enumerate((0, 1, wp, wp + 1)):
            sampled = source.index_select(0, index + shift if shift else index)
            w = corner_weights[corner][:, g].reshape(-1, 1)
            # out of place first: autograd needs ``sampled`` unmodified for the mask's gradient
            columns = sampled * w if columns is None else columns.addcmul_(sampled, w)
        group_columns.append(columns.view(positions, taps, cg))
    columns = group_columns[0] if og == 1 else torch.cat(group_columns, dim=2)  # [P, taps, C_in]

    if spec.groups == 1:
        return columns.view(positions, -1) @ weight_matrix[0]
    c_in_g = spec.in_channels // spec.groups
    columns = columns.view(positions, taps, spec.groups, c_in_g)
    return torch.cat(
        [columns[:, :, g].reshape(positions, -1) @ weight_matrix[g] for g in range(spec.groups)],
        dim=1,
    )


def deform_conv2d_portable(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    spec: DeformSpec,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """Deformable convolution of validated arguments; returns [B, C_out, H_out, W_out].

    The result is laid out channels-last in memory (``out.permute(0, 2, 3, 1)`` is
    contiguous), which is how the matmul produces it; it is an ordinary NCHW tensor otherwise.
    """
    padded = _padded_channels_last(input)
    weight_matrix = _weight_matrix(weight, spec)
    out = input.new_empty(spec.batch, spec.out_h, spec.out_w, spec.out_channels)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, offset, weight, mask)
    )
    # the padded copy and the re-laid-out weight count against the budget too
    chunk_budget = memory_budget - padded.nbytes - weight_matrix.nbytes
    for b0, b1, r0, r1 in plan_chunks(spec, input.dtype, chunk_budget):
        offset_chunk = offset[b0:b1, :, r0:r1]
        mask_chunk = None if mask is None else mask[b0:b1, :, r0:r1]
        if needs_grad:
            rows = checkpoint(
                _chunk, padded, offset_chunk, mask_chunk, weight_matrix, spec, b0, r0,
                use_reentrant=False,
            )
        else:
            rows = _chunk(padded, offset_chunk, mask_chunk, weight_matrix, spec, b0, r0)
        out[b0:b1, r0:r1] = rows.view(b1 - b0, r1 - r0, spec.out_w, spec.out_channels)
    if bias is not None:
        out = out + bias
    return out.permute(0, 3, 1, 2)
