"""``python -m birefnet_core doctor``: what this machine runs, in one screen for a bug report.

Sections: versions, CPU, devices, the deformable convolution's and the multi-scale deformable
attention's backend per device and dtype,
the dtype policy, the models folder and, with ``--check``, a small BiRefNet run on every device
in every dtype against a float64 reference on the CPU. Nothing is downloaded and no file is
read beyond safetensors headers; the report takes seconds on a CPU.

The ``collect_*`` functions and :func:`run_check` return data (dataclasses, JSON-ready through
:func:`dataclasses.asdict`); :func:`format_section` and :func:`format_report` turn it into text.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .cli import one_line

MiB = 2**20
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (import name, name shown): torch itself is reported with its build
PACKAGES = (("torchvision", "torchvision"), ("triton", "triton"), ("numpy", "numpy"), ("PIL", "pillow"),
            ("safetensors", "safetensors"), ("huggingface_hub", "huggingface_hub"), ("kornia", "kornia"),
            ("av", "av"))
# The 3x3 branch of ASPPDeformable, BiRefNet's decoder block: 64 channels in, 256 out, on a
# 32x32 map (a 1024-pixel input's deepest decoder stage).
DECODER_INPUT = (1, 64, 32, 32)
DECODER_OUT_CHANNELS = 256
DECODER_KERNEL = 3
# --check: largest |probability - float64 reference| that counts as ok
CHECK_LIMITS = {torch.float32: 1e-3, torch.float16: 0.05, torch.bfloat16: 0.05}
CHECK_BACKBONE = "pvt_v2_b0"
CHECK_INPUT = (2, 3, 64, 64)
MAX_MODEL_LINES = 20  # models listed on screen; --json has them all
# Variables that change what the core or torch does, shown when set. Named one by one: tokens
# (HF_TOKEN and the like) must never end up in a bug report.
ENVIRONMENT = ("BIREFNET_MODELS_DIR", "BIREFNET_DEFORM_BACKEND", "BIREFNET_DEFORM_MEMORY_MB", "BIREFNET_DEFORM_BACKWARD",
               "BIREFNET_MSDA_BACKEND", "BIREFNET_MSDA_MEMORY_MB", "BIREFNET_STREAMING", "BIREFNET_COMPILE_BACKEND",
               "BIREFNET_DIST_TIMEOUT", "BIREFNET_DEBUG", "BIREFNET_MAX_IMAGE_PIXELS", "BIREFNET_CPU_DTYPE",
               "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "HF_HUB_OFFLINE",
               "HF_HOME", "HF_HUB_CACHE")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# -------------------------------------------------------------------------------------- versions

def package_version(module: str) -> str:
    """``module.__version__``, "not installed", or "broken: <one line>" when importing it fails
    (e.g. a torchvision built for another torch)."""
    try:
        if importlib.util.find_spec(module) is None:
            return "not installed"
        return str(getattr(importlib.import_module(module), "__version__", "unknown version"))
    except Exception as exc:  # noqa: BLE001 - a broken install is what the report is for
        return f"broken: {one_line(exc)}"


def collect_versions() -> Dict[str, str]:
    """Python, the platform, torch with its CUDA / cuDNN / ROCm build, the libraries the core may
    use, by name, and under "environment" the variables of :data:`ENVIRONMENT` that are set."""
    from . import __version__

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    versions = {
        "birefnet_core": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch CUDA build": torch.version.cuda or "none",
        "torch cuDNN build": str(cudnn) if cudnn else "none",
    }
    if getattr(torch.version, "hip", None):
        versions["torch ROCm build"] = str(torch.version.hip)
    for module, name in PACKAGES:
        versions[name] = package_version(module)
    versions["environment"] = ", ".join(f"{n}={os.environ[n]}" for n in ENVIRONMENT if os.environ.get(n))
    return versions


# ------------------------------------------------------------------------------------------- CPU

@dataclass
class CpuInfo:
    """The host CPU as torch sees it."""

    model: str
    machine: str
    capability: str  # torch's vector instruction level: "AVX512", "AVX2", "DEFAULT"...
    native_bfloat16: bool  # False also where it cannot be told
    native_float16: bool
    threads: int  # torch's intra-op threads
    cores: Optional[int]  # logical cores


def collect_cpu() -> CpuInfo:
    from .inference import cpu_has_native_bfloat16, cpu_has_native_float16, cpu_model_name

    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return CpuInfo(cpu_model_name(), platform.machine(), capability, cpu_has_native_bfloat16(),
                   cpu_has_native_float16(), torch.get_num_threads(), os.cpu_count())


# --------------------------------------------------------------------------------------- devices

@dataclass
class DeviceInfo:
    """One device torch can use. Memory in bytes (None where torch does not say); ``bfloat16``
    is "native", "emulated" (correct but slow), "yes" (works, speed unknown) or "no"."""

    name: str  # the torch device: "cpu", "cuda:0", "mps", "xpu:0"
    description: str
    capability: Optional[str] = None  # CUDA compute capability "8.6", ROCm's gfx name
    total_memory: Optional[int] = None
    free_memory: Optional[int] = None
    bfloat16: Optional[str] = None
    error: Optional[str] = None  # the device exists but cannot be queried


@dataclass
class DevicesInfo:
    devices: List[DeviceInfo]
    notes: List[str] = field(default_factory=list)  # why a GPU torch was built for is missing


def _meminfo() -> Tuple[Optional[int], Optional[int]]:
    """(total, available) host memory in bytes from /proc/meminfo, else (None, None)."""
    values: Dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    values[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values.get("MemTotal"), values.get("MemAvailable")


def _dtype_works(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        return bool((torch.ones(2, device=device, dtype=dtype) * 2).sum().item() == 4)
    except Exception:  # noqa: BLE001 - no kernel, no dtype on this device
        return False


def _cuda_device(index: int) -> DeviceInfo:
    name = f"cuda:{index}"
    try:
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
    except Exception as exc:  # noqa: BLE001 - a device that fails here is worth its line
        return DeviceInfo(name, "unknown", error=one_line(exc))
    hip = getattr(torch.version, "hip", None)
    capability = getattr(props, "gcnArchName", None) if hip else f"{props.major}.{props.minor}"
    # torch runs bfloat16 on every CUDA GPU, but only compute capability 8.0 (Ampere) and later
    # have bfloat16 tensor cores; ROCm's GPUs have it natively.
    bfloat16 = "native" if hip or props.major >= 8 else "emulated"
    return DeviceInfo(name, props.name, capability, total, free, bfloat16)


def collect_devices() -> DevicesInfo:
    """The CPU, every CUDA (or ROCm) GPU, MPS and XPU devices when present."""
    from .inference import cpu_has_native_bfloat16, cpu_model_name

    total, available = _meminfo()
    devices = [DeviceInfo("cpu", cpu_model_name(), total_memory=total, free_memory=available,
                          bfloat16="native" if cpu_has_native_bfloat16() else "emulated")]
    notes: List[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # torch explains a missing or too old driver only as a warning
        cuda = torch.cuda.is_available()
        count = torch.cuda.device_count() if cuda else 0
    notes.extend("torch warned: " + (str(w.message).strip().splitlines() or [""])[0] for w in caught)
    built_for = torch.version.cuda or getattr(torch.version, "hip", None)
    if not cuda and built_for:
        notes.append(f"torch is built for CUDA/ROCm {built_for} but sees no GPU: check the driver (nvidia-smi) "
                     "and CUDA_VISIBLE_DEVICES")
    devices.extend(_cuda_device(i) for i in range(count))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        device = torch.device("mps")
        limit = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
        devices.append(DeviceInfo("mps", "Apple GPU (Metal)", total_memory=limit() if limit else None,
                                  bfloat16="yes" if _dtype_works(device, torch.bfloat16) else "no"))
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        for i in range(xpu.device_count()):
            try:
                props = xpu.get_device_properties(i)
                device = torch.device(f"xpu:{i}")
                devices.append(DeviceInfo(f"xpu:{i}", props.name, total_memory=props.total_memory,
                                          bfloat16="yes" if _dtype_works(device, torch.bfloat16) else "no"))
            except Exception as exc:  # noqa: BLE001
                devices.append(DeviceInfo(f"xpu:{i}", "unknown", error=one_line(exc)))
    return DevicesInfo(devices, notes)


# ------------------------------------------------------------------------- deformable convolution

@dataclass
class DeformRow:
    """What the dispatcher of :func:`birefnet_core.ops.deform_conv2d` does on one device and
    dtype: the backend it uses, and each backend it would consider, in its order, with its
    status ("ok": passed its self-check; "self-check failed"; "not installed"; "not for this
    device"; "reference": the portable kernel the others are checked against)."""

    device: str
    dtype: str
    chosen: Optional[str]
    backends: Dict[str, str]
    error: Optional[str] = None  # the dtype cannot be used on this device at all


def deform_dispatch(device: torch.device, dtype: torch.dtype) -> DeformRow:
    """Backend choice and self-checks on a decoder-sized problem (:data:`DECODER_INPUT`)."""
    from .ops.deform_conv import BACKEND_ENV, BACKENDS, candidate_order, select_backend
    from .ops.spec import check_arguments

    b, c, h, w = DECODER_INPUT
    taps = DECODER_KERNEL * DECODER_KERNEL
    try:
        x = torch.zeros(DECODER_INPUT, device=device, dtype=dtype)
        offset = torch.zeros(b, 2 * taps, h, w, device=device, dtype=dtype)
        mask = torch.ones(b, taps, h, w, device=device, dtype=dtype)
        weight = torch.zeros(DECODER_OUT_CHANNELS, c, DECODER_KERNEL, DECODER_KERNEL, device=device, dtype=dtype)
        spec = check_arguments(x, offset, weight, None, 1, DECODER_KERNEL // 2, 1, mask)
        chosen = select_backend(x, spec).name
    except Exception as exc:  # noqa: BLE001 - e.g. no bfloat16 on an older MPS, a bad BIREFNET_DEFORM_BACKEND
        return DeformRow(str(device), _dtype_name(dtype), None, {}, one_line(exc))
    preferred = os.environ.get(BACKEND_ENV, "").strip().lower()  # valid: select_backend accepted it
    statuses = {}
    for name in candidate_order(device, preferred or None):
        backend = BACKENDS[name]
        if not backend.self_checked:
            statuses[name] = "reference"
        elif backend.implementation() is None:
            statuses[name] = "not installed"
        elif not backend.supports(device, dtype, spec):
            statuses[name] = "not for this device"
        else:
            statuses[name] = "ok" if backend.usable(device, dtype) else "self-check failed"
    return DeformRow(str(device), _dtype_name(dtype), chosen, statuses)


def collect_deform(devices: Sequence[str]) -> List[DeformRow]:
    return [deform_dispatch(torch.device(d), dtype) for d in devices for dtype in DTYPES]


def msda_dispatch(device: torch.device, dtype: torch.dtype) -> DeformRow:
    """The multi-scale deformable attention's backend choice and self-checks (FOCUS)."""
    from .ops.msda import backend_statuses, select_backend

    try:
        torch.zeros(1, device=device, dtype=dtype)
        chosen = select_backend(device, dtype).name
        return DeformRow(str(device), _dtype_name(dtype), chosen, backend_statuses(device, dtype))
    except Exception as exc:  # noqa: BLE001 - e.g. no bfloat16 on an older MPS, a bad BIREFNET_MSDA_BACKEND
        return DeformRow(str(device), _dtype_name(dtype), None, {}, one_line(exc))


def collect_msda(devices: Sequence[str]) -> List[DeformRow]:
    return [msda_dispatch(torch.device(d), dtype) for d in devices for dtype in DTYPES]


# ---------------------------------------------------------------------------------- dtype policy

@dataclass
class DtypePolicy:
    """What ``dtype="auto"`` gives on a device, why, and a warning where it matters."""

    device: str
    auto: str
    reason: str
    note: Optional[str] = None


def collect_dtype_policy(devices: DevicesInfo) -> List[DtypePolicy]:
    from .inference import CPU_DTYPE_ENV, auto_dtype, cpu_auto_dtype

    rows = []
    for info in devices.devices:
        if info.error:
            continue
        device = torch.device(info.name)
        auto = auto_dtype(device)
        note = None
        if device.type == "cuda":
            reason = "bfloat16 where the GPU supports it, else float16"
            if auto == torch.bfloat16 and info.bfloat16 == "emulated":
                note = ("bfloat16 is emulated on this GPU (compute capability below 8.0), much slower than float16: "
                        "pass dtype float16")
        elif device.type == "cpu":
            reason = cpu_auto_dtype()[1]
            if auto == torch.float32 and info.bfloat16 != "native":
                note = "an explicit bfloat16 or float16 runs emulated here, many times slower than float32"
            elif auto == torch.bfloat16:
                note = f"dtype float32 or {CPU_DTYPE_ENV}=float32 for float32's numerics"
        else:
            reason = f"float32 on {device.type}: half precision is slower or unsupported on many of these devices"
        rows.append(DtypePolicy(info.name, _dtype_name(auto), reason, note))
    return rows


# ---------------------------------------------------------------------------------------- models

@dataclass
class ModelFile:
    """One weights file, from its name, size and safetensors header (never its tensors)."""

    name: str
    size: Optional[int]  # bytes
    backbone: Optional[str] = None  # the architecture: a BiRefNet backbone or a FOCUS size
    family: Optional[str] = None  # "birefnet" or "focus"
    patch_order: Optional[str] = None
    patch_order_source: Optional[str] = None
    registry: Optional[str] = None  # the registry entry its name matches
    problem: Optional[str] = None  # why it cannot be used as it is, or why it was not inspected


@dataclass
class ModelsInfo:
    folder: str
    source: str  # "--models-dir", "$BIREFNET_MODELS_DIR" or "default"
    files: List[ModelFile] = field(default_factory=list)
    problem: Optional[str] = None  # the folder is missing or unreadable


def inspect_weights(path: Path) -> ModelFile:
    """What :func:`birefnet_core.load_model` would find in ``path``, from the header alone."""
    from .checkpoint import _header_tensors, older_architecture, peek_architecture, read_metadata
    from .files import PARTIAL
    from .hub import safetensors_problem
    from .registry import find_variant

    try:
        entry = ModelFile(path.name, path.stat().st_size)
    except OSError as exc:
        return ModelFile(path.name, None, problem=f"unreadable: {one_line(exc)}")
    if PARTIAL in path.name:
        entry.problem = "left by an interrupted write: safe to delete"
        return entry
    if path.suffix.lower() != ".safetensors":
        entry.problem = "not inspected: pickle"
        return entry
    try:
        problem = safetensors_problem(path)
    except OSError as exc:
        problem = one_line(exc)
    if problem:
        entry.problem = f"unreadable: {problem}"
        return entry
    found = peek_architecture(path)
    if found is None:
        try:  # why not, where the file says (e.g. the pre-May-2024 BiRefNet decoder)
            older = older_architecture(_header_tensors(path))
        except Exception:  # noqa: BLE001 - only informative
            older = None
        entry.problem = f"refused: {older}" if older else "not a BiRefNet or FOCUS checkpoint"
        return entry
    family, architecture = found
    entry.family, entry.backbone = family.name, family.describe(architecture)
    variant = find_variant(path.stem)
    if variant is not None and variant.backbone == entry.backbone:
        entry.registry = variant.name
    elif variant is not None:  # load_model(name) refuses such a file, load_model(path) ignores its name
        entry.problem = (f"named like registry entry {variant.name} ({variant.backbone}): loading it by that name "
                         "fails; rename the file")
    if family.name != "birefnet":
        return entry
    # load_model's order of precedence with patch_order "auto": the header, the name, legacy
    recorded = read_metadata(path).get("birefnet.patch_order")
    if recorded:
        entry.patch_order, entry.patch_order_source = recorded, "recorded in the file"
    elif variant is not None and entry.registry:
        entry.patch_order, entry.patch_order_source = variant.patch_order.value, f"registry entry {variant.name}"
    else:
        entry.patch_order, entry.patch_order_source = "legacy", "not recorded: assumed"
    return entry


def collect_models(models_dir: Optional[str] = None) -> ModelsInfo:
    """The weights files in ``models_dir`` (else ``$BIREFNET_MODELS_DIR``, else the default)."""
    from .checkpoint import MODELS_DIR_ENV, WEIGHTS_SUFFIXES, default_models_dir

    if models_dir:
        folder, source = Path(models_dir).expanduser(), "--models-dir"
    else:
        folder = default_models_dir()
        source = ("$" + MODELS_DIR_ENV) if os.environ.get(MODELS_DIR_ENV) else "default"
    info = ModelsInfo(str(folder), source)
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in WEIGHTS_SUFFIXES and p.is_file())
    except FileNotFoundError:
        info.problem = "does not exist yet (models named from the registry are downloaded there)"
        return info
    except NotADirectoryError:
        info.problem = "is a file, not a folder"
        return info
    except OSError as exc:
        info.problem = f"cannot be read: {one_line(exc)}"
        return info
    info.files = [inspect_weights(p) for p in paths]
    return info


# ----------------------------------------------------------------------------------------- check

@dataclass
class CheckRow:
    """One device and dtype of ``--check``: |probability - float64 reference| and the time of
    one batch after a warm-up. ``status``: "ok", "FAIL" (too far from the reference, or an
    error where the dtype should work) or "unsupported" (an error where it may not)."""

    device: str
    dtype: str
    status: str
    max_diff: Optional[float] = None
    mean_diff: Optional[float] = None
    seconds: Optional[float] = None
    error: Optional[str] = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def check_model() -> Tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model, input, reference): a seeded random pvt_v2_b0 BiRefNet in float64 on the CPU, a
    seeded input [2, 3, 64, 64] and the reference probabilities [2, 1, 64, 64] in 0..1."""
    from .models import build_model
    from .ops import DeformableConv2d

    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(0)
        model = build_model(CHECK_BACKBONE).eval().double()
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, DeformableConv2d):
                    # A fresh layer predicts zero offsets (an ordinary convolution), which would
                    # leave the deformable kernels' sampling unchecked: offsets of a pixel or two.
                    for conv, spread in ((layer.offset_conv, 2.0), (layer.modulator_conv, 1.0)):
                        nn.init.normal_(conv.weight, std=0.05)
                        nn.init.uniform_(conv.bias, -spread, spread)
        x = torch.randn(CHECK_INPUT, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.inference_mode():
        logits = model(x)
        # A fresh network's probabilities stay near 0.5, where a wrong kernel moves them little:
        # rescale its last (linear) layer so that the logits have mean 0 and deviation 3.
        head = model.decoder.conv_out1[0]
        scale = 3.0 / logits.std()
        head.weight.mul_(scale)
        head.bias.sub_(logits.mean()).mul_(scale)
        reference = model(x).sigmoid()
    return model, x, reference


def check_dtypes(device: torch.device, info: Optional[DeviceInfo] = None) -> List[Tuple[torch.dtype, bool]]:
    """(dtype, optional) to check on ``device``; an optional dtype that raises is "unsupported",
    not a failure (float16 on a CPU, bfloat16 where the device only emulates it or may lack it)."""
    if device.type == "cpu":
        return [(torch.float32, False), (torch.float16, True), (torch.bfloat16, False)]
    if device.type == "cuda":
        return [(torch.float32, False), (torch.float16, False),
                (torch.bfloat16, info is None or info.bfloat16 != "native")]
    return [(torch.float32, False), (torch.float16, True), (torch.bfloat16, True)]


def check_one(model: nn.Module, x: torch.Tensor, reference: torch.Tensor, device: torch.device,
              dtype: torch.dtype, optional: bool = False) -> CheckRow:
    """Run a copy of ``model`` on ``device`` in ``dtype`` and compare with ``reference``."""
    row = CheckRow(str(device), _dtype_name(dtype), "ok")
    replica = None
    try:
        replica = copy.deepcopy(model).to(device=device, dtype=dtype)
        inputs = x.to(device=device, dtype=dtype)
        with torch.inference_mode():
            probs = replica(inputs).float().sigmoid()  # also the warm-up (kernel compilation, autotuning)
            _synchronize(device)
            start = time.perf_counter()
            replica(inputs)
            _synchronize(device)
            row.seconds = time.perf_counter() - start
        diff = (probs.cpu().double() - reference).abs()
        row.max_diff, row.mean_diff = float(diff.max()), float(diff.mean())
    except Exception as exc:  # noqa: BLE001 - one failing combination must not hide the others
        row.status, row.error = ("unsupported" if optional else "FAIL"), one_line(exc)
        return row
    finally:
        del replica
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not (math.isfinite(row.max_diff) and math.isfinite(row.mean_diff)):
        row.status, row.error, row.max_diff, row.mean_diff = "FAIL", "NaN or infinite probabilities", None, None
    elif row.max_diff > CHECK_LIMITS[dtype]:
        row.status = "FAIL"
    return row


def run_check(devices: Sequence[DeviceInfo]) -> List[CheckRow]:
    """:func:`check_one` for every device and each dtype of :func:`check_dtypes`."""
    model, x, reference = check_model()
    rows = []
    for info in devices:
        device = torch.device(info.name)
        if info.error:
            rows.append(CheckRow(info.name, "-", "FAIL", error=info.error))
            continue
        rows.extend(check_one(model, x, reference, device, dtype, optional) for dtype, optional in
                    check_dtypes(device, info))
    return rows


# ---------------------------------------------------------------------------------------- report

@dataclass
class Report:
    """Everything the doctor found; sections left None were not collected."""

    versions: Optional[Dict[str, str]] = None
    cpu: Optional[CpuInfo] = None
    devices: Optional[DevicesInfo] = None
    deform: Optional[List[DeformRow]] = None
    msda: Optional[List[DeformRow]] = None
    dtype_policy: Optional[List[DtypePolicy]] = None
    models: Optional[ModelsInfo] = None
    check: Optional[List[CheckRow]] = None


def collect(models_dir: Optional[str] = None, check: bool = False) -> Report:
    """The whole report (``check``: with :func:`run_check`, a few seconds more)."""
    report = Report()
    for name in SECTIONS:
        if name != "check" or check:
            _collect_section(report, name, models_dir)
    return report


def _collect_section(report: Report, name: str, models_dir: Optional[str]) -> None:
    if name == "versions":
        report.versions = collect_versions()
    elif name == "cpu":
        report.cpu = collect_cpu()
    elif name == "devices":
        report.devices = collect_devices()
    elif name == "deform":
        report.deform = collect_deform([d.name for d in report.devices.devices if not d.error])
    elif name == "msda":
        report.msda = collect_msda([d.name for d in report.devices.devices if not d.error])
    elif name == "dtype_policy":
        report.dtype_policy = collect_dtype_policy(report.devices)
    elif name == "models":
        report.models = collect_models(models_dir)
    elif name == "check":
        report.check = run_check(report.devices.devices)


def _size(nbytes: Optional[int]) -> str:
    if nbytes is None:
        return "?"
    if nbytes < MiB:
        return f"{nbytes} B"
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / MiB:.1f} MiB"


def _format_versions(versions: Dict[str, str]) -> List[str]:
    lines = [f"Python {versions['python']} on {versions['platform']}, birefnet_core {versions['birefnet_core']}",
             f"torch {versions['torch']} (CUDA build {versions['torch CUDA build']}, cuDNN "
             f"{versions['torch cuDNN build']}" + (f", ROCm {versions['torch ROCm build']}"
                                                  if "torch ROCm build" in versions else "") + ")"]
    names = [name for _, name in PACKAGES]
    fine = ", ".join(f"{n} {versions[n]}" for n in names if not versions[n].startswith("broken"))
    lines.extend(textwrap.wrap(fine, 96))
    lines.extend(f"{n} {versions[n]}" for n in names if versions[n].startswith("broken"))
    if versions.get("environment"):
        lines.extend(textwrap.wrap("environment: " + versions["environment"], 96))
    return lines


def _format_cpu(cpu: CpuInfo) -> List[str]:
    return [f"{cpu.model} ({cpu.machine}), torch CPU capability {cpu.capability}, {cpu.threads} threads of "
            f"{cpu.cores or '?'} cores",
            f"native bfloat16: {'yes' if cpu.native_bfloat16 else 'no'}, "
            f"native float16: {'yes' if cpu.native_float16 else 'no'}"]


def _format_devices(devices: DevicesInfo) -> List[str]:
    lines = []
    for d in devices.devices:
        if d.error:
            lines.append(f"{d.name:<7} error: {d.error}")
            continue
        parts = [d.description]
        if d.capability:
            parts.append(f"capability {d.capability}")
        if d.total_memory is not None:
            parts.append(f"{_size(d.total_memory)}" + (f" ({_size(d.free_memory)} free)"
                                                       if d.free_memory is not None else ""))
        if d.bfloat16:
            parts.append(f"bfloat16 {d.bfloat16}")
        lines.append(f"{d.name:<7} " + ", ".join(parts))
    return lines + devices.notes


def _format_deform(rows: List[DeformRow]) -> List[str]:
    lines = []
    for r in rows:
        if r.error:
            lines.append(f"{r.device:<7} {r.dtype:<9} error: {r.error}")
        else:
            others = ", ".join(f"{n} {s}" for n, s in r.backends.items())
            lines.append(f"{r.device:<7} {r.dtype:<9} uses {r.chosen:<12} ({others})")
    return lines


def _format_dtype_policy(rows: List[DtypePolicy]) -> List[str]:
    return [f"{r.device:<7} auto = {r.auto}: {r.reason}" + (f"; {r.note}" if r.note else "") for r in rows]


def _format_models(models: ModelsInfo) -> List[str]:
    where = f"{models.folder} ({models.source})"
    if models.problem:
        return [f"{where} {models.problem}"]
    lines = [f"{where}: {len(models.files)} weights file(s)"]
    width = max((len(f.name) for f in models.files[:MAX_MODEL_LINES]), default=0)
    for f in models.files[:MAX_MODEL_LINES]:
        if not f.backbone:
            what = f.problem or "?"
        else:
            what = (f"{f.backbone}, patch order {f.patch_order} ({f.patch_order_source})" if f.patch_order
                    else f"FOCUS {f.backbone}")
            what += f", registry {f.registry}" if f.registry else ""
            what += f"; {f.problem}" if f.problem else ""
        lines.append(f"{f.name:<{width}}  {_size(f.size):>10}  {what}")
    if len(models.files) > MAX_MODEL_LINES:
        lines.append(f"... and {len(models.files) - MAX_MODEL_LINES} more (all of them with --json)")
    return lines


def _format_check(rows: List[CheckRow]) -> List[str]:
    lines = []
    for r in rows:
        head = f"{r.device:<7} {r.dtype:<9}"
        if r.max_diff is None:
            lines.append(f"{head} {r.status}: {r.error}")
        else:
            lines.append(f"{head} max {r.max_diff:.1e}  mean {r.mean_diff:.1e}  {r.seconds * 1000:7.1f} ms  {r.status}")
    return lines


SECTIONS = {
    "versions": ("Versions", _format_versions),
    "cpu": ("CPU", _format_cpu),
    "devices": ("Devices", _format_devices),
    "deform": (f"Deformable convolution: backend per device and dtype (decoder shape {list(DECODER_INPUT)} -> "
               f"{DECODER_OUT_CHANNELS} channels, {DECODER_KERNEL}x{DECODER_KERNEL})", _format_deform),
    "msda": ("Multi-scale deformable attention (FOCUS): backend per device and dtype", _format_deform),
    "dtype_policy": ("dtype policy", _format_dtype_policy),
    "models": ("Models", _format_models),
    "check": (f"Check (seeded {CHECK_BACKBONE} BiRefNet, input {list(CHECK_INPUT)}): |probability - float64 on cpu|, "
              f"limits float32 {CHECK_LIMITS[torch.float32]:g}, half {CHECK_LIMITS[torch.float16]:g}; time per batch",
              _format_check),
}


def format_section(report: Report, name: str) -> str:
    """One section of ``report`` as text: a title line, then indented lines."""
    title, formatter = SECTIONS[name]
    return "\n".join([title] + ["  " + line for line in formatter(getattr(report, name))])


def format_report(report: Report) -> str:
    """Every collected section of ``report`` as text."""
    return "\n".join(format_section(report, name) for name in SECTIONS if getattr(report, name) is not None)


# ------------------------------------------------------------------------------------ command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="also run a small random BiRefNet on every device and dtype against a float64 reference "
                             "(seconds); exit status 1 when one is too far off")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the whole report as JSON to FILE")
    parser.add_argument("--models-dir", default=None,
                        help="models folder to list (default $BIREFNET_MODELS_DIR, else ~/.cache/birefnet)")


def run(args: argparse.Namespace) -> int:
    """Print the report section by section (a hanging driver still leaves the sections before
    it on screen); exit status 1 when ``--check`` found a FAIL, else 0."""
    from .files import OutputError, atomic_output, check_outputs

    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        if not json_path.parent.is_dir():
            raise OutputError(f"folder {json_path.parent} of --json {json_path} does not exist: create it first")
        check_outputs([json_path], [], overwrite=True)  # a folder is refused
    report = Report()
    for index, name in enumerate(SECTIONS):
        if name == "check" and not args.check:
            continue
        _collect_section(report, name, args.models_dir)
        print(("\n" if index else "") + format_section(report, name), flush=True)
    if json_path is not None:
        model_files = [Path(report.models.folder) / f.name for f in report.models.files]
        check_outputs([json_path], model_files, overwrite=True)  # never replace a model file with the report
        with atomic_output(json_path) as partial:
            partial.write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    return 1 if any(row.status == "FAIL" for row in report.check or ()) else 0
