"""PVT-v2 backbone: shapes, reduced precision, LayerNorm eps, attention (the state-dict contract
is checked on the whole model in test_model.py)."""

import pytest
import torch
from torch import nn

from birefnet_core.models.backbones import build_backbone
from birefnet_core.models.backbones.pvt_v2 import Attention, PyramidVisionTransformerV2


@pytest.fixture(scope="module")
def b0() -> PyramidVisionTransformerV2:
    torch.manual_seed(0)
    return build_backbone("pvt_v2_b0").eval()


def test_forward_shapes(b0):
    with torch.no_grad():
        outs = b0(torch.randn(2, 3, 64, 96))
    assert isinstance(outs, tuple)
    assert [tuple(o.shape) for o in outs] == [
        (2, 32, 16, 24), (2, 64, 8, 12), (2, 160, 4, 6), (2, 256, 2, 3)]


def test_forward_odd_size(b0):
    with torch.no_grad():
        outs = b0(torch.randn(1, 3, 70, 45))
    assert [tuple(o.shape[-2:]) for o in outs] == [(18, 12), (9, 6), (5, 3), (3, 2)]


def test_batch_items_independent(b0):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        both = b0(x)
        single = b0(x[1:])
    for a, b in zip(both, single):
        torch.testing.assert_close(a[1:], b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_float32(b0, dtype):
    x = torch.randn(2, 3, 64, 96)
    low = build_backbone("pvt_v2_b0").eval()
    low.load_state_dict(b0.state_dict())
    low = low.to(dtype)
    with torch.no_grad():
        ref = b0(x)
        out = low(x.to(dtype))
    for r, o in zip(ref, out):
        assert o.dtype == dtype
        assert torch.isfinite(o).all()
        err = (o.float() - r).pow(2).mean().sqrt()
        assert err < 0.05 * r.std(), (err.item(), r.std().item())


def test_layernorm_eps(b0):
    for i in range(1, 5):
        assert getattr(b0, f"patch_embed{i}").norm.eps == 1e-5
        assert getattr(b0, f"norm{i}").eps == 1e-6
        for blk in getattr(b0, f"block{i}"):
            assert blk.norm1.eps == 1e-6 and blk.norm2.eps == 1e-6
            if i < 4:
                assert blk.attn.norm.eps == 1e-5
                assert blk.attn.sr.kernel_size == (blk.attn.sr_ratio,) * 2
            else:
                assert not hasattr(blk.attn, "sr") and not hasattr(blk.attn, "norm")
    counted = sum(isinstance(m, nn.LayerNorm) for m in b0.modules())
    assert counted == 4 + 4 + 2 * 8 + 6  # patch embeds, stage norms, block norms, sr norms


def test_attention_equals_explicit_softmax():
    torch.manual_seed(1)
    dim, heads, sr, h, w, b = 64, 2, 4, 12, 8, 2
    attn = Attention(dim, heads, sr).eval()
    x = torch.randn(b, h * w, dim)
    with torch.no_grad():
        got = attn(x, h, w)
        # explicit reference
        d = dim // heads
        q = attn.q(x).reshape(b, h * w, heads, d).transpose(1, 2)
        grid = x.transpose(1, 2).reshape(b, dim, h, w)
        r = attn.norm(attn.sr(grid).flatten(2).transpose(1, 2))
        kv = attn.kv(r)
        k = kv[..., :dim].reshape(b, -1, heads, d).transpose(1, 2)
        v = kv[..., dim:].reshape(b, -1, heads, d).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-2, -1) * d ** -0.5, dim=-1)
        want = attn.proj((a @ v).transpose(1, 2).reshape(b, h * w, dim))
    assert k.shape[2] == (h // sr) * (w // sr)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
