"""Multi-scale deformable attention in plain PyTorch (the "portable" backend).

No compiled extension: it runs wherever torch runs, in every floating dtype, and autograd
differentiates it in the values, the sampling locations and the attention weights.

How it works:

1. The values of all levels are copied once into one table with a one-pixel zero border around
   each level (``[N, S', M, Dh]``, S' = sum (H_l+2)(W_l+2)), in float32 for half-precision input
   (float64 stays float64). Every point strictly inside (-1, H) x (-1, W) of its level then has
   its four bilinear corners in the table, and corners outside the map read the zero border.
   Points outside get weight 0: ``grid_sample(align_corners=False, padding_mode="zeros")``.
2. Per chunk of queries, for every (query, head, level, point) at once (levels are broadcast,
   not looped over), the pixel coordinate ``loc * (W, H) - 0.5`` gives the table row of the
   top-left corner and the bilinear fractions; the four corners' rows and weights (bilinear
   weight x attention weight) make one bag of 4 * L * P rows per (query, head).
3. One weighted gather-and-sum over the table gives each bag's [Dh] output: ``embedding_bag``
   (sum, per-sample weights: nothing [.., Dh]-sized is materialised) on CPU and CUDA, an
   ``index_select`` + ``bmm`` elsewhere.

Temporaries are the padded table plus a few hundred bytes per sampling point; the queries are
processed in chunks that keep them under ``memory_budget``. When gradients are needed each chunk
runs under activation checkpointing (when there is more than one), so the backward pass
recomputes its indices and weights instead of keeping every chunk's alive.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .msda_spec import LevelShapes, MSDASpec

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of temporaries per call
REDUCTIONS = ("embedding_bag", "gather")
EMBEDDING_BAG_DEVICES = ("cpu", "cuda")  # where F.embedding_bag has forward and backward kernels


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype coordinates, weights and sums are computed in: float64 for float64 values,
    float32 otherwise (half-precision values are read into float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def padded_tokens(shapes: LevelShapes) -> int:
    return sum((h + 2) * (w + 2) for h, w in shapes)


def index_dtype(spec: MSDASpec) -> torch.dtype:
    """int32 row indices where the padded table allows it (half the index traffic), else int64."""
    rows = spec.batch * padded_tokens(spec.shapes) * spec.heads
    return torch.int32 if rows < 2**31 - 1 else torch.int64


def default_reduction(device: torch.device) -> str:
    return "embedding_bag" if device.type in EMBEDDING_BAG_DEVICES else "gather"


def bytes_per_query(spec: MSDASpec, dtype: torch.dtype, reduction: str = "embedding_bag") -> int:
    """Upper estimate of the temporaries one query (all batch items) costs inside a chunk."""
    c = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    i = 8  # int64 worst case
    # coordinates (x, y), their floor and fractions, the validity mask, corner rows and weights
    # (4 per point) and the intermediate products that build them
    per_sample = 20 * c + 8 * i + 8
    if reduction == "gather":
        per_sample += 4 * spec.head_dim * c  # the gathered corner rows
    # the chunk's output rows, and their copy into the result
    per_query = spec.samples_per_query * per_sample + 2 * spec.heads * spec.head_dim * c
    return spec.batch * per_query


def plan_chunks(spec: MSDASpec, dtype: torch.dtype, memory_budget: int,
                reduction: str = "embedding_bag") -> Iterator[Tuple[int, int]]:
    """Yield ``(q0, q1)``: query ranges of all batch items that fit ``memory_budget``. At least
    one query is processed per chunk, so a budget smaller than one query is exceeded by that
    query, never by more."""
    per_chunk = max(1, memory_budget // max(1, bytes_per_query(spec, dtype, reduction)))
    for q0 in range(0, spec.queries, per_chunk):
        yield q0, min(spec.queries, q0 + per_chunk)


class _Tables(NamedTuple):
    """Per-sample constants of one geometry. A query's M * L * P sampling points are laid out
    (head, level, point) as in the locations tensor, so the per-level constants are repeated to
    one vector of K = M * L * P entries (2K for (x, y) pairs) and every elementwise operation
    runs over long contiguous rows (broadcasting a [L, 1, 2] tensor is several times slower)."""

    size_xy: torch.Tensor  # [2K] (W_l, H_l) per sampling point, compute dtype
    padded_width: torch.Tensor  # [K] W_l + 2
    next_row: torch.Tensor  # [K] table rows from a corner to the one below it: (W_l + 2) * M
    origin: torch.Tensor  # [K] table row of pixel (0, 0) of the point's head and level, batch item 0
    destination: torch.Tensor  # [S] int64: position of each token in the padded table
    image_rows: int  # table rows per batch item: S' * M


@lru_cache(maxsize=64)
def _tables(shapes: LevelShapes, heads: int, points: int, device: torch.device, cdtype: torch.dtype,
            idtype: torch.dtype) -> _Tables:
    # ordinary tensors even when the first call runs under inference_mode (the cache outlives it)
    with torch.inference_mode(False), torch.no_grad():
        destination, origin, start = [], [], 0
        for h, w in shapes:  # once per geometry: where each level's tokens go in the padded table
            rows = torch.arange(h).view(h, 1) + 1
            cols = torch.arange(w).view(1, w) + 1
            destination.append((start + rows * (w + 2) + cols).reshape(-1))
            origin.append(start + (w + 2) + 1)  # pixel (0, 0) sits one row and one column inside
            start += (h + 2) * (w + 2)
        levels = len(shapes)

        def per_sample(per_level, dtype):  # [L, ...] -> [M, L, P, ...] -> flat
            t = torch.tensor(per_level, dtype=dtype)
            t = t.view(1, levels, 1, -1).expand(heads, levels, points, t.shape[-1] if t.dim() > 1 else 1)
            return t.reshape(-1)

        size_xy = per_sample([[w, h] for h, w in shapes], cdtype)
        padded_width = per_sample([w + 2 for _, w in shapes], torch.int64)
        origin_rows = torch.tensor(origin, dtype=torch.int64).view(1, levels, 1) * heads
        origin_rows = (origin_rows + torch.arange(heads).view(heads, 1, 1)).expand(heads, levels, points)
        return _Tables(
            size_xy.to(device),
            padded_width.to(device=device, dtype=idtype),
            (padded_width * heads).to(device=device, dtype=idtype),
            origin_rows.reshape(-1).to(device=device, dtype=idtype),
            torch.cat(destination).to(device),
            start * heads,
        )


def padded_table(value: torch.Tensor, spec: MSDASpec, tables: _Tables) -> torch.Tensor:
    """[N, S, M, Dh] -> [N * S' * M, Dh] rows in the compute dtype, zero border around each level."""
    v = value.to(compute_dtype(value.dtype))
    table = v.new_zeros(spec.batch, padded_tokens(spec.shapes), spec.heads, spec.head_dim)
    table = table.index_copy(1, tables.destination, v)  # out of place: differentiable in value
    return table.view(-1, spec.head_dim)


def _chunk(table: torch.Tensor, loc: torch.Tensor, attn: torch.Tensor, tables: _Tables, spec: MSDASpec,
           reduction: str) -> torch.Tensor:
    """[N, q, M * Dh] for the chunk's locations [N, q, M, L, P, 2] and weights [N, q, M, L, P]."""
    cdtype = table.dtype
    idtype = tables.origin.dtype
    n, q = loc.shape[:2]
    k = spec.samples_per_query
    # pixel coordinates in each level; points outside (-1, W) x (-1, H), and NaN, sample zero
    xy = torch.addcmul(torch.full((), -0.5, dtype=cdtype, device=loc.device), loc.reshape(n * q, 2 * k).to(cdtype),
                       tables.size_xy)
    ok = (xy > -1) & (xy < tables.size_xy)  # per coordinate
    inside = ok[:, 0::2] & ok[:, 1::2]  # per point: x and y
    xy = torch.where(ok, xy, torch.zeros((), dtype=cdtype, device=xy.device))
    corner = xy.floor()
    frac = (xy - corner).view(n * q, k, 2)  # the gradient to the locations flows through here
    corner = corner.to(idtype).view(n * q, k, 2)
    # table row of the top-left corner: (item * S' + level origin + y * (W + 2) + x) * M + head
    base = torch.add(tables.origin, corner[..., 1] * tables.padded_width + corner[..., 0], alpha=spec.heads)
    del corner
    if n > 1:
        items = torch.arange(n, device=loc.device, dtype=idtype) * tables.image_rows
        base = base.view(n, q * k).add_(items.view(n, 1))
    base = base.view(n * q, k)
    below = base + tables.next_row
    rows = torch.stack((base, base + spec.heads, below, below + spec.heads), dim=-1)  # [nq, K, 4]
    del base, below

    weight = attn.reshape(n * q, k).to(cdtype) * inside
    fx, fy = frac.unbind(-1)
    low = weight * fy  # the row below (y0 + 1)
    high = weight - low  # the row of the corner (y0)
    high_right = high * fx
    low_right = low * fx
    corner_weights = torch.stack((high - high_right, high_right, low - low_right, low_right), dim=-1)
    # one bag per (item, query, head): its L * P points x 4 corners are contiguous
    bags = n * q * spec.heads
    rows = rows.view(bags, -1)
    corner_weights = corner_weights.view(bags, -1)
    if reduction == "embedding_bag":
        out = F.embedding_bag(rows, table, per_sample_weights=corner_weights, mode="sum")
    else:
        gathered = table.index_select(0, rows.view(-1)).view(bags, rows.shape[1], spec.head_dim)
        out = torch.bmm(corner_weights.unsqueeze(1), gathered)
    return out.view(n, q, spec.heads * spec.head_dim)


def ms_deform_attn_portable(
    value: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    spec: MSDASpec,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    reduction: Optional[str] = None,
) -> torch.Tensor:
    """Multi-scale deformable attention of validated arguments: [N, Lq, M * Dh] in value's dtype.

    ``reduction``: ``"embedding_bag"`` or ``"gather"`` (None: the device's default)."""
    if reduction is None:
        reduction = default_reduction(value.device)
    elif reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    cdtype = compute_dtype(value.dtype)
    tables = _tables(spec.shapes, spec.heads, spec.points, value.device, cdtype, index_dtype(spec))
    table = padded_table(value, spec, tables)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (value, sampling_locations, attention_weights)
    )
    # the half -> float32 copy of the values and the padded table count against the budget too
    fixed = table.nbytes + (value.numel() * table.element_size() if value.dtype != cdtype else 0)
    chunks = list(plan_chunks(spec, value.dtype, memory_budget - fixed, reduction))

    def run(q0: int, q1: int) -> torch.Tensor:
        loc = sampling_locations[:, q0:q1]
        attn = attention_weights[:, q0:q1]
        if needs_grad and len(chunks) > 1:  # one chunk's saved tensors fit the budget as they are
            return checkpoint(_chunk, table, loc, attn, tables, spec, reduction, use_reentrant=False)
        return _chunk(table, loc, attn, tables, spec, reduction)

    if len(chunks) == 1:
        out = run(*chunks[0])
    else:
        out = table.new_empty(spec.batch, spec.queries, spec.heads * spec.head_dim)
        for q0, q1 in chunks:
            out[:, q0:q1] = run(q0, q1)
    return out.to(value.dtype)
