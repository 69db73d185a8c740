"""Multi-process training with ``torchrun`` (PyTorch DDP): gloo on CPU, NCCL on CUDA.

:func:`setup` (from :mod:`birefnet_core.distributed`, which the ``predict`` and ``video`` commands
use as well) reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), picks the
device and starts the process group; a plain ``python -m birefnet_core.train`` is one process and
needs none.

:class:`GlobalBatchNorm2d` is batch normalisation over the global batch (all processes),
for every backend: torch's ``SyncBatchNorm`` refuses CPU tensors, and without it each process
normalises with its own share of the batch, so a 2-process run would not train the same
network as one process with the whole batch. It is a ``BatchNorm2d`` subclass with the same
parameters and buffers, so checkpoints keep the official key layout, and in one process it
is plain batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import Context, setup, teardown  # shared with the predict and video commands


class _GlobalSum(torch.autograd.Function):
    """Sum over processes, differentiable: every process's input feeds every process's output,
    so the gradient of an input is the sum of the output gradients of all processes."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    return _GlobalSum.apply(t)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are those of the global batch (see module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dtype = x.dtype
        x = x.float()
        c = x.shape[1]
        count = _global_sum(torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device))
        mean = _global_sum(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean.view(1, c, 1, 1)
        var = _global_sum(centred.square().sum(dim=(0, 2, 3))) / count  # biased, as batch norm normalises
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        return y.to(dtype)


def use_global_batch_norm(module: nn.Module) -> int:
    """Turn every ``BatchNorm2d`` in ``module`` into :class:`GlobalBatchNorm2d` in place (same
    parameters and buffers). Returns how many were converted."""
    converted = 0
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = GlobalBatchNorm2d
            converted += 1
    return converted


def average(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over processes (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


__all__ = ["Context", "GlobalBatchNorm2d", "average", "setup", "teardown", "use_global_batch_norm"]
