"""Files that ComfyUI's own nodes and other packs already downloaded are found and used where they
are, never downloaded twice: ``hub.find_copy`` (the core), ``load_model`` with ComfyUI's
``models/birefnet`` as models folder (the command line), and the loader node (standalone and with
ComfyUI's folder keys). A truncated or foreign file there is skipped with a one-line warning.
CPU only, never the network."""

import importlib
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from birefnet_core import hub, registry
from birefnet_core.checkpoint import load_model
from birefnet_core.config import PatchOrder
from birefnet_core.hub import ModelNotAvailableError
from birefnet_core.models import build_model
from birefnet_core.registry import Variant

from reference import load_make_weights

make_weights = load_make_weights()
SHA = "89abcdef0123456789abcdef0123456789abcdef"


pytestmark = pytest.mark.usefixtures("offline_hub")  # no test may reach the Hub


@pytest.fixture(scope="module")
def lite_file(tmp_path_factory):
    """Real swin_v1_t-shaped weights (BiRefNet_lite's architecture) stored in float16, and the
    state dict they hold."""
    sd = make_weights(build_model("swin_v1_t").state_dict(), seed=1)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path_factory.mktemp("lite") / "lite.safetensors"
    save_file(half, path)
    return path, half


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_file(make_weights(build_model("pvt_v2_b0").state_dict(), seed=0), path)
    return path


def put(source: Path, target: Path) -> Path:
    """``source`` at ``target`` (hard-linked where the file system allows: the files are large)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def truncated(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes()[:5000])
    return target


def tiny_entry(**kwargs) -> Variant:
    """A registry entry for the pvt_v2_b0 test weights (no released checkpoint has that backbone)."""
    fields = dict(name="Tiny", repo_id="ZhengPeng7/Tiny", backbone="pvt_v2_b0", width=64, height=64,
                  patch_order=PatchOrder.CURRENT, licence="MIT", description="tiny",
                  copies=("background_removal/tiny.safetensors", "RMBG/BiRefNet/Tiny.safetensors",
                          "BiRefNet/pth/tiny.pth"))
    fields.update(kwargs)
    return Variant(**fields)


def test_comfyui_models_folder_is_the_parent_of_its_birefnet_folder(tmp_path):
    root = tmp_path / "ComfyUI" / "models"
    assert hub.comfy_models_root(root / "birefnet") == root
    assert hub.comfy_models_root(root / "BiRefNet") == root  # lldacing's folder on a case-sensitive system
    assert hub.comfy_models_root(Path.home() / ".cache" / "birefnet") is None  # the default folder: no ComfyUI
    assert hub.comfy_models_root(tmp_path / "birefnet") is None
    assert hub.comfy_models_root(root / "checkpoints") is None


# ------------------------------------------------------------------------------------ the core

def test_find_copy_takes_the_first_complete_copy_and_names_the_broken_ones(tmp_path, tiny_file, caplog):
    root = tmp_path / "models"
    entry = tiny_entry()
    assert hub.find_copy(entry, [root]) is None  # nothing there
    broken = truncated(tiny_file, root / "background_removal" / "tiny.safetensors")
    good = put(tiny_file, root / "RMBG" / "BiRefNet" / "Tiny.safetensors")
    before = (good.read_bytes(), good.stat().st_mtime_ns)
    with caplog.at_level(logging.WARNING, logger="birefnet_core.hub"):
        assert hub.find_copy(entry, [root]) == good
    warned = [r.getMessage() for r in caplog.records if r.name == "birefnet_core.hub"]
    assert len(warned) == 1 and str(broken) in warned[0] and "incomplete" in warned[0] and "\n" not in warned[0]
    assert (good.read_bytes(), good.stat().st_mtime_ns) == before  # used where it is, never changed
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="birefnet_core.hub"):
        assert hub.find_copy(entry, [root], quiet=True) == good
    assert not caplog.records
    # by name: a registry entry's copies are looked up the same way
    assert hub.copy_candidates("BiRefNet_lite", [root])[0] == root / "RMBG" / "BiRefNet" / "BiRefNet_lite.safetensors"
    assert hub.copy_candidates("no such model", [root]) == []


def test_a_copy_holding_another_model_is_skipped(tmp_path, tiny_file, caplog):
    root = tmp_path / "models"
    put(tiny_file, root / "background_removal" / "tiny.safetensors")
    (root / "RMBG" / "BiRefNet").mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, root / "RMBG" / "BiRefNet" / "Tiny.safetensors")
    with caplog.at_level(logging.WARNING, logger="birefnet_core.hub"):
        assert hub.find_copy(tiny_entry(backbone="swin_v1_t"), [root]) is None
    text = caplog.text
    assert "holds a pvt_v2_b0 BiRefNet, not Tiny's swin_v1_t" in text
    assert "Tiny.safetensors for Tiny: its tensors are not a checkpoint of a known family" in text


def test_a_torch_copy_is_checked_for_completeness(tmp_path, tiny_file, caplog):
    root = tmp_path / "models"
    from safetensors.torch import load_file

    pth = root / "BiRefNet" / "pth" / "tiny.pth"
    pth.parent.mkdir(parents=True)
    torch.save(load_file(tiny_file), pth)
    assert hub.weights_file_problem(pth) is None
    assert hub.find_copy(tiny_entry(), [root]) == pth
    pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    assert "truncated or damaged" in hub.weights_file_problem(pth)
    (root / "empty.pth").write_bytes(b"")
    assert hub.weights_file_problem(root / "empty.pth") == "it is empty"
    with caplog.at_level(logging.WARNING, logger="birefnet_core.hub"):
        assert hub.find_copy(tiny_entry(), [root]) is None
    assert f"not using {pth} for Tiny: it is truncated or damaged" in caplog.text


def test_folder_keys_and_the_universal_packs_cache_layout(tmp_path, tiny_file):
    """A ComfyUI folder key's other folders (extra_model_paths.yaml), then the Hugging Face cache
    layout ComfyUI_BiRefNet_Universal keeps in models/BiRefNet/<repo name>."""
    root, extra = tmp_path / "models", tmp_path / "elsewhere" / "bg"
    got = put(tiny_file, extra / "tiny.safetensors")
    assert hub.find_copy(tiny_entry(), [root], {"BACKGROUND_REMOVAL": [extra]}) == got
    assert hub.find_copy(tiny_entry(), [root], {"checkpoints": [extra]}) is None
    repo = root / "BiRefNet" / "Tiny" / "models--ZhengPeng7--Tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    cached = put(tiny_file, repo / "snapshots" / SHA / "model.safetensors")
    assert hub.find_copy(tiny_entry(), [root]) == cached


# ------------------------------------------------------------------ load_model / the command line

def test_load_model_uses_another_packs_copy_in_comfyui(tmp_path, lite_file, caplog):
    path, half = lite_file
    root = tmp_path / "ComfyUI" / "models"
    copy = put(path, root / "RMBG" / "BiRefNet" / "BiRefNet_lite.safetensors")  # 1038lab's
    with caplog.at_level(logging.INFO, logger="birefnet_core.checkpoint"):
        model = load_model("BiRefNet_lite", models_dir=root / "birefnet", device="cpu", dtype="float32")
    assert model.source == str(copy) and model.variant is registry.get_variant("BiRefNet_lite")
    assert model.patch_order is PatchOrder.LEGACY and "patch order legacy (registry entry BiRefNet_lite)" in caplog.text
    got = model.state_dict()
    assert all(torch.equal(got[k], v.to(got[k].dtype)) for k, v in half.items())
    assert not (root / "birefnet").exists()  # nothing downloaded, linked or copied
    assert load_model("BiRefNet_lite", models_dir=root / "birefnet", device="cpu", dtype="float32",
                      patch_order="current").patch_order is PatchOrder.CURRENT
    # a models folder that is not ComfyUI's: no search, the usual offline error
    with pytest.raises(ModelNotAvailableError, match="offline mode"):
        load_model("BiRefNet_lite", models_dir=tmp_path / "models", device="cpu")


def test_a_broken_copy_is_skipped_and_the_hugging_face_cache_used(tmp_path, lite_file, caplog):
    path, _ = lite_file
    root = tmp_path / "ComfyUI" / "models"
    broken = truncated(path, root / "BiRefNet" / "General-Lite.safetensors")  # lldacing's, interrupted
    cache = tmp_path / "hf-cache" / "models--ZhengPeng7--BiRefNet_lite"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(SHA)
    put(path, cache / "snapshots" / SHA / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="birefnet_core.hub"):
        model = load_model("BiRefNet_lite", models_dir=root / "birefnet", device="cpu", dtype="float32")
    assert model.source == str(root / "birefnet" / "BiRefNet_lite.safetensors")
    assert f"not using {broken} for BiRefNet_lite: it is incomplete" in caplog.text
    assert broken.stat().st_size == 5000  # another pack's file is never repaired or removed


# ------------------------------------------------------------------------------- the loader node

@pytest.fixture
def node(pack, tmp_path, monkeypatch):
    """The loader node standalone, its models folder ComfyUI's models/birefnet."""
    root = tmp_path / "ComfyUI" / "models"
    monkeypatch.setenv("BIREFNET_MODELS_DIR", str(root / "birefnet"))
    return pack.NODE_CLASS_MAPPINGS["BiRefNetLoader"], root


def test_the_loader_lists_and_loads_another_packs_file_in_place(node, lite_file, caplog):
    loader, root = node
    path, half = lite_file
    choices = loader.INPUT_TYPES()["required"]["model"][0]
    assert "BiRefNet_lite (download)" in choices and "BiRefNet_lite" not in choices
    copy = put(path, root / "BiRefNet" / "General-Lite.safetensors")  # lldacing's name
    choices = loader.INPUT_TYPES()["required"]["model"][0]
    assert "BiRefNet_lite" in choices and "BiRefNet_lite (download)" not in choices
    assert "BiRefNet_HR (download)" in choices
    for value in ("BiRefNet_lite", "BiRefNet_lite (download)"):  # saved before or after: both resolve
        assert loader.VALIDATE_INPUTS(model=value) is True
        (model,) = loader().load(value, "cpu", "float32", "auto")
        assert model.source == str(copy) and model.variant.name == "BiRefNet_lite"
        assert model.ready().patch_order.value == "legacy"  # (the pack has its own copy of the core)
    got = model.ready().state_dict()
    assert all(torch.equal(got[k], v.to(got[k].dtype)) for k, v in half.items())
    (current,) = loader().load("BiRefNet_lite", "cpu", "float32", "current")  # the widget still decides
    assert current.ready().patch_order.value == "current"
    assert not (root / "birefnet").exists()


def test_the_loader_skips_a_truncated_copy_with_one_line(pack, node, lite_file, caplog):
    loader, root = node
    path, _ = lite_file
    broken = truncated(path, root / "RMBG" / "BiRefNet" / "BiRefNet_lite.safetensors")
    with caplog.at_level(logging.WARNING):
        choices = loader.INPUT_TYPES()["required"]["model"][0]
    assert "BiRefNet_lite (download)" in choices and not caplog.records  # listing: quiet
    with caplog.at_level(logging.WARNING):
        with pytest.raises(pack.birefnet_core.hub.ModelNotAvailableError, match="offline mode"):  # then a download
            loader().load("BiRefNet_lite (download)", "cpu", "float32", "auto")
    warned = [r.getMessage() for r in caplog.records if "not using" in r.getMessage()]
    assert len(warned) == 1 and str(broken) in warned[0] and "\n" not in warned[0]


def test_inside_comfyui_the_folder_keys_are_searched(pack, tmp_path, lite_file, monkeypatch):
    """With ComfyUI's folder_paths (its folder keys, as extra_model_paths.yaml extends them): a copy
    under another base folder of the 'rmbg' key that 1038lab registers is found."""
    comfy = importlib.import_module(pack.__name__ + ".nodes.comfy")
    path, _ = lite_file
    models, extra = tmp_path / "ComfyUI" / "models", tmp_path / "shared" / "RMBG"
    table = {"rmbg": ([str(models / "RMBG"), str(extra)], {".safetensors"}),
             "birefnet": ([str(models / "birefnet")], {".safetensors"})}
    fake = SimpleNamespace(models_dir=str(models), folder_names_and_paths=table,
                           get_folder_paths=lambda key: list(table[key][0]))
    monkeypatch.setattr(comfy, "IN_COMFYUI", True)
    monkeypatch.setattr(comfy, "folder_paths", fake, raising=False)
    assert comfy.other_models_roots() == [models]
    assert comfy.other_key_folders()["rmbg"] == [models / "RMBG", extra]
    variant = pack.birefnet_core.registry.get_variant("BiRefNet_lite")  # the pack's own copy of the core
    assert comfy.find_copy(variant) is None
    copy = put(path, extra / "BiRefNet" / "BiRefNet_lite.safetensors")
    assert comfy.find_copy(variant) == copy
