"""The assembled network against the official model: state-dict contract, logits, patch orders."""

import json

import numpy as np
import pytest
import torch

from birefnet_core.config import PatchOrder
from birefnet_core.models import TrainingOutputs, build_model, image_patches

from reference import REFERENCE, load_make_weights

make_weights = load_make_weights()


def reference_model(backbone, patch_order=PatchOrder.CURRENT):
    model = build_model(backbone, patch_order=patch_order)
    model.load_state_dict(make_weights(model.state_dict(), seed=0), strict=True)
    return model


@pytest.mark.parametrize("path", sorted(REFERENCE.glob("state_dict_*.json")), ids=lambda p: p.stem)
def test_state_dict_has_exactly_the_official_keys_shapes_and_dtypes(path):
    backbone = path.stem[len("state_dict_"):]
    official = json.loads(path.read_text())
    with torch.device("meta"):  # shapes and dtypes only: no memory, no initialisation
        ours = build_model(backbone).state_dict()
    assert list(ours) == list(official) or sorted(ours) == sorted(official)
    for key, meta in official.items():
        assert list(ours[key].shape) == meta["shape"], key
        assert str(ours[key].dtype).replace("torch.", "") == meta["dtype"], key


@pytest.mark.parametrize("path", sorted(REFERENCE.glob("*_1x*.npz")), ids=lambda p: p.stem)
def test_logits_match_the_official_code(path):
    backbone = path.stem.rsplit("_", 1)[0]
    data = np.load(path)
    model = reference_model(backbone)
    with torch.no_grad():
        logits = model(torch.from_numpy(data["input"]))
    want = torch.from_numpy(data["logits"])
    assert logits.shape == want.shape
    assert (logits - want).abs().max().item() <= 1e-4


def test_patch_orders_by_construction():
    """Channel (c, row, col) of a 4x4 grid lands where each order says."""
    grid, b, h, w = 4, 2, 8, 12
    x = torch.zeros(b, 3, h, w)
    ph, pw = h // grid, w // grid
    for c in range(3):
        for row in range(grid):
            for col in range(grid):
                x[:, c, row * ph:(row + 1) * ph, col * pw:(col + 1) * pw] = 100 * c + 10 * row + col
    current = image_patches(x, grid, PatchOrder.CURRENT)
    legacy = image_patches(x, grid, PatchOrder.LEGACY)
    assert current.shape == legacy.shape == (b, 3 * grid * grid, ph, pw)
    for c in range(3):
        for row in range(grid):
            for col in range(grid):
                value = 100 * c + 10 * row + col
                assert bool((current[:, c * grid * grid + row * grid + col] == value).all())
                assert bool((legacy[:, (col * grid + row) * 3 + c] == value).all())


def test_legacy_order_is_the_current_order_with_permuted_patch_weights():
    """A legacy-order model equals a current-order model whose patch convs see their input
    channels permuted accordingly: the legacy path differs only in channel order."""
    torch.manual_seed(0)
    legacy = reference_model("pvt_v2_b0", PatchOrder.LEGACY)
    current = reference_model("pvt_v2_b0", PatchOrder.CURRENT)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert (legacy(x) - current(x)).abs().max() > 1e-3  # the orders really differ
        for name, grid in (("ipt_blk5", 32), ("ipt_blk4", 16), ("ipt_blk3", 8), ("ipt_blk2", 4)):
            probe = torch.arange(3 * grid * grid, dtype=torch.float32).view(1, 3 * grid * grid, 1, 1)
            # the current-order channel that holds each legacy channel's content
            source = image_patches(image_patches_inverse(probe, grid), grid, PatchOrder.LEGACY).flatten().long()
            conv = getattr(current.decoder, name).conv1
            conv.weight.copy_(getattr(legacy.decoder, name).conv1.weight[:, torch.argsort(source)])
        torch.testing.assert_close(current(x), legacy(x), atol=1e-5, rtol=1e-5)


def image_patches_inverse(patches, grid):
    """Current-order patches [B, 3*g*g, h, w] back to the image [B, 3, g*h, g*w]."""
    b, _, h, w = patches.shape
    return patches.view(b, 3, grid, grid, h, w).permute(0, 1, 2, 4, 3, 5).reshape(b, 3, grid * h, grid * w)


def test_batches_and_non_square_inputs_equal_single_images():
    model = reference_model("pvt_v2_b0")
    x = torch.randn(3, 3, 96, 160)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert together.shape == (3, 1, 96, 160)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_training_mode_returns_side_outputs_and_gradient_supervision():
    model = build_model("pvt_v2_b0").train()
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert isinstance(out, TrainingOutputs)
    assert out.logits.shape == (2, 1, 64, 96)
    assert [tuple(m.shape[-2:]) for m in out.side_logits] == [(2, 3), (4, 6), (8, 12)]
    assert [tuple(g.shape[-2:]) for g in out.gradient_preds] == [(2, 3), (4, 6), (8, 12)]
    assert all(label.shape == (2, 1, 64, 96) for label in out.gradient_labels)
    (out.logits.mean() + sum(p.mean() for p in out.gradient_preds)).backward()
    assert model.bb.patch_embed1.proj.weight.grad is not None


@pytest.mark.parametrize("shape,message", [
    ((1, 3, 100, 96), "multiples of 32"),
    ((1, 4, 64, 64), r"expects images \[B, 3, H, W\]"),
    ((3, 64, 64), r"expects images \[B, 3, H, W\]"),
])
def test_bad_input_shapes(shape, message):
    model = build_model("pvt_v2_b0")
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


def test_every_backbone_builds_with_the_channels_the_config_declares():
    from birefnet_core.config import BACKBONES
    from birefnet_core.models.backbones import build_backbone

    x = torch.randn(1, 3, 64, 64)
    for name, spec in BACKBONES.items():
        backbone = build_backbone(name).eval()
        with torch.no_grad():
            outs = backbone(x)
        assert tuple(o.shape[1] for o in outs) == spec.channels, name
        assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2)], name
