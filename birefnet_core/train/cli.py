"""``python -m birefnet_core.train``: train or fine-tune BiRefNet (see :mod:`.trainer`).

Examples::

    # a synthetic DIS-like dataset, then a small model trained on it on CPU
    python -m birefnet_core.train.synthetic --out data/synth --count 400 --size 256 256
    python -m birefnet_core.train --data data/synth --backbone pvt_v2_b0 --size 256 256 \\
        --epochs 10 --batch-size 4 --out runs/synth
    # fine-tune a released checkpoint on two datasets, two GPUs
    torchrun --nproc_per_node=2 -m birefnet_core.train --data DIS-TR HRSOD-TR --init BiRefNet \\
        --size 1024 1024 --epochs 100 --batch-size 4 --recipe general --out runs/ft
"""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from ..cli import run_command
from ..config import BACKBONES
from .losses import RECIPES, LossWeights
from .trainer import TrainConfig, train


def _weight(text: str):
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected TERM=WEIGHT, got {text!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m birefnet_core.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Multi-GPU or multi-process: torchrun --nproc_per_node=N -m birefnet_core.train ...")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True, metavar="ROOT",
                   help="dataset roots, each with im/ (images) and gt/ (masks) of matching file stems")
    g.add_argument("--val", nargs="+", default=[], metavar="ROOT", help="validation roots (same layout)")
    g.add_argument("--size", nargs=2, type=int, default=[1024, 1024], metavar=("W", "H"),
                   help="training and validation size, multiples of 32 (default 1024 1024)")
    g.add_argument("--dynamic-size", nargs=2, type=int, metavar=("MIN", "MAX"),
                   help="train at a random W and H per batch in [MIN, MAX], rounded down to multiples of 32")
    g.add_argument("--augment", nargs="+", default=["flip", "enhance", "rotate", "pepper"],
                   help="augmentations: flip enhance rotate pepper, or none (default all four)")
    g.add_argument("--workers", type=int, help="data-loading processes (default: up to the batch size)")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=BACKBONES, help="backbone of a new model (default swin_v1_l); with --init "
                                                         "or --resume it must match the checkpoint")
    g.add_argument("--init", metavar="CHECKPOINT",
                   help="start from a released checkpoint: a weights file or a registry name (fine-tuning)")
    g.add_argument("--backbone-weights", metavar="FILE", help="pretrained backbone weights for a new model")
    g.add_argument("--aspp-dropout", type=float, default=0.5, help="dropout in the decoder's ASPP blocks (default 0.5)")
    g.add_argument("--drop-path", type=float, metavar="RATE",
                   help="stochastic depth in the backbone: the rate of its last block, rising linearly from 0 at "
                        "the first (default: the official rate, 0.1 for pvt_v2, 0.2 for swin_v1; 0 turns it off)")
    g.add_argument("--no-global-batch-norm", dest="global_batch_norm", action="store_false",
                   help="with several processes, normalise with each process's share of the batch (the official "
                        "code's behaviour) instead of the whole batch")
    g.add_argument("--compile", action="store_true", help="torch.compile the network")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, required=True)
    g.add_argument("--batch-size", type=int, default=4, help="samples per process and optimiser step (default 4)")
    g.add_argument("--accumulate", type=int, default=1, help="split each batch into this many micro-batches")
    g.add_argument("--recipe", choices=list(RECIPES), default="dis",
                   help="loss weights, lr and fine-tuning epochs: dis (DIS5K/COD/HRSOD), general, matting")
    g.add_argument("--lr", type=float, help="learning rate (default: the recipe's, 1e-4 for dis and 1e-5 otherwise, "
                                            "times sqrt(global batch / 4))")
    g.add_argument("--weight-decay", type=float, default=1e-2)
    g.add_argument("--lr-milestones", nargs="*", type=int, default=[], metavar="EPOCH",
                   help="epochs after which the lr is multiplied by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=0.5)
    g.add_argument("--loss-weight", action="append", type=_weight, default=[], metavar="TERM=WEIGHT",
                   help=f"override a loss weight; terms: {', '.join(LossWeights().as_dict())}")
    g.add_argument("--finetune-last", type=int, help="epochs at the end with the region-loss fine-tuning "
                                                     "(default: the recipe's share of the run, e.g. 40 of 500 for "
                                                     "dis, none in runs under 100 epochs; 0 turns it off)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype (auto: bf16 on CUDA where supported, else fp16; fp32 on CPU)")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda per process, else mps, else cpu)")

    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="folder for checkpoints, state.pt and log.csv")
    g.add_argument("--resume", nargs="?", const="", metavar="STATE",
                   help="continue a run: its state.pt or folder (alone: the --out folder)")
    g.add_argument("--save-every", type=int, default=5, help="write epoch_NNNN.safetensors every N epochs (and last)")
    g.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last)")
    g.add_argument("--max-batches", type=int, help="stop each epoch after this many batches (smoke tests)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="don't write TensorBoard logs even when TensorBoard is installed")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data, out=args.out, backbone=args.backbone, size=tuple(args.size),
        dynamic_size=tuple(args.dynamic_size) if args.dynamic_size else None, epochs=args.epochs,
        batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr, weight_decay=args.weight_decay,
        lr_milestones=tuple(args.lr_milestones), lr_gamma=args.lr_gamma, recipe=args.recipe,
        loss_weights=dict(args.loss_weight), finetune_last=args.finetune_last, init=args.init,
        backbone_weights=args.backbone_weights, resume=(args.out if args.resume == "" else args.resume),
        precision=args.precision, compile=args.compile, augment=tuple(args.augment), seed=args.seed,
        workers=args.workers, val=args.val, val_every=args.val_every, save_every=args.save_every,
        global_batch_norm=args.global_batch_norm, aspp_dropout=args.aspp_dropout, drop_path=args.drop_path,
        device=args.device, max_batches=args.max_batches, progress=args.progress, tensorboard=args.tensorboard)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status: 0 trained, 1 an error (one line on stderr), 2 a usage error, 130 interrupted
    (the state is saved first: continue with --resume)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run_command(lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    result = train(config_from_args(args))
    if result.interrupted:
        return 130
    if result.main:
        print(f"trained {result.epochs_done} epoch(s); weights: {result.last}")
    return 0
