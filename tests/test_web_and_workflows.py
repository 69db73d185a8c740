"""The frontend extension (web/) and the example workflows (example_workflows/).

The JavaScript itself is tested by ``node --test`` (tests/js/); this module runs those tests, checks
that the extension only imports what ComfyUI serves, and validates every example workflow against
the pack's node classes and a few ComfyUI core nodes.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js (`node`) is not on PATH: the web/ JavaScript tests need it")

EXTENSION_IMPORTS = {"./birefnet_logic.js", "../../scripts/app.js", "../../scripts/api.js"}

#: ComfyUI core nodes the example workflows may use: link inputs, widget names in order, output types
CORE_NODES = {
    "LoadImage": {"inputs": {}, "widgets": ["image", "upload"], "outputs": ["IMAGE", "MASK"]},
    "SaveImage": {"inputs": {"images": "IMAGE"}, "widgets": ["filename_prefix"], "outputs": []},
    "PreviewImage": {"inputs": {"images": "IMAGE"}, "widgets": [], "outputs": []},
    "MaskToImage": {"inputs": {"mask": "MASK"}, "widgets": [], "outputs": ["IMAGE"]},
    # VideoHelperSuite (Kosinkadink/ComfyUI-VideoHelperSuite): its frontend saves widgets as a dict
    "VHS_LoadVideo": {"inputs": {"meta_batch": "VHS_BatchManager", "vae": "VAE"},
                      "widgets": ["video", "force_rate", "custom_width", "custom_height", "frame_load_cap",
                                  "skip_first_frames", "select_every_nth"],
                      "outputs": ["IMAGE", "INT", "AUDIO", "VHS_VIDEOINFO"], "optional": {"meta_batch", "vae"}},
    "VHS_VideoCombine": {"inputs": {"images": "IMAGE", "audio": "AUDIO", "meta_batch": "VHS_BatchManager",
                                    "vae": "VAE"},
                         "widgets": ["frame_rate", "loop_count", "filename_prefix", "format", "pingpong",
                                     "save_output"],
                         "outputs": ["VHS_FILENAMES"], "optional": {"audio", "meta_batch", "vae"}},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def _run(*args):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


# ---- web/ ----


@needs_node
def test_js_unit_tests_pass():
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "js").glob("*.test.mjs"))
    assert files, "no tests/js/*.test.mjs"
    # files listed explicitly: `node --test DIR` means different things in Node 20 and 22
    result = _run(NODE, "--test", *files)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"^# fail 0$", result.stdout, re.M), result.stdout[-3000:]


@needs_node
@pytest.mark.parametrize("path", sorted(WEB.glob("*.js")), ids=lambda p: p.name)
def test_web_js_parses(path):
    result = _run(NODE, "--check", str(path))
    assert result.returncode == 0, result.stderr


def test_web_is_an_es_module_folder():
    # Node reads web/*.js as ES modules thanks to this file; ComfyUI only serves/loads *.js from web/
    assert json.loads((WEB / "package.json").read_text())["type"] == "module"
    assert {p.name for p in WEB.glob("*.js")} == {"birefnet.js", "birefnet_logic.js"}


def _imports(source):
    static = re.findall(r"""^\s*(?:import|export)\b[^'"]*?\bfrom\s*['"]([^'"]+)['"]""", source, re.M)
    bare = re.findall(r"""^\s*import\s*['"]([^'"]+)['"]""", source, re.M)
    return static + bare


def test_extension_imports_only_comfyui_and_the_logic_module():
    source = (WEB / "birefnet.js").read_text()
    assert set(_imports(source)) == EXTENSION_IMPORTS
    assert not re.search(r"\bimport\s*\(|\brequire\s*\(", source), "no dynamic imports or require()"
    assert len(re.findall(r"\bapp\.registerExtension\s*\(", source)) == 1
    assert re.search(r"""["']birefnet\.pack["']""", source)


def test_logic_module_is_pure():
    source = (WEB / "birefnet_logic.js").read_text()
    assert _imports(source) == []
    assert not re.search(r"\b(document|window|app|api)\.", source)


# ---- example workflows ----


def _is_widget(spec):
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _node_spec(pack, node_type):
    """(link inputs {name: type}, widget inputs [(name, spec)] (required, then optional ones: the
    frontend shows and saves both), output types) of a node type."""
    if node_type in CORE_NODES:
        core = CORE_NODES[node_type]
        return core["inputs"], [(name, None) for name in core["widgets"]], core["outputs"]
    cls = pack.NODE_CLASS_MAPPINGS[node_type]
    inputs = cls.INPUT_TYPES()
    required, optional = inputs["required"], inputs.get("optional", {})
    # optional link inputs are listed in a saved node's inputs too (unconnected: link None)
    links = {name: spec[0] for name, spec in {**required, **optional}.items() if not _is_widget(spec)}
    widgets = [(name, spec) for name, spec in {**required, **optional}.items() if _is_widget(spec)]
    return links, widgets, list(cls.RETURN_TYPES)


def _check_widget(cls, name, spec, value):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"{cls.__name__}.{name} = {value!r}"
    if cls.__name__ == "BiRefNetLoader" and name == "model":
        assert cls.VALIDATE_INPUTS(model=value) is True, where
    elif isinstance(kind, (list, tuple)):
        assert value in kind, f"{where}: not one of {list(kind)}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    if kind in ("INT", "FLOAT"):
        assert options.get("min", value) <= value <= options.get("max", value), f"{where}: out of range"


def test_there_are_example_workflows():
    assert any(p.name == "birefnet_remove_background.json" for p in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflow_is_valid(pack, path):
    workflow = json.loads(path.read_text())
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        assert key in workflow, f"missing {key}"
    assert workflow["version"] == 0.4

    nodes = {}
    for node in workflow["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties"):
            assert key in node, f"node {node.get('id')} has no {key}"
        assert node["id"] not in nodes, f"duplicate node id {node['id']}"
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
        known = node["type"] in pack.NODE_CLASS_MAPPINGS or node["type"] in CORE_NODES
        assert known, f"node {node['id']}: unknown type {node['type']} (add it to CORE_NODES if it is core)"
        nodes[node["id"]] = node
    assert workflow["last_node_id"] >= max(nodes)

    for node in nodes.values():
        links_in, widgets, outputs = _node_spec(pack, node["type"])
        values = node.get("widgets_values", [])
        names = [name for name, _ in widgets]
        if isinstance(values, dict):  # VideoHelperSuite's format: every widget by name
            assert set(names) <= set(values), f"{node['type']} widgets_values lacks {set(names) - set(values)}"
            values = [values[name] for name in names]
        if node["type"] in pack.NODE_CLASS_MAPPINGS:  # saved before an optional widget existed: values end early
            cls = pack.NODE_CLASS_MAPPINGS[node["type"]]
            required = sum(_is_widget(spec) for spec in cls.INPUT_TYPES()["required"].values())
            names, widgets = names[:max(required, len(values))], widgets[:max(required, len(values))]
        assert len(values) == len(names), f"{node['type']} widgets_values {values} for widgets {names}"
        if node["type"] in pack.NODE_CLASS_MAPPINGS:
            cls = pack.NODE_CLASS_MAPPINGS[node["type"]]
            for (name, spec), value in zip(widgets, values):
                _check_widget(cls, name, spec, value)
        inputs = node.get("inputs", [])
        assert {i["name"]: i["type"] for i in inputs if "widget" not in i} == links_in, (
            f"{node['type']} link inputs"
        )
        optional = set(CORE_NODES.get(node["type"], {}).get("optional", ()))
        if node["type"] in pack.NODE_CLASS_MAPPINGS:
            optional = set(pack.NODE_CLASS_MAPPINGS[node["type"]].INPUT_TYPES().get("optional", {}))
        assert all(i.get("link") is not None or i["name"] in optional for i in inputs if "widget" not in i), (
            f"{node['type']}: unconnected required input"
        )
        assert [o["type"] for o in node.get("outputs", [])] == outputs, f"{node['type']} outputs"

    link_ids = set()
    for link in workflow["links"]:
        link_id, origin, origin_slot, target, target_slot, kind = link
        assert link_id not in link_ids, f"duplicate link {link_id}"
        link_ids.add(link_id)
        output = nodes[origin]["outputs"][origin_slot]
        consumer = nodes[target]["inputs"][target_slot]
        produced = _node_spec(pack, nodes[origin]["type"])[2][origin_slot]
        consumed = _node_spec(pack, nodes[target]["type"])[0][consumer["name"]]
        assert kind == produced == consumed == output["type"] == consumer["type"], f"link {link}"
        assert link_id in (output.get("links") or []) and consumer["link"] == link_id, f"link {link} not on its slots"
    assert workflow["last_link_id"] >= max(link_ids, default=0)
    for node in nodes.values():
        for slot in node.get("inputs", []):
            assert slot.get("link") is None or slot["link"] in link_ids
        for slot in node.get("outputs", []):
            assert set(slot.get("links") or []) <= link_ids


# ---- template thumbnails (example_workflows/<workflow>.jpg, drawn by example_workflows/make_thumbnails.py) ----

THUMBNAIL_SCRIPT = REPO / "example_workflows" / "make_thumbnails.py"


def _thumbnail_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_thumbnails_under_test", THUMBNAIL_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_example_workflow_has_its_template_thumbnail(path):
    """ComfyUI's template browser shows <workflow>.jpg beside <workflow>.json (404 without it)."""
    from PIL import Image

    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{thumbnail.name} missing: run python example_workflows/make_thumbnails.py"
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG"
        image.verify()
    with Image.open(thumbnail) as image:
        image.load()
        assert image.mode == "RGB" and 256 <= min(image.size) <= max(image.size) <= 1024, image.size
    assert 5_000 < thumbnail.stat().st_size < 200_000  # a picture, and small enough for a card


def test_the_thumbnail_script_draws_the_committed_thumbnails(pack, tmp_path, monkeypatch):
    """The script runs and draws the same pictures as the committed ones: byte-identical with the
    Pillow that drew them; another Pillow may render the text or code the JPEG a little differently,
    hence a tolerance on the mean difference of every 16 x 16 block: another JPEG quality (75 for
    85) moves no block by more than ~10 of 255 levels, one node renamed in a workflow moves one by ~85."""
    import numpy as np
    from PIL import Image

    script = _thumbnail_script()
    monkeypatch.setattr(script, "display_names", lambda: dict(pack.NODE_DISPLAY_NAME_MAPPINGS))
    assert script.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.with_suffix(".jpg").name for p in WORKFLOWS)
    for path in WORKFLOWS:
        drawn = np.asarray(Image.open(tmp_path / f"{path.stem}.jpg").convert("RGB"), dtype=np.float64)
        committed = np.asarray(Image.open(path.with_suffix(".jpg")).convert("RGB"), dtype=np.float64)
        assert drawn.shape == committed.shape, path.name
        height, width, _ = drawn.shape
        blocks = np.abs(drawn - committed)[:height // 16 * 16, :width // 16 * 16]
        worst = blocks.reshape(height // 16, 16, width // 16, 16, 3).mean(axis=(1, 3, 4)).max()
        assert worst < 30, f"{path.stem}.jpg differs from what the script draws ({worst:.1f}): run the script"
