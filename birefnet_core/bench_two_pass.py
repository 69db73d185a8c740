"""``python -m birefnet_core bench two-pass``: does the second pass help, and what does it cost?

High-resolution synthetic scenes (:func:`hr_scene`): a subject from the training generator
(:mod:`birefnet_core.train.synthetic`, with its hair, twigs and strokes 1-3 pixels wide) drawn
at ``--subject`` pixels and placed at a random spot of a 2K-4K frame whose background is the
subject's own background texture enlarged to the frame (a defocused backdrop). Each scene is
segmented in one pass and in two passes at the same network size, and scored against the exact
alpha: S-measure, boundary F-measure (outline within ``--tolerance`` pixels), HCE and MAE, with
the seconds per image. Any checkpoint works; the issue's question is answered with a model our
own training script trained on synthetic data (the README says which and how).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List, Tuple

import numpy as np
import torch


def hr_scene(frame: Tuple[int, int], subject: int, seed: int, difficulty="medium") -> Tuple[np.ndarray, np.ndarray]:
    """(image [H, W, 3] uint8, alpha [H, W] float32 0..1) of scene ``seed``: a ``subject`` x
    ``subject`` synthetic sample's object placed in a ``frame`` = (W, H) backdrop."""
    from PIL import Image

    from .train.synthetic import _rng, make_layers

    width, height = frame
    if subject > min(width, height):
        raise ValueError(f"the subject ({subject} px) must fit in the frame ({width}x{height})")
    layers = make_layers((subject, subject), seed, difficulty=difficulty)
    backdrop = Image.fromarray((layers.background * 255 + 0.5).astype(np.uint8)).resize((width, height),
                                                                                          Image.BILINEAR)
    background = np.asarray(backdrop, dtype=np.float32) / 255.0
    rng = _rng(seed, 7)
    y = int(rng.integers(0, height - subject + 1))
    x = int(rng.integers(0, width - subject + 1))
    alpha = np.zeros((height, width), dtype=np.float32)
    alpha[y:y + subject, x:x + subject] = layers.alpha
    image = background.copy()
    a = layers.alpha[..., None]
    image[y:y + subject, x:x + subject] = a * layers.foreground + (1 - a) * background[y:y + subject, x:x + subject]
    noise = _rng(seed, 1).standard_normal(image.shape).astype(np.float32) * layers.noise_sigma
    return (np.clip(image + noise, 0, 1) * 255 + 0.5).astype(np.uint8), alpha


def score(prob: np.ndarray, alpha: np.ndarray, tolerance: int, hce: bool) -> Dict[str, float]:
    from .train.metrics import (boundary_f_measure, human_correction_effort, mean_absolute_error, prepare_pair,
                                structure_measure)

    pair = prepare_pair(prob, alpha)
    pred, gt = pair.pred, pair.gt
    row = {"S": structure_measure(pred, gt), "BF": boundary_f_measure(pred, gt, tolerance),
           "MAE": mean_absolute_error(pred, gt)}
    if hce:
        row["HCE"] = float(human_correction_effort(pred, gt))
    return row


def _frame(text: str) -> Tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def run(args: argparse.Namespace) -> int:
    from .bench import machine_description
    from .checkpoint import load_model
    from .inference import Predictor

    device = torch.device(args.device)
    model = load_model(args.model, device=device, dtype=args.dtype)
    from .two_pass import TwoPass

    one = Predictor(model, resolution=args.resolution, batch_size=1)
    size = TwoPass.parse(args.refine or "native").size
    methods = {"one pass": one}
    for margin in args.margins:
        name = "two passes" if len(args.margins) == 1 else f"2 pass m{margin:g}"
        methods[name] = Predictor(model, resolution=args.resolution, batch_size=1,
                                  refine=TwoPass(size=size, margin=margin))
    two = list(methods.values())[1]
    print(f"two-pass on synthetic high-resolution scenes: {args.model}, pass 1 at {one.resolution}, pass 2 at "
          f"{two.refine_size[1]}x{two.refine_size[0]}, {str(one.dtype).replace('torch.', '')}; "
          f"{machine_description(device)}")
    rows: Dict[str, List[Dict[str, float]]] = {name: [] for name in methods}
    for frame in args.frames:
        size = _frame(frame)
        for k in range(args.scenes):
            image, alpha = hr_scene(size, args.subject, args.seed + k, args.difficulty)
            x = torch.from_numpy(image).to(device)
            for name, predictor in methods.items():
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    prob = predictor.predict(x, layout="BHWC")[0]
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                row = score(prob.cpu().numpy(), alpha, args.tolerance, not args.no_hce)
                row["seconds"] = statistics.median(times)
                row["frame"] = frame
                row["found"] = predictor.refine is None or predictor.no_subject == 0
                rows[name].append(row)
            print(f"  scene {args.seed + k} ({frame}): " + "; ".join(
                f"{name}: S {r[-1]['S']:.3f} BF {r[-1]['BF']:.3f}" + (f" HCE {r[-1]['HCE']:.0f}" if "HCE" in r[-1] else "")
                for name, r in rows.items()), flush=True)
    metrics = ["S", "BF"] + ([] if args.no_hce else ["HCE"]) + ["MAE", "seconds"]
    print(f"\n{'frames':<12} {'method':<13} " + " ".join(f"{m:>8}" for m in metrics))
    for frame in list(args.frames) + ["all"]:
        for name, items in rows.items():
            chosen = [r for r in items if frame == "all" or r["frame"] == frame]
            print(f"{frame:<12} {name:<13} " + " ".join(
                f"{statistics.mean(r[m] for r in chosen):>8.{0 if m == 'HCE' else 3}f}" for m in metrics))
    second = list(rows)[1]
    found = sum(r["found"] for r in rows[second])
    print(f"pass 1 found a subject in {found} of {len(rows[second])} scenes (elsewhere nothing at or above "
          f"{two.refine.threshold}: the result is pass 1's)")
    print(f"(means over {args.scenes} scene(s) per frame size; S, BF higher is better, HCE, MAE lower; BF "
          f"tolerance {args.tolerance} px; seconds: median of {args.repeats} per image)")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint file or registry name")
    parser.add_argument("--resolution", default=None, help="pass-1 network size (default: the model's)")
    parser.add_argument("--refine", default=None, help="pass-2 size (default: the model's, i.e. equal network size)")
    parser.add_argument("--margins", nargs="+", type=float, default=[0.1],
                        help="pass-2 margins to compare (fractions of the subject box; default 0.1, the default)")
    parser.add_argument("--frames", nargs="+", default=["2560x1440", "3840x2160"], help="frame sizes WxH")
    parser.add_argument("--subject", type=int, default=1024, help="side of the subject's square, pixels")
    parser.add_argument("--scenes", type=int, default=6, help="scenes per frame size")
    parser.add_argument("--difficulty", default="medium", help="synthetic difficulty (0..1 or a preset)")
    parser.add_argument("--seed", type=int, default=1000, help="first scene's seed (training used others)")
    parser.add_argument("--tolerance", type=int, default=2, help="boundary F tolerance in pixels")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per image (median)")
    parser.add_argument("--no-hce", action="store_true", help="skip HCE (slow at 4K)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
