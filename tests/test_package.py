"""The pack's layout: it imports as ComfyUI imports it, the core stays free of ComfyUI, the CLI runs."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pack_imports_like_comfyui_imports_it(pack):
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) <= set(pack.NODE_CLASS_MAPPINGS)
    web = REPO / pack.WEB_DIRECTORY
    assert web.is_dir()


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_core_imports_without_comfyui_and_loads_optional_kernels_lazily():
    result = _fresh_python(
        "import sys, birefnet_core, birefnet_core.ops, birefnet_core.bench, birefnet_core.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('comfy', 'folder_paths', 'nodes', 'server', 'triton', 'transformers'))\n"
        "print(bad)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_bench_deform_prints_figures():
    result = subprocess.run(
        [sys.executable, "-m", "birefnet_core", "bench", "deform", "--sizes", "12", "--kernels", "3",
         "--dtypes", "float32", "--backends", "portable", "torchvision", "--repeats", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "threads" in lines[0]  # the machine is named
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("portable", "torchvision"))}
    assert set(rows) == {"portable", "torchvision"}
    for row in rows.values():
        assert row[1:4] == ["float32", "3", "12"]
        assert float(row[4]) > 0


def test_cli_without_a_command_explains_itself():
    result = subprocess.run([sys.executable, "-m", "birefnet_core"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "bench" in result.stderr


def test_readme_model_table_matches_the_registry():
    from birefnet_core.registry import VARIANTS

    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("| name | repo | backbone | resolution (W×H) | patch order | licence |") + 2
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    rows = lines[start:end]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0].strip("`")] = cells
    assert set(table) == {v.name for v in VARIANTS if v.family == "birefnet"}
    for v in VARIANTS:
        if v.family != "birefnet":
            continue
        name, repo, backbone, resolution, order, licence = table[v.name]
        assert (repo, backbone, order) == (v.repo_id, v.backbone, v.patch_order.value)
        assert resolution.startswith(f"{v.width}×{v.height}") and licence.startswith(v.licence)


def test_readme_focus_table_matches_the_registry():
    from birefnet_core.registry import VARIANTS

    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("| name | repo | architecture | task | the mask marks | licence |") + 2
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    table = {}
    for row in lines[start:end]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0].strip("`")] = cells
    focus = [v for v in VARIANTS if v.family == "focus"]
    assert len(focus) == 10 and set(table) == {v.name for v in focus}
    for v in focus:
        name, repo, architecture, task, _, licence = table[v.name]
        assert (repo, architecture, task, licence) == (v.repo_id, v.backbone, v.task, v.licence)
