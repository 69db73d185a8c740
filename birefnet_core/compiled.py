"""The opt-in compiled forward: ``torch.compile`` of a model's network, off by default.

A model carries its compile setting like its dtype and device (:func:`set_compile`; the loader
node's ``compile`` widget and the CLI's ``--compile`` set it), and every :class:`Predictor` on it
uses one compiled module, kept with the model, so a workflow that creates a predictor per run
compiles once. Modes:

* ``"off"``: eager PyTorch (the default);
* ``"on"``: ``torch.compile(model)`` (Inductor: fused kernels; the first call of each new input
  shape compiles, seconds to minutes, later calls run the compiled code);
* ``"cudagraphs"``: ``mode="reduce-overhead"``, which also replays CUDA graphs: for fixed shapes
  (a fixed resolution and batch size) on CUDA; elsewhere it is the same as ``"on"``.

What it costs and gains is measured by ``python -m birefnet_core bench gpu`` (its compile rows).
Compilation needs a working compiler toolchain for the device (a C++ compiler for the CPU,
Triton for CUDA); where compiling fails the predictor says so once and runs eagerly, with the
same results. ``BIREFNET_COMPILE_BACKEND`` names another ``torch.compile`` backend (the tests
use ``eager``: Dynamo's graph capture without code generation).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional

import torch

logger = logging.getLogger(__name__)

COMPILE_MODES = ("off", "on", "cudagraphs")
BACKEND_ENV = "BIREFNET_COMPILE_BACKEND"
_ATTRIBUTE = "_birefnet_compile_mode"
_CACHE = "_birefnet_compiled"


def parse_mode(value) -> str:
    """None/False/"off" -> "off"; True/"on"/"default" -> "on"; "cudagraphs"/"reduce-overhead"."""
    if value is None or value is False:
        return "off"
    if value is True:
        return "on"
    text = str(value).strip().lower()
    text = {"default": "on", "true": "on", "inductor": "on", "reduce-overhead": "cudagraphs",
            "none": "off", "false": "off", "": "off"}.get(text, text)
    if text not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return text


def set_compile(model: torch.nn.Module, mode) -> torch.nn.Module:
    """Set the compile mode every Predictor on ``model`` uses by default; returns ``model``."""
    object.__setattr__(model, _ATTRIBUTE, parse_mode(mode))
    return model


def compile_mode(model: torch.nn.Module) -> str:
    return getattr(model, _ATTRIBUTE, "off")


class CompiledForward:
    """Calls the compiled module; if compiling fails (no toolchain, an unsupported operation), says
    so once and calls the eager model from then on."""

    def __init__(self, model: torch.nn.Module, compiled) -> None:
        self.model = model
        self.compiled = compiled
        self.failed: Optional[str] = None

    def __getattr__(self, name):  # variant, config, family... are the model's
        return getattr(self.__dict__["model"], name)

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except _compile_errors() as exc:
                self.failed = _reason(exc)
                logger.warning("torch.compile failed (%s): running the model uncompiled", self.failed)
        return self.model(*args, **kwargs)


def _reason(exc: BaseException) -> str:
    """One line: the error and, for a backend's failure, the backend's own error."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__
    text = f"{type(inner).__name__}: {inner}" if inner is not None else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}, {lines[0] if lines else ''}"


def _compile_errors() -> tuple:
    errors = []
    try:
        from torch._dynamo.exc import TorchDynamoException

        errors.append(TorchDynamoException)
    except ImportError:  # pragma: no cover - every torch with torch.compile has it
        pass
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:
        pass
    return tuple(errors) or (RuntimeError,)


def compiled_forward(model: torch.nn.Module, mode: Optional[str] = None):
    """The callable a pipeline runs the network through: ``model`` itself when the mode is
    "off", else a :class:`CompiledForward` kept with the model (one per mode)."""
    mode = compile_mode(model) if mode is None else parse_mode(mode)
    if mode == "off":
        return model
    cache: Dict[str, CompiledForward] = model.__dict__.setdefault(_CACHE, {})
    if mode not in cache:
        backend = os.environ.get(BACKEND_ENV, "").strip() or "inductor"
        options = {"mode": "reduce-overhead"} if mode == "cudagraphs" and backend == "inductor" else {}
        cache[mode] = CompiledForward(model, torch.compile(model, backend=backend, **options))
    return cache[mode]
