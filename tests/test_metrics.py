"""Segmentation metrics (birefnet_core.train.metrics) and the ``eval`` command.

The equivalence test runs tests/pysod_reference.py under a separate interpreter that has
PySODMetrics 1.6.2 (its numpy / scikit-image / OpenCV pins clash with ours): set
``BIREFNET_PYSOD_PYTHON`` or create ``.venv-pysod`` in the repository root.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from birefnet_core.__main__ import main
from birefnet_core.train import evaluate
from birefnet_core.train.metrics import (
    boundary_f_measure,
    METRIC_NAMES,
    SegmentationMetrics,
    evaluate_arrays,
    prepare_pair,
    structure_measure,
    to_uint8_image,
)

REPO = Path(__file__).resolve().parents[1]
OPTIONAL_LIBRARIES = all(importlib.util.find_spec(name) is not None for name in ("scipy", "skimage", "cv2"))
# wF and HCE (and the default "all metrics") need the train extra; S, F, E and MAE need NumPy only
needs_train_extra = pytest.mark.skipif(not OPTIONAL_LIBRARIES, reason="needs scipy, scikit-image and OpenCV: "
                                       "pip install scipy scikit-image opencv-python-headless")
SCALAR_METRICS = ("S", "adpF", "wF", "adpE", "MAE", "HCE")


# --------------------------------------------------------------------------------------------
# Test images


def _disc(shape, center, radius):
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius ** 2


def _box_blur(image, passes=2):
    out = image.astype(np.float64)
    for _ in range(passes):
        padded = np.pad(out, 2, mode="edge")
        out = sum(padded[dy:dy + out.shape[0], dx:dx + out.shape[1]] for dy in range(5) for dx in range(5)) / 25
    return out


def _u8(values):
    return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)


def make_pairs(seed=0):
    """Varied (name, pred uint8, gt uint8) cases, at most 160 px a side."""
    rng = np.random.default_rng(seed)
    cases = []

    # random blobs; the prediction a blurred, noisy, shifted version
    shape = (120, 160)
    gt = np.zeros(shape, bool)
    for _ in range(5):
        gt |= _disc(shape, rng.integers(10, 110, 1).tolist() + rng.integers(10, 150, 1).tolist(), rng.integers(6, 22))
    soft = _box_blur(np.roll(gt, (2, -3), axis=(0, 1))) * 0.85 + rng.uniform(0, 0.15, shape)
    cases.append(("blobs_soft", _u8(soft), _u8(gt)))

    # thin lines and a ring; the prediction misses half a line and adds a spur
    gt = np.zeros((96, 128), bool)
    gt[20, 10:120] = True
    gt[30:90, 40] = True
    gt[40:90:1, 60:62] = True
    rows, cols = np.ogrid[:96, :128]
    ring = np.abs(np.hypot(rows - 60, cols - 95) - 18) < 1.2
    gt |= ring
    pred = gt.copy()
    pred[20, 60:120] = False
    pred[50:52, 5:35] = True
    pred = _box_blur(pred, 1) * 0.9 + 0.05 * rng.random(pred.shape)
    cases.append(("thin_lines", _u8(pred), _u8(gt)))

    # an object with holes; binary prediction with false-positive islands and a missed hole
    gt = _disc((128, 128), (64, 64), 50) & ~_disc((128, 128), (50, 50), 10) & ~_disc((128, 128), (80, 75), 6)
    pred = _disc((128, 128), (66, 63), 49) & ~_disc((128, 128), (50, 50), 10)
    pred[5:25, 100:122] = True
    pred[110:113, 5:9] = True
    cases.append(("holes_binary", np.where(pred, 230, 12).astype(np.uint8), np.where(gt, 255, 0).astype(np.uint8)))

    # uniform noise against blobs, odd size, soft ground-truth edges around 128
    shape = (97, 131)
    gt_soft = _box_blur(_disc(shape, (40, 50), 25) | _disc(shape, (70, 100), 15))
    cases.append(("noise_97x131", rng.integers(0, 256, shape, dtype=np.uint8), _u8(gt_soft)))

    # empty ground truth, soft prediction
    shape = (64, 80)
    cases.append(("empty_gt", _u8(_box_blur(_disc(shape, (30, 30), 12)) * 0.7), np.zeros(shape, np.uint8)))

    # full ground truth, soft prediction
    cases.append(("full_gt", _u8(0.3 + 0.7 * _box_blur(_disc(shape, (30, 40), 25))), np.full(shape, 255, np.uint8)))

    # constant prediction (not normalised: stays 128/255)
    shape = (72, 90)
    cases.append(("constant_pred", np.full(shape, 128, np.uint8), _u8(_disc(shape, (36, 45), 20))))

    # a perfect prediction and an all-zero one
    gt = _u8(_disc((50, 70), (20, 30), 14))
    cases.append(("perfect", gt.copy(), gt))
    cases.append(("zero_pred", np.zeros((50, 70), np.uint8), _u8(_disc((50, 70), (25, 35), 18))))

    # one foreground pixel, a prediction of narrow range (min-max stretched)
    gt = np.zeros((40, 60), np.uint8)
    gt[10, 17] = 255
    pred = rng.integers(90, 110, gt.shape).astype(np.uint8)
    pred[9:12, 16:19] = 140
    cases.append(("single_pixel", pred, gt))

    # shapes touching the image border, ragged prediction
    shape = (100, 150)
    gt = np.zeros(shape, bool)
    gt[:30, :50] = True
    gt[60:, 120:] = True
    gt[45:55, :] = True
    pred = _box_blur(gt ^ (rng.random(shape) < 0.08), 1)
    cases.append(("border_noisy", _u8(pred), _u8(gt)))
    return cases


# --------------------------------------------------------------------------------------------
# Our own metrics on cases one can check by hand


def _blob(shape=(60, 80)):
    return _u8(_disc(shape, (28, 37), 15))


@needs_train_extra
def test_perfect_prediction():
    gt = _blob()
    values = SegmentationMetrics().update(gt, gt)
    assert values["S"] == pytest.approx(1, abs=1e-12)
    assert values["MAE"] == 0
    assert values["maxF"] == pytest.approx(1, abs=1e-12)
    assert values["adpF"] == pytest.approx(1, abs=1e-12)
    assert values["wF"] == pytest.approx(1, abs=1e-12)
    assert values["maxE"] == pytest.approx(1, abs=1e-3)  # E divides by (pixels - 1)
    assert values["HCE"] == 0


@needs_train_extra
def test_all_wrong_prediction():
    gt = _blob()
    values = SegmentationMetrics().update(255 - gt, gt)
    assert values["MAE"] == 1
    assert values["S"] == 0
    assert values["adpF"] == 0
    assert values["wF"] == pytest.approx(0, abs=1e-12)
    assert values["adpE"] < 0.1
    assert values["HCE"] > 0


@needs_train_extra
def test_empty_ground_truth():
    shape = (30, 40)
    pixels = shape[0] * shape[1]
    values = SegmentationMetrics().update(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8))
    assert values["S"] == 1 and values["MAE"] == 0 and values["HCE"] == 0
    assert values["wF"] == 0 and values["maxF"] == 0  # no foreground to find: recall is 0
    # E counts predicted background: none at threshold 0 (everything >= 0), all above it
    assert values["maxE"] == pytest.approx(pixels / (pixels - 1), rel=1e-12)
    assert values["adpE"] == 0  # adaptive threshold 2 * mean = 0 selects everything

    pred = np.zeros(shape, np.uint8)
    pred[:, :10] = 255
    values = SegmentationMetrics(("S", "MAE")).update(pred, np.zeros(shape, np.uint8))
    assert values["S"] == pytest.approx(0.75) and values["MAE"] == pytest.approx(0.25)


@needs_train_extra
def test_full_ground_truth():
    shape = (30, 40)
    pixels = shape[0] * shape[1]
    pred = np.zeros(shape, np.uint8)
    pred[:, :30] = 200
    values = SegmentationMetrics().update(pred, np.full(shape, 255, np.uint8))
    assert values["S"] == pytest.approx(0.75)  # mean of the min-max normalised prediction
    assert values["MAE"] == pytest.approx(0.25)
    assert values["maxE"] == pytest.approx(pixels / (pixels - 1), rel=1e-12)  # threshold 0 selects all
    assert values["maxF"] == pytest.approx(1, rel=1e-12)  # precision 1, recall 1 at threshold 0


def test_constant_prediction_is_not_normalised():
    gt = _blob()
    pred = np.full(gt.shape, 128, np.uint8)
    pair = prepare_pair(pred, gt)
    assert np.all(pair.pred == 128 / 255)
    assert SegmentationMetrics(("MAE",)).update(pred, gt)["MAE"] == pytest.approx(
        np.mean(np.abs(128 / 255 - (gt > 128))))


def test_ground_truth_threshold_is_above_128():
    gt = np.full((8, 8), 128, np.uint8)
    gt[:4] = 129
    assert prepare_pair(gt, gt).gt.sum() == 32


@needs_train_extra
def test_isolated_false_positive_costs_one_click():
    gt = np.zeros((80, 100), np.uint8)
    gt[50:70, 60:90] = 255
    pred = gt.copy()
    pred[5:25, 5:25] = 255  # a 20x20 island far from the object: one click to delete
    assert SegmentationMetrics(("HCE",)).update(pred, gt)["HCE"] == 1
    pred = gt.copy()
    pred[5:9, 5:9] = 255  # smaller than the relaxation: free
    assert SegmentationMetrics(("HCE",)).update(pred, gt)["HCE"] == 0


@needs_train_extra
def test_missed_straight_line_costs_its_two_ends():
    gt = np.zeros((40, 60), np.uint8)
    gt[20, 10:50] = 255  # a 1-pixel line: its skeleton always counts
    pred = np.zeros_like(gt)
    assert SegmentationMetrics(("HCE",)).update(pred, gt)["HCE"] == 2


@needs_train_extra
def test_binary_prediction_levels_do_not_matter():
    """Min-max normalisation maps any two-level prediction onto {0, 1} exactly."""
    gt = _blob()
    reference = SegmentationMetrics().update(gt, gt // 255 * 255)
    for low, high in ((0, 100), (50, 200), (1, 2)):
        pred = np.where(gt > 128, high, low).astype(np.uint8)
        assert SegmentationMetrics().update(pred, gt) == reference


def test_transpose_and_order_invariance():
    cases = make_pairs()[:4]
    forward = SegmentationMetrics(("S", "maxF", "meanF", "adpF", "maxE", "meanE", "adpE", "MAE"))
    backward = SegmentationMetrics(forward.metrics)
    for _, pred, gt in cases:
        forward.update(pred, gt)
    for _, pred, gt in reversed(cases):
        backward.update(np.ascontiguousarray(pred.T), np.ascontiguousarray(gt.T))
    a, b = forward.results(), backward.results()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-12, abs=1e-15), name


@needs_train_extra
def test_dataset_averaging():
    cases = make_pairs()[:5]
    scores = SegmentationMetrics()
    per_image = [scores.update(pred, gt) for _, pred, gt in cases]
    results = scores.results()
    assert list(results) == list(METRIC_NAMES)
    for name in SCALAR_METRICS:
        assert results[name] == pytest.approx(np.mean([v[name] for v in per_image]), rel=1e-12)
    # max of the mean curve, not mean of the maxima
    assert results["maxF"] <= np.mean([v["maxF"] for v in per_image]) + 1e-12
    assert results["meanF"] == pytest.approx(np.mean([v["meanF"] for v in per_image]), rel=1e-12)
    curves = scores.curves()
    assert results["maxF"] == curves["F"].max() and curves["E"].shape == (256,)
    assert len(scores) == 5
    scores.reset()
    with pytest.raises(ValueError, match="no images"):
        scores.results()


@needs_train_extra
def test_subset_of_metrics_equals_full_set():
    cases = make_pairs()[:3]
    full = evaluate_arrays([p for _, p, _ in cases], [g for _, _, g in cases])
    subset = evaluate_arrays([p for _, p, _ in cases], [g for _, _, g in cases], metrics=("mae", "S", "maxE"))
    assert list(subset) == ["S", "maxE", "MAE"]
    assert all(subset[name] == full[name] for name in subset)
    with pytest.raises(ValueError, match="unknown metric 'Fbeta'.*maxF"):
        SegmentationMetrics(("S", "Fbeta"))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(40, 50\) vs gt \(50, 40\)"):
        SegmentationMetrics(("S", "MAE")).update(np.zeros((40, 50), np.uint8), np.zeros((50, 40), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        to_uint8_image(np.zeros((2, 3, 4), np.float32), "pred")


@needs_train_extra
def test_float_bool_and_tensor_inputs_equal_uint8():
    _, pred, gt = make_pairs()[0]
    reference = SegmentationMetrics().update(pred, gt)
    variants = [
        (pred / 255, gt > 128),
        ((pred / 255).astype(np.float32), (gt / 255).astype(np.float32)),
        (torch.from_numpy(pred / 255).float()[None], torch.from_numpy(gt > 128)[None, None]),
        (torch.from_numpy(pred), torch.from_numpy(gt).to(torch.int64)),
        (torch.from_numpy(pred / 255).half(), torch.from_numpy(gt)[..., None]),
    ]
    for index, (p, g) in enumerate(variants[:4]):
        assert SegmentationMetrics().update(p, g) == reference, index
    # float16 cannot hold every level / 255 exactly; it still rounds to the nearest level
    assert np.array_equal(to_uint8_image(variants[4][0]), pred)

    batch = SegmentationMetrics()
    batch.update_batch(torch.from_numpy(np.stack([pred, pred]))[:, None] / 255.0, np.stack([gt, gt]))
    assert batch.results() == pytest.approx(reference, rel=1e-12)


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8_image(np.array([[0.0, 1.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8_image(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="0..255"):
        to_uint8_image(np.array([[0, 300]]))


def test_s_measure_centroid_on_last_row_is_finite():
    """PySODMetrics returns NaN here (an empty quadrant); the quadrant has weight 0, so we skip it."""
    gt = np.zeros((20, 30), bool)
    gt[19, 3:10] = True
    pred = np.zeros((20, 30))
    pred[18:20, 2:12] = 1.0
    value = structure_measure(pred, gt)
    assert math.isfinite(value) and 0 < value < 1


# --------------------------------------------------------------------------------------------
# Equivalence with PySODMetrics


def _pysod_python():
    configured = os.environ.get("BIREFNET_PYSOD_PYTHON")
    if configured:
        return configured
    local = REPO / ".venv-pysod" / "bin" / "python"
    if local.exists():
        return str(local)
    pytest.skip("PySODMetrics reference interpreter not found: set BIREFNET_PYSOD_PYTHON, or create it with "
                "`python -m venv .venv-pysod && .venv-pysod/bin/pip install pysodmetrics==1.6.2`")


def _relative_error(ours, theirs):
    return abs(ours - theirs) / max(abs(theirs), 1e-12)


@needs_train_extra
def test_equals_pysodmetrics(tmp_path):
    interpreter = _pysod_python()
    cases = make_pairs()
    for index, (_, pred, gt) in enumerate(cases):
        np.save(tmp_path / f"pred_{index:02d}.npy", pred)
        np.save(tmp_path / f"gt_{index:02d}.npy", gt)
    done = subprocess.run([interpreter, str(REPO / "tests" / "pysod_reference.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reference = json.loads(done.stdout)
    assert reference["keys"] == [f"{i:02d}" for i in range(len(cases))]

    # Every metric is float64 arithmetic on the same values; the sums are only grouped
    # differently, so 1e-10 relative holds with a wide margin (observed: <= 1e-14).
    tolerance = 1e-10
    scores = SegmentationMetrics()
    for (name, pred, gt), theirs in zip(cases, reference["per_image"]):
        ours = scores.update(pred, gt)
        for metric in METRIC_NAMES:
            assert _relative_error(ours[metric], theirs[metric]) < tolerance, (name, metric, ours[metric],
                                                                               theirs[metric])
        # the deprecated Fmeasure class agrees with FmeasureV2
        for metric in ("maxF", "meanF", "adpF"):
            assert _relative_error(ours[metric], theirs[metric + "_v1"]) < tolerance, (name, metric)
    ours = scores.results()
    theirs = reference["dataset"]
    for metric in METRIC_NAMES:
        assert _relative_error(ours[metric], theirs[metric]) < tolerance, (metric, ours[metric], theirs[metric])
    curves = scores.curves()
    np.testing.assert_allclose(curves["F"], theirs["curveF"], rtol=tolerance, atol=1e-15)
    np.testing.assert_allclose(curves["E"], theirs["curveE"], rtol=tolerance, atol=1e-15)


# --------------------------------------------------------------------------------------------
# The eval command


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)


@pytest.fixture()
def folders(tmp_path):
    cases = {name: (pred, gt) for name, pred, gt in make_pairs()}
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    for name in ("blobs_soft", "holes_binary", "noise_97x131"):
        pred, gt = cases[name]
        _write_png(gt_dir / f"{name}.png", gt)
    _write_png(pred_dir / "blobs_soft.png", cases["blobs_soft"][0])
    # as 'predict' writes it: <stem>_mask.png beside <stem>_rgba.png
    _write_png(pred_dir / "holes_binary_mask.png", cases["holes_binary"][0])
    _write_png(pred_dir / "holes_binary_rgba.png", cases["holes_binary"][0])
    # a prediction at another size: resized to the ground truth's
    small = cases["noise_97x131"][0][::2, ::2].copy()
    _write_png(pred_dir / "noise_97x131.png", small)
    _write_png(gt_dir / "no_prediction.png", cases["perfect"][1])
    _write_png(pred_dir / "no_ground_truth.png", cases["perfect"][0])
    (pred_dir / "notes.txt").write_text("not an image")
    return pred_dir, gt_dir, cases, small


@needs_train_extra
def test_evaluate_folders_equals_accumulator(folders, caplog):
    import cv2

    pred_dir, gt_dir, cases, small = folders
    with caplog.at_level("WARNING"):
        report = evaluate.evaluate_folders(pred_dir, gt_dir)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "1 ground-truth image(s) without a prediction" in warnings[0] and "no_prediction" in warnings[0]
    assert "no_ground_truth.png" in warnings[1] and "rgba" not in warnings[1]
    assert report["pairs"] == 3 and report["resized"] == ["noise_97x131"]

    expected = SegmentationMetrics()
    expected.update(*cases["blobs_soft"])
    expected.update(*cases["holes_binary"])
    gt = cases["noise_97x131"][1]
    expected.update(cv2.resize(small, gt.shape[::-1], interpolation=cv2.INTER_LINEAR), gt)
    assert report["metrics"] == expected.results()
    assert list(report["per_image"]) == ["blobs_soft", "holes_binary", "noise_97x131"]


@needs_train_extra
def test_resize_without_opencv_is_close(monkeypatch):
    import cv2

    image = make_pairs()[0][1][::3, ::2].copy()
    expected = cv2.resize(image, (131, 97), interpolation=cv2.INTER_LINEAR)
    monkeypatch.setitem(sys.modules, "cv2", None)
    fallback = evaluate.resize_bilinear(image, 97, 131)
    assert fallback.shape == (97, 131)
    assert np.abs(fallback.astype(int) - expected).max() <= 1


@needs_train_extra
def test_eval_command(folders, capsys, caplog, tmp_path):
    pred_dir, gt_dir, _, _ = folders
    table = tmp_path / "scores.csv"
    with caplog.at_level("WARNING"):
        assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "S", "maxF", "MAE",
                     "--csv", str(table), "--json"]) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    expected = evaluate.evaluate_folders(pred_dir, gt_dir, metrics=("S", "maxF", "MAE"))["metrics"]
    assert printed["metrics"] == expected and printed["pairs"] == 3
    assert "no_prediction" in caplog.text and "no_ground_truth.png" in caplog.text
    assert "3/3" not in err  # no progress bar when stderr is not a terminal (captured here)
    rows = table.read_text().splitlines()
    assert rows[0] == "image,S,maxF,MAE" and rows[-1].startswith("ALL,") and len(rows) == 5
    assert float(rows[-1].split(",")[1]) == expected["S"]

    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "S", "HCE"]) == 0
    out, _ = capsys.readouterr()
    assert "3 pairs (1 predictions resized" in out and "lower is better for HCE" in out
    header, values = out.splitlines()[1:3]
    assert header.split() == ["S", "HCE"] and len(values.split()) == 2


def test_eval_command_errors(folders, capsys, tmp_path):
    pred_dir, gt_dir, _, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--pred", str(empty), "--gt", str(gt_dir), "--metrics", "S", "MAE"]) == 1
    err = capsys.readouterr().err
    assert "error: no prediction in" in err and str(empty) in err and str(gt_dir) in err

    assert main(["eval", "--pred", str(tmp_path / "missing"), "--gt", str(gt_dir), "--metrics", "S"]) == 1
    assert "prediction folder not found" in capsys.readouterr().err

    (pred_dir / "blobs_soft.png").write_bytes(b"not a png")
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "maxF"]) == 1
    assert f"cannot read image {pred_dir / 'blobs_soft.png'}" in capsys.readouterr().err

    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "IoU"]) == 1
    assert "unknown metric 'IoU'" in capsys.readouterr().err


def test_numpy_only_metrics_without_optional_libraries(monkeypatch):
    for module in ("scipy", "scipy.ndimage", "skimage", "skimage.morphology", "cv2"):
        monkeypatch.setitem(sys.modules, module, None)
    gt = _blob()
    values = SegmentationMetrics(("S", "maxF", "meanE", "adpE", "MAE")).update(gt, gt)
    assert values["S"] == pytest.approx(1, abs=1e-12)
    for names in (("wF",), ("S", "HCE")):
        with pytest.raises(ImportError, match="pip install scipy scikit-image opencv-python-headless"):
            SegmentationMetrics(names)


def test_eval_command_without_optional_libraries(folders, capsys, monkeypatch):
    pred_dir, gt_dir, _, _ = folders
    for module in ("scipy", "scipy.ndimage", "skimage", "skimage.morphology", "cv2"):
        monkeypatch.setitem(sys.modules, module, None)
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 1
    err = capsys.readouterr().err
    assert "pip install scipy scikit-image opencv-python-headless" in err and "--metrics S maxF" in err
    # a prediction of another size is still resized (PyTorch's bilinear)
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "S", "maxF", "MAE"]) == 0
    assert "3 pairs (1 predictions resized" in capsys.readouterr().out
    # a missing folder is named before the missing libraries are
    assert main(["eval", "--pred", str(pred_dir.parent / "absent"), "--gt", str(gt_dir)]) == 1
    err = capsys.readouterr().err
    assert "prediction folder not found" in err and "pip install" not in err


def test_eval_prints_the_results_when_the_csv_cannot_be_written(folders, capsys, tmp_path):
    pred_dir, gt_dir, _, _ = folders
    for bad in (tmp_path / "a-folder", tmp_path / "no" / "such" / "dir.csv"):
        if bad.name == "a-folder":
            bad.mkdir()
        assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "S", "MAE",
                     "--csv", str(bad)]) == 1
        out, err = capsys.readouterr()
        assert "3 pairs" in out and "MAE" in out  # the results are not lost
        assert err.count("\n") == 1 and f"cannot write --csv {bad}" in err
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]  # no temporary file left
    assert not any((tmp_path / "a-folder").iterdir())
    ground_truth = sorted(gt_dir.iterdir())[0]
    before = ground_truth.read_bytes()
    assert main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "S", "--csv",
                 str(ground_truth)]) == 1
    assert "is the input" in capsys.readouterr().err and ground_truth.read_bytes() == before


@needs_train_extra
def test_boundary_f_measure_counts_outline_pixels_within_the_tolerance():
    gt = np.zeros((40, 40), dtype=bool)
    gt[10:30, 10:30] = True  # outline: 76 pixels
    assert boundary_f_measure(gt.astype(np.float32), gt) == 1.0
    shifted = np.zeros_like(gt)
    shifted[12:32, 10:30] = True  # moved 2 px down: every outline pixel is within 2 px of the other outline
    assert boundary_f_measure(shifted.astype(np.float32), gt, tolerance=2) == 1.0
    # at tolerance 1 only the vertical sides match (y within 1 px) and the corners do not: P = R = 36/76
    # (the side columns' rows 12..29 of 10..29, the horizontal rows none)
    value = boundary_f_measure(shifted.astype(np.float32), gt, tolerance=1)
    pred_edge = shifted & ~np.pad(shifted, 1)[2:, 1:-1] | shifted & ~np.pad(shifted, 1)[:-2, 1:-1] \
        | shifted & ~np.pad(shifted, 1)[1:-1, 2:] | shifted & ~np.pad(shifted, 1)[1:-1, :-2]
    assert pred_edge.sum() == 76
    rows, cols = np.nonzero(pred_edge)
    gy, gx = np.nonzero(gt & ~(np.pad(gt, 1)[2:, 1:-1] & np.pad(gt, 1)[:-2, 1:-1] & np.pad(gt, 1)[1:-1, 2:]
                               & np.pad(gt, 1)[1:-1, :-2]))
    near = [(np.hypot(gy - r, gx - c) <= 1).any() for r, c in zip(rows, cols)]
    assert value == pytest.approx(sum(near) / 76)  # symmetric shapes: P = R, so F = P
    assert 0.3 < value < 0.7
    assert boundary_f_measure(np.zeros((8, 8)), np.zeros((8, 8), dtype=bool)) == 1.0
    assert boundary_f_measure(np.zeros((8, 8)), gt[:8, :8] | True) == 0.0
    # a 1-pixel-wide strand missed entirely: recall drops by its outline's share
    strand = gt.copy()
    strand[5, 0:40] = True
    missed = boundary_f_measure(gt.astype(np.float32), strand)
    assert missed < 0.8
