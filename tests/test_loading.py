"""Model loading: registry, Hub download (offline, hand-made local folders), checkpoint reading,
backbone detection and the errors users see. CPU only, never the network."""

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from birefnet_core import checkpoint, hub, registry
from birefnet_core.checkpoint import (detect_backbone, load_model, load_state_dict_into, normalise_state_dict,
                                      read_state_dict)
from birefnet_core.config import BACKBONES, PatchOrder
from birefnet_core.hub import ModelAccessError, ModelNotAvailableError
from birefnet_core.inference import auto_dtype
from birefnet_core.models import build_model

from reference import REFERENCE, load_make_weights

make_weights = load_make_weights()
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("offline_hub")  # no test may reach the Hub


def weights(backbone="pvt_v2_b0", seed=0):
    return make_weights(build_model(backbone).state_dict(), seed=seed)


def shapes_only(backbone):
    """The state dict of ``backbone`` as meta tensors: from the official layout where there is one,
    else from our model built on the meta device (no memory, no Swin-L in RAM)."""
    path = REFERENCE / f"state_dict_{backbone}.json"
    if path.exists():
        layout = json.loads(path.read_text())
        return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in layout.items()}
    with torch.device("meta"):
        return build_model(backbone).state_dict()


def assert_same_weights(model, sd):
    got = model.state_dict()
    assert set(got) == set(sd)
    for key, value in sd.items():
        assert torch.equal(got[key], value.to(got[key].dtype)), key


# ------------------------------------------------------------------------------------- registry

def test_registry_lookup_is_case_insensitive_and_accepts_repo_ids():
    assert registry.get_variant("birefnet_LITE").name == "BiRefNet_lite"
    assert registry.get_variant("ZhengPeng7/BiRefNet_HR").name == "BiRefNet_HR"
    assert registry.get_variant("rmbg-2.0").repo_id == "briaai/RMBG-2.0"
    assert registry.find_variant("nope") is None


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="unknown BiRefNet model 'BiRefNet_lit'.*'BiRefNet_lite'"):
        registry.get_variant("BiRefNet_lit")
    with pytest.raises(ValueError, match="BiRefNet-matting"):
        registry.get_variant("matting")


def test_every_registry_entry_is_complete_and_consistent():
    from birefnet_core.models.families import get_family

    names = [v.name.lower() for v in registry.VARIANTS]
    assert len(names) == len(set(names))
    assert {v.family for v in registry.VARIANTS} == {"birefnet", "focus"}
    for v in registry.VARIANTS:
        assert v.backbone in get_family(v.family).architectures(), v
        assert v.width % 32 == 0 and v.height % 32 == 0 and v.description, v
        if v.repo_id.startswith(("ZhengPeng7/", "geshang/")):
            assert v.repo_id.split("/")[1] == v.name
        assert v.url == f"https://huggingface.co/{v.repo_id}/resolve/main/{v.filename}"
        if v.family == "birefnet":
            assert v.backbone in BACKBONES and v.task == "" and v.max_side is None, v
            assert isinstance(v.patch_order, PatchOrder), v
            assert v.licence in ("MIT", "CC BY-NC 4.0"), v
            # the Hub file: model.safetensors, but for the repackaged and training-checkpoint releases
            # (tests/test_registry_checkpoints.py checks those by name)
            assert v.filename == "model.safetensors" or v.repo_id in ("Comfy-Org/BiRefNet", "joelseytre/toonout"), v
        else:  # the FOCUS entries: see tests/test_focus_loading.py
            assert v.patch_order is None and v.licence == "Apache-2.0" and v.task, v
            assert v.filename == f"{v.name}.pth" and v.max_side == 2048 and v.resolution == (512, 512), v
        if v.size_range:
            assert all(s % 32 == 0 for s in v.size_range)
    by = registry.get_variant
    assert by("BiRefNet_lite-2K").resolution == (2560, 1440)
    assert by("BiRefNet_dynamic").dynamic and by("BiRefNet_dynamic").size_range == (256, 2304)
    assert not by("BiRefNet").dynamic
    assert by("BiRefNet").patch_order is PatchOrder.LEGACY and by("BiRefNet_HR").patch_order is PatchOrder.CURRENT
    rmbg = by("RMBG-2.0")
    assert rmbg.gated and rmbg.licence == "CC BY-NC 4.0" and "HF_TOKEN" in rmbg.description
    assert all(not v.gated and v.licence == "MIT" for v in registry.VARIANTS if v is not rmbg and v.family == "birefnet")


# ------------------------------------------------------------------------------------ reading

def test_safetensors_round_trip_gives_identical_outputs(tmp_path):
    reference = build_model("pvt_v2_b0", patch_order="legacy")
    reference.load_state_dict(make_weights(reference.state_dict()), strict=True)
    path = tmp_path / "tiny.safetensors"
    save_file(reference.state_dict(), path)
    model = load_model(path, device="cpu", dtype="float32")
    assert not model.training and model.patch_order is PatchOrder.LEGACY
    assert model.variant is None and model.source == str(path)
    assert_same_weights(model, reference.state_dict())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_pth_with_prefixes_and_wrapper(tmp_path, wrapper):
    sd = weights()
    prefixes = ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.module."]
    prefixed = {prefixes[i % len(prefixes)] + k: v for i, (k, v) in enumerate(sd.items())}
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: prefixed, "epoch": 244}, path)
    read = read_state_dict(path)
    assert set(read) == set(prefixed)
    assert list(normalise_state_dict(read)) == list(sd)
    assert_same_weights(load_model(path, device="cpu", dtype="float32"), sd)


def test_normalise_keeps_everything_else():
    t = torch.zeros(1)
    assert list(normalise_state_dict({"bb.module.x": t, "_orig_mod.decoder.module.y": t})) == [
        "bb.module.x", "decoder.module.y"]
    with pytest.raises(ValueError, match="two tensors named 'x'"):
        normalise_state_dict({"x": t, "module.x": t})


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_into_a_float32_model(tmp_path, stored):
    sd = {k: v.to(stored) if v.is_floating_point() else v for k, v in weights().items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, path)
    model = load_model(path, device="cpu", dtype="float32")
    assert next(model.parameters()).dtype == torch.float32
    assert_same_weights(model, sd)  # the rounded values, exactly
    auto = load_model(path, device="cpu", dtype="auto")
    assert next(auto.parameters()).dtype == auto_dtype(torch.device("cpu"))  # the CPU policy
    assert next(load_model(sd, device="cpu", dtype="bfloat16").parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be auto, float32, float16 or bfloat16"):
        load_model(sd, device="cpu", dtype="int8")


class WritesAMarker:
    """Unpickling this runs code (it writes a file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def test_a_pickle_that_needs_code_is_refused_and_runs_nothing(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(WritesAMarker(proof)))  # the object really runs code when unpickled
    assert proof.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"payload": WritesAMarker(marker), "state_dict": weights()}, path)
    for attempt in (read_state_dict, lambda p: load_model(p, device="cpu", dtype="float32")):
        with pytest.raises(ValueError, match="pickled Python objects.*refusing to run code.*safetensors"):
            attempt(path)
        assert not marker.exists()


def test_missing_files_and_unknown_types(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_model(tmp_path / "nowhere.safetensors")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_model(str(tmp_path / "nowhere.pth"))
    odd = tmp_path / "model.onnx"
    odd.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="unsupported weights file type '.onnx'"):
        read_state_dict(odd)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not read"):
        read_state_dict(junk)


# ---------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_backbone_is_detected_from_shapes(backbone):
    sd = shapes_only(backbone)
    assert detect_backbone(sd) == backbone
    assert detect_backbone({"module." + k: v for k, v in sd.items()}) == backbone


@pytest.mark.parametrize("keys, says", [
    (["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"],
     "this looks like a Stable Diffusion / UNet"),
    (["first_stage_model.decoder.up.0.block.0.conv1.weight"], "VAE"),
    (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], "VAE"),
    (["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"], "text encoder"),
    (["text_model.encoder.layers.0.mlp.fc1.weight"], "text encoder"),
    (["lora_unet_down_blocks_0.lora_down.weight"], "LoRA"),
    (["patch_embed.proj.weight", "layers.0.blocks.0.norm1.weight"], "bare Swin Transformer backbone"),
    (["foo.weight", "bar.bias"], r"none of its 2 tensors.*'foo.weight', 'bar.bias'"),
])
def test_foreign_checkpoints_are_described(keys, says):
    sd = {k: torch.zeros(2) for k in keys}
    with pytest.raises(ValueError, match=says):
        detect_backbone(sd)
    with pytest.raises(ValueError, match=says):
        load_model(sd, device="cpu", dtype="float32")


def test_unsupported_backbone_sizes_are_named():
    sd = {"bb.patch_embed.proj.weight": torch.empty(64, 3, 4, 4, device="meta")}
    with pytest.raises(ValueError, match="unsupported BiRefNet backbone: embedding width 64.*swin_v1_t 96/6"):
        detect_backbone(sd)


def test_a_checkpoint_forced_into_another_backbone_says_so():
    with torch.device("meta"):
        model = build_model("swin_v1_t")
    with pytest.raises(ValueError, match=r"missing keys.*unexpected keys.*the checkpoint's backbone is swin_v1_l "
                                         "but the model was built for swin_v1_t"):
        load_state_dict_into(model, shapes_only("swin_v1_l"))
    with torch.device("meta"):
        model = build_model("pvt_v2_b2")
    with pytest.raises(ValueError, match="other shapes.*backbone is pvt_v2_b0 but the model was built for pvt_v2_b2"):
        load_state_dict_into(model, shapes_only("pvt_v2_b0"))


def test_a_checkpoint_without_batchnorm_is_explained():
    model = build_model("pvt_v2_b0")
    bn = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    sd = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in bn}
    with pytest.raises(ValueError, match="no BatchNorm statistics: it was trained with batch size 1"):
        load_state_dict_into(model, sd)


# -------------------------------------------------------------------------------------- hub

def test_download_returns_a_file_already_in_the_folder_without_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("touched the Hub"))
    save_file({"x": torch.zeros(1)}, tmp_path / "BiRefNet_lite.safetensors")  # complete (a broken one is fetched)
    assert hub.download("birefnet_lite", tmp_path) == tmp_path / "BiRefNet_lite.safetensors"


def test_download_offline_from_a_local_dir(tmp_path):
    """The real hf_hub_download, offline, finds the file in the staging local_dir."""
    staging = tmp_path / hub.STAGING / "BiRefNet_lite"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"weights")
    got = hub.download("BiRefNet_lite", tmp_path, progress=False)
    assert got == tmp_path / "BiRefNet_lite.safetensors" and got.read_bytes() == b"weights"
    assert not (tmp_path / hub.STAGING).exists()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["BiRefNet_lite.safetensors"]


def test_download_offline_from_the_hugging_face_cache(tmp_path):
    """A hand-made HF cache (refs/main + snapshots/<sha>/file) is reused, never re-downloaded."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--ZhengPeng7--BiRefNet_HR"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    save_file({"hr": torch.ones(3)}, repo / "snapshots" / sha / "model.safetensors")
    got = hub.download("BiRefNet_HR", tmp_path / "models", cache_dir=tmp_path / "cache")
    assert got == tmp_path / "models" / "BiRefNet_HR.safetensors"
    assert got.read_bytes() == (repo / "snapshots" / sha / "model.safetensors").read_bytes()


def test_offline_missing_model_raises_one_line_error(tmp_path):
    folder = tmp_path / "models"
    url = "https://huggingface.co/ZhengPeng7/BiRefNet_lite/resolve/main/model.safetensors"
    for attempt in (lambda: hub.download("BiRefNet_lite", folder),
                    lambda: load_model("BiRefNet_lite", models_dir=folder, device="cpu", dtype="float32")):
        with pytest.raises(ModelNotAvailableError) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message
        for part in ("ZhengPeng7/BiRefNet_lite", "'model.safetensors'", url, str(folder),
                     "'BiRefNet_lite.safetensors'", "offline mode"):
            assert part in message, part
    assert not list(folder.rglob("*.safetensors")) and not (folder / hub.STAGING).exists()


class GatedRepoError(Exception):
    """Stands in for huggingface_hub's (the error is recognised by class name)."""


class Forbidden(Exception):
    response = type("Response", (), {"status_code": 403})()


@pytest.mark.parametrize("error", [GatedRepoError("401 gated"), Forbidden("403")])
def test_gated_or_forbidden_repo_explains_licence_and_token(tmp_path, monkeypatch, error):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(ModelAccessError, match=r"briaai/RMBG-2.0.*accept its licence.*HF_TOKEN.*"
                                               r"RMBG-2.0/resolve/main/model.safetensors.*'RMBG-2.0.safetensors'"):
        hub.download("RMBG-2.0", tmp_path, token=None)


# ------------------------------------------------------------------------ load_model by name

@pytest.fixture(scope="module")
def lite_models_dir(tmp_path_factory):
    """A models folder holding real swin_v1_t-shaped weights (44 M parameters) as BiRefNet_lite."""
    folder = tmp_path_factory.mktemp("models")
    sd = build_model("swin_v1_t").state_dict()
    save_file(sd, folder / "BiRefNet_lite.safetensors")
    return folder, sd


def test_load_model_by_registry_name_from_the_models_folder(lite_models_dir, caplog, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("touched the Hub"))
    folder, sd = lite_models_dir
    with caplog.at_level(logging.INFO, logger="birefnet_core.checkpoint"):
        model = load_model("birefnet_LITE", models_dir=folder, device="cpu", dtype="float32")
    assert "patch order legacy (registry entry BiRefNet_lite)" in caplog.text
    assert model.variant is registry.get_variant("BiRefNet_lite") and model.patch_order is PatchOrder.LEGACY
    assert model.source == str(folder / "BiRefNet_lite.safetensors")
    assert_same_weights(model, sd)
    # the same file by path: matched to the registry entry by its name
    by_path = load_model(folder / "BiRefNet_lite.safetensors", device="cpu", patch_order="current")
    assert by_path.variant is model.variant and by_path.patch_order is PatchOrder.CURRENT


def test_load_model_from_the_environment_models_dir(lite_models_dir, monkeypatch):
    folder, _ = lite_models_dir
    monkeypatch.setenv(checkpoint.MODELS_DIR_ENV, str(folder))
    assert checkpoint.default_models_dir() == folder
    assert load_model("BiRefNet_lite", device="cpu", dtype="float32").variant.name == "BiRefNet_lite"


def test_a_registry_name_holding_another_backbone_is_an_error(tmp_path):
    save_file(weights(), tmp_path / "BiRefNet_lite.safetensors")
    with pytest.raises(ValueError, match="should hold model 'BiRefNet_lite' .*swin_v1_t.*pvt_v2_b0"):
        load_model("BiRefNet_lite", models_dir=tmp_path, device="cpu", dtype="float32")


def test_a_file_named_like_a_variant_of_another_backbone_ignores_the_name(tmp_path, caplog):
    save_file(weights(), tmp_path / "BiRefNet_HR.safetensors")
    with caplog.at_level(logging.INFO, logger="birefnet_core.checkpoint"):
        model = load_model(tmp_path / "BiRefNet_HR.safetensors", device="cpu", dtype="float32")
    assert model.variant is None and model.patch_order is PatchOrder.LEGACY
    assert "ignoring the name" in caplog.text


def test_patch_order_choice():
    choose = checkpoint._choose_patch_order
    hr, lite = registry.get_variant("BiRefNet_HR"), registry.get_variant("BiRefNet_lite")
    assert choose("current", lite, None)[0] is PatchOrder.CURRENT
    assert choose("auto", hr, None)[0] is PatchOrder.CURRENT
    assert choose(None, None, hr) == (PatchOrder.CURRENT, "the file name matches registry entry BiRefNet_HR")
    assert choose(None, None, None)[0] is PatchOrder.LEGACY
    with pytest.raises(ValueError, match="legacy' or 'current"):
        choose("sideways", None, None)
    with pytest.raises(ValueError, match="legacy' or 'current"):  # before the (missing) file is looked at
        load_model("/nowhere/x.safetensors", patch_order="sideways")


def test_plain_names_and_repo_ids_resolve_inside_the_models_folder(tmp_path):
    sd = weights()
    save_file(sd, tmp_path / "custom.safetensors")
    save_file(sd, tmp_path / "someone--my-birefnet.safetensors")
    assert_same_weights(load_model("custom", models_dir=tmp_path, device="cpu", dtype="float32"), sd)
    assert_same_weights(load_model("custom.safetensors", models_dir=tmp_path, device="cpu", dtype="float32"), sd)
    assert_same_weights(load_model("someone/my-birefnet", models_dir=tmp_path, device="cpu", dtype="float32"), sd)
    with pytest.raises(ValueError, match="unknown BiRefNet model 'BiRefNet_HRR'.*'BiRefNet_HR'"):
        load_model("BiRefNet_HRR", models_dir=tmp_path)


@pytest.mark.parametrize("name", ["../../etc/passwd", "../outside", "../outside.safetensors",
                                  "sub/../../outside.safetensors", "..\\outside.safetensors", "..", "a/b/c"])
def test_names_that_escape_the_models_folder_are_refused(tmp_path, name):
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    save_file(weights(), tmp_path / "outside.safetensors")
    with pytest.raises(ValueError, match="refusing"):
        load_model(name, models_dir=models, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="neither a known BiRefNet model name nor"):
        hub.download(name, models)


def test_core_imports_without_huggingface_hub_or_transformers():
    code = ("import sys, birefnet_core.checkpoint, birefnet_core.hub, birefnet_core.registry\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('huggingface_hub', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_torch_load_is_weights_only():
    for name in ("checkpoint.py", "hub.py", "registry.py", "convert.py", "models/focus/checkpoint.py"):
        text = (REPO / "birefnet_core" / name).read_text()
        assert text.count("torch.load(") == text.count("weights_only=True)"), name
