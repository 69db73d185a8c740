"""The conformance data beside the checkout (``../shared/reference``): the official state-dict
layouts, logits of the official code, and the weight filler they were computed with."""

import importlib.util
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def load_make_weights():
    """``make_weights(state_dict, seed=0, scale=1.0)`` from the reference folder."""
    spec = importlib.util.spec_from_file_location("birefnet_reference_make_weights", REFERENCE / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_weights
