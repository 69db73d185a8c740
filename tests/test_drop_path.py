"""Stochastic depth (drop path) in the backbones: residual branches dropped per sample in
training, and inference exactly unchanged."""

import pytest
import torch

from birefnet_core.models.backbones import DropPath, build_backbone, set_drop_path_rate
from birefnet_core.models.backbones.stochastic_depth import drop_path, linear_rates
from birefnet_core.models.backbones.swin_v1 import SwinBlock
from birefnet_core.models.birefnet import build_model

BACKBONES = ["pvt_v2_b0", "swin_v1_t"]


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(20000, 3, 2, generator=gen) + 0.5
    torch.manual_seed(1)
    y = drop_path(x, 0.3, training=True)
    zero = (y == 0).flatten(1)
    dropped = zero.all(1)
    assert bool((zero.any(1) == dropped).all()), "a sample is dropped whole or kept whole"
    torch.testing.assert_close(y[~dropped], x[~dropped] / 0.7)
    n = x.shape[0]
    assert abs(dropped.float().mean().item() - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5
    # E[y] = x: per sample y / x is 0 or 1 / 0.7 (standard deviation 0.65)
    assert abs((y / x).mean().item() - 1.0) < 4 * 0.655 / n**0.5
    assert drop_path(x, 0.3, training=False) is x
    assert drop_path(x, 0.0, training=True) is x


def test_rates_and_their_check():
    assert linear_rates(0.1, 1) == [0.0]
    assert linear_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="drop_path_rate must be in"):
            build_backbone("pvt_v2_b0", drop_path_rate=bad)


def _pair(name, rate, seed=0):
    torch.manual_seed(seed)
    plain = build_backbone(name)
    torch.manual_seed(seed)
    deep = build_backbone(name, drop_path_rate=rate)
    return plain, deep


@pytest.mark.parametrize("name", BACKBONES)
def test_same_state_dict_and_exactly_the_same_inference(name):
    plain, deep = _pair(name, 0.3)
    sd, sd_deep = plain.state_dict(), deep.state_dict()
    assert list(sd) == list(sd_deep)
    assert all(torch.equal(sd[k], sd_deep[k]) for k in sd)
    rates = [m.rate for m in deep.modules() if isinstance(m, DropPath)]
    assert len(rates) == sum(deep.depths if hasattr(deep, "depths") else [len(s.blocks) for s in deep.layers])
    assert rates == pytest.approx(linear_rates(0.3, len(rates)))
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(plain.eval()(x), deep.eval()(x)):
            assert torch.equal(a, b)


def _blocks(backbone):
    return [m for m in backbone.modules() if hasattr(m, "drop_path") and isinstance(m.drop_path, DropPath)]


def _second_branch(block, x1, args):
    """The block's MLP residual branch on x1 (its tokens after the attention residual)."""
    if isinstance(block, SwinBlock):
        return block.mlp(block.norm2(x1))
    return block.mlp(block.norm2(x1), args[1], args[2])


def _attention_branch(block, args):
    """The attention residual branch of a block for its inputs (what its DropPath sees first)."""
    rate, block.drop_path.rate = block.drop_path.rate, 0.0
    captured = []
    handle = block.drop_path.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        block(*args)
    finally:
        handle.remove()
        block.drop_path.rate = rate
    return captured[0]


@pytest.mark.parametrize("name", BACKBONES)
def test_training_drops_each_residual_branch_per_sample(name):
    """Every block's output, sample by sample, is one of the four combinations of its two
    residual branches kept (scaled by 1 / (1 - rate)) or dropped, all four occur, and the
    backbone's output differs from inference."""
    rate = 0.5
    plain, deep = _pair(name, rate)
    blocks = _blocks(deep)
    for block in blocks:
        block.drop_path.rate = rate  # every block at 0.5: each combination has probability 1/4
    calls = []
    handles = [b.register_forward_hook(lambda module, args, output: calls.append((module, args, output)))
               for b in blocks]
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    deep.train()
    torch.manual_seed(3)
    with torch.no_grad():
        outs = deep(x)
        for handle in handles:
            handle.remove()
        assert len(calls) == len(blocks)
        seen = set()
        for block, args, out in calls:
            tokens = args[0]
            attention = _attention_branch(block, args)
            candidates = {}
            for keep_first in (False, True):
                x1 = tokens + attention / (1 - rate) if keep_first else tokens
                second = _second_branch(block, x1, args) / (1 - rate)
                candidates[(keep_first, False)] = x1
                candidates[(keep_first, True)] = x1 + second
            for i in range(tokens.shape[0]):
                matches = [k for k, c in candidates.items() if torch.allclose(out[i], c[i], atol=1e-5, rtol=1e-5)]
                assert matches, f"sample {i}: the block's output is no combination of kept and dropped branches"
                seen.add(matches[0])
    assert seen == {(False, False), (False, True), (True, False), (True, True)}
    with torch.no_grad():
        want = plain.eval()(x)
    assert any(not torch.allclose(a, b) for a, b in zip(outs, want))


def test_birefnet_build_model_and_set_drop_path_rate():
    torch.manual_seed(0)
    plain = build_model("pvt_v2_b0")
    torch.manual_seed(0)
    deep = build_model("pvt_v2_b0", drop_path_rate=0.1)
    assert list(plain.state_dict()) == list(deep.state_dict())
    rates = [m.rate for m in deep.modules() if isinstance(m, DropPath)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and len(rates) == 8
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(plain(x), deep(x))  # both in eval mode
    # a model built (or loaded) without it gets it afterwards, for fine-tuning
    assert set_drop_path_rate(plain, 0.1) == 8
    assert [m.rate for m in plain.modules() if isinstance(m, DropPath)] == pytest.approx(rates)
    assert set_drop_path_rate(plain, 0.0) == 8
    assert all(m.rate == 0.0 for m in plain.modules() if isinstance(m, DropPath))


def test_the_public_build_model_passes_the_rate_and_refuses_unknown_options():
    import birefnet_core

    model = birefnet_core.build_model("pvt_v2_b0", drop_path_rate=0.1)
    assert max(m.rate for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(0.1)
    with pytest.raises(TypeError, match="drop_rate"):
        birefnet_core.build_model("pvt_v2_b0", drop_rate=0.1)
