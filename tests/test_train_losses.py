"""Training losses: each term against an independent computation, the recipes' schedules, and
the full loss reaching every parameter of a real network."""

import math

import pytest
import torch
import torch.nn.functional as F

from birefnet_core import build_model
from birefnet_core.models.birefnet import TrainingOutputs
from birefnet_core.train.losses import (RECIPES, LossWeights, gradient_loss, pixel_terms, soft_iou, ssim,
                                        training_loss, weights_for_epoch)


def _maps(seed, shape=(2, 1, 24, 20)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64)


def _ssim_by_windows(a, b):
    """SSIM from explicit 11x11 windows (unfold), zero padding: a second way to the same number."""
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-x * x / (2 * 1.5**2))
    w = (g[:, None] * g[None, :]).flatten() / g.sum() ** 2
    out = []
    for i in range(a.shape[0]):
        pa = F.unfold(a[i:i + 1], 11, padding=5)[0]  # [121, L]
        pb = F.unfold(b[i:i + 1], 11, padding=5)[0]
        mu_a, mu_b = (w[:, None] * pa).sum(0), (w[:, None] * pb).sum(0)
        va = (w[:, None] * pa * pa).sum(0) - mu_a**2
        vb = (w[:, None] * pb * pb).sum(0) - mu_b**2
        cov = (w[:, None] * pa * pb).sum(0) - mu_a * mu_b
        c1, c2 = 1e-4, 9e-4
        s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
        out.append(s.mean())
    return torch.stack(out)


def test_ssim_matches_window_computation_and_is_one_for_equal_maps():
    a, b = _maps(0), _maps(1)
    torch.testing.assert_close(ssim(a, b), _ssim_by_windows(a, b), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))


def test_soft_iou_hand_values():
    p = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    t = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    # sample 0: inter 1.5, union 1.5 + 2 - 1.5 = 2; sample 1: nothing predicted, nothing there
    torch.testing.assert_close(soft_iou(p, t), torch.tensor([0.75, 1.0]))


def test_pixel_terms_against_direct_formulas():
    logits = (_maps(2) - 0.5) * 8
    target = (_maps(3) > 0.5).double()
    w = LossWeights(bce=30, iou=0.5, ssim=10, mae=100, mse=3)
    terms = pixel_terms(logits, target, w)
    p = logits.sigmoid()
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    iou = 1 - (p * target).sum((1, 2, 3)) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) - (p * target).sum((1, 2, 3)))
    torch.testing.assert_close(terms["bce"], 30 * bce)
    torch.testing.assert_close(terms["iou"], 0.5 * iou.mean())
    torch.testing.assert_close(terms["ssim"], 10 * (1 - (1 + _ssim_by_windows(p, target)) / 2).mean())
    torch.testing.assert_close(terms["mae"], 100 * (p - target).abs().mean())
    torch.testing.assert_close(terms["mse"], 3 * ((p - target) ** 2).mean())
    assert set(pixel_terms(logits, target, LossWeights(bce=1))) == {"bce"}


def test_side_outputs_are_upsampled_to_the_mask():
    small = (_maps(4, (1, 1, 6, 5)) - 0.5) * 4
    target = (_maps(5, (1, 1, 24, 20)) > 0.5).double()
    up = F.interpolate(small, size=(24, 20), mode="bilinear", align_corners=True)
    torch.testing.assert_close(pixel_terms(small, target, LossWeights(mae=1))["mae"],
                               (up.sigmoid() - target).abs().mean())


def test_gradient_loss_is_bce_of_sigmoids_and_reaches_both_sides():
    pred = torch.randn(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    label = torch.randn(1, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    loss = gradient_loss([pred], [label])
    up = F.interpolate(pred, size=(12, 12), mode="bilinear", align_corners=True).sigmoid()
    torch.testing.assert_close(loss, F.binary_cross_entropy(up, label.sigmoid()))
    loss.backward()
    assert pred.grad.abs().sum() > 0 and label.grad.abs().sum() > 0


def test_finetune_schedule_compounds_in_the_last_epochs():
    dis = RECIPES["dis"]
    assert dis.finetune_epochs(500) == 40 and RECIPES["general"].finetune_epochs(200) == 20
    # short runs are not fine-tuned (it hurt every short run measured); from 100 epochs the share
    assert dis.finetune_epochs(2) == 0 and dis.finetune_epochs(15) == 0 and dis.finetune_epochs(99) == 0
    assert dis.finetune_epochs(100) == 8 and RECIPES["matting"].finetune_epochs(150) == 10
    base = dis.weights
    assert weights_for_epoch(dis, base, 8, 10, 2) == base
    e9 = weights_for_epoch(dis, base, 9, 10, 2)
    e10 = weights_for_epoch(dis, base, 10, 10, 2)
    assert (e9.bce, e9.iou, e9.ssim) == (0.0, 2.0, 10)
    assert (e10.bce, e10.iou, e10.ssim) == (0.0, 1.0, 10)
    general = RECIPES["general"]
    assert math.isclose(weights_for_epoch(general, general.weights, 10, 10, 3).mae, 100 * 0.9**3)
    matting = RECIPES["matting"]
    m = weights_for_epoch(matting, matting.weights, 10, 10, 2)
    assert (m.bce, m.mae) == (30, 100) and math.isclose(m.ssim, 10 * 0.81)
    assert weights_for_epoch(dis, base, 10, 10, 0) == base


def test_full_loss_reaches_every_parameter_of_the_network():
    torch.manual_seed(0)
    model = build_model("pvt_v2_b0").train()
    x = torch.randn(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    loss, parts = training_loss(model(x), target, RECIPES["general"].weights)
    assert set(parts) == {"bce", "iou", "ssim", "mae", "gradient"}
    torch.testing.assert_close(loss.detach(), sum(parts.values()))
    loss.backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not without, without[:5]


def test_all_zero_weights_is_an_error():
    model = build_model("pvt_v2_b0").train()
    out = model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="zero"):
        training_loss(out, torch.zeros(2, 1, 64, 64), LossWeights(gradient=0))



def _outputs(batch, seed, size=32):
    """Training outputs of ``batch`` samples as leaf tensors (float64), shaped as the network's."""
    g = torch.Generator().manual_seed(seed)

    def leaf(side, scale=3.0):
        return (torch.randn(batch, 1, side, side, generator=g, dtype=torch.float64) * scale).requires_grad_(True)

    return TrainingOutputs(tuple(leaf(size // s) for s in (32, 16, 8)), leaf(size),
                           tuple(leaf(size // s) for s in (32, 16, 8)), tuple(leaf(size, 1.0) for _ in range(3)))


def _leaves(out):
    return [*out.side_logits, out.logits, *out.gradient_preds, *out.gradient_labels]


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_a_global_batch_split_over_processes_or_micro_batches_gives_the_same_loss_and_gradient(recipe):
    """DDP averages the processes' gradients and accumulation averages the micro-batches', so a
    global batch of 8 makes the same step as 1x8, 2x4 or 4x2 exactly when the loss is a mean over
    its samples with weights that do not depend on the per-process batch (the official IoU term,
    a sum over each GPU's batch, is not)."""
    weights = RECIPES[recipe].weights
    out = _outputs(8, seed=11)
    target = (_maps(12, (8, 1, 32, 32)) > 0.6).double()
    target[3] = 0  # an empty mask
    whole, _ = training_loss(out, target, weights)
    reference = torch.autograd.grad(whole, _leaves(out))
    for shares in (2, 4):
        n = 8 // shares
        parts = [training_loss(TrainingOutputs(*(tuple(t[i * n:(i + 1) * n] for t in field) if isinstance(field, tuple)
                                                 else field[i * n:(i + 1) * n] for field in out)),
                               target[i * n:(i + 1) * n], weights)[0] for i in range(shares)]
        mean = sum(parts) / shares
        torch.testing.assert_close(mean, whole, rtol=1e-12, atol=0)
        for got, want in zip(torch.autograd.grad(mean, _leaves(out)), reference):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)
