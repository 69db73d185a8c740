"""``python -m birefnet_core doctor``: the report's sections, the models listing, --check, --json,
and the warning for half precision on a CPU that only emulates it."""

import contextlib
import importlib.util
import io
import json
import logging
import re
import shutil

import pytest
import torch

from birefnet_core import doctor, inference
from birefnet_core.__main__ import main

TITLES = ("Versions", "CPU", "Devices", "Deformable convolution", "Multi-scale deformable attention", "dtype policy",
          "Models", "Check")


@pytest.fixture(scope="module")
def models_dir(tiny_checkpoint, tmp_path_factory):
    """A models folder: a real pvt_v2_b0 checkpoint, the same named like a registry entry of another
    backbone, a text file posing as safetensors, a pickle and a file that is no weights file."""
    folder = tmp_path_factory.mktemp("doctor-models")
    shutil.copy(tiny_checkpoint, folder / "tiny.safetensors")
    shutil.copy(tiny_checkpoint, folder / "BiRefNet_lite.safetensors")  # the registry's is a swin_v1_t
    (folder / "x.safetensors").write_text("not a checkpoint\n")
    (folder / "old.pth").write_bytes(b"\x80\x04K\x01.")
    (folder / "notes.txt").write_text("not a weights file\n")
    # the decoder of the official code before May 2024 (no decoder.ipt_blk5): refused, and doctor says why
    from safetensors.torch import load_file, save_file

    tiny = load_file(str(tiny_checkpoint))
    save_file({k: v for k, v in tiny.items() if not k.startswith("decoder.ipt_blk5.")},
              str(folder / "BiRefNet-ep480.safetensors"))
    if importlib.util.find_spec("cv2") is not None:  # a small FOCUS, in bfloat16 to keep the file small
        from safetensors.torch import save_file

        from birefnet_core.models import build_model
        from birefnet_core.models.focus import FocusConfig

        focus = build_model(FocusConfig(width=128, depth=4, ffn_hidden=256, adapter_heads=4)).to(torch.bfloat16)
        save_file({k: v.contiguous() for k, v in focus.state_dict().items()}, str(folder / "small_focus.safetensors"))
    return folder


@pytest.fixture(scope="module")
def doctor_run(models_dir, tmp_path_factory):
    """One in-process ``doctor --check --json`` run: (exit status, stdout, the JSON report)."""
    json_path = tmp_path_factory.mktemp("doctor-json") / "report.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["doctor", "--check", "--json", str(json_path), "--models-dir", str(models_dir)])
    assert [p.name for p in json_path.parent.iterdir()] == ["report.json"]  # no partial file left
    return status, out.getvalue(), json.loads(json_path.read_text())


def test_report_has_every_section_in_one_screen(doctor_run):
    _, text, _ = doctor_run
    titles = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert [next(t for t in TITLES if line.startswith(t)) for line in titles] == list(TITLES)
    for name in ("torch ", "torchvision", "numpy", "pillow", "safetensors", "huggingface_hub", "kornia", "av "):
        assert name in text
    assert re.search(r"^  cpu +float32 +uses portable", text, re.M)
    auto = str(inference.auto_dtype(torch.device("cpu"))).replace("torch.", "")
    assert re.search(rf"^  cpu +auto = {auto}: ", text, re.M)
    assert len(text.splitlines()) < 60


def test_check_on_cpu_passes(doctor_run):
    status, text, _ = doctor_run
    assert status == 0
    match = re.search(r"^  cpu +float32 +max (\S+) +mean (\S+) .* ok$", text, re.M)
    assert match and float(match.group(1)) < 1e-3
    assert re.search(r"^  cpu +bfloat16 +max \S+ .* ok$", text, re.M)


def test_models_section_reads_headers_only(doctor_run, models_dir):
    _, text, report = doctor_run
    assert str(models_dir) in text and "--models-dir" in text
    files = {f["name"]: f for f in report["models"]["files"]}
    focus = {"small_focus.safetensors"} if importlib.util.find_spec("cv2") is not None else set()
    assert set(files) == {"tiny.safetensors", "BiRefNet_lite.safetensors", "x.safetensors", "old.pth",
                          "BiRefNet-ep480.safetensors"} | focus
    assert files["BiRefNet-ep480.safetensors"]["problem"].startswith("refused: this BiRefNet checkpoint has the "
                                                                     "decoder of the official code before 2024-05-02")
    if focus:
        assert files["small_focus.safetensors"]["family"] == "focus" and files["small_focus.safetensors"]["problem"] is None
        assert re.search(r"^  small_focus\.safetensors .* FOCUS custom focus \(width 128, depth 4\)$", text, re.M)
    assert files["tiny.safetensors"]["family"] == "birefnet"
    assert files["tiny.safetensors"]["backbone"] == "pvt_v2_b0" and files["tiny.safetensors"]["problem"] is None
    assert files["x.safetensors"]["problem"].startswith("unreadable")
    assert files["old.pth"]["problem"] == "not inspected: pickle"
    assert "registry entry BiRefNet_lite (swin_v1_t)" in files["BiRefNet_lite.safetensors"]["problem"]
    assert re.search(r"^  tiny\.safetensors .* pvt_v2_b0, patch order legacy", text, re.M)
    assert re.search(r"^  x\.safetensors .* unreadable", text, re.M)


def test_json_holds_every_section(doctor_run):
    _, _, report = doctor_run
    assert set(report) == {"versions", "cpu", "devices", "deform", "msda", "dtype_policy", "models", "check"}
    assert {(r["device"], r["dtype"], r["chosen"]) for r in report["msda"]} >= {("cpu", "float32", "portable")}
    assert report["versions"]["torch"] == torch.__version__
    rows = {(r["device"], r["dtype"]): r for r in report["check"]}
    assert rows["cpu", "float32"]["status"] == "ok" and rows["cpu", "float32"]["max_diff"] < 1e-3
    assert {(r["device"], r["dtype"]) for r in report["deform"]} >= {("cpu", "float32"), ("cpu", "bfloat16")}


def test_missing_models_folder_is_one_line(tmp_path):
    info = doctor.collect_models(str(tmp_path / "absent"))
    assert info.files == [] and "does not exist" in info.problem
    assert len(doctor.format_section(doctor.Report(models=info), "models").splitlines()) == 2


def test_check_catches_a_kernel_that_ignores_offsets(monkeypatch):
    """The check's network has non-zero offsets and spread probabilities, so a deformable
    convolution that samples at the wrong places fails even the half-precision limit."""
    from birefnet_core.ops import deform_conv

    model, x, reference = doctor.check_model()
    ok = doctor.check_one(model, x, reference, torch.device("cpu"), torch.bfloat16)
    assert ok.status == "ok", ok
    real = deform_conv.deform_conv2d
    monkeypatch.setattr(deform_conv, "deform_conv2d", lambda i, offset, *a, **k: real(i, offset * 0, *a, **k))
    broken = doctor.check_one(model, x, reference, torch.device("cpu"), torch.bfloat16)
    assert broken.status == "FAIL" and broken.max_diff > 0.05


def test_explicit_half_precision_on_a_cpu_without_it_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(inference, "_warned", set())
    monkeypatch.delenv(inference.CPU_DTYPE_ENV, raising=False)
    monkeypatch.setattr(inference, "cpu_has_native_bfloat16", lambda: False)
    monkeypatch.setattr(inference, "cpu_has_native_float16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="birefnet_core.inference"):
        assert inference.parse_dtype("auto", torch.device("cpu")) == torch.float32
        assert inference.parse_dtype("float16", torch.device("cpu")) == torch.float16
        assert inference.parse_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
        assert caplog.records == []
        assert inference.parse_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
        assert inference.parse_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    assert len(caplog.records) == 1
    assert "bfloat16 runs emulated on this CPU" in caplog.records[0].getMessage()
    assert "slower than float32" in caplog.records[0].getMessage()


def test_no_warning_where_the_cpu_has_native_bfloat16(monkeypatch, caplog):
    monkeypatch.setattr(inference, "_warned", set())
    monkeypatch.setattr(inference, "cpu_has_native_bfloat16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="birefnet_core.inference"):
        inference.parse_dtype("bf16", torch.device("cpu"))
    assert caplog.records == []


def _cpu(monkeypatch, flags, capability="AVX512", env=None):
    """Pretend to be a CPU with these /proc/cpuinfo flags and torch kernel level."""
    monkeypatch.setattr(inference, "_warned", set())
    monkeypatch.setattr(inference, "_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(inference, "_torch_cpu_capability", lambda: capability)
    if env is None:
        monkeypatch.delenv(inference.CPU_DTYPE_ENV, raising=False)
    else:
        monkeypatch.setenv(inference.CPU_DTYPE_ENV, env)


CPU = torch.device("cpu")


@pytest.mark.parametrize("flags", [{"avx2", "avx512f", "avx512_bf16"}, {"avx512f", "amx_bf16", "amx_tile"}])
def test_auto_is_bfloat16_on_a_cpu_with_native_bfloat16(monkeypatch, caplog, flags):
    _cpu(monkeypatch, flags)
    with caplog.at_level(logging.WARNING, logger="birefnet_core.inference"):
        assert inference.auto_dtype(CPU) == torch.bfloat16
        assert inference.parse_dtype("auto", CPU) == inference.parse_dtype(None, CPU) == torch.bfloat16
        assert inference.parse_dtype("bfloat16", CPU) == torch.bfloat16
    assert caplog.records == []
    assert "natively" in inference.cpu_auto_dtype()[1]
    assert inference.parse_dtype("float32", CPU) == torch.float32  # an explicit float32 stays


@pytest.mark.parametrize("flags, capability, why", [
    ({"avx2", "fma", "avx512f"}, "AVX512", "no native bfloat16"),  # AVX512 without BF16 (Skylake-X)
    ({"avx2", "fma"}, "AVX2", "no native bfloat16"),  # AVX2 only (Zen 3)
    (set(), None, "cannot be told"),  # no /proc/cpuinfo: macOS, Windows
    ({"fp", "asimd", "bf16"}, "NEON", "ARM"),  # ARM with BF16: unmeasured, conservative
    ({"avx512f", "avx512_bf16"}, "AVX2", "AVX2 kernels"),  # torch held at AVX2 (ATEN_CPU_CAPABILITY)
])
def test_auto_is_float32_on_other_cpus(monkeypatch, flags, capability, why):
    _cpu(monkeypatch, flags, capability)
    assert inference.auto_dtype(CPU) == torch.float32
    assert inference.parse_dtype("auto", CPU) == torch.float32
    assert why in inference.cpu_auto_dtype()[1]


def test_the_environment_overrides_the_cpu_choice(monkeypatch, caplog):
    _cpu(monkeypatch, {"avx512f", "avx512_bf16"}, env="float32")
    assert inference.auto_dtype(CPU) == torch.float32
    assert inference.cpu_auto_dtype()[1] == "BIREFNET_CPU_DTYPE=float32 in the environment"
    assert inference.parse_dtype("bfloat16", CPU) == torch.bfloat16  # an explicit dtype wins over it
    _cpu(monkeypatch, {"avx2"}, env="auto")
    assert inference.auto_dtype(CPU) == torch.float32
    with caplog.at_level(logging.WARNING, logger="birefnet_core.inference"):
        _cpu(monkeypatch, {"avx2"}, env="BF16")
        assert inference.auto_dtype(CPU) == torch.bfloat16  # forced, with the emulation warning
        assert inference.auto_dtype(CPU) == torch.bfloat16
        _cpu(monkeypatch, {"avx512f", "avx512_bf16"}, env="fp8")
        assert inference.auto_dtype(CPU) == torch.bfloat16  # a wrong value is ignored, with a warning
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "bfloat16 runs emulated" in messages[0] and "fp8" in messages[1]


def test_auto_on_other_devices_ignores_the_cpu(monkeypatch):
    _cpu(monkeypatch, {"avx512f", "avx512_bf16"}, env="bfloat16")
    for device in ("mps", "xpu", "meta"):
        assert inference.auto_dtype(torch.device(device)) == torch.float32


def test_training_precision_auto_stays_float32_on_a_bfloat16_cpu(monkeypatch):
    from birefnet_core.train.trainer import autocast_dtype

    _cpu(monkeypatch, {"avx512f", "avx512_bf16"})
    assert autocast_dtype("auto", CPU) is None


@pytest.mark.parametrize("flags, auto, reason, note", [
    ({"avx512f", "avx512_bf16"}, "bfloat16", "natively (avx512_bf16)", "BIREFNET_CPU_DTYPE=float32"),
    ({"avx2"}, "float32", "no native bfloat16", "emulated"),
])
def test_doctor_says_what_auto_gives_on_the_cpu_and_why(monkeypatch, flags, auto, reason, note):
    _cpu(monkeypatch, flags)
    native = "native" if "avx512_bf16" in flags else "emulated"
    devices = doctor.DevicesInfo([doctor.DeviceInfo("cpu", "test cpu", bfloat16=native)], [])
    (row,) = doctor.collect_dtype_policy(devices)
    assert (row.device, row.auto) == ("cpu", auto)
    line = doctor._format_dtype_policy([row])[0]
    assert line.startswith(f"cpu     auto = {auto}: ") and reason in line and note in line


def test_json_into_a_missing_folder_is_one_line_before_any_work(tmp_path, capsys):
    assert main(["doctor", "--json", str(tmp_path / "absent" / "report.json")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "absent" in captured.err and len(captured.err.splitlines()) == 1


def test_versions_name_the_variables_that_change_behaviour_and_never_a_token(monkeypatch):
    monkeypatch.setenv("BIREFNET_DEFORM_BACKWARD", "autograd")
    monkeypatch.setenv("BIREFNET_STREAMING", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    environment = doctor.collect_versions()["environment"]
    assert "BIREFNET_DEFORM_BACKWARD=autograd" in environment and "BIREFNET_STREAMING=0" in environment
    assert "hf_secret_value" not in environment and "HF_TOKEN" not in environment
