"""Swin-v1 backbone: shapes, dtypes, mask caching, attention numerics (the state-dict contract is
checked on the whole model in test_model.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from birefnet_core.models.backbones import swin_v1
from birefnet_core.models.backbones.swin_v1 import (
    MASK_VALUE,
    SWIN_V1_CONFIGS,
    SwinBlock,
    SwinTransformerV1,
)

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SwinTransformerV1(**SWIN_V1_CONFIGS["swin_v1_t"]).eval()


@pytest.mark.parametrize("hw", [(64, 96), (70, 50)])
def test_forward_shapes(tiny, hw):
    h, w = hw
    with torch.no_grad():
        outs = tiny(torch.randn(2, 3, h, w))
    assert len(outs) == 4
    for i, (o, c) in enumerate(zip(outs, (96, 192, 384, 768))):
        s = 4 * 2 ** i
        assert o.shape == (2, c, math.ceil(h / s), math.ceil(w / s))
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(tiny, dtype):
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = tiny(x)
        model16 = SwinTransformerV1(**SWIN_V1_CONFIGS["swin_v1_t"]).eval()
        model16.load_state_dict(tiny.state_dict())
        model16.to(dtype)
        out = model16(x.to(dtype))
    for r, o in zip(ref, out):
        assert o.dtype == dtype
        assert torch.isfinite(o).all()
        e = o.float() - r
        # bf16 keeps 8 mantissa bits: ~1% RMS, ~5% worst element after 12 blocks (measured)
        assert e.pow(2).mean().sqrt() < 0.05 * r.std()
        assert e.abs().max() < 0.15 * r.std()
    # the cached masks were built in the attention dtype
    assert all(m.dtype == dtype for m in model16._mask_cache.values())


def test_shift_mask_built_once(monkeypatch):
    torch.manual_seed(0)
    model = SwinTransformerV1(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                              window_size=7).eval()
    calls = []
    real = swin_v1.shift_mask
    monkeypatch.setattr(swin_v1, "shift_mask", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(1, 3, 70, 50)
    with torch.no_grad():
        model(x)
        first = dict(model._mask_cache)
        n_calls = len(calls)
        model(x)
    # padded sizes per stage: 21x14, 14x7, 7x7, 7x7 -> three distinct masks, each built once
    assert sorted(k[:2] for k in first) == [(7, 7), (14, 7), (21, 14)]
    assert n_calls == 3
    assert len(calls) == n_calls  # second forward rebuilt nothing
    assert all(model._mask_cache[k] is v for k, v in first.items())
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # a new size adds entries
    assert len(calls) > n_calls


# ----------------------------------------------------------------------------------------------
# explicit reference: loops and plain softmax, written independently of the module's helpers


def _explicit_index(w: int) -> torch.Tensor:
    n = w * w
    idx = torch.empty(n, n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            dy, dx = i // w - j // w, i % w - j % w
            idx[i, j] = (dy + w - 1) * (2 * w - 1) + (dx + w - 1)
    return idx


def _explicit_mask(hp: int, wp: int, w: int, s: int) -> torch.Tensor:
    img = torch.zeros(hp, wp)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img[hs, ws] = cnt
            cnt += 1
    wins = [img[r:r + w, c:c + w].reshape(-1) for r in range(0, hp, w) for c in range(0, wp, w)]
    m = torch.stack(wins)  # [nW, N]
    return torch.where(m[:, None, :] != m[:, :, None], MASK_VALUE, 0.0)


def _explicit_block(blk: SwinBlock, x: torch.Tensor, h: int, wd: int) -> torch.Tensor:
    b, _, c = x.shape
    w, s, at = blk.window, blk.shift, blk.attn
    heads = at.num_heads
    y = blk.norm1(x).view(b, h, wd, c)
    hp, wp = math.ceil(h / w) * w, math.ceil(wd / w) * w
    pad = torch.zeros(b, hp, wp, c)
    pad[:, :h, :wd] = y
    if s:
        pad = torch.roll(pad, (-s, -s), (1, 2))
    n = w * w
    table = at.relative_position_bias_table
    bias = table[_explicit_index(w).view(-1)].view(n, n, heads).permute(2, 0, 1)
    mask = _explicit_mask(hp, wp, w, s) if s else None
    out = torch.zeros_like(pad)
    for bi in range(b):
        for wi, (r, cc) in enumerate((r, cc) for r in range(0, hp, w) for cc in range(0, wp, w)):
            t = pad[bi, r:r + w, cc:cc + w].reshape(n, c)
            q, k, v = at.qkv(t).view(n, 3, heads, c // heads).permute(1, 2, 0, 3)
            logits = q @ k.transpose(-1, -2) * (c // heads) ** -0.5 + bias
            if mask is not None:
                logits = logits + mask[wi]
            o = (logits.softmax(-1) @ v).transpose(0, 1).reshape(n, c)
            out[bi, r:r + w, cc:cc + w] = at.proj(o).view(w, w, c)
    if s:
        out = torch.roll(out, (s, s), (1, 2))
    x = x + out[:, :h, :wd].reshape(b, h * wd, c)
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("hw", [(10, 12), (5, 6), (14, 7)])
def test_block_matches_explicit_attention(shift, hw):
    torch.manual_seed(1)
    blk = SwinBlock(dim=32, num_heads=2, window=7, shift=shift, mlp_ratio=4.0).eval()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 1.0)  # make the bias matter
    h, w = hw
    x = torch.randn(2, h * w, 32)
    with torch.no_grad():
        got = blk(x, (h, w), {})
        want = _explicit_block(blk, x, h, w)
    assert torch.equal(blk.attn.relative_position_index, _explicit_index(7))
    assert (got - want).abs().max() < 1e-5


def test_shift_mask_regions():
    for hp, wp, w, s in [(14, 21, 7, 3), (7, 7, 7, 3), (24, 12, 12, 6)]:
        got = swin_v1.shift_mask(hp, wp, w, s, torch.device("cpu"), torch.float16)
        assert got.dtype == torch.float16
        assert torch.equal(got.float(), _explicit_mask(hp, wp, w, s))


def test_autocast_masks_in_attention_dtype():
    torch.manual_seed(0)
    model = SwinTransformerV1(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(o).all() for o in outs)
    assert {k[-1] for k in model._mask_cache} == {torch.bfloat16}
