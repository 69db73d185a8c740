"""Stochastic depth ("drop path"): during training, a residual branch is dropped for a random
subset of the samples of a batch, and kept (scaled by 1 / (1 - rate), so its expectation is
unchanged) for the others. Huang et al., "Deep Networks with Stochastic Depth" (ECCV 2016).

The Swin and PVT-v2 backbones give every block one :class:`DropPath`, applied to both of its
residual branches (independent draws), with the rate increasing linearly over the blocks of the
whole backbone from 0 to ``drop_path_rate`` (the rule of both original backbones). In eval mode,
or at rate 0, it returns its input itself: inference is exactly unchanged. It has no parameters
or buffers, so state dicts are unchanged too.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """[B, ...] -> [B, ...]: per sample, zero with probability ``rate``, else ``x / (1 - rate)``.
    ``x`` itself when not training or at rate 0."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    scale = torch.empty(shape, dtype=torch.float32, device=x.device).bernoulli_(keep).div_(keep)
    return x * scale.to(x.dtype)


class DropPath(nn.Module):
    """:func:`drop_path` as a module; ``rate`` may be changed between steps."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = check_rate(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


def check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    return rate


def linear_rates(rate: float, blocks: int) -> List[float]:
    """0 for the first block, ``rate`` for the last, evenly spaced between."""
    check_rate(rate)
    if blocks == 1:
        return [0.0]
    return [rate * i / (blocks - 1) for i in range(blocks)]


def set_drop_path_rate(module: nn.Module, rate: float) -> int:
    """Set the stochastic depth of every backbone block inside ``module`` (a backbone or a whole
    network: e.g. a model loaded from a checkpoint, before fine-tuning): linearly increasing over
    the blocks, in order, from 0 to ``rate``. Returns the number of blocks."""
    layers = [m for m in module.modules() if isinstance(m, DropPath)]
    for layer, block_rate in zip(layers, linear_rates(rate, max(1, len(layers)))):
        layer.rate = block_rate
    return len(layers)
