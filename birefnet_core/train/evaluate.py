"""``python -m birefnet_core eval``: metrics of a folder of predicted masks against ground truth.

Files are paired by name stem (``.png .jpg .jpeg .bmp .tif .tiff .webp``, not recursive);
``<stem>_mask.png`` as written by ``python -m birefnet_core predict`` pairs with ``<stem>``
too. Both are read by :func:`birefnet_core.image_io.read_mask` in their real range (8-bit, 16-bit
and float grey; colour as luminance; the alpha channel when it varies; EXIF orientation applied)
and put on the 8-bit scale the metrics expect. A prediction of another size than its ground
truth is resized to it bilinearly, as ``cv2.resize(..., INTER_LINEAR)`` does in BiRefNet's
evaluation (OpenCV when installed; without it PyTorch's bilinear resize, which can differ from
OpenCV by one grey level). The numbers are PySODMetrics' (see :mod:`birefnet_core.train.metrics`).

In memory (e.g. validation inside training) use :class:`~birefnet_core.train.metrics.SegmentationMetrics`
directly; :func:`evaluate_folders` is the same over files.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from ..cli import one_line
from ..files import atomic_output, refuse_inputs
from ..image_io import ImageReadError, read_mask, to_uint8
from .data import IMAGE_SUFFIXES
from .metrics import HIGHER_IS_BETTER, METRIC_NAMES, SegmentationMetrics

PREDICT_MASK_SUFFIX = "_mask"  # what ``predict`` appends to a stem
PREDICT_CUTOUT_SUFFIX = "_rgba"

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """An error the user can fix (missing folder, no pairs, unreadable image)."""


def _images_by_stem(folder: Path, role: str) -> Dict[str, Path]:
    if not folder.is_dir():
        raise EvaluationError(f"{role} folder not found: {folder}")
    found: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise EvaluationError(f"two {role} images share the name {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def pair_files(pred_dir: Path, gt_dir: Path) -> Tuple[List[Tuple[str, Path, Path]], List[str], List[str]]:
    """``(pairs, gt_without_pred, pred_without_gt)``; pairs are ``(stem, pred, gt)`` sorted by stem.

    A ground truth ``x`` pairs with prediction ``x`` or else ``x_mask``; the ``x_rgba`` cut-outs
    that ``predict`` writes beside ``x_mask`` are ignored.
    """
    preds = _images_by_stem(Path(pred_dir), "prediction")
    gts = _images_by_stem(Path(gt_dir), "ground-truth")
    pairs, gt_alone, used = [], [], set()
    for stem, gt_path in gts.items():
        for candidate in (stem, stem + PREDICT_MASK_SUFFIX):
            if candidate in preds:
                pairs.append((stem, preds[candidate], gt_path))
                used.add(candidate)
                if candidate != stem:
                    used.add(stem + PREDICT_CUTOUT_SUFFIX)
                break
        else:
            gt_alone.append(stem)
    pred_alone = [preds[stem].name for stem in preds if stem not in used]
    return pairs, gt_alone, pred_alone


def read_grey(path: Path) -> np.ndarray:
    """An image file as uint8 [H, W] on the 8-bit scale whatever its depth: 16-bit / 257, float
    0..1 * 255, rounded (see :func:`birefnet_core.image_io.read_mask`; EXIF orientation applied).

    Raises:
        EvaluationError: the file cannot be read (the message names it).
    """
    try:
        return to_uint8(read_mask(path))
    except ImageReadError as exc:
        raise EvaluationError(str(exc)) from None


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w] -> uint8 [height, width], bilinear with half-pixel centres and no antialiasing:
    OpenCV's ``INTER_LINEAR`` when OpenCV is installed, else PyTorch's equivalent (rounded)."""
    try:
        import cv2
    except ImportError:
        import torch
        import torch.nn.functional as F

        tensor = torch.from_numpy(image).to(torch.float32)[None, None]
        resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
        return resized[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _name_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, metrics: Iterable[str] = METRIC_NAMES,
                     progress: bool = False) -> Dict[str, Any]:
    """Metrics of the predictions in ``pred_dir`` against the ground truths in ``gt_dir``.

    Args:
        pred_dir: folder of predicted masks (grey 8-bit, 16-bit or float 0..1, any size).
        gt_dir: folder of ground-truth masks (foreground above 128 on the 8-bit scale).
        metrics: names from :data:`~birefnet_core.train.metrics.METRIC_NAMES`.
        progress: draw a progress bar on stderr.

    Returns:
        ``{"metrics": {name: value}, "per_image": {stem: {name: value}}, "pairs": int,
        "gt_without_pred": [stems], "pred_without_gt": [file names], "resized": [stems]}``.
        Unpaired files are also logged once as a warning.

    Raises:
        EvaluationError: a folder is missing, no file pairs up, or an image cannot be read.
    """
    from ..progress import ConsoleProgress

    pairs, gt_alone, pred_alone = pair_files(Path(pred_dir), Path(gt_dir))  # folder errors before dependencies
    scores = SegmentationMetrics(metrics)
    if not pairs:
        raise EvaluationError(
            f"no prediction in {pred_dir} matches a ground truth in {gt_dir}: expected files with the same "
            f"name stem in both folders (e.g. {pred_dir}/0001.png and {gt_dir}/0001.png, or {pred_dir}/0001_mask.png "
            f"from 'predict'); found {len(pred_alone)} prediction and {len(gt_alone)} ground-truth images")
    if gt_alone:
        logger.warning("warning: %d ground-truth image(s) without a prediction, skipped: %s",
                       len(gt_alone), _name_list(gt_alone))
    if pred_alone:
        logger.warning("warning: %d prediction(s) without a ground truth, skipped: %s",
                       len(pred_alone), _name_list(pred_alone))

    per_image: Dict[str, Dict[str, float]] = {}
    resized: List[str] = []
    bar = ConsoleProgress(len(pairs) if progress else 0, "eval")
    with bar:
        for stem, pred_path, gt_path in pairs:
            gt = read_grey(gt_path)
            pred = read_grey(pred_path)
            if pred.shape != gt.shape:
                pred = resize_bilinear(pred, *gt.shape)
                resized.append(stem)
            per_image[stem] = scores.update(pred, gt)
            bar.update(1, stem)
    return {"metrics": scores.results(), "per_image": per_image, "pairs": len(pairs),
            "gt_without_pred": gt_alone, "pred_without_gt": pred_alone, "resized": resized}


def format_table(values: Dict[str, float]) -> str:
    """Metric names over values, and which of them are better lower (plain ASCII for any console)."""
    cells = [(name, f"{value:.2f}" if name == "HCE" else f"{value:.4f}") for name, value in values.items()]
    widths = [max(len(head), len(text)) for head, text in cells]
    header = "  ".join(head.rjust(width) for (head, _), width in zip(cells, widths))
    row = "  ".join(text.rjust(width) for (_, text), width in zip(cells, widths))
    lower = [name for name in values if not HIGHER_IS_BETTER[name]]
    note = f"\n(lower is better for {', '.join(lower)}; higher for the rest)" if lower else ""
    return f"{header}\n{row}{note}"


def write_csv(path: Path, report: Dict[str, Any]) -> None:
    """One row per image (its own scores) and a last row ``ALL`` with the dataset metrics; the file
    appears complete or not at all."""
    names = list(report["metrics"])
    with atomic_output(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *names])
        for stem, values in report["per_image"].items():
            writer.writerow([stem, *(repr(values[name]) for name in names)])
        writer.writerow(["ALL", *(repr(report["metrics"][name]) for name in names)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="folder of predicted masks (grey 8-bit, 16-bit or float 0..1; "
                                                      "<stem>.png or <stem>_mask.png as 'predict' writes them)")
    parser.add_argument("--gt", required=True, help="folder of ground-truth masks, same stems (foreground > 128 "
                                                    "on the 8-bit scale; 16-bit and float masks are scaled to it)")
    parser.add_argument("--metrics", nargs="+", default=list(METRIC_NAMES), metavar="NAME",
                        help=f"metrics to compute (default all): {' '.join(METRIC_NAMES)}. "
                             "HCE is the slow one; wF and HCE need scipy, scikit-image and opencv")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write per-image scores and the "
                                                                    "dataset row 'ALL' to this CSV file")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.epilog = ("Files pair by name stem (.png .jpg .jpeg .bmp .tif .tiff .webp). A prediction of another "
                     "size than its ground truth is resized to it bilinearly (like cv2.resize INTER_LINEAR, as "
                     "BiRefNet's evaluation does). Numbers equal PySODMetrics 1.6.2.")


def run(args: argparse.Namespace) -> int:
    if args.csv:  # the report may replace an earlier one, never an image it reads
        refuse_inputs([Path(args.csv)], [p for folder in map(Path, (args.pred, args.gt)) if folder.is_dir()
                                         for p in folder.iterdir()])
    try:
        report = evaluate_folders(args.pred, args.gt, metrics=args.metrics, progress=True)
    except ImportError as exc:
        numpy_only = " ".join(name for name in METRIC_NAMES if name not in ("wF", "HCE"))
        raise ImportError(f"{one_line(exc)}; or leave out wF and HCE: --metrics {numpy_only}") from None
    if args.json:
        print(json.dumps({"pred": str(args.pred), "gt": str(args.gt), "pairs": report["pairs"],
                          "metrics": report["metrics"], "gt_without_pred": report["gt_without_pred"],
                          "pred_without_gt": report["pred_without_gt"], "resized": report["resized"]}, indent=2))
    else:
        print(f"{report['pairs']} pairs ({len(report['resized'])} predictions resized to their ground truth)")
        print(format_table(report["metrics"]))
    if args.csv:  # after the results are printed: a CSV that cannot be written loses nothing else
        try:
            write_csv(Path(args.csv), report)
        except OSError as exc:
            raise OSError(f"cannot write --csv {args.csv}: {exc.strerror or exc} (the results are printed above)") \
                from None
    return 0
