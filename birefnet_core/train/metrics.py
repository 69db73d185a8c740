"""Segmentation metrics of the salient-object / dichotomous-segmentation literature.

The numbers equal PySODMetrics 1.6.2 (``pysodmetrics`` on PyPI, the port of D.-P. Fan's MATLAB
toolbox that BiRefNet's own evaluation uses) on the same 8-bit inputs; ``tests/test_metrics.py``
checks that against the real package. One documented difference: where the foreground centroid
of the ground truth rounds onto the last row or column, one S-measure quadrant is empty and
PySODMetrics returns NaN; here that quadrant (whose weight is 0) is left out.

Metric names (:data:`METRIC_NAMES`), all averaged over images:

``S``
    S-measure (structure measure, Fan et al. ICCV 2017), alpha 0.5. Higher is better, 0..1.
``maxF``, ``meanF``, ``adpF``
    F-measure with beta^2 = 0.3. The per-image curve over the 256 thresholds is averaged over
    images first, then its maximum / mean is taken; ``adpF`` binarises each image at twice its
    mean prediction. Higher is better.
``wF``
    Weighted F-measure (Margolin et al. CVPR 2014), beta^2 = 1. 0 for an image without foreground.
``maxE``, ``meanE``, ``adpE``
    E-measure (enhanced alignment, Fan et al. IJCAI 2018): curve and adaptive as for F.
``MAE``
    Mean absolute error between the normalised prediction and the binary ground truth. Lower is better.
``HCE``
    Human correction effort (Qin et al. ECCV 2022, DIS5K), relax 5, RDP epsilon 2.0: the number
    of clicks (polygon vertices plus independent regions) needed to fix the binarised prediction.
    Lower is better. The slow one; needs SciPy, scikit-image and OpenCV.

Inputs follow PySODMetrics' ``step(pred, gt, normalize=True)``: ``pred`` and ``gt`` are H x W
8-bit grey images. The prediction is divided by 255 and min-max normalised (left as is when
constant); the ground truth is foreground where it is above 128. Float arrays and tensors in
[0, 1] are first turned into 8-bit levels as writing and reading an 8-bit PNG would,
``round(x * 255)``, so evaluating in memory gives the numbers of evaluating the written files.

S, F, E and MAE need NumPy only; ``wF`` needs SciPy, ``HCE`` SciPy, scikit-image and OpenCV
(the ``train`` extra: ``pip install scipy scikit-image opencv-python-headless``).

Use::

    scores = SegmentationMetrics()            # or metrics=("S", "maxF", "MAE")
    for prob, mask in pairs:                  # [H, W] arrays or tensors
        scores.update(prob, mask)
    print(scores.results())                   # {"S": 0.91, "maxF": ..., ...}
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, NamedTuple, Tuple

import numpy as np
from numpy.typing import ArrayLike

METRIC_NAMES: Tuple[str, ...] = ("S", "maxF", "meanF", "adpF", "wF", "maxE", "meanE", "adpE", "MAE", "HCE")
"""Every metric :class:`SegmentationMetrics` computes, in the order results are reported."""

HIGHER_IS_BETTER: Dict[str, bool] = {name: name not in ("MAE", "HCE") for name in METRIC_NAMES}

NUM_THRESHOLDS = 256

# MATLAB's eps, the small constant of the original toolbox formulas.
_EPS = float(np.spacing(1))

_INSTALL_HINT = "pip install scipy scikit-image opencv-python-headless"

# Metrics that come from the same per-image computation.
_FAMILIES = {"S": "S", "maxF": "F", "meanF": "F", "adpF": "F", "wF": "wF",
             "maxE": "E", "meanE": "E", "adpE": "E", "MAE": "MAE", "HCE": "HCE"}


def _missing(feature: str, exc: ImportError) -> ImportError:
    return ImportError(f"{feature} needs SciPy, scikit-image and OpenCV ({exc.name or exc} is missing): "
                       f"{_INSTALL_HINT}")


def _scipy_ndimage():
    try:
        from scipy import ndimage
    except ImportError as exc:
        raise _missing("the weighted F-measure (wF)", exc) from exc
    return ndimage


def _hce_libraries():
    """(cv2, skeletonize) for the human correction effort."""
    try:
        import cv2
        from skimage.morphology import skeletonize
    except ImportError as exc:
        raise _missing("the human correction effort (HCE)", exc) from exc
    return cv2, skeletonize


# --------------------------------------------------------------------------------------------
# Input conversion and normalisation


def _squeeze_to_2d(array: np.ndarray, name: str) -> np.ndarray:
    original = array.shape
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must be one H x W image (also accepted: [1, H, W], [1, 1, H, W], "
                         f"[H, W, 1]), got shape {tuple(original)}")
    return array


def to_uint8_image(image: Any, name: str = "image") -> np.ndarray:
    """An image as the H x W uint8 levels an 8-bit grey PNG of it would hold.

    Args:
        image: NumPy array or torch tensor, [H, W] (or [1, H, W], [1, 1, H, W], [H, W, 1]).
            uint8 is taken as is; bool becomes 0 / 255; other integers must lie in 0..255;
            floats must lie in [0, 1] and become ``round(x * 255)``, computed in the input's
            float precision (float16/bfloat16 in float32), like ``predict`` writes its masks.
        name: what to call it in error messages.

    Returns:
        C-contiguous uint8 array [H, W].
    """
    if hasattr(image, "detach") and type(image).__module__.startswith("torch"):
        tensor = image.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (_torch_dtype("float32"), _torch_dtype("float64")):
            tensor = tensor.float()
        image = tensor.numpy()
    array = _squeeze_to_2d(np.asarray(image), name)
    if array.dtype == np.uint8:
        levels = array
    elif array.dtype == np.bool_:
        levels = array.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"{name}: integer images must hold 0..255, got {array.min()}..{array.max()}")
        levels = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if array.dtype == np.float16:
            array = array.astype(np.float32)
        low, high = float(array.min()), float(array.max())
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            raise ValueError(f"{name}: float images must lie in [0, 1], got {low}..{high} "
                             "(apply sigmoid to logits first)")
        levels = np.rint(array * array.dtype.type(255)).astype(np.uint8)
    else:
        raise TypeError(f"{name}: unsupported dtype {array.dtype}; use uint8 0..255 or float 0..1")
    return np.ascontiguousarray(levels)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


class PreparedPair(NamedTuple):
    """One prediction / ground-truth pair after PySODMetrics' normalisation, all [H, W]."""

    pred: np.ndarray
    """float64 in [0, 1]: the 8-bit prediction / 255, min-max normalised unless constant."""
    levels: np.ndarray
    """uint8 0..255: ``floor(pred * 255)``, the bin of each pixel on the threshold curves."""
    gt: np.ndarray
    """bool: ground truth above 128."""


def prepare_pair(pred: Any, gt: Any) -> PreparedPair:
    """Normalise one pair the way PySODMetrics' ``step(..., normalize=True)`` does.

    The normalised prediction depends on a pixel's 8-bit level only, so it is computed for the
    256 levels once and looked up (the element-wise arithmetic is the same, so the values are
    bit for bit those of normalising every pixel).

    Raises:
        ValueError: when the two images differ in size (the message names both shapes).
    """
    pred_u8 = to_uint8_image(pred, "pred")
    gt_u8 = to_uint8_image(gt, "gt")
    if pred_u8.shape != gt_u8.shape:
        raise ValueError(f"pred and gt differ in size: pred {pred_u8.shape} vs gt {gt_u8.shape} (H, W); "
                         "resize the prediction to the ground truth first")
    value_of_level = np.arange(256, dtype=np.uint8) / 255
    low, high = value_of_level[pred_u8.min()], value_of_level[pred_u8.max()]
    if high != low:
        value_of_level = (value_of_level - low) / (high - low)
    bin_of_level = (value_of_level * 255).astype(np.uint8)
    return PreparedPair(pred=value_of_level[pred_u8], levels=bin_of_level[pred_u8], gt=gt_u8 > 128)


# --------------------------------------------------------------------------------------------
# Per-image metrics on a prepared pair (pred float64 [0, 1], gt bool, both [H, W])


def mean_absolute_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean of |pred - gt| over the image; pred float [H, W] in [0, 1], gt bool [H, W]."""
    return float(np.mean(np.abs(pred - gt)))


def structure_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """S-measure of one image: ``alpha * object score + (1 - alpha) * region score``, at least 0.

    With no foreground in ``gt`` it is ``1 - mean(pred)``; with foreground everywhere,
    ``mean(pred)``. pred float [H, W] in [0, 1], gt bool [H, W].
    """
    fg_fraction = float(np.mean(gt))
    if fg_fraction == 0.0:
        return float(1.0 - np.mean(pred))
    if fg_fraction == 1.0:
        return float(np.mean(pred))
    score = alpha * _object_similarity(pred, gt, fg_fraction) + (1 - alpha) * _region_similarity(pred, gt)
    return max(0.0, float(score))


def _object_similarity(pred: np.ndarray, gt: np.ndarray, fg_fraction: float) -> float:
    def similarity(values: np.ndarray) -> float:
        # how close the values are to a uniform 1: high mean, low spread
        mean = np.mean(values)
        spread = np.std(values, ddof=1) if values.size > 1 else 0.0
        return 2 * mean / (mean * mean + 1 + spread + _EPS)

    foreground = similarity(pred[gt])
    background = similarity(1 - pred[~gt])
    return foreground * fg_fraction + background * (1 - fg_fraction)


def _region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """Area-weighted SSIM of the four blocks cut at the ground truth's foreground centroid."""
    height, width = gt.shape
    rows, cols = np.nonzero(gt)
    # The MATLAB original cuts after the rounded 1-based centroid: blocks [0, cut) and [cut, end).
    row_cut = int(np.round(rows.mean())) + 1
    col_cut = int(np.round(cols.mean())) + 1
    total = 0.0
    for row_block in (slice(0, row_cut), slice(row_cut, height)):
        for col_block in (slice(0, col_cut), slice(col_cut, width)):
            block_gt = gt[row_block, col_block]
            if block_gt.size == 0:  # a block of weight 0; PySODMetrics returns NaN here
                continue
            total += _block_ssim(pred[row_block, col_block], block_gt) * (block_gt.size / gt.size)
    return total


def _block_ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """SSIM without the stabilising constants, as in the S-measure paper; 1 for two flat blocks."""
    count = pred.size
    mean_p, mean_g = np.mean(pred), np.mean(gt)
    dev_p, dev_g = pred - mean_p, gt - mean_g
    var_p = np.sum(dev_p * dev_p) / (count - 1 + _EPS)
    var_g = np.sum(dev_g * dev_g) / (count - 1 + _EPS)
    cov = np.sum(dev_p * dev_g) / (count - 1 + _EPS)
    numerator = 4 * mean_p * mean_g * cov
    denominator = (mean_p * mean_p + mean_g * mean_g) * (var_p + var_g)
    if numerator != 0:
        return float(numerator / (denominator + _EPS))
    return 1.0 if denominator == 0 else 0.0


class ThresholdCounts(NamedTuple):
    """Confusion counts of one image at thresholds t = 0..255 (prediction bin >= t is foreground)."""

    true_pos: np.ndarray
    """int64 [256]"""
    false_pos: np.ndarray
    """int64 [256]"""
    positives: int
    """foreground pixels in the ground truth"""
    pixels: int


def threshold_counts(levels: np.ndarray, gt: np.ndarray) -> ThresholdCounts:
    """TP and FP at every threshold from one joint histogram: levels uint8 [H, W], gt bool [H, W]."""
    joint = np.bincount(levels.ravel().astype(np.intp) + NUM_THRESHOLDS * gt.ravel(), minlength=2 * NUM_THRESHOLDS)
    background_hist, foreground_hist = joint[:NUM_THRESHOLDS], joint[NUM_THRESHOLDS:]
    at_or_above = lambda hist: np.cumsum(hist[::-1])[::-1]  # noqa: E731
    return ThresholdCounts(at_or_above(foreground_hist), at_or_above(background_hist),
                           int(foreground_hist.sum()), int(levels.size))


def adaptive_counts(pred: np.ndarray, gt: np.ndarray) -> Tuple[int, int]:
    """(TP, FP) at the adaptive threshold ``min(2 * mean(pred), 1)``, pred float [H, W]."""
    selected = pred >= min(2 * pred.mean(), 1)
    true_pos = int(np.count_nonzero(selected & gt))
    return true_pos, int(np.count_nonzero(selected)) - true_pos


def _ratio(numerator: ArrayLike, denominator: ArrayLike) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def precision_recall(true_pos: ArrayLike, false_pos: ArrayLike, positives: int) -> Tuple[np.ndarray, np.ndarray]:
    """Precision and recall from counts (scalars or arrays); 0 where undefined."""
    true_pos = np.asarray(true_pos)
    return _ratio(true_pos, true_pos + false_pos), _ratio(true_pos, np.full_like(true_pos, positives))


def f_measure(true_pos: ArrayLike, false_pos: ArrayLike, positives: int, beta2: float = 0.3) -> np.ndarray:
    """F-beta from counts (scalars or arrays): ``(1 + beta2) P R / (beta2 P + R)``, 0 where P = R = 0."""
    precision, recall = precision_recall(true_pos, false_pos, positives)
    return _ratio((1 + beta2) * precision * recall, beta2 * precision + recall)


def e_measure(true_pos: ArrayLike, false_pos: ArrayLike, positives: int, pixels: int) -> np.ndarray:
    """E-measure from counts (scalars or arrays) of a binarised prediction.

    The enhanced alignment matrix takes one value per (prediction, ground truth) pair of
    labels, so its sum is a weighted count of the four confusion cells. Without foreground in
    the ground truth it counts the predicted background; with only foreground, the predicted
    foreground.
    """
    true_pos = np.asarray(true_pos, dtype=np.float64)
    predicted = true_pos + np.asarray(false_pos, dtype=np.float64)
    if positives == 0:
        aligned = pixels - predicted
    elif positives == pixels:
        aligned = predicted
    else:
        pred_mean = predicted / pixels
        gt_mean = positives / pixels
        false_neg = positives - true_pos
        cells = (  # (pixel count, demeaned prediction, demeaned ground truth)
            (true_pos, 1 - pred_mean, 1 - gt_mean),
            (predicted - true_pos, 1 - pred_mean, -gt_mean),
            (false_neg, -pred_mean, 1 - gt_mean),
            (pixels - predicted - false_neg, -pred_mean, -gt_mean),
        )
        aligned = 0.0
        for count, dp, dg in cells:
            alignment = 2 * (dp * dg) / (dp * dp + dg * dg + _EPS)
            aligned = aligned + count * ((alignment + 1) ** 2 / 4)
    return np.asarray(aligned / (pixels - 1 + _EPS))


def _gaussian_kernel(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', size, sigma)``: normalised to sum 1."""
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(kernel.dtype).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def weighted_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-measure of one image; 0 when ``gt`` has no foreground. Needs SciPy.

    Errors of background pixels count as the error at the nearest foreground pixel (pixel
    dependency), are smoothed by a 7x7 Gaussian (sigma 5) and weigh more far from the object
    (pixel importance). pred float [H, W] in [0, 1], gt bool [H, W].
    """
    if not gt.any():
        return 0.0
    ndimage = _scipy_ndimage()
    distance, (near_row, near_col) = ndimage.distance_transform_edt(~gt, return_indices=True)
    error = np.abs(pred - gt)
    error_at_nearest_fg = error[near_row, near_col]  # foreground pixels are their own nearest
    smoothed = ndimage.convolve(error_at_nearest_fg, _gaussian_kernel(), mode="constant", cval=0.0)
    error = np.where(gt & (smoothed < error), smoothed, error)
    importance = np.where(gt, 1.0, 2 - np.exp(math.log(0.5) / 5 * distance))
    weighted_error = error * importance
    fg_error = weighted_error[gt]
    true_pos = gt.sum() - fg_error.sum()
    false_pos = weighted_error[~gt].sum()
    recall = 1 - fg_error.mean()
    precision = true_pos / (true_pos + false_pos + _EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + _EPS))


def human_correction_effort(pred: np.ndarray, gt: np.ndarray, relax: int = 5, epsilon: float = 2.0) -> int:
    """Human correction effort of one image (DIS5K's HCE_gamma, gamma = ``relax``).

    Needs OpenCV and scikit-image. pred float [H, W] in [0, 1] (binarised at > 0.5), gt bool [H, W].
    Errors are relaxed: false positives / negatives within ``relax`` pixels of the border of the
    union are dropped unless they connect to the inside of an error region, and missed skeleton
    pixels of the ground truth always count. Each remaining error region costs the vertices of
    the RDP-simplified (``epsilon``) stretches of its border that touch the rest (where a user
    would click a polygon), or one click when no border stretch touches anything.
    """
    cv2, skeletonize = _hce_libraries()
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))

    def dilate(mask: np.ndarray) -> np.ndarray:
        return cv2.dilate(mask.astype(np.uint8), cross).astype(bool)

    def regrow(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        for _ in range(relax):
            seed = dilate(seed) & allowed
        return seed

    fg = pred > 0.5
    true_pos, false_pos, false_neg = fg & gt, fg & ~gt, gt & ~fg
    core = cv2.erode((fg | gt).astype(np.uint8), cross, iterations=relax).astype(bool)
    fp_kept = regrow(false_pos & core, ~gt) & false_pos
    fn_kept = regrow(false_neg & core, ~fg) & false_neg
    fn_kept |= skeletonize(gt).astype(bool) & ~true_pos

    fp_clicks = _correction_clicks(cv2, fp_kept, dilate(true_pos | fn_kept), epsilon)
    fn_clicks = _correction_clicks(cv2, fn_kept, dilate(~(true_pos | fp_kept | fn_kept)), epsilon)
    return fp_clicks + fn_clicks


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, tolerance: int = 2) -> float:
    """Boundary F-measure of one image (Csurka et al. BMVC 2013, the ``F`` of DAVIS): how well
    the outline of the binarised prediction (``pred`` float [H, W] in [0, 1], > 0.5) matches the
    ground truth's (bool [H, W]), each outline pixel counting as matched when the other outline
    has a pixel within ``tolerance`` pixels (Euclidean). Precision over the prediction's outline,
    recall over the ground truth's, F = 2PR / (P + R); 1 when both have no outline, 0 when one
    has none. An outline pixel is a foreground pixel with a 4-neighbour outside the foreground
    (the image's edge counts as outside). Needs SciPy. Not part of :data:`METRIC_NAMES` (it is
    no PySODMetrics metric); a fixed tolerance in pixels suits high-resolution images, where
    DAVIS's 0.8 % of the diagonal would forgive 35 pixels at 4K."""
    ndimage = _scipy_ndimage()

    def outline(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1, constant_values=False)
        inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
        return mask & ~inner

    pred_edge, gt_edge = outline(np.asarray(pred) > 0.5), outline(np.asarray(gt, dtype=bool))
    if not pred_edge.any() and not gt_edge.any():
        return 1.0
    if not pred_edge.any() or not gt_edge.any():
        return 0.0
    near_gt = ndimage.distance_transform_edt(~gt_edge) <= tolerance
    near_pred = ndimage.distance_transform_edt(~pred_edge) <= tolerance
    precision = float((pred_edge & near_gt).sum() / pred_edge.sum())
    recall = float((gt_edge & near_pred).sum() / gt_edge.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _correction_clicks(cv2: Any, errors: np.ndarray, touching: np.ndarray, epsilon: float) -> int:
    """Clicks to fix the error regions ``errors`` (bool [H, W]).

    Border pixels of the regions (OpenCV contours, all levels, in OpenCV's order) that lie in
    ``touching`` and were not met before form stretches; each stretch costs the vertices of its
    open RDP simplification. A stretch that is cut at the start of its closed contour is joined
    to the contour's last stretch (as in the DIS reference code: the last stretch, then the first
    one reversed). A region with no such border pixel costs one click.
    """
    mask = errors.astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0
    num_labels, labels = cv2.connectedComponents(mask, connectivity=8)
    points = np.concatenate([contour.reshape(-1, 2) for contour in contours])  # (x, y)
    flat = points[:, 1].astype(np.intp) * mask.shape[1] + points[:, 0]
    first_visit = np.zeros(len(flat), dtype=bool)
    first_visit[np.unique(flat, return_index=True)[1]] = True
    counted = first_visit & touching.ravel()[flat]

    corrected_regions = np.unique(labels.ravel()[flat[counted]])
    independent_regions = (num_labels - 1) - np.count_nonzero(corrected_regions)

    vertices = 0
    start = 0
    for contour in contours:
        stop = start + len(contour)
        for stretch in _stretches(points[start:stop], counted[start:stop]):
            vertices += len(cv2.approxPolyDP(stretch.reshape(-1, 1, 2), epsilon, False))
        start = stop
    return int(vertices + independent_regions)


def _stretches(points: np.ndarray, counted: np.ndarray) -> List[np.ndarray]:
    """Runs of consecutive counted points of one contour, int32 [N, 2] each."""
    edges = np.diff(np.concatenate(([0], counted.astype(np.int8), [0])))
    runs = [points[a:b].astype(np.int32) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]
    if len(runs) > 1 and np.abs(runs[0][0] - runs[-1][-1]).max() == 1:
        runs[-1] = np.concatenate([runs[-1], runs[0][::-1]])
        del runs[0]
    return runs


# --------------------------------------------------------------------------------------------
# The accumulator


def _check_metric_names(metrics: Iterable[str]) -> Tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    by_lower = {name.lower(): name for name in METRIC_NAMES}
    chosen = []
    for name in metrics:
        canonical = by_lower.get(str(name).lower())
        if canonical is None:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
        if canonical not in chosen:
            chosen.append(canonical)
    if not chosen:
        raise ValueError(f"no metrics chosen; choose from {', '.join(METRIC_NAMES)}")
    return tuple(name for name in METRIC_NAMES if name in chosen)


class SegmentationMetrics:
    """Accumulates metrics over images; :meth:`results` averages them like PySODMetrics.

    Scalar metrics (S, adpF, wF, adpE, MAE, HCE) are means of the per-image values; for
    maxF / meanF / maxE / meanE the 256-threshold curves are averaged over images and then
    the maximum / mean of the averaged curve is taken (so ``maxF`` is not the mean of the
    per-image maxima).

    Args:
        metrics: names from :data:`METRIC_NAMES` (case-insensitive), default all. Only the
            families asked for are computed; leave out ``HCE`` (and ``wF``) for speed or when
            SciPy / scikit-image / OpenCV are not installed.
        s_alpha: S-measure weight of the object score.
        f_beta2: beta^2 of the F-measure.
        wf_beta2: beta^2 of the weighted F-measure.
        hce_relax, hce_epsilon: HCE's relaxation (pixels) and RDP tolerance.

    Raises:
        ImportError: at construction, when a chosen metric's library is missing.
    """

    def __init__(self, metrics: Iterable[str] = METRIC_NAMES, *, s_alpha: float = 0.5, f_beta2: float = 0.3,
                 wf_beta2: float = 1.0, hce_relax: int = 5, hce_epsilon: float = 2.0) -> None:
        self.metrics = _check_metric_names(metrics)
        self.families = {_FAMILIES[name] for name in self.metrics}
        self.s_alpha, self.f_beta2, self.wf_beta2 = s_alpha, f_beta2, wf_beta2
        self.hce_relax, self.hce_epsilon = hce_relax, hce_epsilon
        if "wF" in self.families:
            _scipy_ndimage()
        if "HCE" in self.families:
            _scipy_ndimage()
            _hce_libraries()
        self.reset()

    def reset(self) -> None:
        """Forget every image added so far."""
        self.count = 0
        self._scalars: Dict[str, List[float]] = {}
        self._curve_sums: Dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.count

    def update(self, pred: Any, gt: Any) -> Dict[str, float]:
        """Add one image pair.

        Args:
            pred: prediction [H, W]: uint8 0..255, or float 0..1 / tensor (see :func:`to_uint8_image`).
            gt: ground truth [H, W], same size: uint8 (foreground above 128), bool, or float 0..1.

        Returns:
            This image's own scores for the chosen metrics (its ``maxF`` is the maximum of its
            own curve).

        Raises:
            ValueError: sizes differ (both shapes named), or values out of range.
        """
        pair = prepare_pair(pred, gt)
        scalars: Dict[str, float] = {}
        curves: Dict[str, np.ndarray] = {}
        if "S" in self.families:
            scalars["S"] = structure_measure(pair.pred, pair.gt, self.s_alpha)
        if self.families & {"F", "E"}:
            counts = threshold_counts(pair.levels, pair.gt)
            adaptive_tp, adaptive_fp = adaptive_counts(pair.pred, pair.gt)
            if "F" in self.families:
                curves["F"] = f_measure(counts.true_pos, counts.false_pos, counts.positives, self.f_beta2)
                curves["precision"], curves["recall"] = precision_recall(counts.true_pos, counts.false_pos,
                                                                         counts.positives)
                scalars["adpF"] = float(f_measure(adaptive_tp, adaptive_fp, counts.positives, self.f_beta2))
            if "E" in self.families:
                curves["E"] = e_measure(counts.true_pos, counts.false_pos, counts.positives, counts.pixels)
                scalars["adpE"] = float(e_measure(adaptive_tp, adaptive_fp, counts.positives, counts.pixels))
        if "wF" in self.families:
            scalars["wF"] = weighted_f_measure(pair.pred, pair.gt, self.wf_beta2)
        if "MAE" in self.families:
            scalars["MAE"] = mean_absolute_error(pair.pred, pair.gt)
        if "HCE" in self.families:
            scalars["HCE"] = float(human_correction_effort(pair.pred, pair.gt, self.hce_relax, self.hce_epsilon))

        for name, value in scalars.items():
            self._scalars.setdefault(name, []).append(value)
        for name, curve in curves.items():
            if name in self._curve_sums:
                self._curve_sums[name] += curve
            else:
                self._curve_sums[name] = curve.astype(np.float64)
        self.count += 1
        return self._summarise(scalars, curves)

    def update_batch(self, preds: Any, gts: Any) -> None:
        """Add a batch: [B, H, W] or [B, 1, H, W] arrays / tensors, one image per leading index."""
        if len(preds) != len(gts):
            raise ValueError(f"batch sizes differ: {len(preds)} predictions vs {len(gts)} ground truths")
        for pred, gt in zip(preds, gts):
            self.update(pred, gt)

    def _summarise(self, scalars: Dict[str, float], curves: Dict[str, np.ndarray]) -> Dict[str, float]:
        values = dict(scalars)
        for family in ("F", "E"):
            if family in curves:
                values[f"max{family}"] = float(curves[family].max())
                values[f"mean{family}"] = float(curves[family].mean())
        return {name: values[name] for name in self.metrics}

    def results(self) -> Dict[str, float]:
        """The chosen metrics over all images so far, ``{name: value}`` in :data:`METRIC_NAMES` order.

        Raises:
            ValueError: when no image was added.
        """
        if not self.count:
            raise ValueError("no images were added to the metrics")
        scalars = {name: float(np.mean(np.asarray(values, dtype=np.float64)))
                   for name, values in self._scalars.items()}
        return self._summarise(scalars, self.curves())

    def curves(self) -> Dict[str, np.ndarray]:
        """Curves averaged over images, float64 [256] indexed by threshold t = 0..255 (prediction
        level >= t is foreground): ``F``, ``precision``, ``recall`` (with an F metric chosen) and
        ``E`` (with an E metric chosen). PySODMetrics stores the same curves from t = 255 down."""
        return {name: total / max(self.count, 1) for name, total in self._curve_sums.items()}


def evaluate_arrays(preds: Iterable[Any], gts: Iterable[Any],
                    metrics: Iterable[str] = METRIC_NAMES) -> Dict[str, float]:
    """Metrics over paired in-memory images (e.g. a validation set): see :class:`SegmentationMetrics`."""
    scores = SegmentationMetrics(metrics)
    for pred, gt in zip(preds, gts, strict=True):
        scores.update(pred, gt)
    return scores.results()


__all__ = [
    "HIGHER_IS_BETTER",
    "METRIC_NAMES",
    "PreparedPair",
    "SegmentationMetrics",
    "ThresholdCounts",
    "adaptive_counts",
    "e_measure",
    "evaluate_arrays",
    "f_measure",
    "human_correction_effort",
    "mean_absolute_error",
    "precision_recall",
    "prepare_pair",
    "structure_measure",
    "threshold_counts",
    "to_uint8_image",
    "weighted_f_measure",
]
