"""The real training step on CUDA in bfloat16 and in float16 (with the GradScaler)."""

import math

import pytest
import torch

from birefnet_core.train import distributed
from birefnet_core.train.data import collate
from birefnet_core.train.trainer import TrainConfig, Trainer

from test_train import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("gpu_train") / "d", 4, seed=0, size=(64, 64))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_few_steps_give_finite_losses_and_move_the_weights(precision, dataset, device, tmp_path, record_property):
    if device.type == "cpu" and precision == "fp16":
        pytest.skip("float16 autocast training is refused on CPU: checked on CUDA")
    cfg = TrainConfig(data=[str(dataset)], out=str(tmp_path / "run"), backbone="pvt_v2_b0", size=(64, 64),
                      batch_size=4, lr=1e-3, workers=0, progress=False, tensorboard=False, seed=3,
                      augment=("none",), precision=precision)
    trainer = Trainer(cfg, distributed.Context(device=device))
    assert next(trainer.model.parameters()).device.type == device.type
    assert (trainer.scaler is not None) == (precision == "fp16")
    x, y, _ = collate([trainer.dataset[(i, (64, 64), 1)] for i in range(4)])
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    losses = [trainer._train_step(x, y, trainer.base_weights)["loss"] for _ in range(8)]
    moved = sum(not torch.equal(p.detach(), before[name]) for name, p in trainer.model.named_parameters())
    scale = trainer.scaler.get_scale() if trainer.scaler is not None else None
    print(f"\n{precision} on {device}: losses {', '.join(f'{v:.3f}' for v in losses)}; "
          f"{moved} of {len(before)} parameter tensors moved" + (f"; loss scale {scale:g}" if scale else ""))
    record_property("losses", losses)
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert moved > 0.9 * len(before)
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
