"""The training entry script on a real (tiny) BiRefNet: checkpoints the loader and the nodes
open, resume down to the batch, interrupts and errors that lose nothing, bad settings, and
multi-process DDP training equal to one process with the whole batch."""

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from birefnet_core import build_model, load_model
from birefnet_core.checkpoint import read_metadata
from birefnet_core.train import cli
from birefnet_core.train.data import DataError
from birefnet_core.train.distributed import GlobalBatchNorm2d, use_global_batch_norm
from birefnet_core.train.trainer import TrainConfig, Trainer, TrainingError, train

REPO = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, count: int, seed: int, size=(72, 56)) -> Path:
    """Textured discs and bars on a textured background, with their masks."""
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        mask = (yy - rng.uniform(15, h - 15)) ** 2 + (xx - rng.uniform(15, w - 15)) ** 2 < rng.uniform(8, 16) ** 2
        mask |= (abs(xx - rng.uniform(5, w - 5)) < 2) & (yy > rng.uniform(0, h / 2))
        image = rng.integers(0, 110, (h, w, 3)).astype(np.uint8)
        image[mask] = rng.integers(140, 256, (int(mask.sum()), 3))
        Image.fromarray(image).save(root / "im" / f"s{i:03d}.jpg", quality=92)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "gt" / f"s{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_data")
    return make_dataset(base / "train", 8, seed=0), make_dataset(base / "val", 3, seed=1)


def config(data, out, **kw):
    settings = dict(data=[str(data[0])], out=str(out), backbone="pvt_v2_b0", size=(64, 64), epochs=2, batch_size=2,
                    workers=0, progress=False, tensorboard=False, seed=3, max_batches=2)
    settings.update(kw)
    return TrainConfig(**settings)


def weights(path):
    return load_file(str(path))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_training_writes_checkpoints_the_loader_and_the_nodes_open(data, tmp_path, pack, monkeypatch):
    out = tmp_path / "run"
    result = train(config(data, out, val=[str(data[1])], save_every=1))
    assert result.epochs_done == 2 and not result.interrupted
    for name in ("last", "best", "epoch_0001", "epoch_0002"):
        assert (out / f"{name}.safetensors").is_file(), name
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for column in ("loss", "bce", "iou", "ssim", "gradient", "lr", "images_per_s", "val_IoU", "val_S", "val_maxF",
                   "val_meanF", "val_wF", "val_meanE", "val_maxE", "val_MAE", "val_HCE"):
        assert rows[-1][column] != "", column
    assert float(rows[0]["loss"]) > 0
    meta = read_metadata(out / "last.safetensors")
    assert meta["birefnet.backbone"] == "pvt_v2_b0" and meta["birefnet.patch_order"] == "current"
    model = load_model(out / "last.safetensors", device="cpu", dtype="float32")
    assert model.patch_order.value == "current"  # read from the file, not guessed
    assert set(model.state_dict()) == set(build_model("pvt_v2_b0").state_dict())

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "mine.safetensors").write_bytes((out / "last.safetensors").read_bytes())
    monkeypatch.setenv("BIREFNET_MODELS_DIR", str(folder))
    nodes = pack.NODE_CLASS_MAPPINGS
    (handle,) = nodes["BiRefNetLoader"]().load("mine.safetensors", "cpu", "float32", "auto")
    image = torch.from_numpy(np.asarray(Image.open(next((data[1] / "im").iterdir())), np.float32) / 255)[None]
    mask, cutout, _ = nodes["BiRefNetSegment"]().segment(
        handle, image, resolution="custom", width=64, height=64, long_side=64, batch_size=1, mask_threshold=0.0,
        background="transparent", background_color="#ffffff", foreground="none")
    assert mask.shape == image.shape[:3] and cutout.shape[-1] == 4 and mask.std() > 0


def test_resume_after_an_interrupt_gives_the_uninterrupted_weights(data, tmp_path, monkeypatch):
    straight = train(config(data, tmp_path / "straight", epochs=2, max_batches=2, batch_size=2))
    calls = {"n": 0}
    original = Trainer._train_step

    def interrupted_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # the second batch of epoch 2
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_step)
    first = train(config(data, tmp_path / "run", epochs=2, max_batches=2, batch_size=2))
    assert first.interrupted and first.epochs_done == 1
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert (state["next_epoch"], state["next_batch"]) == (2, 1)
    monkeypatch.setattr(Trainer, "_train_step", original)
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(config(data, tmp_path / "run", epochs=2, max_batches=2, batch_size=2))
    resumed = train(config(data, tmp_path / "run", epochs=2, max_batches=2, batch_size=2,
                           resume=str(tmp_path / "run")))
    assert resumed.epochs_done == 2 and not resumed.interrupted
    assert_same_weights(weights(straight.last), weights(resumed.last))


def test_an_unreadable_file_mid_run_names_it_and_saves_the_progress(data, tmp_path):
    root = make_dataset(tmp_path / "d", 4, seed=5)
    trainer_cfg = config((root, None), tmp_path / "run", epochs=3)
    from birefnet_core.train import distributed

    trainer = Trainer(trainer_cfg, distributed.Context())
    original = trainer._epoch

    def epoch_then_break(epoch):
        original(epoch)
        if epoch == 1:  # the file goes bad after the start-up check
            for p in (root / "im").iterdir():
                p.write_bytes(b"\x00garbage")

    trainer._epoch = epoch_then_break
    with pytest.raises(DataError, match=r"cannot read image .*s00\d\.jpg"):
        trainer.run()
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["next_epoch"] == 2 and (tmp_path / "run" / "last.safetensors").is_file()


def test_fine_tuning_from_a_released_style_checkpoint(data, tmp_path, tiny_checkpoint):
    result = train(config(data, tmp_path / "ft", init=str(tiny_checkpoint), backbone=None, epochs=1,
                          max_batches=1, lr=1e-4))
    start, end = load_file(str(tiny_checkpoint)), weights(result.last)
    assert start.keys() == end.keys()
    moved = [k for k in start if not torch.equal(start[k], end[k])]
    assert moved and len(moved) > len(start) // 2
    with pytest.raises(TrainingError, match="is a pvt_v2_b0 BiRefNet but --backbone is swin_v1_t"):
        train(config(data, tmp_path / "ft2", init=str(tiny_checkpoint), backbone="swin_v1_t"))


def test_backbone_weights_from_a_file(data, tmp_path):
    source = build_model("pvt_v2_b0")
    torch.nn.init.constant_(source.bb.patch_embed1.proj.weight, 0.125)
    path = tmp_path / "pvt_b0_imagenet.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in source.bb.state_dict().items()}, str(path))
    trainer = Trainer(config(data, tmp_path / "bb", backbone_weights=str(path)),
                      __import__("birefnet_core.train.distributed", fromlist=["Context"]).Context())
    assert torch.equal(trainer.model.bb.patch_embed1.proj.weight, source.bb.patch_embed1.proj.weight)
    save_file({"head.weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(TrainingError, match="does not look like pvt_v2_b0 backbone weights"):
        train(config(data, tmp_path / "bb2", backbone_weights=str(tmp_path / "wrong.safetensors")))


def test_bad_settings_and_incompatible_resumes_are_explained(data, tmp_path):
    with pytest.raises(TrainingError, match="batch norm needs at least 2 samples"):
        train(config(data, tmp_path / "a", batch_size=1))
    with pytest.raises(TrainingError, match="multiple of --accumulate"):
        train(config(data, tmp_path / "a", batch_size=3, accumulate=2))
    with pytest.raises(TrainingError, match="multiples of 32"):
        train(config(data, tmp_path / "a", size=(100, 64)))
    with pytest.raises(TrainingError, match="fewer than one batch"):
        train(config(data, tmp_path / "a", batch_size=16))
    with pytest.raises(TrainingError, match="float16 autocast is not supported for training on CPU"):
        train(config(data, tmp_path / "a", precision="fp16"))
    with pytest.raises(TrainingError, match="unknown loss term"):
        train(config(data, tmp_path / "a", loss_weights={"dice": 1.0}))
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(config(data, tmp_path / "a", resume=str(tmp_path / "none")))

    done = train(config(data, tmp_path / "run", epochs=1, max_batches=1))
    with pytest.raises(TrainingError, match="trains a pvt_v2_b0 BiRefNet but --backbone is swin_v1_t"):
        train(config(data, tmp_path / "run", backbone="swin_v1_t", resume=str(tmp_path / "run")))
    with pytest.raises(TrainingError, match="holds weights only; to start a new run from it use --init"):
        train(config(data, tmp_path / "b", resume=str(done.last)))
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(TrainingError, match="not a training state"):
        train(config(data, tmp_path / "b", resume=str(tmp_path / "other.pt")))
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    state["next_batch"] = 1
    torch.save(state, tmp_path / "mid.pt")
    with pytest.raises(TrainingError, match="cannot resume in the middle of epoch"):
        train(config(data, tmp_path / "b", batch_size=4, resume=str(tmp_path / "mid.pt")))


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    (tmp_path / "empty" / "im").mkdir(parents=True)
    (tmp_path / "empty" / "gt").mkdir()
    code = cli.main(["--data", str(tmp_path / "empty"), "--epochs", "1", "--out", str(tmp_path / "o"),
                     "--backbone", "pvt_v2_b0", "--no-progress"])
    assert code == 1
    assert "error: no image/mask pairs found" in capsys.readouterr().err


def test_options_that_change_the_step_run(data, tmp_path):
    """Gradient accumulation, bfloat16 autocast and dynamic sizes each train (finite losses, and
    the weights move)."""
    for name, kw in (("acc", dict(batch_size=4, accumulate=2)), ("bf16", dict(precision="bf16")),
                     ("dyn", dict(dynamic_size=(64, 96), augment=("flip", "rotate")))):
        result = train(config(data, tmp_path / name, epochs=1, max_batches=1, **kw))
        row = result.history[-1]
        assert np.isfinite(row["loss"]) and row["loss"] > 0, name


# --------------------------------------------------------------------------------- distributed

def _global_bn_worker(rank, world, port, x, grad_out, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = GlobalBatchNorm2d(3)
    share = x.chunk(world)[rank].clone().requires_grad_(True)
    y = bn(share)
    (y * grad_out.chunk(world)[rank]).sum().backward()
    # by value (numpy arrays), not as torch tensors, which travel by file descriptor and vanish
    # when this process exits before the parent has read them
    queue.put((rank, *(t.detach().numpy().copy() for t in (y, share.grad, bn.running_mean, bn.running_var))))
    torch.distributed.destroy_process_group()


def free_port() -> int:
    """A TCP port the OS has just handed out (not derived from the pid: parallel runs collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_global_batch_norm_in_two_processes_equals_batch_norm_on_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6, dtype=torch.float32) * 3 + 1
    grad_out = torch.randn(4, 3, 5, 6)
    ref = torch.nn.BatchNorm2d(3)
    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    (yr * grad_out).sum().backward()

    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_global_bn_worker, args=(r, 2, port, x, grad_out, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted((queue.get() for _ in procs), key=lambda r: r[0])
    results = [(rank, *(torch.from_numpy(a) for a in arrays)) for rank, *arrays in results]
    for p in procs:
        p.join(60)
    y = torch.cat([r[1] for r in results])
    g = torch.cat([r[2] for r in results])
    torch.testing.assert_close(y, yr.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, xr.grad, rtol=1e-5, atol=1e-5)
    for _, _, _, mean, var in results:
        torch.testing.assert_close(mean, ref.running_mean)
        torch.testing.assert_close(var, ref.running_var)
    plain = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    assert use_global_batch_norm(plain) == 1 and type(plain[0]) is GlobalBatchNorm2d
    assert list(plain[0].state_dict()) == list(torch.nn.BatchNorm2d(2).state_dict())


def test_two_process_ddp_trains_like_one_process_with_the_doubled_batch(data, tmp_path):
    args = ["--data", str(data[0]), "--backbone", "pvt_v2_b0", "--size", "64", "64", "--epochs", "1",
            "--max-batches", "2", "--aspp-dropout", "0", "--workers", "0", "--no-progress", "--no-tensorboard",
            "--lr", "1e-3", "--seed", "3", "--drop-path", "0"]  # stochastic depth draws per process
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    one = subprocess.run([sys.executable, "-m", "birefnet_core.train", *args, "--batch-size", "4",
                          "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "-m", "birefnet_core.train", *args,
                          "--batch-size", "2", "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = weights(tmp_path / "one" / "last.safetensors"), weights(tmp_path / "two" / "last.safetensors")
    loss_one = float(list(csv.DictReader(open(tmp_path / "one" / "log.csv")))[0]["loss"])
    loss_two = float(list(csv.DictReader(open(tmp_path / "two" / "log.csv")))[0]["loss"])
    # the second step starts from weights that may differ by Adam's rounding flips (below)
    assert loss_two == pytest.approx(loss_one, rel=2e-4)
    # Adam turns a gradient that is zero up to rounding (a conv bias before batch norm, say)
    # into a step of +-lr, so weights cannot agree elementwise; measured against the update
    # itself, the difference is at the level of one process run with 1 vs 2 threads (5 % here),
    # while per-process batch norm (the official DDP behaviour) differs by more than 100 %
    torch.manual_seed(3)
    start = build_model("pvt_v2_b0").state_dict()
    params = [k for k in a if "running" not in k and "num_batches" not in k]

    def norm(d):
        return float(sum((d(k) ** 2).sum() for k in params) ** 0.5)

    update = norm(lambda k: a[k] - start[k])
    assert update > 0
    assert norm(lambda k: a[k] - b[k]) / update < 0.15
    stats = [k for k in a if "running" in k]  # batch statistics of the global batch
    diff = float(sum(((a[k] - b[k]) ** 2).sum() for k in stats) ** 0.5)
    assert diff / float(sum((a[k] ** 2).sum() for k in stats) ** 0.5) < 1e-3


def test_the_training_step_fits_a_batch_of_synthetic_images(tmp_path):
    """Loss, gradients and optimiser wired the right way round: 15 steps on one batch of the
    synthetic DIS-like data take the mask IoU from chance to most of the object."""
    from birefnet_core.train import distributed
    from birefnet_core.train.data import collate
    from birefnet_core.train.synthetic import write_dataset

    write_dataset(tmp_path / "d", 4, size=(64, 64), seed=0, difficulty="easy")
    cfg = TrainConfig(data=[str(tmp_path / "d")], out=str(tmp_path / "run"), backbone="pvt_v2_b0", size=(64, 64),
                      epochs=1, batch_size=4, lr=1e-3, workers=0, progress=False, tensorboard=False, seed=3,
                      augment=("none",), aspp_dropout=0.0)
    trainer = Trainer(cfg, distributed.Context())
    x, y, _ = collate([trainer.dataset[(i, (64, 64), 1)] for i in range(4)])

    def iou():
        trainer.model.eval()
        with torch.no_grad():
            p = trainer.model(x).sigmoid() > 0.5
        trainer.model.train()
        t = y > 0.5
        return float((p & t).sum() / (p | t).sum())

    before = iou()
    losses = [trainer._train_step(x, y, trainer.base_weights)["loss"] for _ in range(15)]
    after = iou()
    assert before < 0.3 and after > 0.6, (before, after)
    assert losses[-1] < 0.85 * losses[0]


def test_bench_train_times_both_backwards_and_restores_the_environment(capsys, monkeypatch):
    from birefnet_core.__main__ import main as run_cli

    monkeypatch.delenv("BIREFNET_DEFORM_BACKWARD", raising=False)
    assert run_cli(["bench", "train", "--size", "64", "--batch", "2", "--rounds", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(autograd|manual) +(\d+\.\d+) ", out, flags=re.M))
    assert set(rows) == {"autograd", "manual"} and all(float(rate) > 0 for rate in rows.values())
    assert re.search(r"manual / autograd \(wall time\): \d+\.\d\dx", out)
    assert "BIREFNET_DEFORM_BACKWARD" not in os.environ


def test_a_steps_random_draws_follow_from_its_position_and_differ_between_processes():
    from birefnet_core.train.trainer import seed_step

    def draws(*where):
        seed_step(*where)
        return torch.nn.functional.dropout(torch.ones(1000), 0.5, training=True)

    assert torch.equal(draws(7, 3, 5, 0), draws(7, 3, 5, 0))  # a resumed step draws the same
    for other in [(7, 3, 5, 1), (7, 3, 6, 0), (7, 4, 5, 0), (8, 3, 5, 0)]:  # rank, batch, epoch, seed
        assert not torch.equal(draws(7, 3, 5, 0), draws(*other)), other
