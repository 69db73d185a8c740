"""Shared test set-up. CPU only, no network.

Without CUDA, Triton kernels run in Triton's interpreter on CPU tensors: the variable must be
set before triton is first imported, which is why it is set here, before any test module loads.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def pack():
    """The repository imported as ComfyUI imports it: a package named after its folder."""
    name = "birefnet_pack_under_test"
    spec = importlib.util.spec_from_file_location(
        name, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A pvt_v2_b0 BiRefNet checkpoint (.safetensors) with the conformance weights (make_weights,
    seed 0): the smallest real model, for tests that load files."""
    from safetensors.torch import save_file

    from birefnet_core import build_model
    from reference import load_make_weights

    model = build_model("pvt_v2_b0")
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_file(load_make_weights()(model.state_dict(), seed=0), path)
    return path


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No test may reach the Hub: offline mode on, an empty HF cache and an empty default models
    folder (so a load that succeeds used a file the test put on disk). Modules that load models
    use it for every test: ``pytestmark = pytest.mark.usefixtures("offline_hub")``."""
    import huggingface_hub.constants as constants

    from birefnet_core import checkpoint

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv(checkpoint.MODELS_DIR_ENV, str(tmp_path / "default-models"))
