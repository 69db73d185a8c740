"""Loading FOCUS checkpoints: the inference weights of a detectron2 checkpoint (against the
official key manifests), family and architecture recognition, the registry's FOCUS entries, the
Hub's slimmed download (a fake one), ``python -m birefnet_core convert`` and the memory a
checkpoint's optimiser state must not take. CPU only, never the network; the FOCUS models are a
small configuration (DINOv2-L's manifests are used as meta tensors, G's likewise)."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from birefnet_core import checkpoint, hub, registry
from birefnet_core.checkpoint import identify, load_model, peek_architecture, read_metadata, read_state_dict
from birefnet_core.convert import convert_file
from birefnet_core.hub import ModelNotAvailableError
from birefnet_core.models.focus import FOCUS_CONFIGS, FocusConfig, build_focus
from birefnet_core.models.focus.checkpoint import TRAINING_ONLY_PREFIXES, current_name, inference_state_dict

from reference import FOCUS_REFERENCE, load_make_weights

make_weights = load_make_weights()
SMALL = FocusConfig(width=128, depth=4, ffn_hidden=256, adapter_heads=4)
TASKS = ("sod", "cod", "sd", "dbd", "fd")


pytestmark = pytest.mark.usefixtures("offline_hub")  # no test may reach the Hub


def manifest(name):
    """``{key: meta tensor}`` of an official key manifest (order kept), and its "excluded" flags."""
    layout = json.loads((FOCUS_REFERENCE / name).read_text())
    tensors = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in layout.items()}
    return tensors, {k for k, v in layout.items() if v.get("excluded")}


def training_extras(seed=1):
    """Real tensors under every training-only prefix of a detectron2 FOCUS checkpoint."""
    g = torch.Generator().manual_seed(seed)
    return {
        "sem_seg_head.predictor.clip_refiner.clip_model.visual.conv1.weight": torch.randn(32, 3, 4, 4, generator=g),
        "sem_seg_head.predictor.clip_refiner.non_object_embedding": torch.randn(1, 16, generator=g),
        "sem_seg_head.predictor.text_embed.projection.weight": torch.randn(16, 16, generator=g),
        "sem_seg_head.predictor.image_embed.bn.running_mean": torch.randn(2, generator=g),
        "sem_seg_head.predictor.image_embed.bn.num_batches_tracked": torch.tensor(7),
        "sem_seg_head.predictor.bbox_embed.layers.0.weight": torch.randn(256, 256, generator=g),
        "criterion.empty_weight": torch.tensor([1.0, 1.0, 0.1]),
    }


def detectron2_checkpoint(model_sd, optimizer_floats=10_000):
    """What detectron2's Checkpointer saves: the model, the optimiser and scheduler states."""
    return {"model": model_sd,
            "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.randn(optimizer_floats),
                                        "exp_avg_sq": torch.rand(optimizer_floats)}},
                          "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0]}]},
            "scheduler": {"base_lrs": [1e-4], "last_epoch": 5}, "iteration": 5}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small FOCUS (real weights, random running statistics) saved as a detectron2 ``.pth``
    (training-only tensors and optimiser included) and as ``.safetensors`` (inference weights)."""
    model = build_focus(SMALL)
    sd = make_weights(model.state_dict(), seed=3)
    model.load_state_dict(sd, strict=True)
    folder = tmp_path_factory.mktemp("focus")
    pth = folder / "detectron2_small.pth"
    torch.save(detectron2_checkpoint({**sd, **training_extras()}), pth)
    slim = folder / "small.safetensors"
    save_file(sd, slim)
    return model, sd, pth, slim


def assert_same_weights(model, sd):
    got = model.state_dict()
    assert list(got) == list(sd)
    for key, value in sd.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


# ------------------------------------------------------------------- inference weights (manifests)

def test_inference_weights_of_the_official_checkpoint_layout_are_the_1153_keys_in_order():
    full, excluded = manifest("state_dict_focus_dinov2_l_full.json")
    inference, _ = manifest("state_dict_focus_dinov2_l.json")
    assert len(full) == 1488 and len(excluded) == 335 and len(inference) == 1153
    kept = inference_state_dict(full)
    assert list(kept) == list(inference)
    assert all(kept[k] is full[k] for k in kept)  # the tensors themselves: nothing copied, nothing read
    assert {k for k in full if k.startswith(TRAINING_ONLY_PREFIXES)} == excluded
    assert inference_state_dict(kept).keys() == kept.keys()  # idempotent


def test_legacy_names_are_renamed_only_where_needed():
    full, _ = manifest("state_dict_focus_dinov2_l_full.json")
    inference, _ = manifest("state_dict_focus_dinov2_l.json")
    old = {k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head.").replace("query_feat", "static_query"): v
           for k, v in full.items()}
    assert "sem_seg_head.adapter_1.weight" in old and "sem_seg_head.predictor.static_query.weight" in old
    assert list(inference_state_dict(old)) == list(inference)
    assert current_name("sem_seg_head.pixel_decoder.adapter_1.weight") == "sem_seg_head.pixel_decoder.adapter_1.weight"
    assert current_name("sem_seg_head.predictor.query_embed.weight") == "sem_seg_head.predictor.query_embed.weight"
    assert current_name("backbone.static_query") == "backbone.static_query"  # only the decoder's is renamed
    both = {**full, "sem_seg_head.mask_features.weight": torch.empty(256, 256, 1, 1, device="meta")}
    with pytest.raises(ValueError, match=r"both 'sem_seg_head.pixel_decoder.mask_features.weight' and "
                                         r"'sem_seg_head.mask_features.weight'.*old and current names"):
        inference_state_dict(both)


@pytest.mark.parametrize("name, architecture, keys", [("state_dict_focus_dinov2_l_full.json", "focus_dinov2_l", 1153),
                                                      ("state_dict_focus_dinov2_g.json", "focus_dinov2_g", 1377)])
def test_released_architectures_are_recognised_from_shapes(name, architecture, keys):
    sd, _ = manifest(name)
    found = identify({"module." + k: v for k, v in sd.items()})
    assert found.family.name == "focus" and found.architecture == architecture and len(found.state_dict) == keys
    assert FOCUS_CONFIGS[architecture].width == sd["backbone.pos_embed"].shape[-1]


def test_a_giant_checkpoint_with_one_tensor_of_the_wrong_shape_is_refused_in_one_line(monkeypatch):
    sd, _ = manifest("state_dict_focus_dinov2_g.json")
    key = "backbone.interactions.2.extractor.ffn.fc2.weight"
    rows, cols = sd[key].shape
    sd[key] = torch.empty(rows, cols + 1, device="meta")
    import birefnet_core.models.focus as focus

    monkeypatch.setattr(focus, "build_focus", lambda *a, **k: pytest.fail("built a model"))
    with pytest.raises(ValueError) as caught:
        load_model(sd, device="cpu", dtype="float32")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("not a usable FOCUS checkpoint: ")
    assert key in message and f"[{rows}, {cols + 1}]" in message and f"[{rows}, {cols}]" in message


# ------------------------------------------------------------------------- loading files

def test_a_detectron2_checkpoint_loads_its_inference_weights(small, caplog):
    reference, sd, pth, slim = small
    with caplog.at_level(logging.INFO, logger="birefnet_core.checkpoint"):
        model = load_model(pth, device="cpu", dtype="float32")
    assert type(model) is type(reference) and model.family == "focus" and not model.training
    assert model.config == SMALL and model.variant is None and model.source == str(pth)
    assert_same_weights(model, sd)
    assert "FOCUS custom focus (width 128, depth 4) from" in caplog.text and "(873 inference tensors)" in caplog.text
    # the tensors are the model's own, not views of the file's memory map
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in model.state_dict().values())
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 4 - 2
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert torch.equal(got.class_logits, want.class_logits) and torch.equal(got.mask_logits, want.mask_logits)


def test_safetensors_state_dict_and_half_precision(small):
    _, sd, _, slim = small
    assert_same_weights(load_model(slim, device="cpu", dtype="float32"), sd)
    assert_same_weights(load_model(sd, device="cpu", dtype="float32"), sd)
    half = load_model(slim, device="cpu", dtype="bfloat16")
    floats = {k: v for k, v in half.state_dict().items() if v.is_floating_point()}
    assert floats and all(v.dtype == torch.bfloat16 for v in floats.values())
    assert all(torch.equal(v, sd[k].to(torch.bfloat16)) for k, v in floats.items())
    assert peek_architecture(slim)[0].name == "focus" and peek_architecture(slim)[1] == SMALL


def test_patch_order_given_for_focus_is_ignored_with_one_warning(small, caplog):
    _, sd, _, _ = small
    with caplog.at_level(logging.INFO, logger="birefnet_core.checkpoint"):
        load_model(sd, device="cpu", patch_order="auto")
    assert "ignored" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="birefnet_core.checkpoint"):
        model = load_model(sd, device="cpu", patch_order="legacy")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["patch_order 'legacy' ignored: FOCUS models have no image patches"]
    assert not hasattr(model, "patch_order")
    with pytest.raises(ValueError, match="legacy' or 'current"):  # still checked before anything is read
        load_model(sd, device="cpu", patch_order="sideways")


def test_detect_and_peek_tell_the_families_apart(small, tiny_checkpoint, tmp_path):
    _, sd, _, slim = small
    with pytest.raises(ValueError, match="not a BiRefNet checkpoint: this looks like a FOCUS checkpoint"):
        checkpoint.detect_backbone(sd)
    assert checkpoint.peek_backbone(slim) is None
    family, architecture = peek_architecture(tiny_checkpoint)
    assert family.name == "birefnet" and architecture == "pvt_v2_b0"
    junk = tmp_path / "junk.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, junk)
    assert peek_architecture(junk) is None and peek_architecture(tmp_path / "x.pth") is None


def test_save_weights_records_the_family(small, tmp_path):
    model, sd, _, _ = small
    path = checkpoint.save_weights(model, tmp_path / "saved.safetensors")
    meta = read_metadata(path)
    assert meta["birefnet.family"] == "focus" and meta["birefnet.architecture"] == "custom"
    assert FocusConfig(**json.loads(meta["birefnet.config"])) == SMALL and "birefnet.patch_order" not in meta
    assert_same_weights(load_model(path, device="cpu", dtype="float32"), sd)


# ------------------------------------------------------------------------------ registry

def test_the_ten_focus_registry_entries():
    focus = [v for v in registry.VARIANTS if v.family == "focus"]
    assert [v.name for v in focus] == [f"focus_{s}_{t}" for s in ("large", "giant") for t in TASKS]
    for v in focus:
        size, task = v.name.split("_")[1:]
        assert v.repo_id == f"geshang/{v.name}" and v.filename == f"{v.name}.pth" and v.task == task
        assert v.backbone == {"large": "focus_dinov2_l", "giant": "focus_dinov2_g"}[size]
        assert v.licence == "Apache-2.0" and v.patch_order is None and not v.gated and not v.dynamic
        assert v.resolution == (512, 512) and v.max_side == 2048
        assert v.test_size == "shortest side 512, longest at most 2048, aspect ratio kept"
        assert v.url == f"https://huggingface.co/geshang/{v.name}/resolve/main/{v.name}.pth"
        assert registry.get_variant(v.name.upper()) is v and registry.get_variant(f"GeShang/{v.name}") is v
    described = {v.task: v.description for v in focus if "large" in v.name}
    for task, words in {"sod": "salient", "cod": "camouflaged", "sd": "shadow", "dbd": "ground truth marks white",
                        "fd": "forged"}.items():
        assert words in described[task].lower(), task
    assert registry.get_variant("BiRefNet").max_side is None and registry.get_variant("BiRefNet").family == "birefnet"
    assert hub.hub_file("focus_giant_cod") == hub.HubFile("geshang/focus_giant_cod", "focus_giant_cod.pth",
                                                          "focus_giant_cod", False, "focus")


# ---------------------------------------------------------- one family's name, the other's weights

def test_a_focus_registry_name_holding_birefnet_weights_and_the_reverse(small, tiny_checkpoint, tmp_path):
    _, sd, _, slim = small
    models = tmp_path / "models"
    models.mkdir()
    (models / "focus_large_sod.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    (models / "BiRefNet_lite.safetensors").write_bytes(slim.read_bytes())
    cases = [("focus_large_sod", "focus_large_sod.safetensors should hold model 'focus_large_sod' (a FOCUS "
                                 "focus_dinov2_l) but its tensors are a BiRefNet checkpoint (pvt_v2_b0): the file is "
                                 "misnamed or corrupt; delete or rename it"),
             ("ZhengPeng7/BiRefNet_lite", "BiRefNet_lite.safetensors should hold model 'BiRefNet_lite' (a BiRefNet "
                                          "swin_v1_t) but its tensors are a FOCUS checkpoint (custom focus (width "
                                          "128, depth 4))")]
    for name, says in cases:
        with pytest.raises(ValueError) as caught:
            load_model(name, models_dir=models, device="cpu", dtype="float32")
        assert says in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"named like registry model focus_large_sod \(a FOCUS focus_dinov2_l\) but "
                                         r"holds a BiRefNet checkpoint \(pvt_v2_b0\): rename the file"):
        load_model(models / "focus_large_sod.safetensors", device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="named like registry model BiRefNet_lite .* holds a FOCUS checkpoint"):
        load_model(models / "BiRefNet_lite.safetensors", device="cpu", dtype="float32")


def test_a_focus_registry_file_of_another_size(small, tmp_path, caplog):
    _, sd, _, slim = small
    (tmp_path / "focus_giant_fd.safetensors").write_bytes(slim.read_bytes())
    with pytest.raises(ValueError, match=r"should hold model 'focus_giant_fd' \(architecture focus_dinov2_g\) but its "
                                         r"tensors are a custom focus \(width 128, depth 4\) FOCUS"):
        load_model("focus_giant_fd", models_dir=tmp_path, device="cpu", dtype="float32")
    with caplog.at_level(logging.WARNING, logger="birefnet_core.checkpoint"):  # by path: the name is only a hint
        model = load_model(tmp_path / "focus_giant_fd.safetensors", device="cpu", dtype="float32")
    assert model.variant is None and "ignoring the name" in caplog.text


def test_a_focus_model_built_for_another_size_says_so(small):
    _, sd, _, _ = small
    with torch.device("meta"):
        other = build_focus(FocusConfig(width=192, depth=4, ffn_hidden=256, adapter_heads=4))
    with pytest.raises(ValueError, match=r"does not fit the model: .*other shapes.*the checkpoint is a custom focus "
                                         r"\(width 128, depth 4\) FOCUS but the model was built for custom focus "
                                         r"\(width 192, depth 4\)"):
        checkpoint.load_state_dict_into(other, sd)


# ------------------------------------------------------------------------------ the Hub

def fake_hub(monkeypatch, source, calls):
    """hf_hub_download that finds nothing in the cache and 'downloads' ``source`` into local_dir."""
    import shutil

    import huggingface_hub

    def download(repo_id, filename, *, local_files_only=False, local_dir=None, tqdm_class=None, **_):
        if local_files_only:
            raise FileNotFoundError("not in the cache")
        calls.append((repo_id, filename))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


def test_a_focus_download_keeps_only_the_inference_weights(small, tmp_path, monkeypatch, caplog):
    _, sd, pth, _ = small
    calls = []
    fake_hub(monkeypatch, pth, calls)
    models = tmp_path / "models"
    with caplog.at_level(logging.INFO, logger="birefnet_core.hub"):
        got = hub.download("focus_large_sd", models, progress=False)
    final = models / "focus_large_sd.safetensors"
    assert got == final == hub.local_path("focus_large_sd", models)
    assert calls == [("geshang/focus_large_sd", "focus_large_sd.pth")]
    assert sorted(p.relative_to(models).as_posix() for p in models.rglob("*")) == ["focus_large_sd.safetensors"]
    stored = load_file(final)
    assert stored.keys() == sd.keys() and all(torch.equal(stored[k], v) for k, v in sd.items())
    assert read_metadata(final)["birefnet.family"] == "focus"
    assert final.stat().st_size < pth.stat().st_size
    assert "stored the 873 inference tensors of the downloaded focus_large_sd.pth" in caplog.text
    assert str(final) in caplog.text and "7 training-only tensors and the optimiser state left out" in caplog.text
    # present now: checked as any registry file, never downloaded again
    assert hub.download("focus_large_sd", models) == final and len(calls) == 1


def test_a_focus_download_that_is_broken_or_not_focus_leaves_nothing(small, tiny_checkpoint, tmp_path, monkeypatch):
    _, _, pth, _ = small
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(pth.read_bytes()[: pth.stat().st_size // 3])
    birefnet = tmp_path / "birefnet.pth"
    torch.save({"model": load_file(tiny_checkpoint)}, birefnet)
    models = tmp_path / "models"
    for source, says in [(truncated, "is truncated"), (birefnet, "it holds a birefnet checkpoint, not FOCUS")]:
        fake_hub(monkeypatch, source, [])
        with pytest.raises(ModelNotAvailableError) as caught:
            hub.download("focus_large_cod", models)
        message = str(caught.value)
        assert "\n" not in message and says in message, message
        assert message.startswith("FOCUS model 'focus_large_cod': the file 'focus_large_cod.pth' downloaded from "
                                  "Hugging Face repo 'geshang/focus_large_cod' is not usable (")
        assert "python -m birefnet_core convert focus_large_cod.pth" in message
        assert list(models.rglob("*")) == []


def test_a_focus_checkpoint_in_the_hugging_face_cache_is_slimmed_and_left_there(small, tmp_path, monkeypatch):
    _, sd, pth, _ = small
    sha = "1" * 40
    repo = tmp_path / "cache" / "models--geshang--focus_giant_sod"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    cached = repo / "snapshots" / sha / "focus_giant_sod.pth"
    cached.write_bytes(pth.read_bytes())
    got = hub.download("focus_giant_sod", tmp_path / "models", cache_dir=tmp_path / "cache")
    assert got == tmp_path / "models" / "focus_giant_sod.safetensors" and load_file(got).keys() == sd.keys()
    assert cached.read_bytes() == pth.read_bytes()


def test_an_unavailable_focus_model_says_how_to_install_it_by_hand(tmp_path):
    folder = tmp_path / "models"
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model("focus_large_fd", models_dir=folder, device="cpu", dtype="float32")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("FOCUS model 'focus_large_fd' (file 'focus_large_fd.pth' of "
                                                      "Hugging Face repo 'geshang/focus_large_fd') is not available")
    assert ("download https://huggingface.co/geshang/focus_large_fd/resolve/main/focus_large_fd.pth and keep its "
            f"inference weights with: python -m birefnet_core convert focus_large_fd.pth "
            f"{folder / 'focus_large_fd.safetensors'}") in message


# ------------------------------------------------------------------------------ convert

def test_convert_a_detectron2_checkpoint(small, tmp_path, capsys):
    from birefnet_core.__main__ import main

    _, sd, pth, _ = small
    out = tmp_path / "out" / "focus.safetensors"
    assert main(["convert", str(pth), str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and printed.out.count("\n") == 1
    assert printed.out.startswith(f"wrote {out}: 873 tensors of a FOCUS custom focus (width 128, depth 4) (")
    assert "7 training-only tensors left out" in printed.out
    meta = read_metadata(out)
    assert meta["birefnet.family"] == "focus" and meta["birefnet.converted_from"] == "detectron2_small.pth"
    assert_same_weights(load_model(out, device="cpu", dtype="float32"), sd)

    assert main(["convert", str(pth), str(out)]) == 1  # exists: refused, left as it was
    assert "exist already" in capsys.readouterr().err and load_file(out).keys() == sd.keys()
    done = convert_file(pth, out, dtype="float16", overwrite=True)
    half = load_file(out)
    assert done.tensors == len(half) == 873 and done.dropped == 7 and done.nbytes == out.stat().st_size
    for key, value in sd.items():
        assert half[key].dtype == (torch.float16 if value.is_floating_point() else value.dtype), key
        assert torch.equal(half[key], value.to(half[key].dtype)), key


def test_convert_keeps_a_birefnet_patch_order_and_refuses_bad_outputs(tiny_checkpoint, tmp_path):
    sd = load_file(tiny_checkpoint)
    source = tmp_path / "trained.safetensors"
    save_file(sd, source, metadata={"birefnet.patch_order": "current"})
    out = tmp_path / "slim.safetensors"
    done = convert_file(source, out, dtype="bfloat16")
    assert (done.family, done.architecture, done.dropped) == ("birefnet", "pvt_v2_b0", 0)
    meta = read_metadata(out)
    assert (meta["birefnet.backbone"], meta["birefnet.patch_order"], meta["birefnet.architecture"]) == (
        "pvt_v2_b0", "current", "pvt_v2_b0")
    model = load_model(out, device="cpu", dtype="float32")
    assert model.patch_order.value == "current"
    assert all(torch.equal(model.state_dict()[k], v.to(torch.bfloat16).float() if v.is_floating_point() else v)
               for k, v in sd.items())
    # named like a registry entry of another backbone: that entry's patch order is not taken
    lite = tmp_path / "BiRefNet_512x512.safetensors"
    save_file(sd, lite)
    convert_file(lite, tmp_path / "x.safetensors")
    assert "birefnet.patch_order" not in read_metadata(tmp_path / "x.safetensors")  # pvt_v2_b0, not swin_v1_l

    link = tmp_path / "link.safetensors"
    os.link(source, link)
    for target, says in [(source, "is the input"), (link, "is the input"), (tmp_path / "out.pth", "must end in"),
                         (out, "exist already")]:
        with pytest.raises(ValueError, match=says):
            convert_file(source, target)
    with pytest.raises(ValueError, match="dtype must be float32, float16, bfloat16"):
        convert_file(source, tmp_path / "new.safetensors", dtype="int8")
    assert not (tmp_path / "new.safetensors").exists()


def test_convert_refuses_what_it_cannot_recognise(tmp_path, capsys):
    from birefnet_core.__main__ import main

    foreign = tmp_path / "unet.pth"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4)}}, foreign)
    assert main(["convert", str(foreign), str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: not a BiRefNet or FOCUS checkpoint: this looks like a Stable Diffusion")
    assert err.count("\n") == 1 and not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------- memory: the optimiser is never read

def _peak_rss_during(action) -> int:
    """Bytes the process's peak resident memory grew by during ``action()`` (Linux: VmHWM, reset
    first through /proc/self/clear_refs)."""

    def hwm():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = hwm()
    result = action()
    grown = hwm() - before
    del result
    return grown


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_the_optimiser_state_of_a_big_checkpoint_is_never_read_into_memory(tmp_path, tiny_checkpoint):
    """A detectron2-style file whose optimiser state (384 MB) dwarfs its model (a 15 MB BiRefNet):
    loading, converting and reading it take far less memory than the optimiser state. The same
    measurement of a plain (not memory-mapped) torch.load shows the whole blob, so it can fail."""
    blob = 96 * 2**20  # float32 values: 384 MiB
    path = tmp_path / "big.pth"
    state = {"model": load_file(tiny_checkpoint), "optimizer": {"state": {0: {"exp_avg": torch.ones(blob)}}}}
    torch.save(state, path)
    del state
    size = path.stat().st_size
    assert size > 4 * blob

    plain = _peak_rss_during(lambda: torch.load(path, map_location="cpu", weights_only=True)["model"])
    assert plain > 4 * blob * 0.9, plain  # the measurement sees a full read
    for action in (lambda: read_state_dict(path), lambda: load_model(path, device="cpu", dtype="float32"),
                   lambda: convert_file(path, tmp_path / f"slim{os.urandom(4).hex()}.safetensors")):
        grown = _peak_rss_during(action)
        assert grown < size / 4, (grown, size)
