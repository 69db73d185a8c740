"""Reference numbers from PySODMetrics (``pip install pysodmetrics==1.6.2``), for tests/test_metrics.py.

Run with an interpreter that has ``py_sod_metrics`` (its pins clash with the main environment,
so the test runs this in a separate one)::

    python tests/pysod_reference.py DIR

DIR holds ``pred_<k>.npy`` and ``gt_<k>.npy`` (uint8 [H, W]). Prints JSON: the metrics of every
pair on its own (``per_image``, in the sorted order of ``k``) and of all pairs accumulated in
one set of metric objects (``dataset``), with the names of birefnet_core.train.metrics.
"""

import json
import sys
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np


def make_meters():
    import py_sod_metrics as psm

    return {
        "S": psm.Smeasure(alpha=0.5),
        "F": psm.FmeasureV2(metric_handlers={"fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True,
                                                                      beta=0.3)}),
        "Fv1": psm.Fmeasure(beta=0.3),
        "wF": psm.WeightedFmeasure(beta=1),
        "E": psm.Emeasure(),
        "MAE": psm.MAE(),
        "HCE": psm.HumanCorrectionEffortMeasure(relax=5, epsilon=2.0),
    }


def read_out(meters):
    f = meters["F"].get_results()["fm"]
    f_v1 = meters["Fv1"].get_results()["fm"]
    e = meters["E"].get_results()["em"]
    return {
        "S": float(meters["S"].get_results()["sm"]),
        "maxF": float(f["dynamic"].max()),
        "meanF": float(f["dynamic"].mean()),
        "adpF": float(f["adaptive"]),
        "maxF_v1": float(f_v1["curve"].max()),
        "meanF_v1": float(f_v1["curve"].mean()),
        "adpF_v1": float(f_v1["adp"]),
        "wF": float(meters["wF"].get_results()["wfm"]),
        "maxE": float(e["curve"].max()),
        "meanE": float(e["curve"].mean()),
        "adpE": float(e["adp"]),
        "MAE": float(meters["MAE"].get_results()["mae"]),
        "HCE": float(meters["HCE"].get_results()["hce"]),
        # curves from threshold 0 up (PySODMetrics stores them from 255 down)
        "curveF": [float(v) for v in f["dynamic"][::-1]],
        "curveE": [float(v) for v in e["curve"][::-1]],
    }


def main(folder: str) -> None:
    warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
    keys = sorted(path.stem[len("pred_"):] for path in Path(folder).glob("pred_*.npy"))
    dataset = make_meters()
    per_image = []
    for key in keys:
        pred = np.load(Path(folder) / f"pred_{key}.npy")
        gt = np.load(Path(folder) / f"gt_{key}.npy")
        single = make_meters()
        for meters in (single, dataset):
            for meter in meters.values():
                meter.step(pred=pred, gt=gt, normalize=True)
        per_image.append(read_out(single))
    versions = {"pysodmetrics": metadata.version("pysodmetrics"), "numpy": np.__version__}
    for module in ("scipy", "skimage", "cv2"):
        versions[module] = __import__(module).__version__
    json.dump({"keys": keys, "per_image": per_image, "dataset": read_out(dataset), "versions": versions},
              sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
