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
