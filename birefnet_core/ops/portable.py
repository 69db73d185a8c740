"""Modulated deformable convolution in plain PyTorch (the "portable" backend).

No compiled extension: it runs wherever torch runs (CPU, CUDA, MPS, XPU, DirectML) in every
floating dtype, and is differentiable in input, offset, mask, weight and bias.

How the forward works, per chunk of output positions:

1. Sampling coordinates ``y = oy*stride - pad + u*dilation + dy`` (and ``x`` alike) are computed
   in float32 (float64 for float64 input) whatever the input dtype: in bfloat16 a coordinate of
   24 px would be off by up to 0.125 px.
2. The input is copied once into a channels-last layout with a one-pixel zero border, viewed as
   a table of ``[B * (H+2) * (W+2) * offset_groups, C_in / offset_groups]`` rows (row = pixel *
   offset_groups + group). Every point strictly inside (-1, H) x (-1, W) then has its 2x2
   bilinear neighbourhood in the table, and corners outside the image read the zero border.
   Points outside get weight 0, which is torchvision's rule (``y <= -1 or y >= H or x <= -1 or
   x >= W`` samples 0).
3. Each (position, tap, offset group) is a bag of four table rows with weights bilinear weight x
   modulation mask; the weighted sums of the bags are the [positions, taps * C_in] column block,
   which one matmul turns into the output rows. On CPU and CUDA ``F.embedding_bag`` computes the
   sums without materialising the gathered corners (``reduction="embedding_bag"``); elsewhere the
   corners are gathered (``index_select``) and summed (``reduction="gather"``).

The backward is written by hand (:func:`deform_conv2d_portable_backward`), per chunk from the
saved inputs, under the same memory budget: ``grad_columns = grad_rows @ W^T``; the weight's
gradient ``columns^T @ grad_rows`` (columns recomputed); the input's gradient scatters every
bag's ``grad_columns`` row back onto its four corners with their weights (on CPU / CUDA: the
scatter is an ``embedding_bag`` over the corners sorted by table row, elsewhere ``index_add_``);
and the gradients of the sampling weights, ``D = <grad_columns row, corner row>`` per corner,
give the mask's and, through the bilinear weights, the offsets' gradients. Nothing is kept from
the forward but the inputs themselves.

``BIREFNET_DEFORM_BACKWARD=autograd`` (or ``backward="autograd"``) selects the previous
implementation instead, as it was: autograd through the gather formulation, each chunk under
activation checkpointing, chunks sized by the memory budget alone. It is the reference the tests
check the hand-written backward against, and the baseline of ``python -m birefnet_core bench
train``.

The column block of a whole 1024^2 decoder call (64 channels, 7x7 taps, 256^2 positions) would
be ~800 MiB in float32; chunking the positions keeps every temporary under ``memory_budget``,
and on CPU under :data:`CPU_CHUNK_BYTES` as well (smaller blocks are faster there).
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .spec import DeformSpec

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of temporaries per call
# On CPU a chunk's temporaries are also kept under this, whatever the budget: glibc's malloc
# serves blocks above 32 MiB with fresh pages from the system every time, and faulting those in
# can cost more than the arithmetic on them (measured here: the columns of 401k bags in one
# embedding_bag call 81 ms, in 16 chunks 4.5 ms in all; the decoder's calls of a pvt_v2_b0 step
# at 128^2, batch 8, forward and backward, 8 % faster than with 256 MiB chunks).
CPU_CHUNK_BYTES = 32 * 2**20
REDUCTIONS = ("embedding_bag", "gather")
EMBEDDING_BAG_DEVICES = ("cpu", "cuda")  # where F.embedding_bag and its backward ops are fast
BACKWARD_ENV = "BIREFNET_DEFORM_BACKWARD"
BACKWARD_MODES = ("manual", "autograd")
CORNERS = 4  # top-left, top-right, bottom-left, bottom-right

Gradients = Tuple[Optional[torch.Tensor], ...]


def coordinate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sampling coordinates and bilinear weights are computed in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_reduction(device: torch.device) -> str:
    return "embedding_bag" if device.type in EMBEDDING_BAG_DEVICES else "gather"


def backward_mode(mode: Optional[str] = None) -> str:
    """``mode`` if given, else ``BIREFNET_DEFORM_BACKWARD``, else ``"manual"``; checked."""
    source = "backward argument"
    if mode is None:
        mode, source = os.environ.get(BACKWARD_ENV, "").strip() or "manual", f"environment variable {BACKWARD_ENV}"
    mode = mode.strip().lower()
    if mode not in BACKWARD_MODES:
        raise ValueError(f"unknown deform_conv2d backward {mode!r} ({source}); choose one of {', '.join(BACKWARD_MODES)}")
    return mode


def table_rows(spec: DeformSpec) -> int:
    """Rows of the bordered input table: one per (padded pixel, offset group)."""
    return spec.batch * (spec.height + 2) * (spec.width + 2) * spec.offset_groups


def index_dtype(spec: DeformSpec) -> torch.dtype:
    """int32 table rows where the table allows it (half the index traffic), else int64."""
    return torch.int32 if table_rows(spec) < 2**31 - 1 else torch.int64


def _sizes(dtype: torch.dtype) -> Tuple[int, int, int]:
    item = torch.empty((), dtype=dtype).element_size()
    coord = torch.empty((), dtype=coordinate_dtype(dtype)).element_size()
    return item, coord, 8  # int64 indices, the worst case


def bytes_per_position(spec: DeformSpec, dtype: torch.dtype, reduction: str = "gather",
                       backward: bool = False) -> int:
    """Upper estimate of the temporaries one output position costs inside a chunk of the forward
    (``backward=False``) or of the backward pass."""
    item, coord, index = _sizes(dtype)
    samples = spec.taps * spec.offset_groups
    columns = spec.taps * spec.in_channels * item  # one [taps * C_in] row
    # coordinates, fractions, masks, the four corner rows and weights, and their temporaries
    sampling = samples * (16 * coord + 6 * index + 4 * item + 8)
    # a weight-group slice copied for its matmul
    group_copy = columns if spec.groups > 1 else 0
    if not backward:
        # columns (+ two gathered corners while addcmul runs), output rows before they are stored
        gathered = 2 * columns if reduction == "gather" else 0
        return columns + gathered + group_copy + 2 * spec.out_channels * item + sampling
    # the chunk's grad_out rows; columns, then grad_columns (one at a time) and a group slice
    per_position = 2 * spec.out_channels * item + 2 * columns + group_copy + sampling
    # the corner dot products (and their coordinate-dtype copy) and the offset / mask gradients
    per_position += samples * (CORNERS * (item + coord) + 8 * coord)
    if reduction == "gather":
        per_position += 2 * columns  # one gathered corner and its weighted copy
    else:
        # the corners sorted by table row (values, positions, bag of origin, weights)
        per_position += samples * CORNERS * (3 * index + item)
    return per_position


def chunk_budget(memory_budget: int, fixed: int, device: torch.device, capped: bool = True) -> int:
    """What one chunk may take: the budget less the call's fixed temporaries (``fixed``), and on
    CPU at most :data:`CPU_CHUNK_BYTES` (unless ``capped`` is False: the previous planning)."""
    budget = memory_budget - fixed
    return min(budget, CPU_CHUNK_BYTES) if capped and device.type == "cpu" else budget


def plan_chunks(spec: DeformSpec, dtype: torch.dtype, memory_budget: int, reduction: str = "gather",
                backward: bool = False) -> Iterator[Tuple[int, int, int, int]]:
    """Yield ``(b0, b1, r0, r1)``: batch items ``b0:b1`` and output rows ``r0:r1`` per chunk.

    A chunk is either several whole images or a band of rows of one image, so that offset,
    mask and output slices stay views. At least one output row is processed per chunk, so a
    budget smaller than one row is exceeded by that row, never by more.
    """
    per_row = bytes_per_position(spec, dtype, reduction, backward) * spec.out_w
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


def _weight_from_matrix(matrix: torch.Tensor, spec: DeformSpec) -> torch.Tensor:
    """The inverse of :func:`_weight_matrix`: [G, taps * C_in/G, C_out/G] -> [C_out, C_in/G, kH, kW]."""
    g = spec.groups
    c_out, c_in_g = spec.out_channels // g, spec.in_channels // g
    w = matrix.reshape(g, spec.taps, c_in_g, c_out).permute(0, 3, 2, 1)
    return w.reshape(spec.out_channels, c_in_g, spec.kernel_h, spec.kernel_w)


class _Sampling(NamedTuple):
    """The bags of one chunk: one per (position, tap, offset group), in that order (so the
    weighted sums, viewed [positions, taps, C_in], are the column block)."""

    rows: torch.Tensor  # [S, 4] table rows of the four corners
    weights: torch.Tensor  # [S, 4] bilinear weight x mask, 0 outside; coordinate dtype
    fy: torch.Tensor  # [S] fractional parts of the coordinates
    fx: torch.Tensor
    scale: torch.Tensor  # [S] mask where the point is inside, else 0
    inside: torch.Tensor  # [S] 1 where the point is inside, else 0 (coordinate dtype)


def _to_bags(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[nb, og, taps, nr, wo] (the offset / mask layout) -> [nb, nr, wo, taps, og], contiguous in
    ``dtype`` (so that everything computed from it is laid out in bag order too)."""
    t = t.permute(0, 3, 4, 2, 1)
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)


def _from_bags(t: torch.Tensor, nb: int, nr: int, wo: int, og: int, taps: int) -> torch.Tensor:
    """[S] in bag order -> [nb, og, taps, nr, wo]."""
    return t.view(nb, nr, wo, taps, og).permute(0, 4, 3, 1, 2)


def _sampling(offset: torch.Tensor, mask: Optional[torch.Tensor], spec: DeformSpec, b0: int, r0: int,
              idtype: torch.dtype) -> _Sampling:
    """The bags for ``offset`` (and ``mask``), a slice of the full tensors starting at (b0, r0)."""
    cdtype = coordinate_dtype(offset.dtype)
    device = offset.device
    nb, _, nr, wo = offset.shape
    og, taps, kw = spec.offset_groups, spec.taps, spec.kernel_w
    (sh, sw), (ph, pw), (dh, dw) = spec.stride, spec.padding, spec.dilation
    wp = spec.width + 2

    tap = torch.arange(taps, device=device)
    tap_y = (tap // kw * dh).to(cdtype).view(1, 1, 1, taps, 1)
    tap_x = (tap % kw * dw).to(cdtype).view(1, 1, 1, taps, 1)
    row = (torch.arange(r0, r0 + nr, device=device, dtype=cdtype) * sh - ph).view(1, nr, 1, 1, 1)
    col = (torch.arange(wo, device=device, dtype=cdtype) * sw - pw).view(1, 1, wo, 1, 1)
    pairs = offset.view(nb, og, taps, 2, nr, wo)
    y = _to_bags(pairs[:, :, :, 0], cdtype) + (tap_y + row)  # [nb, nr, wo, taps, og]
    x = _to_bags(pairs[:, :, :, 1], cdtype) + (tap_x + col)

    # Points outside (-1, H) x (-1, W), and NaN offsets, sample zero.
    inside = (y > -1) & (y < spec.height) & (x > -1) & (x < spec.width)
    zero = torch.zeros((), dtype=cdtype, device=device)
    y = torch.where(inside, y, zero)
    x = torch.where(inside, x, zero)
    y0 = y.floor()
    x0 = x.floor()
    fy, fx = y - y0, x - x0
    inside = inside.to(cdtype)
    scale = inside if mask is None else inside * _to_bags(mask.view(nb, og, taps, nr, wo), cdtype)
    low = scale * fy  # the row below (y0 + 1)
    high = scale - low  # the row of the corner (y0)
    high_right = high * fx
    low_right = low * fx
    weights = torch.stack((high - high_right, high_right, low - low_right, low_right), dim=-1)

    # Table row of the top-left corner: (pixel of the bordered image) * og + group.
    image = torch.arange(b0, b0 + nb, device=device, dtype=idtype).view(nb, 1, 1, 1, 1) * (spec.height + 2)
    pixel = (image + y0.to(idtype) + 1) * wp + x0.to(idtype) + 1
    base = pixel * og + torch.arange(og, device=device, dtype=idtype)
    shifts = torch.tensor([0, og, wp * og, (wp + 1) * og], device=device, dtype=idtype)
    rows = base.unsqueeze(-1) + shifts
    return _Sampling(rows.view(-1, CORNERS), weights.view(-1, CORNERS), fy.reshape(-1), fx.reshape(-1),
                     scale.reshape(-1), inside.reshape(-1))


def _columns(table: torch.Tensor, smp: _Sampling, reduction: str) -> torch.Tensor:
    """[S, C_in / og]: each bag's weighted sum of its four corner rows. The "gather" form is the
    previous formulation, which autograd differentiates (``backward="autograd"``)."""
    weights = smp.weights.to(table.dtype)
    if reduction == "embedding_bag":
        return F.embedding_bag(smp.rows, table, per_sample_weights=weights, mode="sum")
    columns = None
    for corner in range(CORNERS):
        sampled = table.index_select(0, smp.rows[:, corner])
        w = weights[:, corner : corner + 1]
        # out of place first: autograd needs ``sampled`` unmodified for the weights' gradient
        columns = sampled * w if columns is None else columns.addcmul_(sampled, w)
    return columns


def _output_rows(columns: torch.Tensor, weight_matrix: torch.Tensor, spec: DeformSpec,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[P, taps, C_in] columns -> [P, C_out] output rows (written into ``out`` when given)."""
    positions = columns.shape[0]
    if spec.groups == 1:
        return torch.mm(columns.reshape(positions, -1), weight_matrix[0], out=out)
    c_in_g = spec.in_channels // spec.groups
    columns = columns.view(positions, spec.taps, spec.groups, c_in_g)
    return torch.cat(
        [columns[:, :, g].reshape(positions, -1) @ weight_matrix[g] for g in range(spec.groups)],
        dim=1, out=out,
    )


def _chunk(table: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor], weight_matrix: torch.Tensor,
           spec: DeformSpec, b0: int, r0: int, reduction: str, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Output rows [positions, C_out] for ``offset`` (and ``mask``), a slice starting at (b0, r0)."""
    smp = _sampling(offset, mask, spec, b0, r0, index_dtype(spec))
    positions = offset.shape[0] * offset.shape[2] * offset.shape[3]
    columns = _columns(table, smp, reduction).view(positions, spec.taps, spec.in_channels)
    return _output_rows(columns, weight_matrix, spec, out)


def _table(input: torch.Tensor, spec: DeformSpec) -> torch.Tensor:
    return _padded_channels_last(input).view(-1, spec.in_channels // spec.offset_groups)


def _forward(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             mask: Optional[torch.Tensor], spec: DeformSpec, memory_budget: int, reduction: str,
             checkpointed: bool = False) -> torch.Tensor:
    table = _table(input, spec)
    weight_matrix = _weight_matrix(weight, spec)
    out = input.new_empty(spec.batch, spec.out_h, spec.out_w, spec.out_channels)
    # the padded copy and the re-laid-out weight count against the budget too; the previous
    # implementation (checkpointed) is kept as it was, chunks sized by the budget alone
    budget = chunk_budget(memory_budget, table.nbytes + weight_matrix.nbytes, input.device, capped=not checkpointed)
    for b0, b1, r0, r1 in plan_chunks(spec, input.dtype, budget, reduction):
        offset_chunk = offset[b0:b1, :, r0:r1]
        mask_chunk = None if mask is None else mask[b0:b1, :, r0:r1]
        args = (table, offset_chunk, mask_chunk, weight_matrix, spec, b0, r0, reduction)
        # whole images, or rows of one image: a contiguous block of the channels-last output
        target = out[b0:b1, r0:r1].view(-1, spec.out_channels)
        if checkpointed:
            target.copy_(checkpoint(_chunk, *args, use_reentrant=False))
        else:
            _chunk(*args, out=target)
    if bias is not None:
        out = out + bias
    return out.permute(0, 3, 1, 2)


def _corner_dots(grad_columns: torch.Tensor, table: torch.Tensor, smp: _Sampling, reduction: str) -> torch.Tensor:
    """[S, 4]: the dot product of each bag's grad_columns row with each of its corner rows (the
    gradient of the bag's corner weights)."""
    bags = grad_columns.shape[0]
    if reduction == "embedding_bag":
        device, idtype = grad_columns.device, smp.rows.dtype
        offsets = torch.arange(0, CORNERS * bags, CORNERS, device=device, dtype=idtype)
        bag_of = torch.arange(bags, device=device, dtype=idtype).repeat_interleave(CORNERS)
        # the derivative kernel of embedding_bag's per-sample weights: the dots without a gathered copy
        dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            grad_columns, table, smp.rows.view(-1), offsets, bag_of, 0, -1)  # mode 0: sum
        return dots.view(bags, CORNERS)
    dots = grad_columns.new_empty(bags, CORNERS)
    for corner in range(CORNERS):
        sampled = table.index_select(0, smp.rows[:, corner])
        dots[:, corner] = torch.bmm(sampled.unsqueeze(1), grad_columns.unsqueeze(2)).view(bags)
    return dots


def _scatter(grad_table: torch.Tensor, grad_columns: torch.Tensor, smp: _Sampling, reduction: str) -> None:
    """grad_table[corner row] += corner weight * grad_columns row, for every bag and corner."""
    weights = smp.weights.to(grad_columns.dtype)
    if reduction != "embedding_bag":
        for corner in range(CORNERS):
            grad_table.index_add_(0, smp.rows[:, corner], grad_columns * weights[:, corner : corner + 1])
        return
    # Sorted by table row, the corners landing on one row are one bag of grad_columns rows: the
    # scatter becomes a gather-and-sum (no atomics, deterministic, fast on CPU).
    order = torch.sort(smp.rows.view(-1), stable=True)
    first, last = int(order.values[0]), int(order.values[-1])
    targets = torch.arange(first, last + 1, device=grad_table.device, dtype=order.values.dtype)
    starts = torch.searchsorted(order.values, targets)
    sums = F.embedding_bag(order.indices // CORNERS, grad_columns, starts,
                           per_sample_weights=weights.view(-1)[order.indices], mode="sum")
    grad_table[first : last + 1] += sums


def deform_conv2d_portable_backward(
    grad_out: torch.Tensor,
    needs: Sequence[bool],
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    spec: DeformSpec,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    reduction: Optional[str] = None,
) -> Gradients:
    """Gradients of (input, offset, weight, bias, mask), each None where ``needs`` says it is not
    wanted, for ``grad_out`` [B, C_out, H_out, W_out]; computed per chunk from the inputs."""
    reduction = _checked_reduction(reduction, input.device)
    need_input, need_offset, need_weight, need_bias, need_mask = (
        bool(n) and t is not None for n, t in zip(needs, (input, offset, weight, bias, mask)))
    grad_bias = grad_out.sum((0, 2, 3)) if need_bias else None
    need_dots = need_offset or need_mask
    if not (need_input or need_weight or need_dots):
        return None, None, None, grad_bias, None

    dtype = input.dtype
    accumulate = coordinate_dtype(dtype)  # the weight's gradient is summed over chunks in this
    og, taps, groups = spec.offset_groups, spec.taps, spec.groups
    c_in_g, c_out_g = spec.in_channels // groups, spec.out_channels // groups
    table = _table(input, spec)
    weight_matrix = _weight_matrix(weight, spec)
    grad_rows_all = grad_out.permute(0, 2, 3, 1)  # [B, H_out, W_out, C_out]
    grad_table = torch.zeros_like(table) if need_input else None
    grad_matrix = weight_matrix.new_zeros(weight_matrix.shape, dtype=accumulate) if need_weight else None
    grad_offset = offset.new_empty(offset.shape) if need_offset else None
    grad_mask = mask.new_empty(mask.shape) if need_mask else None

    fixed = table.nbytes * (3 if need_input else 1) + weight_matrix.nbytes
    fixed += grad_matrix.nbytes if grad_matrix is not None else 0
    idtype = index_dtype(spec)
    budget = chunk_budget(memory_budget, fixed, input.device)
    for b0, b1, r0, r1 in plan_chunks(spec, dtype, budget, reduction, backward=True):
        nb, nr, wo = b1 - b0, r1 - r0, spec.out_w
        positions = nb * nr * wo
        mask_chunk = None if mask is None else mask[b0:b1, :, r0:r1]
        smp = _sampling(offset[b0:b1, :, r0:r1], mask_chunk, spec, b0, r0, idtype)
        grad_rows = grad_rows_all[b0:b1, r0:r1].reshape(positions, spec.out_channels)
        if need_weight:
            columns = _columns(table, smp, reduction).view(positions, taps, spec.in_channels)
            for g in range(groups):
                block = columns if groups == 1 else columns[:, :, g * c_in_g : (g + 1) * c_in_g]
                block = block.reshape(positions, -1).t()
                rows_g = grad_rows[:, g * c_out_g : (g + 1) * c_out_g]
                if dtype == accumulate:
                    grad_matrix[g].addmm_(block, rows_g)
                else:  # half precision: each chunk's product rounded once, the sum kept in float32
                    grad_matrix[g] += (block @ rows_g).to(accumulate)
            del columns, block
        if not (need_input or need_dots):
            continue
        if groups == 1:
            grad_columns = grad_rows @ weight_matrix[0].t()  # [P, taps * C_in]
        else:
            grad_columns = grad_rows.new_empty(positions, taps, spec.in_channels)
            for g in range(groups):
                part = grad_rows[:, g * c_out_g : (g + 1) * c_out_g] @ weight_matrix[g].t()
                grad_columns[:, :, g * c_in_g : (g + 1) * c_in_g] = part.view(positions, taps, c_in_g)
        grad_columns = grad_columns.view(positions * taps * og, -1)  # one row per bag
        dots = _corner_dots(grad_columns, table, smp, reduction).to(smp.fy.dtype) if need_dots else None
        if need_input:
            _scatter(grad_table, grad_columns, smp, reduction)
        del grad_columns
        if dots is None:
            continue
        d00, d01, d10, d11 = dots.unbind(1)
        top = torch.lerp(d00, d01, smp.fx)  # dL/d(bilinear weights) interpolated along x
        bottom = torch.lerp(d10, d11, smp.fx)
        if need_offset:
            gy = smp.scale * (bottom - top)
            gx = smp.scale * torch.lerp(d01 - d00, d11 - d10, smp.fy)
            pairs = grad_offset[b0:b1, :, r0:r1].view(nb, og, taps, 2, nr, wo)
            pairs[:, :, :, 0] = _from_bags(gy, nb, nr, wo, og, taps)
            pairs[:, :, :, 1] = _from_bags(gx, nb, nr, wo, og, taps)
        if need_mask:
            gm = smp.inside * torch.lerp(top, bottom, smp.fy)
            grad_mask[b0:b1, :, r0:r1].view(nb, og, taps, nr, wo).copy_(_from_bags(gm, nb, nr, wo, og, taps))
        del dots, d00, d01, d10, d11, top, bottom

    grad_input = None
    if need_input:
        bordered = grad_table.view(spec.batch, spec.height + 2, spec.width + 2, spec.in_channels)
        interior = bordered[:, 1:-1, 1:-1].permute(0, 3, 1, 2)
        channels_last = input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last) \
            and not input.is_contiguous()
        grad_input = interior.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    grad_weight = _weight_from_matrix(grad_matrix, spec).to(weight.dtype) if need_weight else None
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask


class _DeformConv2dFunction(torch.autograd.Function):
    """The portable forward (no graph) with the hand-written backward."""

    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, spec, memory_budget, reduction):
        ctx.spec, ctx.memory_budget, ctx.reduction = spec, memory_budget, reduction
        ctx.save_for_backward(input, offset, weight, bias, mask)
        return _forward(input, offset, weight, bias, mask, spec, memory_budget, reduction)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grads = deform_conv2d_portable_backward(grad_out, ctx.needs_input_grad[:5], *ctx.saved_tensors, ctx.spec,
                                                ctx.memory_budget, ctx.reduction)
        return (*grads, None, None, None)


def _checked_reduction(reduction: Optional[str], device: torch.device) -> str:
    if reduction is None:
        return default_reduction(device)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


def deform_conv2d_portable(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    spec: DeformSpec,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    reduction: Optional[str] = None,
    backward: Optional[str] = None,
) -> torch.Tensor:
    """Deformable convolution of validated arguments; returns [B, C_out, H_out, W_out].

    The result is laid out channels-last in memory (``out.permute(0, 2, 3, 1)`` is
    contiguous), which is how the matmul produces it; it is an ordinary NCHW tensor otherwise.
    ``reduction``: ``"embedding_bag"`` or ``"gather"`` (None: the device's default).
    ``backward``: ``"manual"`` or ``"autograd"`` (None: ``BIREFNET_DEFORM_BACKWARD``, else manual).
    """
    reduction = _checked_reduction(reduction, input.device)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, offset, weight, bias, mask)
    )
    if not needs_grad:
        return _forward(input, offset, weight, bias, mask, spec, memory_budget, reduction)
    if backward_mode(backward) == "autograd":
        # the previous formulation: autograd through the gather, chunks checkpointed
        return _forward(input, offset, weight, bias, mask, spec, memory_budget, "gather", checkpointed=True)
    return _DeformConv2dFunction.apply(input, offset, weight, bias, mask, spec, memory_budget, reduction)
