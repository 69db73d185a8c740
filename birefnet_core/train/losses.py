"""BiRefNet's training losses (the recipe in the project's reference notes, section 4).

* Pixel losses on each of the four supervised outputs (side outputs of decoder stages 4, 3, 2
  and the final map), each upsampled to the mask's size (bilinear, align_corners=True) and
  passed through a sigmoid; the four scales weigh equally. Terms: BCE, IoU, SSIM (11x11
  Gaussian window, sigma 1.5, loss 1 - (1 + SSIM) / 2), MAE, MSE.
* The outward-reference gradient loss: for stages 4, 3, 2, BCE between the sigmoid of the
  upsampled gradient prediction and the sigmoid of its label (the image's Laplacian times the
  stage's side output; gradients flow into both, as in the official recipe). Weight 1.
* Recipes: ``dis`` (DIS5K, COD, HRSOD) BCE x30 + IoU x4 (the official weight per image, see
  below) + SSIM x10; ``general`` adds MAE x100; ``matting`` BCE x30 + MAE x100 + SSIM x10.
* Fine-tuning of the last epochs: at the start of each of the last N epochs the weights are
  changed again (the changes compound): non-matting recipes drop BCE and scale IoU by 0.5, MAE
  by 0.9; matting scales MSE and SSIM by 0.9. N is the official share of the run (DIS 40 of
  500 epochs, general 20 of 200, matting 10 of 150) unless given, and 0 in runs shorter than
  :data:`FINETUNE_MIN_EPOCHS`: it polishes a network that has converged, and it hurt every
  short run measured (pvt_v2_b0 from scratch, 15 epochs, 3 seeds: held-out IoU 0.578 without
  it, 0.513 with its one epoch; the official code, which fine-tunes all 15 epochs there, 0.43).

One deliberate difference from the official code: every term is a mean over the samples.
The official IoU term (weight 0.5) is a sum over each GPU's batch, 8 images in the official
configuration, so its weight per image is 0.5 x 8 = 4: that is our IoU weight, as a mean. A
mean makes the loss, and so the training, independent of how a batch is split over processes
and accumulation steps, where the official weight changes with the per-GPU batch. Measured
(pvt_v2_b0 from scratch on 48 synthetic 128^2 images, 15 epochs, batch 4, lr 5e-4, no
fine-tuning, stochastic depth 0.1, 3 seeds, 64 held-out images, means): IoU weight 0.5 gave
held-out IoU 0.547 (S-measure 0.727, MAE 0.192), 2 gave 0.592 (0.757, 0.177), 4 gave 0.602
(0.776, 0.160); the official code (same data and settings, batch 4) 0.581 (0.746, 0.197)
without its fine-tuning, 0.429 (0.581, 0.266) with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..models.birefnet import TrainingOutputs

TERMS = ("bce", "iou", "ssim", "mae", "mse")


@dataclass(frozen=True)
class LossWeights:
    bce: float = 0.0
    iou: float = 0.0
    ssim: float = 0.0
    mae: float = 0.0
    mse: float = 0.0
    gradient: float = 1.0

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


# Runs shorter than this get no region-loss fine-tuning by default (``--finetune-last`` still
# asks for it). Measured harmful at 15 epochs (see above); the threshold itself is a judgement,
# not measured: long enough that the official share is several epochs (8 for DIS, 10 general).
FINETUNE_MIN_EPOCHS = 100


@dataclass(frozen=True)
class Recipe:
    name: str
    weights: LossWeights
    epochs: int  # the official run's length
    finetune_last_epochs: int  # epochs at its end with the region-loss fine-tuning
    base_lr: float  # learning rate at a global batch of 4 (scaled by sqrt(batch / 4))

    def finetune_epochs(self, epochs: int) -> int:
        """The fine-tuning epochs of a run of ``epochs``: the official share of the run (40 of
        500 for DIS), none in a run shorter than :data:`FINETUNE_MIN_EPOCHS`."""
        if epochs < FINETUNE_MIN_EPOCHS:
            return 0
        return int(math.floor(epochs * self.finetune_last_epochs / self.epochs + 0.5))


RECIPES: Dict[str, Recipe] = {
    # IoU 4 = the official 0.5 summed over its per-GPU batch of 8, as a per-image mean
    "dis": Recipe("dis", LossWeights(bce=30, iou=4, ssim=10), 500, 40, 1e-4),
    "general": Recipe("general", LossWeights(bce=30, iou=4, ssim=10, mae=100), 200, 20, 1e-5),
    "matting": Recipe("matting", LossWeights(bce=30, ssim=10, mae=100), 150, 10, 1e-5),
}


def finetune_step(weights: LossWeights, recipe: str) -> LossWeights:
    """The weight change applied at the start of each of the last epochs (compounding)."""
    if recipe == "matting":
        return replace(weights, mse=weights.mse * 0.9, ssim=weights.ssim * 0.9)
    return replace(weights, bce=0.0, iou=weights.iou * 0.5, mae=weights.mae * 0.9)


def weights_for_epoch(recipe: Recipe, base: LossWeights, epoch: int, epochs: int, finetune_last: int) -> LossWeights:
    """The weights in force during ``epoch`` (1-based) of ``epochs``: ``base`` changed once for
    every fine-tuning epoch up to and including this one."""
    weights = base
    first = epochs - finetune_last + 1
    for _ in range(max(0, min(epoch, epochs) - max(first, 1) + 1) if finetune_last > 0 else 0):
        weights = finetune_step(weights, recipe.name)
    return weights


# ------------------------------------------------------------------------------------------ terms

def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``size`` taps; the 2-D window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-sample mean SSIM of [B, 1, H, W] maps in 0..1 (zero padding, C1 = 0.01^2,
    C2 = 0.03^2). Returns [B].

    The five local means (a, b, a^2, b^2, ab) are one grouped convolution with the Gaussian's
    rows, then one with its columns: the same sums as the 11x11 window (zero padding is
    separable too), at 22 instead of 121 products per pixel (measured: forward and backward of
    a batch of 8 at 128^2, one CPU thread, 237 ms -> 16 ms)."""
    g = _gaussian(window, sigma, a.dtype, a.device)
    pad = window // 2
    maps = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    n = maps.shape[1]
    maps = F.conv2d(maps, g.view(1, 1, 1, window).expand(n, 1, 1, window), padding=(0, pad), groups=n)
    maps = F.conv2d(maps, g.view(1, 1, window, 1).expand(n, 1, window, 1), padding=(pad, 0), groups=n)
    mu_a, mu_b, mean_aa, mean_bb, mean_ab = maps.unbind(1)
    var_a = mean_aa - mu_a * mu_a
    var_b = mean_bb - mu_b * mu_b
    cov = mean_ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def soft_iou(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample soft IoU of [B, 1, H, W] maps. Returns [B]. An empty prediction on an empty
    mask counts as a perfect match (the official code divides 0 by 0 there)."""
    inter = (prob * target).flatten(1).sum(1)
    union = prob.flatten(1).sum(1) + target.flatten(1).sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(union.dtype).tiny), torch.ones_like(union))


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 (float64 stays): autocast outputs are half precision."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def pixel_terms(logits: torch.Tensor, target: torch.Tensor, weights: LossWeights) -> Dict[str, torch.Tensor]:
    """The weighted pixel terms of one output (logits at any size) against the mask [B, 1, H, W]."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
    logits = _at_least_float32(logits)
    target = target.to(logits.dtype)
    prob = logits.sigmoid()
    terms: Dict[str, torch.Tensor] = {}
    if weights.bce:
        terms["bce"] = weights.bce * F.binary_cross_entropy_with_logits(logits, target)
    if weights.iou:
        terms["iou"] = weights.iou * (1 - soft_iou(prob, target)).mean()
    if weights.ssim:
        terms["ssim"] = weights.ssim * (1 - (1 + ssim(prob, target)) / 2).mean()
    if weights.mae:
        terms["mae"] = weights.mae * (prob - target).abs().mean()
    if weights.mse:
        terms["mse"] = weights.mse * (prob - target).square().mean()
    return terms


def gradient_loss(preds: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Outward-reference supervision summed over stages (see the module docstring)."""
    total = None
    for pred, label in zip(preds, labels):
        pred = F.interpolate(_at_least_float32(pred), size=label.shape[-2:], mode="bilinear", align_corners=True)
        term = F.binary_cross_entropy_with_logits(pred, label.to(pred.dtype).sigmoid())
        total = term if total is None else total + term
    return total


def training_loss(out: TrainingOutputs, target: torch.Tensor,
                  weights: LossWeights) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The total loss and its parts (detached), summed over the four supervised outputs."""
    parts: Dict[str, torch.Tensor] = {}
    for logits in (*out.side_logits, out.logits):
        for name, value in pixel_terms(logits, target, weights).items():
            parts[name] = parts[name] + value if name in parts else value
    if weights.gradient:
        parts["gradient"] = weights.gradient * gradient_loss(out.gradient_preds, out.gradient_labels)
    if not parts:
        raise ValueError("every loss weight is zero: nothing to train")
    total = sum(parts.values())
    return total, {name: value.detach() for name, value in parts.items()}


__all__ = ["FINETUNE_MIN_EPOCHS", "LossWeights", "RECIPES", "Recipe", "TERMS", "finetune_step", "gradient_loss",
           "pixel_terms", "soft_iou", "ssim", "training_loss", "weights_for_epoch"]
