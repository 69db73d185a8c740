"""The conformance data: the official state-dict layouts, logits of the official code, and the
weight filler they were computed with.

Looked for in ``<repo>/shared/reference`` first (a copy carried along where only the checkout
travels, e.g. to a GPU machine), then in ``../shared/reference`` beside the checkout.
"""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_CANDIDATES = (REPO / "shared" / "reference", REPO.parent / "shared" / "reference")
REFERENCE = next((p for p in REFERENCE_CANDIDATES if (p / "make_weights.py").is_file()), REFERENCE_CANDIDATES[-1])
HAVE_REFERENCE = (REFERENCE / "make_weights.py").is_file()
MISSING_REFERENCE = ("conformance data not found: neither "
                     + " nor ".join(str(p) for p in REFERENCE_CANDIDATES)
                     + " holds make_weights.py (copy ../shared/reference into <repo>/shared/reference)")


def load_make_weights():
    """``make_weights(state_dict, seed=0, scale=1.0)`` from the reference folder."""
    spec = importlib.util.spec_from_file_location("birefnet_reference_make_weights", REFERENCE / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_weights


FOCUS_REFERENCE = REFERENCE / "focus"


def load_focus_npz(name):
    """``{key: torch.Tensor}`` of ``<reference>/focus/<name>`` (the FOCUS conformance data)."""
    import numpy as np
    import torch

    with np.load(FOCUS_REFERENCE / name) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}
