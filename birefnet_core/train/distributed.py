"""Multi-process training with ``torchrun`` (PyTorch DDP): gloo on CPU, NCCL on CUDA.

:func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and starts
the process group; a plain ``python -m birefnet_core.train`` is one process and needs none.

:class:`GlobalBatchNorm2d` is batch normalisation over the global batch (all processes),
for every backend: torch's ``SyncBatchNorm`` refuses CPU tensors, and without it each process
normalises with its own share of the batch, so a 2-process run would not train the same
network as one process with the whole batch. It is a ``BatchNorm2d`` subclass with the same
parameters and buffers, so checkpoints keep the official key layout, and in one process it
is plain batch norm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: Optional[str] = None) -> Context:
    """The process's place in the run, and its device: ``cuda:LOCAL_RANK`` when CUDA is there
    (or ``device`` when given), else cpu. Starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None and device != "auto":
        target = torch.device(device)
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", local)
    elif torch.cuda.is_available():
        target = torch.device("cuda", local)
    else:
        mps = getattr(torch.backends, "mps", None)
        target = torch.device("mps") if world == 1 and mps is not None and mps.is_available() else torch.device("cpu")
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return Context(rank, world, local, target)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
