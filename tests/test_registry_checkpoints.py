"""The released checkpoints added to the registry (BiRefNet_dynamic-matting, ToonOut, Lucida, the
Comfy-Org repackage), files in a sub-folder of a Hub repository, a ``.pth`` release reduced to its
inference weights, ``load_model(variant=...)``, and the refusal of the BiRefNet architecture before
2024-05-02. CPU only, never the network: Hub files come from Hugging Face caches made here."""

import logging
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from birefnet_core import checkpoint, hub, registry
from birefnet_core.checkpoint import identify, load_model, load_state_dict_into, peek_architecture, peek_backbone
from birefnet_core.config import PatchOrder
from birefnet_core.hub import ModelNotAvailableError
from birefnet_core.models import build_model
from birefnet_core.registry import Variant

from reference import load_make_weights

make_weights = load_make_weights()
SHA = "0123456789abcdef0123456789abcdef01234567"


pytestmark = pytest.mark.usefixtures("offline_hub")  # no test may reach the Hub


@pytest.fixture(scope="module")
def tiny():
    """Real pvt_v2_b0 weights (the smallest BiRefNet), current architecture."""
    return make_weights(build_model("pvt_v2_b0").state_dict(), seed=0)


def hf_cache(root, repo_id, filename, write):
    """A hand-made Hugging Face cache holding ``filename`` (maybe in a sub-folder) of ``repo_id``."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    target = repo / "snapshots" / SHA / filename
    target.parent.mkdir(parents=True)
    write(target)
    return target


# ----------------------------------------------------------------------------------- the entries

def test_the_new_entries_name_the_files_their_repositories_hold():
    by = registry.get_variant
    expected = {  # name: (repo, file, backbone, (W, H), patch order, licence)
        "BiRefNet_dynamic-matting": ("ZhengPeng7/BiRefNet_dynamic-matting", "model.safetensors", "swin_v1_l",
                                     (1024, 1024), PatchOrder.CURRENT, "MIT"),
        "ToonOut": ("joelseytre/toonout", "birefnet_finetuned_toonout.pth", "swin_v1_l", (1024, 1024),
                    PatchOrder.CURRENT, "MIT"),
        "Lucida": ("egeorcun/lucida", "model.safetensors", "swin_v1_l", (1024, 1024), PatchOrder.CURRENT, "MIT"),
        "Comfy-Org_birefnet": ("Comfy-Org/BiRefNet", "background_removal/birefnet.safetensors", "swin_v1_l",
                               (1024, 1024), PatchOrder.LEGACY, "MIT"),
        "Comfy-Org_lucida": ("Comfy-Org/BiRefNet", "background_removal/lucida.safetensors", "swin_v1_l",
                             (1024, 1024), PatchOrder.CURRENT, "MIT"),
    }
    for name, (repo, filename, backbone, size, order, licence) in expected.items():
        v = by(name.upper())
        assert (v.name, v.repo_id, v.filename, v.backbone, v.resolution, v.patch_order, v.licence) == (
            name, repo, filename, backbone, size, order, licence)
        assert v.family == "birefnet" and not v.gated and v.url == f"https://huggingface.co/{repo}/resolve/main/{filename}"
    assert by("BiRefNet_dynamic-matting").size_range == (256, 2304) and by("BiRefNet_dynamic-matting").dynamic
    # a repository holding two entries names the first; the other is reached by its name
    assert by("comfy-org/birefnet").name == "Comfy-Org_birefnet" and by("egeorcun/LUCIDA").name == "Lucida"
    # the repackaged general model has the general model's patch order (the same weights)
    assert by("Comfy-Org_birefnet").patch_order is by("BiRefNet").patch_order
    assert by("Comfy-Org_lucida").patch_order is by("Lucida").patch_order is by("BiRefNet_HR").patch_order


def test_copies_are_relative_paths_inside_the_models_folder():
    for v in registry.VARIANTS:
        for copy in v.copies:
            parts = copy.split("/")
            assert not copy.startswith("/") and "\\" not in copy and ":" not in copy, (v.name, copy)
            assert ".." not in parts and "" not in parts and "." not in parts, (v.name, copy)
            assert copy.lower().endswith(checkpoint.WEIGHTS_SUFFIXES), (v.name, copy)
    # a path two entries claim holds the same weights: same architecture and patch order
    owners = {}
    for v in registry.VARIANTS:
        for copy in v.copies:
            owners.setdefault(copy.lower(), []).append(v)
    for copy, claimed in owners.items():
        assert len({(v.backbone, v.patch_order) for v in claimed}) == 1, (copy, [v.name for v in claimed])
    assert registry.variant_of_copy("background_removal\\Birefnet.safetensors").name == "BiRefNet"
    assert registry.variant_of_copy("background_removal/lucida.safetensors").name == "Comfy-Org_lucida"
    assert registry.variant_of_copy("RMBG/BiRefNet/BiRefNet-HR.safetensors").name == "BiRefNet_HR"
    assert registry.variant_of_copy("BiRefNet/General-Lite.safetensors").name == "BiRefNet_lite"
    assert registry.variant_of_copy("background_removal/nope.safetensors") is None


# ---------------------------------------------------------------------- files in a repo's sub-folder

def test_a_file_in_a_sub_folder_of_the_repository_is_fetched_and_stored_flat(tmp_path, tiny):
    """The real hf_hub_download, offline, from a local staging dir that mirrors the repository."""
    folder = tmp_path / "models"
    staged = folder / hub.STAGING / "Comfy-Org_birefnet" / "background_removal" / "birefnet.safetensors"
    staged.parent.mkdir(parents=True)
    save_file(tiny, staged)
    whole = staged.read_bytes()
    got = hub.download("Comfy-Org_birefnet", folder, progress=False)
    assert got == folder / "Comfy-Org_birefnet.safetensors" == hub.local_path("comfy-org/birefnet", folder)
    assert got.read_bytes() == whole and not (folder / hub.STAGING).exists()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["Comfy-Org_birefnet.safetensors"]


def test_a_sub_folder_file_in_the_hugging_face_cache(tmp_path, tiny):
    cached = hf_cache(tmp_path / "cache", "Comfy-Org/BiRefNet", "background_removal/lucida.safetensors",
                      lambda p: save_file(tiny, p))
    got = hub.download("Comfy-Org_lucida", tmp_path / "models", cache_dir=tmp_path / "cache")
    assert got == tmp_path / "models" / "Comfy-Org_lucida.safetensors"
    assert got.read_bytes() == cached.read_bytes()


def test_a_missing_sub_folder_file_names_its_url(tmp_path):
    with pytest.raises(ModelNotAvailableError) as caught:
        hub.download("Comfy-Org_lucida", tmp_path / "models", progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "https://huggingface.co/Comfy-Org/BiRefNet/resolve/main/background_removal/lucida.safetensors" in message
    assert "'Comfy-Org_lucida.safetensors'" in message and "offline mode" in message


def test_the_toonout_training_checkpoint_is_reduced_to_safetensors(tmp_path, tiny, caplog):
    """ToonOut's Hub file is a .pth saved from a DDP + torch.compile wrapper: its tensors are
    stored as <folder>/ToonOut.safetensors with the prefixes gone; the cached .pth is left alone."""
    prefixed = {"module._orig_mod." + k: v for k, v in tiny.items()}
    cached = hf_cache(tmp_path / "cache", "joelseytre/toonout", "birefnet_finetuned_toonout.pth",
                      lambda p: torch.save(prefixed, p))
    before = cached.read_bytes()
    with caplog.at_level(logging.INFO, logger="birefnet_core.hub"):
        got = hub.download("ToonOut", tmp_path / "models", cache_dir=tmp_path / "cache")
    assert got == tmp_path / "models" / "ToonOut.safetensors" and cached.read_bytes() == before
    stored = load_file(got)
    assert set(stored) == set(tiny) and all(torch.equal(stored[k], tiny[k]) for k in tiny)
    assert "birefnet_finetuned_toonout.pth" in caplog.text
    # ToonOut is a Swin-L: these pvt_v2_b0 weights stored under its name are refused when loaded
    with pytest.raises(ValueError, match=r"should hold model 'ToonOut' \(backbone swin_v1_l\) but its tensors are "
                                         r"a pvt_v2_b0"):
        load_model("ToonOut", models_dir=tmp_path / "models", device="cpu", dtype="float32")


# ---------------------------------------------------------------------------- load_model(variant=)

def test_load_model_takes_the_registry_entry_a_file_holds(tmp_path, tiny, caplog):
    """A file whose name says nothing (a copy kept by another tool): ``variant=`` gives its entry,
    whose patch order is used unless one is asked for."""
    path = tmp_path / "General.safetensors"
    save_file(tiny, path)
    entry = Variant("Tiny-current", "someone/tiny", "pvt_v2_b0", 64, 64, PatchOrder.CURRENT, "MIT", "tiny")
    with caplog.at_level(logging.INFO, logger="birefnet_core.checkpoint"):
        model = load_model(path, device="cpu", dtype="float32", variant=entry)
    assert model.variant is entry and model.patch_order is PatchOrder.CURRENT
    assert "patch order current (registry entry Tiny-current)" in caplog.text
    assert load_model(path, device="cpu", dtype="float32").patch_order is PatchOrder.LEGACY  # without it: default
    overridden = load_model(path, device="cpu", dtype="float32", variant=entry, patch_order="legacy")
    assert overridden.patch_order is PatchOrder.LEGACY and overridden.variant is entry
    lite = registry.get_variant("BiRefNet_lite")
    with pytest.raises(ValueError, match=r"should hold model 'BiRefNet_lite' \(backbone swin_v1_t\) but its tensors "
                                         r"are a pvt_v2_b0"):
        load_model(path, device="cpu", dtype="float32", variant=lite)
    with pytest.raises(ValueError, match=r"the state dict should hold model 'BiRefNet_lite'"):
        load_model(tiny, device="cpu", dtype="float32", variant=lite)
    with pytest.raises(ValueError, match="model BiRefNet_HR was asked for with variant=BiRefNet_lite"):
        load_model("BiRefNet_HR", device="cpu", variant=lite)
    with pytest.raises(TypeError, match="variant must be a registry entry"):
        load_model(path, device="cpu", variant="BiRefNet_lite")


# --------------------------------------------------------------- the architecture before 2024-05-02

def older_format(sd, *, patches=True, attention=True, aspp=True):
    """``sd`` (current architecture) turned into the layout of the official code before 2024-05-02
    (github.com/ZhengPeng7/BiRefNet b0c7031^): no decoder.ipt_blk5 (decoder_block4 then takes only
    the backbone's channels), no gradient attention at stage 4, one 3x3 deformable ASPP branch."""
    out = dict(sd)
    if patches:
        extra = out["decoder.ipt_blk5.conv_out.weight"].shape[0]
        for key in [k for k in out if k.startswith("decoder.ipt_blk5.")]:
            del out[key]
        conv = out["decoder.decoder_block4.conv_in.weight"]
        out["decoder.decoder_block4.conv_in.weight"] = conv[:, : conv.shape[1] - extra].clone()
    if attention:
        for key in [k for k in out if k.startswith(("decoder.gdt_convs_4.", "decoder.gdt_convs_pred_4.",
                                                    "decoder.gdt_convs_attn_4."))]:
            del out[key]
    if aspp:
        generator = torch.Generator().manual_seed(3)
        prefixes = {k.split("aspp_deforms.")[0] for k in out if ".dec_att.aspp_deforms." in k}
        for prefix in prefixes:
            for key in [k for k in out if k.startswith(prefix + "aspp_deforms.1.")
                        or k.startswith(prefix + "aspp_deforms.2.")]:
                del out[key]
            for name in ("offset_conv", "modulator_conv", "regular_conv"):
                key = f"{prefix}aspp_deforms.0.atrous_conv.{name}.weight"
                weight = out[key]
                rows = {"offset_conv": 18, "modulator_conv": 9}.get(name, weight.shape[0])
                out[key] = torch.randn(rows, weight.shape[1], 3, 3, generator=generator) * 0.01
                if name != "regular_conv":
                    out[key.replace(".weight", ".bias")] = torch.zeros(rows)
            conv1 = out[prefix + "conv1.weight"]
            out[prefix + "conv1.weight"] = conv1[:, : conv1.shape[1] * 3 // 5].clone()
    return out


def test_a_checkpoint_of_the_architecture_before_may_2024_is_refused_in_one_line(tmp_path, tiny):
    old = older_format(tiny)
    assert identify(tiny).architecture == "pvt_v2_b0"  # the current layout is untouched by the check
    with pytest.raises(ValueError) as caught:
        identify(old)
    message = str(caught.value)
    assert "\n" not in message and "before 2024-05-02" in message
    for part in ("decoder.ipt_blk5", "decoder.gdt_convs_4", "1 3x3 deformable ASPP branch",
                 "BiRefNet-DIS5K", "BiRefNet (general use)"):
        assert part in message, part
    # from files too (a wrapped, prefixed .pth as the old releases are), and never half-loaded
    save_file(old, tmp_path / "BiRefNet-ep480.safetensors")
    torch.save({"model": {"module." + k: v for k, v in old.items()}}, tmp_path / "BiRefNet-ep480.pth")
    for name in ("BiRefNet-ep480.safetensors", "BiRefNet-ep480.pth"):
        with pytest.raises(ValueError) as again:
            load_model(tmp_path / name, device="cpu", dtype="float32", patch_order="legacy")
        assert str(again.value) == message
    assert peek_architecture(tmp_path / "BiRefNet-ep480.safetensors") is None
    assert peek_backbone(tmp_path / "BiRefNet-ep480.safetensors") is None
    # forced into the network: the mismatch says why
    with torch.device("meta"):
        model = build_model("pvt_v2_b0")
    with pytest.raises(ValueError, match=r"does not fit the model: .*missing keys.*before 2024-05-02"):
        load_state_dict_into(model, old)


@pytest.mark.parametrize("change, says", [
    (dict(attention=False, aspp=False), r"\(no image patches at the deepest decoder stage \(decoder.ipt_blk5\)\)"),
    (dict(patches=False, aspp=False), r"\(no gradient attention at stage 4 \(decoder.gdt_convs_4\)\)"),
    (dict(patches=False, attention=False), r"\(1 3x3 deformable ASPP branch where the current code has three"),
])
def test_each_difference_of_the_older_decoder_is_named(tiny, change, says):
    with pytest.raises(ValueError, match=says):
        identify(older_format(tiny, **change))


def test_the_registry_legacy_checkpoint_has_the_current_architecture():
    """ZhengPeng7/BiRefNet-legacy (May 2024) is the official layout, not the older decoder."""
    import json

    from reference import REFERENCE

    path = REFERENCE / "state_dict_swin_v1_l.json"
    if path.exists():
        layout = json.loads(path.read_text())
        sd = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in layout.items()}
    else:
        with torch.device("meta"):
            sd = build_model("swin_v1_l").state_dict()
    assert checkpoint.older_architecture(sd) is None
    assert identify(sd).architecture == registry.get_variant("BiRefNet-legacy").backbone == "swin_v1_l"
    assert re.search("current architecture", registry.get_variant("BiRefNet-legacy").description)
