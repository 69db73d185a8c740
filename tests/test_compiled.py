"""The opt-in compiled forward (:mod:`birefnet_core.compiled`): off by default, the same masks when
on, one compiled module per model, a failed compile falls back to eager with one warning.

Dynamo's graph capture runs for real here; code generation is skipped (``BIREFNET_COMPILE_BACKEND
=eager``): Inductor needs minutes on a CPU, and the GPU check (tests/gpu) runs it."""

import logging

import pytest
import torch
import torch.nn as nn

from birefnet_core import Predictor, build_model
from birefnet_core.compiled import CompiledForward, compile_mode, parse_mode, set_compile

from reference import load_make_weights


def test_modes_parse_and_refuse():
    assert [parse_mode(v) for v in (None, False, "off", True, "on", "default", "reduce-overhead", "cudagraphs")] == [
        "off", "off", "off", "on", "on", "on", "cudagraphs", "cudagraphs"]
    with pytest.raises(ValueError, match="compile must be one of off, on, cudagraphs"):
        parse_mode("max-speed")


def test_compiled_predictor_gives_the_eager_masks_and_compiles_once_per_model(monkeypatch):
    monkeypatch.setenv("BIREFNET_COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    model = build_model("pvt_v2_b0")
    model.load_state_dict(load_make_weights()(model.state_dict(), seed=0), strict=True)
    images = torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(0))
    eager = Predictor(model, resolution=64, batch_size=2)
    assert eager.forward is model and compile_mode(model) == "off"
    want = eager.predict(images)
    set_compile(model, "on")  # what the loader's compile widget does
    first, second = Predictor(model, resolution=64, batch_size=2), Predictor(model, resolution=64, batch_size=1)
    assert isinstance(first.forward, CompiledForward) and first.forward is second.forward
    torch.testing.assert_close(first.predict(images), want, atol=1e-6, rtol=0)
    assert first.forward.failed is None
    assert Predictor(model, resolution=64, compile="off").forward is model  # a predictor may turn it off


class Doubling(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.weight * (x[:, :1] - x[:, :1].mean())


def test_a_failing_compile_warns_once_and_runs_eagerly(monkeypatch, caplog):
    from torch._dynamo import register_backend

    @register_backend(name="birefnet_test_broken")
    def broken(graph, example_inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setenv("BIREFNET_COMPILE_BACKEND", "birefnet_test_broken")
    torch._dynamo.reset()
    model = Doubling()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want = Predictor(model, resolution=32).predict(images)
    predictor = Predictor(model, resolution=32, compile="on")
    with caplog.at_level(logging.WARNING, logger="birefnet_core.compiled"):
        got = predictor.predict(images)
        again = predictor.predict(images)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(again, want)
    said = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(said) == 1 and "no compiler here" in said[0] and "uncompiled" in said[0]
