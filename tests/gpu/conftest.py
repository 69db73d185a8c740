"""GPU checks: ``python -m pytest tests/gpu`` on a CUDA machine (see README.md beside this file).

Without CUDA every test here is skipped when collected, in no time. ``BIREFNET_GPU_TESTS_ON_CPU=1``
runs them on the CPU instead, with smaller shapes: a dry run of the tests' own code, so that the
rare GPU minutes are not spent on a broken test; checks that mean something only on a GPU (a
real out-of-memory, float16 training) still skip there.
"""

import contextlib
import os
from pathlib import Path

import pytest
import torch

from birefnet_core import build_model

from reference import HAVE_REFERENCE, MISSING_REFERENCE, load_make_weights

HERE = Path(__file__).resolve().parent
ON_CPU = os.environ.get("BIREFNET_GPU_TESTS_ON_CPU") == "1"
NO_CUDA = "needs a CUDA device: run `python -m pytest tests/gpu` on a GPU machine (see tests/gpu/README.md)"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or ON_CPU:
        return
    skip = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device():
    """cuda, or cpu in a dry run (BIREFNET_GPU_TESTS_ON_CPU=1)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def dry_run(device):
    """True on the CPU: tests use smaller shapes."""
    return device.type != "cuda"


@pytest.fixture
def cuda_only(device):
    if device.type != "cuda":
        pytest.skip("meaningful on a CUDA device only (dry run on CPU)")


@contextlib.contextmanager
def tf32_off():
    """Float32 really in float32: TF32 off for matmuls (also the Triton kernel's) and cuDNN convolutions."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def no_tf32():
    with tf32_off():
        yield


@pytest.fixture(scope="module")
def no_tf32_module():
    """``no_tf32`` for module-scoped fixtures (a model run once and compared by several tests)."""
    with tf32_off():
        yield


@pytest.fixture
def require_reference():
    if not HAVE_REFERENCE:
        pytest.skip(MISSING_REFERENCE)


@pytest.fixture(scope="session")
def tiny_model(device):
    """``tiny_model(backbone="pvt_v2_b0")``: a float32 model in eval mode on the device, with the
    conformance weights (make_weights, seed 0) where the reference folder is found, else
    torch's initialisation with seed 0 (these tests compare the model with itself)."""
    make_weights = load_make_weights() if HAVE_REFERENCE else None

    def build(backbone="pvt_v2_b0"):
        torch.manual_seed(0)
        model = build_model(backbone)
        if make_weights is not None:
            model.load_state_dict(make_weights(model.state_dict(), seed=0), strict=True)
        return model.to(device).eval()

    return build
