"""The network on CUDA: the official logits in float32, and half precision against float32."""

import numpy as np
import pytest
import torch

from birefnet_core import Predictor

from reference import HAVE_REFERENCE, REFERENCE

if HAVE_REFERENCE:
    from test_model import reference_model

CASES = sorted(REFERENCE.glob("*_1x*.npz")) if HAVE_REFERENCE else [None]


def case_id(path):
    return "no-reference" if path is None else path.stem


@pytest.mark.parametrize("path", CASES, ids=case_id)
def test_float32_logits_match_the_official_code(path, device, no_tf32, require_reference, record_property):
    backbone = path.stem.rsplit("_", 1)[0]
    data = np.load(path)
    model = reference_model(backbone).to(device)
    with torch.no_grad():
        logits = model(torch.from_numpy(data["input"]).to(device)).cpu()
    want = torch.from_numpy(data["logits"])
    assert logits.shape == want.shape
    difference = (logits - want).abs().max().item()
    print(f"\n{path.stem} on {device} float32 (TF32 off): max |logit difference| {difference:.2e}")
    record_property("max_abs_logit_difference", difference)
    assert difference <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("path", CASES, ids=case_id)
def test_half_precision_probabilities_are_close_to_float32(path, dtype, device, no_tf32, require_reference,
                                                           record_property):
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("float16 is emulated on a CPU (minutes per image): checked on CUDA")
    backbone = path.stem.rsplit("_", 1)[0]
    images = torch.from_numpy(np.load(path)["input_unnormalized"]).to(device)
    size = tuple(images.shape[-2:])[::-1]  # (W, H): the network runs at the input's own size
    want = Predictor(reference_model(backbone).to(device), resolution=size).predict(images, layout="BCHW")
    got = Predictor(reference_model(backbone).to(device), resolution=size, dtype=dtype).predict(images, layout="BCHW")
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    difference = (got - want).abs()
    worst, mean = difference.max().item(), difference.mean().item()
    print(f"\n{path.stem} on {device} {str(dtype).replace('torch.', '')} vs float32: "
          f"max |dprob| {worst:.4f}, mean {mean:.5f}")
    record_property("max_abs_dprob", worst)
    record_property("mean_abs_dprob", mean)
    assert worst < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
def test_swin_window_attention_runs_on_a_fused_attention_kernel(dtype, shifted, device, cuda_only):
    """The window attention with its position bias (and the shifted windows' mask) is accepted by
    a fused scaled-dot-product kernel (memory-efficient, flash or cuDNN) in half precision: with
    the math kernel excluded, a bias of the wrong dtype or layout would raise "No available
    kernel" instead of silently taking the slow path. Values equal the math kernel's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from birefnet_core.models.backbones.swin_v1 import WindowAttention, shift_mask

    torch.manual_seed(0)
    attention = WindowAttention(dim=96, num_heads=3, window=7).to(device=device, dtype=dtype).eval()
    hp = wp = 56  # Swin-T's first stage at 224 (8 x 8 windows of 7 x 7), batch 2
    x = torch.randn(2 * 64, 49, 96, device=device, dtype=dtype)
    mask_fn = (lambda dt: shift_mask(hp, wp, 7, 3, device, dt)) if shifted else None
    with torch.no_grad():
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            fused = attention(x, mask_fn)
        with sdpa_kernel([SDPBackend.MATH]):
            math = attention(x, mask_fn)
    difference = (fused.float() - math.float()).abs().max().item()
    print(f"\nSwin window attention ({'shifted' if shifted else 'plain'}) {dtype}: fused vs math max {difference:.2e}")
    assert difference < (2e-2 if dtype == torch.bfloat16 else 4e-3)
