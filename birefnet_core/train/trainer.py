"""The training loop behind ``python -m birefnet_core.train``.

One process, or several under ``torchrun`` (DDP). Per optimiser step each process loads its
share of the global batch (``batch_size * accumulate`` samples), runs it in ``accumulate``
micro-batches under autocast, and the averaged gradients go to AdamW. The loss is a mean over
samples and batch norm is computed over the global batch (see :mod:`.distributed`), so N
processes with batch B train the same network as one process with batch N * B.

What the output folder holds (``--out``):

* ``last.safetensors`` (latest weights), ``epoch_NNNN.safetensors`` (every ``save_every``
  epochs and the last), ``best.safetensors`` (best validation S-measure, or IoU when the
  metric libraries are missing): official key layout, backbone and patch order in the header,
  so :func:`birefnet_core.load_model` and the ComfyUI loader open them;
* ``state.pt``: everything needed to resume (weights, optimiser, scaler, position in the run
  down to the batch; a step's random draws follow from its position, see :func:`seed_step`),
  read back with ``torch.load(weights_only=True)``;
* ``log.csv``: one row per epoch (losses, learning rate, speed, validation metrics), and
  TensorBoard scalars under ``tensorboard/`` when TensorBoard is installed;
* ``config.json``: the settings of the run.

An interrupt (Ctrl-C, SIGTERM) or an error during training writes ``state.pt`` and
``last.safetensors`` first, so at most the current batch is lost.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..checkpoint import check_tensors, load_model, normalise_state_dict, read_state_dict, save_weights
from ..config import BACKBONES, PatchOrder, backbone_spec
from ..files import atomic_output
from ..models.backbones import set_drop_path_rate
from ..models.birefnet import BiRefNet, build_model
from ..progress import ConsoleProgress
from . import distributed
from .data import (Augmentation, BatchPlan, DataError, SegmentationDataset, SizePolicy, default_workers, find_pairs,
                   image_tensor, loader, read_image, read_mask)
from .losses import RECIPES, LossWeights, training_loss, weights_for_epoch

logger = logging.getLogger(__name__)

STATE_FORMAT = "birefnet-train-state"
STATE_VERSION = 1
LOSS_COLUMNS = ("loss", "bce", "iou", "ssim", "mae", "mse", "gradient")
# the official stochastic-depth rate of each backbone family (PVT-v2 0.1, Swin-v1 0.2): the
# highest rate, reached by the last block, growing linearly from 0 at the first
OFFICIAL_DROP_PATH = {"pvt_v2": 0.1, "swin_v1": 0.2}


def seed_step(seed: int, epoch: int, batch: int, rank: int) -> None:
    """Seed torch's generators (CPU and every CUDA device) for one training step from (seed,
    epoch, batch, rank). The step's random draws (ASPP dropout, stochastic depth) are then a
    function of where the step is: a resumed run draws exactly what the uninterrupted one drew,
    without saving generator states, and each process of a multi-process run draws its own
    (the official code seeds each GPU differently too)."""
    words = np.random.SeedSequence([int(seed) % 2**32, epoch, batch, rank]).generate_state(2, np.uint32)
    torch.manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)


class TrainingError(RuntimeError):
    """A problem with the run's settings or files, explained."""


@dataclass
class TrainConfig:
    data: List[str]
    out: str
    backbone: Optional[str] = None  # None: from --init / --resume, else swin_v1_l
    size: Tuple[int, int] = (1024, 1024)  # (W, H): training size, and validation size
    dynamic_size: Optional[Tuple[int, int]] = None  # (MIN, MAX): random W and H per batch
    epochs: int = 1
    batch_size: int = 4  # per process and optimiser step
    accumulate: int = 1  # micro-batches per step (batch_size must divide by it)
    lr: Optional[float] = None  # None: the recipe's base lr * sqrt(global batch / 4)
    weight_decay: float = 1e-2
    lr_milestones: Tuple[int, ...] = ()  # epochs after which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.5
    recipe: str = "dis"
    loss_weights: Dict[str, float] = field(default_factory=dict)  # overrides of the recipe's weights
    finetune_last: Optional[int] = None  # None: the recipe's
    init: Optional[str] = None  # a released checkpoint (file or registry name) to fine-tune
    backbone_weights: Optional[str] = None  # pretrained backbone weights (file)
    resume: Optional[str] = None  # a state.pt, or a folder holding one
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    augment: Tuple[str, ...] = ("flip", "enhance", "rotate", "pepper")
    seed: int = 7
    workers: Optional[int] = None
    val: List[str] = field(default_factory=list)
    val_every: int = 1
    save_every: int = 5
    global_batch_norm: bool = True
    aspp_dropout: float = 0.5
    drop_path: Optional[float] = None  # backbone stochastic depth; None: the official rate (OFFICIAL_DROP_PATH)
    device: Optional[str] = None
    max_batches: Optional[int] = None  # per epoch; for smoke runs
    progress: bool = True
    tensorboard: bool = True


@dataclass
class TrainResult:
    out: Path
    epochs_done: int
    last: Path
    history: List[Dict[str, float]]
    interrupted: bool = False
    main: bool = True  # the process that writes files and reports (rank 0)


# ------------------------------------------------------------------------------------ model set-up

def load_backbone_weights(model: BiRefNet, path: str) -> int:
    """Load pretrained backbone weights (a file holding the backbone's state dict, keys optionally
    prefixed ``bb.`` / ``backbone.`` / ``encoder.``) into ``model.bb``. Returns tensors loaded."""
    sd = normalise_state_dict(read_state_dict(path))
    check_tensors(sd, path)
    own = model.bb.state_dict()
    taken: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for prefix in ("", "bb.", "backbone.", "encoder."):
            name = key[len(prefix):] if key.startswith(prefix) else None
            if name in own and tuple(own[name].shape) == tuple(value.shape):
                taken[name] = value
                break
    wanted = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(taken) < len(wanted) / 2:
        raise TrainingError(f"{path} does not look like {model.config.backbone} backbone weights: only {len(taken)} of "
                            f"{len(wanted)} tensors match by name and shape")
    missing = [k for k in wanted if k not in taken]
    if missing:
        logger.warning("backbone weights %s lack %d tensor(s), left at their initial values: %s",
                       path, len(missing), ", ".join(missing[:8]))
    model.bb.load_state_dict(taken, strict=False)
    return len(taken)


def set_aspp_dropout(model: nn.Module, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise TrainingError(f"ASPP dropout must be in [0, 1), got {p}")
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """None for float32; bfloat16 / float16 for mixed precision. ``auto``: bfloat16 on CUDA
    with bfloat16 support, float16 on older CUDA, float32 elsewhere."""
    p = precision.lower()
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    choices = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
               "fp16": torch.float16, "float16": torch.float16}
    if p not in choices:
        raise TrainingError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    dtype = choices[p]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("this GPU has no bfloat16; use --precision fp16 (or fp32)")
    if dtype is torch.float16 and device.type == "cpu":
        raise TrainingError("float16 autocast is not supported for training on CPU; use --precision bf16 or fp32")
    return dtype


# ------------------------------------------------------------------------------------------ trainer

class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: distributed.Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.out = Path(cfg.out)
        self._check_settings()
        self.recipe = RECIPES[cfg.recipe]
        unknown = set(cfg.loss_weights) - set(LossWeights().as_dict())
        if unknown:
            raise TrainingError(f"unknown loss term(s) {sorted(unknown)}; terms: {', '.join(LossWeights().as_dict())}")
        self.base_weights = replace(self.recipe.weights, **{k: float(v) for k, v in cfg.loss_weights.items()})
        self.finetune_last = self.recipe.finetune_epochs(cfg.epochs) if cfg.finetune_last is None else cfg.finetune_last

        state = self._read_resume_state() if cfg.resume else None
        if state is None and (self.out / "state.pt").is_file():
            raise TrainingError(f"{self.out} already holds a training run (state.pt): pass --resume to continue it, "
                                "or choose another --out")

        self.pairs = find_pairs(cfg.data)
        self.global_batch = cfg.batch_size * ctx.world_size
        if len(self.pairs) < self.global_batch:
            raise TrainingError(f"the dataset has {len(self.pairs)} image/mask pair(s), fewer than one batch of "
                                f"{self.global_batch}: add data or lower --batch-size")
        self.batches = BatchPlan.batches_per_epoch(len(self.pairs), cfg.batch_size, ctx.world_size)
        if cfg.max_batches:
            self.batches = min(self.batches, cfg.max_batches)
        self.dataset = SegmentationDataset(self.pairs, augmentation=Augmentation.parse(cfg.augment), seed=cfg.seed,
                                           default_size=tuple(cfg.size))
        self.sizes = SizePolicy(tuple(cfg.size), tuple(cfg.dynamic_size) if cfg.dynamic_size else None)
        self.val_pairs = find_pairs(cfg.val) if cfg.val else []

        self.model = self._build_model(state)
        self.amp_dtype = autocast_dtype(cfg.precision, ctx.device)
        self.lr = cfg.lr if cfg.lr is not None else self.recipe.base_lr * math.sqrt(self.global_batch / 4)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if self.amp_dtype is torch.float16 else None
        self.next_epoch, self.next_batch, self.best = 1, 0, None
        if state is not None:
            self._restore(state)
        self.net: nn.Module = self.model
        if cfg.compile:
            self.net = torch.compile(self.net)
        if ctx.distributed:
            # depthwise conv weights [C, 1, k, k] get gradients whose size-1 dim has another
            # stride than DDP's bucket view: the same memory layout, so nothing to warn about
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.history: List[Dict[str, float]] = []
        self._tb = None

    # ------------------------------------------------------------------ settings, model, resume

    def _check_settings(self) -> None:
        cfg = self.cfg
        if cfg.recipe not in RECIPES:
            raise TrainingError(f"unknown recipe {cfg.recipe!r}; choose from {', '.join(RECIPES)}")
        if cfg.backbone is not None and cfg.backbone not in BACKBONES:
            raise TrainingError(f"unknown backbone {cfg.backbone!r}; choose from {', '.join(BACKBONES)}")
        for name in ("epochs", "batch_size", "accumulate", "val_every", "save_every"):
            if int(getattr(cfg, name)) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
        if cfg.drop_path is not None and not 0.0 <= cfg.drop_path < 1.0:
            raise TrainingError(f"--drop-path must be in [0, 1), got {cfg.drop_path}")
        if cfg.batch_size % cfg.accumulate:
            raise TrainingError(f"--batch-size {cfg.batch_size} must be a multiple of --accumulate {cfg.accumulate}")
        micro = cfg.batch_size // cfg.accumulate
        per_norm = micro * (self.ctx.world_size if cfg.global_batch_norm else 1)
        if per_norm < 2:
            raise TrainingError("BiRefNet's batch norm needs at least 2 samples per micro-batch (batch "
                                f"{cfg.batch_size} / accumulate {cfg.accumulate}"
                                + ("" if cfg.global_batch_norm else ", per process") + "): raise --batch-size")
        for w in (cfg.size[0], cfg.size[1]):
            if w < 32 or w % 32:
                raise TrainingError(f"--size must be positive multiples of 32, got {cfg.size[0]} {cfg.size[1]}")

    def _read_resume_state(self) -> dict:
        path = Path(self.cfg.resume)
        if path.is_dir():
            path = path / "state.pt"
        if not path.is_file():
            raise TrainingError(f"nothing to resume: {path} not found (a training run writes state.pt in its --out)")
        if path.suffix.lower() == ".safetensors":
            raise TrainingError(f"{path} holds weights only; to start a new run from it use --init {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise TrainingError(f"cannot read training state {path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise TrainingError(f"{path} is not a training state written by birefnet_core.train; to start from "
                                "weights use --init")
        if state.get("version", 0) > STATE_VERSION:
            raise TrainingError(f"{path} was written by a newer version of birefnet_core.train")
        saved = state["config"]
        if self.cfg.backbone is not None and self.cfg.backbone != saved["backbone"]:
            raise TrainingError(f"cannot resume {path}: it trains a {saved['backbone']} BiRefNet but --backbone is "
                                f"{self.cfg.backbone}")
        if self.cfg.init:
            logger.warning("--init is ignored when resuming: the weights come from %s", path)
        self.state_path = path
        return state

    def drop_path_rate(self, backbone: str) -> float:
        """The backbone's stochastic-depth rate in this run: ``--drop-path``, else the official one."""
        if self.cfg.drop_path is not None:
            return float(self.cfg.drop_path)
        return OFFICIAL_DROP_PATH[backbone_spec(backbone).family]

    def _new_model(self, backbone: str, patch_order) -> BiRefNet:
        return build_model(backbone, patch_order=patch_order, drop_path_rate=self.drop_path_rate(backbone))

    def _build_model(self, state: Optional[dict]) -> BiRefNet:
        cfg = self.cfg
        if state is not None:
            model = self._new_model(state["config"]["backbone"], state["config"]["patch_order"])
            try:
                model.load_state_dict(state["model"], strict=True)
            except RuntimeError as err:
                raise TrainingError(f"cannot resume: the saved weights do not fit the network ({err})") from err
        elif cfg.init:
            # a registry name may download: the main process fetches it, the others then read the file
            if self.ctx.distributed and not self.ctx.main:
                torch.distributed.barrier()
            model = load_model(cfg.init, device="cpu", dtype=torch.float32)
            if self.ctx.distributed and self.ctx.main:
                torch.distributed.barrier()
            if cfg.backbone is not None and cfg.backbone != model.config.backbone:
                raise TrainingError(f"--init {cfg.init} is a {model.config.backbone} BiRefNet but --backbone is "
                                    f"{cfg.backbone}")
            set_drop_path_rate(model.bb, self.drop_path_rate(model.config.backbone))
        else:
            torch.manual_seed(cfg.seed)  # the same initial weights in every process
            model = self._new_model(cfg.backbone or "swin_v1_l", PatchOrder.CURRENT)
            if cfg.backbone_weights:
                count = load_backbone_weights(model, cfg.backbone_weights)
                logger.info("loaded %d backbone tensors from %s", count, cfg.backbone_weights)
        smallest = min(*cfg.size, *(cfg.dynamic_size or ()))
        if smallest < model.config.spec.min_side:
            raise TrainingError(f"a {model.config.backbone} BiRefNet runs at sides of at least "
                                f"{model.config.spec.min_side} px; --size / --dynamic-size go down to {smallest}")
        set_aspp_dropout(model, cfg.aspp_dropout)
        if self.ctx.distributed and cfg.global_batch_norm:
            distributed.use_global_batch_norm(model)
        return model.to(self.ctx.device).train()

    def _restore(self, state: dict) -> None:
        saved = state["config"]
        if saved["global_batch"] != self.global_batch or saved["seed"] != self.cfg.seed:
            if state["next_batch"]:
                raise TrainingError(
                    f"cannot resume in the middle of epoch {state['next_epoch']}: the run used a global batch of "
                    f"{saved['global_batch']} and seed {saved['seed']}, this one {self.global_batch} and seed "
                    f"{self.cfg.seed}; use the same --batch-size, process count and --seed")
            logger.warning("resuming with a different global batch or seed: the data order changes")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise TrainingError(f"cannot resume: the optimiser state does not fit this network ({err})") from err
        for group in self.optimizer.param_groups:  # the lr follows this run's settings
            group["lr"] = self.lr
            group["weight_decay"] = self.cfg.weight_decay
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.next_epoch, self.next_batch = int(state["next_epoch"]), int(state["next_batch"])
        self.best = state.get("best")
        if self.next_epoch > self.cfg.epochs:
            logger.warning("the run in %s already finished %d epoch(s); raise --epochs to train more",
                           self.cfg.resume, self.next_epoch - 1)

    def _state(self) -> dict:
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "next_epoch": self.next_epoch, "next_batch": self.next_batch, "best": self.best,
            "config": {"backbone": self.model.config.backbone, "patch_order": self.model.patch_order.value,
                       "global_batch": self.global_batch, "seed": self.cfg.seed, "recipe": self.cfg.recipe},
        }

    def save(self, *, epoch_file: Optional[int] = None) -> Path:
        """Write ``state.pt`` and ``last.safetensors`` (and ``epoch_NNNN.safetensors``); main process only."""
        last = self.out / "last.safetensors"
        if not self.ctx.main:
            return last
        meta = {"birefnet.trained_epochs": str(self.next_epoch - 1 + (1 if self.next_batch else 0)),
                "birefnet.recipe": self.cfg.recipe}
        save_weights(self.model, last, metadata=meta)
        if epoch_file is not None:
            save_weights(self.model, self.out / f"epoch_{epoch_file:04d}.safetensors", metadata=meta)
        with atomic_output(self.out / "state.pt") as partial:
            torch.save(self._state(), partial)
        return last

    # --------------------------------------------------------------------------------- training

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def _lr_for(self, epoch: int) -> float:
        return self.lr * self.cfg.lr_gamma ** sum(1 for m in self.cfg.lr_milestones if epoch > m)

    def _train_step(self, images: torch.Tensor, masks: torch.Tensor, weights: LossWeights) -> Dict[str, float]:
        acc = self.cfg.accumulate
        sums: Dict[str, float] = {}
        finite = True
        for i, (x, y) in enumerate(zip(images.chunk(acc), masks.chunk(acc))):
            x, y = x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)
            last = i == acc - 1
            sync = self.net.no_sync() if (self.ctx.distributed and not last) else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    out = self.net(x)
                loss, parts = training_loss(out, y, weights)
                finite &= bool(torch.isfinite(loss))
                scaled = loss / acc
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            for name, value in {"loss": loss.detach(), **parts}.items():
                sums[name] = sums.get(name, 0.0) + float(value) / acc
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        else:
            logger.warning("non-finite loss (%s); this step is skipped", sums.get("loss"))
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def run(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        self.out.mkdir(parents=True, exist_ok=True)
        if ctx.main:
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")
            self._open_tensorboard()
        interrupted = False
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM,)}
        try:
            signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread
            previous = {}
        try:
            while self.next_epoch <= cfg.epochs:
                self._epoch(self.next_epoch)
        except KeyboardInterrupt:
            interrupted = True
            self.save()
            if ctx.main:
                logger.warning("interrupted in epoch %d after %d batch(es); saved %s; continue with --resume %s",
                               self.next_epoch, self.next_batch, self.out / "state.pt", self.out)
        except BaseException:
            if self.next_batch or self.next_epoch > 1:
                try:
                    self.save()
                    if ctx.main:
                        logger.error("training stopped by an error; the progress so far is saved in %s", self.out)
                except Exception:  # the original error matters more
                    logger.exception("could not save the training state")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._tb is not None:
                self._tb.close()
        return TrainResult(self.out, self.next_epoch - 1, self.out / "last.safetensors", self.history, interrupted,
                           ctx.main)

    def _epoch(self, epoch: int) -> None:
        cfg, ctx = self.cfg, self.ctx
        weights = weights_for_epoch(self.recipe, self.base_weights, epoch, cfg.epochs, self.finetune_last)
        lr = self._lr_for(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = self.next_batch
        plan = BatchPlan(len(self.dataset), cfg.batch_size, sizes=self.sizes, seed=cfg.seed, epoch=epoch,
                         rank=ctx.rank, world_size=ctx.world_size, start=start)
        workers = default_workers(cfg.batch_size) if cfg.workers is None else cfg.workers
        totals: Dict[str, float] = {}
        seen, t0 = 0, time.perf_counter()
        bar = ConsoleProgress(self.batches - start, f"epoch {epoch}/{cfg.epochs}") \
            if (ctx.main and cfg.progress) else None
        self.net.train()
        try:
            for images, masks, _ in loader(self.dataset, plan, workers, seed=(cfg.seed, epoch)):
                if self.next_batch >= self.batches:
                    break
                seed_step(cfg.seed, epoch, self.next_batch, ctx.rank)
                parts = self._train_step(images, masks, weights)
                self.next_batch += 1
                seen += images.shape[0]
                for name, value in parts.items():
                    totals[name] = totals.get(name, 0.0) + value
                if self._tb is not None:
                    step = (epoch - 1) * self.batches + self.next_batch
                    for name, value in parts.items():
                        self._tb.add_scalar(f"train/{name}", value, step)
                if bar is not None:
                    bar.update(1, f"loss {parts['loss']:.4g}")
        finally:
            if bar is not None:
                bar.close()
        steps = max(1, self.next_batch - start)
        means = distributed.average(torch.tensor([totals.get(n, 0.0) / steps for n in LOSS_COLUMNS],
                                                 dtype=torch.float64))
        seconds = time.perf_counter() - t0
        row: Dict[str, float] = {"epoch": epoch, "lr": lr, "images": seen * ctx.world_size, "seconds": round(seconds, 3),
                                 "images_per_s": round(seen * ctx.world_size / max(seconds, 1e-9), 3)}
        row.update({n: float(v) for n, v in zip(LOSS_COLUMNS, means.tolist())})
        self.next_epoch, self.next_batch = epoch + 1, 0
        if self.val_pairs and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            if ctx.main:
                row.update({f"val_{k}": v for k, v in self.validate().items()})
            if ctx.distributed:
                torch.distributed.barrier()
        improved = self._improved(row)
        save_epoch = epoch if (epoch % cfg.save_every == 0 or epoch == cfg.epochs) else None
        self.save(epoch_file=save_epoch)
        if ctx.main:
            if improved is not None:
                save_weights(self.model, self.out / "best.safetensors",
                             metadata={"birefnet.trained_epochs": str(epoch), improved: f"{row[improved]:.6f}"})
            self._log(row)
        self.history.append(row)

    # ------------------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Metrics of the current weights on the validation pairs, predicted at ``--size``."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            return evaluate_model(model, self.val_pairs, tuple(self.cfg.size), batch_size=self.cfg.batch_size,
                                  device=self.ctx.device, amp_dtype=self.amp_dtype, progress=self.cfg.progress)
        finally:
            model.train(was_training)

    def _improved(self, row: Dict[str, float]) -> Optional[str]:
        """The validation score that improved on the best so far (S-measure, else IoU), or None."""
        key = "val_S" if "val_S" in row else ("val_IoU" if "val_IoU" in row else None)
        if key is None or (self.best is not None and row[key] <= self.best):
            return None
        self.best = float(row[key])
        return key

    # --------------------------------------------------------------------------------- logging

    def _log(self, row: Dict[str, float]) -> None:
        path = self.out / "log.csv"
        header: List[str] = []
        if path.is_file():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
        columns = header + [k for k in row if k not in header]
        if columns != header:  # new columns: rewrite with the wider header
            rows = []
            if header:
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=columns).writerow(row)
        parts = [f"{k} {v:.4g}" for k, v in row.items() if k in ("loss",) or k.startswith("val_")]
        logger.info("epoch %d: %s (%.1f s, %.2f images/s)", int(row["epoch"]), ", ".join(parts), row["seconds"],
                    row["images_per_s"])
        if self._tb is not None:
            for k, v in row.items():
                if k.startswith("val_"):
                    self._tb.add_scalar(f"val/{k[4:]}", v, int(row["epoch"]))

    def _open_tensorboard(self) -> None:
        if not self.cfg.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # TensorBoard not installed: the CSV log is enough
            return
        self._tb = SummaryWriter(str(self.out / "tensorboard"))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------------- evaluation

def iou_at_half(prob: np.ndarray, gt: np.ndarray) -> float:
    """IoU of ``prob > 0.5`` with ``gt > 0.5`` (both HxW in 0..1); 1.0 when both are empty."""
    p, g = prob > 0.5, gt > 0.5
    union = np.logical_or(p, g).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, g).sum() / union)


def validation_metrics():
    """A :class:`~birefnet_core.train.metrics.SegmentationMetrics` for every metric whose
    libraries are installed (wF needs scipy, HCE also scikit-image and OpenCV)."""
    from . import metrics

    try:
        return metrics.SegmentationMetrics(metrics.METRIC_NAMES)
    except ImportError:
        logger.warning("wF and HCE need scipy, scikit-image and opencv-python-headless (pip install "
                       "\"comfyui-birefnet-pack[train]\"); validating without them")
        return metrics.SegmentationMetrics([n for n in metrics.METRIC_NAMES if n not in ("wF", "HCE")])


@torch.no_grad()
def evaluate_model(model: nn.Module, pairs: Sequence, size: Tuple[int, int], *, batch_size: int = 4,
                   device: Optional[torch.device] = None, amp_dtype: Optional[torch.dtype] = None,
                   progress: bool = False) -> Dict[str, float]:
    """IoU at 0.5 and the standard metrics (:mod:`birefnet_core.train.metrics`) of ``model``'s
    predictions at ``size`` (W, H), resized back to each mask's size and quantised to 8 bits
    as a saved PNG would be."""
    device = device or next(model.parameters()).device
    metrics = validation_metrics()
    ious: List[float] = []
    bar = ConsoleProgress(len(pairs), "validate") if progress else None
    for first in range(0, len(pairs), batch_size):
        indices = range(first, min(len(pairs), first + batch_size))
        images = torch.stack([image_tensor(read_image(pairs[i].image).resize(size, Image.Resampling.BILINEAR))
                              for i in indices]).to(device)
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        with ctx:
            logits = model(images)
        probs = logits.float().sigmoid().cpu()
        for k, i in enumerate(indices):
            gt = np.asarray(read_mask(pairs[i].mask))
            pred = F.interpolate(probs[k:k + 1], size=gt.shape, mode="bilinear", align_corners=False)[0, 0]
            pred8 = (pred.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            ious.append(iou_at_half(pred8 / 255.0, gt / 255.0))
            metrics.update(pred8, gt)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    results = {"IoU": float(np.mean(ious))}
    results.update({k: float(v) for k, v in metrics.results().items()})
    return results


def train(cfg: TrainConfig) -> TrainResult:
    """Run a training (see the module docstring); under torchrun in each process."""
    ctx = distributed.setup(cfg.device)
    if not ctx.main:
        logging.getLogger("birefnet_core").setLevel(logging.ERROR)
    try:
        return Trainer(cfg, ctx).run()
    finally:
        distributed.teardown()


__all__ = ["DataError", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "evaluate_model", "iou_at_half",
           "load_backbone_weights", "train"]
