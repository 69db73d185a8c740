"""``python -m birefnet_core bench gpu``: the one command a GPU session runs, smoke-run on CPU
with ``--quick`` so that the GPU minutes are never spent on a broken script."""

import json

import pytest
import torch

from birefnet_core import bench
from birefnet_core.__main__ import main


def table_lines(out):
    """The table's rows: the lines after the column header, up to the JSON line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("part ")) + 1
    return [line for line in lines[start:] if not line.endswith(".json")]


def test_quick_run_on_cpu_prints_every_part_and_writes_one_json_entry_per_row(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "gpu", "--device", "cpu", "--quick", "--json", str(path)]) == 0
    captured = capsys.readouterr()
    rows = table_lines(captured.out)
    assert {line.split()[0] for line in rows} == set(bench.GPU_PARTS)
    assert not any("error:" in line for line in rows), captured.out
    data = json.loads(path.read_text())
    assert len(data["rows"]) == len(rows)
    assert data["quick"] is True and data["device"] == "cpu"
    by_part = {part: [r for r in data["rows"] if r["part"] == part] for part in bench.GPU_PARTS}
    assert [r["batch"] for r in by_part["model"]] == [1, 2]
    assert all(r["unit"] == "ms/image" and r["value"] > 0 for r in by_part["model"])
    # every backend has a row per shape and dtype: timed, or n/a with the reason
    assert len(by_part["deform"]) == 2 * 3 * len(bench.BACKEND_NAMES)
    assert all(r["value"] > 0 for r in by_part["deform"] if r["case"].startswith("portable"))
    assert all(r["value"] is None and r["note"] for r in by_part["deform"] if r["case"].startswith("triton"))
    assert len(by_part["video"]) == 3 and all(r["unit"] == "frames/s" and r["value"] > 0 for r in by_part["video"])
    assert "blur_fusion" in by_part["video"][-1]["case"]
    assert [r["case"].split()[0] for r in by_part["train"]] == ["pvt_v2_b0", "swin_v1_t"]
    assert all(r["unit"] == "images/s" and r["value"] > 0 for r in by_part["train"])
    # FOCUS: the small configuration at 128x96, batch 1, bfloat16 (the full run: L and G at 704x512)
    assert [(r["case"], r["dtype"], r["batch"]) for r in by_part["focus"]] == [
        ("focus small (width 128, depth 4) 128x96", "bfloat16", 1)]
    assert all(r["unit"] == "ms/image" and r["value"] > 0 for r in by_part["focus"])
    assert by_part["focus"][0]["note"] == "attention: portable"
    assert [(r["value"], r["note"]) for r in by_part["compile"]] == [
        (None, "CUDA only (Inductor on a CPU takes minutes)")]
    assert all(r["goal"] is None for r in data["rows"])  # goals are for the full sizes on a GPU


def test_full_settings_time_focus_l_and_g_at_the_default_test_size():
    import argparse

    s = bench.GpuSettings.for_args(argparse.Namespace(device="cpu", quick=False, repeats=0))
    # the compiled path last: two compilations, the least needed figures when time runs out
    assert bench.GPU_PARTS == ("model", "deform", "video", "train", "focus", "compile")
    assert s.focus_models == ("focus_dinov2_l", "focus_dinov2_g") and s.focus_image == (512, 683)
    assert s.focus_batches == (1, 8) and s.focus_dtype == torch.bfloat16 and s.focus_repeats == 5
    assert bench.GpuSettings.for_args(argparse.Namespace(device="cpu", quick=True, repeats=3)).focus_repeats == 3


def test_focus_without_opencv_is_an_error_row_naming_the_install(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # "import cv2" now fails
    path = tmp_path / "bench.json"
    assert main(["bench", "gpu", "--device", "cpu", "--quick", "--parts", "focus", "--json", str(path)]) == 1
    rows = json.loads(path.read_text())["rows"]
    assert [(r["part"], r["batch"]) for r in rows] == [("focus", 1)]
    assert "OpenCVMissingError" in rows[0]["error"] and "pip install opencv-python-headless" in rows[0]["error"]
    assert capsys.readouterr().err.strip() == "error: 1 of 1 rows failed (see the table)"


def test_a_failing_part_is_one_error_row_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    def broken(table, settings):
        raise RuntimeError("video decoder on fire\nsecond line")

    def model_out_of_memory(table, settings):
        with table.row("model", "swin_v1_l 1024x1024", dtype=torch.bfloat16, batch=8, unit="ms/image"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        with table.row("model", "swin_v1_l 1024x1024", dtype=torch.bfloat16, batch=1, unit="ms/image") as row:
            row["value"] = 20.0

    monkeypatch.setitem(bench.GPU_PART_FUNCTIONS, "video", broken)
    monkeypatch.setitem(bench.GPU_PART_FUNCTIONS, "model", model_out_of_memory)
    path = tmp_path / "bench.json"
    code = main(["bench", "gpu", "--device", "cpu", "--quick", "--parts", "video", "model", "deform",
                 "--json", str(path)])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == "error: 2 of 21 rows failed (see the table)"
    rows = json.loads(path.read_text())["rows"]
    assert [r["part"] for r in rows][:3] == ["model", "model", "deform"]  # the table's order, not the argument's
    failed = [r for r in rows if r["error"]]
    assert [(r["part"], r["error"]) for r in failed] == [
        ("model", "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"),
        ("video", "RuntimeError: video decoder on fire"),
    ]
    assert rows[1]["value"] == 20.0 and sum(r["part"] == "deform" for r in rows) == 18
    lines = table_lines(captured.out)
    assert len(lines) == len(rows)
    assert any(line.startswith("video ") and "error: RuntimeError: video decoder on fire" in line for line in lines)


@pytest.mark.parametrize("argv", [["bench", "gpu", "--device", "cpu"],
                                  ["bench", "gpu", "--device", "cpu", "--json", ""]])
def test_without_cuda_the_full_run_is_refused_in_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert capsys.readouterr().err == f"error: {bench.GPU_REFUSAL}\n"
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_cuda_is_refused(capsys):
    assert main(["bench", "gpu", "--device", "cuda", "--quick", "--json", ""]) == 1
    assert capsys.readouterr().err == f"error: {bench.GPU_REFUSAL}\n"


def test_json_folder_must_exist(tmp_path, capsys):
    assert main(["bench", "gpu", "--device", "cpu", "--quick", "--json", str(tmp_path / "no" / "b.json")]) == 1
    assert "for --json not found" in capsys.readouterr().err
