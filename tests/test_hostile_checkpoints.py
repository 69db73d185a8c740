"""Broken, foreign and hostile weights files and model names: each gives one line naming the file
and what to do, never a torch traceback or a silently wrong model; a failed or interrupted
download leaves nothing behind. Real files made here, never the network."""

import io
import logging
import os
import pickle
import random
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from birefnet_core import checkpoint, hub
from birefnet_core.checkpoint import check_tensors, load_model, load_state_dict_into, read_state_dict
from birefnet_core.hub import ModelNotAvailableError
from birefnet_core.models import build_model

URL = "https://huggingface.co/ZhengPeng7/BiRefNet_lite/resolve/main/model.safetensors"


pytestmark = pytest.mark.usefixtures("offline_hub")  # no test may reach the Hub


@pytest.fixture(scope="module")
def tiny_sd(tiny_checkpoint):
    return load_file(tiny_checkpoint)


def one_line(caught) -> str:
    message = str(caught.value)
    assert message and "\n" not in message, message
    return message


def refused(attempt, error=ValueError) -> str:
    with pytest.raises(error) as caught:
        attempt()
    return one_line(caught)


# ------------------------------------------------------------------ 1, 2: values and dtypes

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_infinite_weights_are_refused(tmp_path, tiny_sd, bad):
    sd = dict(tiny_sd)
    weight = sd["decoder.conv_out1.0.weight"].clone()
    weight.view(-1)[:12] = bad
    sd["decoder.conv_out1.0.weight"] = weight
    path = tmp_path / "corrupt.safetensors"
    save_file(sd, path)
    expected = (f"{path}: tensor 'decoder.conv_out1.0.weight' has 12 NaN/infinite values; the checkpoint is corrupt "
                "(re-download or re-export it)")
    assert refused(lambda: load_model(path, device="cpu", dtype="float32")) == expected
    assert refused(lambda: load_model(sd, device="cpu")).startswith("the state dict: tensor 'decoder.conv_out1.0")
    with pytest.raises(ValueError, match="NaN/infinite"):
        check_tensors(read_state_dict(path), path)
    check_tensors(tiny_sd, "fine")  # a sound checkpoint passes, integer buffers included


def test_integer_weights_where_the_model_has_floats_are_refused(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd["decoder.conv_out1.0.weight"] = sd["decoder.conv_out1.0.weight"].round().to(torch.int64)
    path = tmp_path / "ints.pth"
    torch.save(sd, path)
    message = refused(lambda: load_model(path, device="cpu", dtype="float32"))
    assert message.startswith(f"{path}: tensor 'decoder.conv_out1.0.weight' is stored as torch.int64 where the "
                              "model's is torch.float32")
    with pytest.raises(ValueError, match="'decoder.conv_out1.0.weight' is stored as torch.int64"):
        load_state_dict_into(build_model("pvt_v2_b0"), sd)
    assert any(k.endswith("num_batches_tracked") and v.dtype == torch.int64 for k, v in tiny_sd.items())


# ------------------------------------------------------------------------ 3: wrapper prefixes

def test_a_lightning_checkpoint_loads_with_its_prefix_stripped(tmp_path, tiny_sd, caplog):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in tiny_sd.items()}, "epoch": 3, "global_step": 10}, path)
    with caplog.at_level(logging.INFO, logger="birefnet_core.checkpoint"):
        model = load_model(path, device="cpu", dtype="float32")
    assert "stripped the prefix 'model.'" in caplog.text
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_sd.items())
    nested = tmp_path / "nested.safetensors"
    save_file({"model.net." + k: v for k, v in tiny_sd.items()}, nested)
    assert load_model(nested, device="cpu", dtype="float32").config.backbone == "pvt_v2_b0"


def test_only_a_prefix_shared_by_every_key_and_revealing_birefnet_is_stripped(tiny_sd):
    norm = checkpoint.normalise_state_dict
    t = torch.zeros(1)
    assert list(norm({"model.foo.weight": t, "model.bar.bias": t})) == ["model.foo.weight", "model.bar.bias"]
    mixed = {("model." if i % 2 else "net.") + k: v for i, (k, v) in enumerate(tiny_sd.items())}
    assert norm(mixed).keys() == mixed.keys()
    extra = {**{"model." + k: v for k, v in tiny_sd.items()}, "model": t}
    assert norm(extra).keys() == extra.keys()
    assert norm(tiny_sd).keys() == tiny_sd.keys()


# ------------------------------------------------------------------ 4, 5: pickles and zip files

class Payload:
    """Pickled by reference to this class: unpickling it would import and call code."""

    def __reduce__(self):
        return os.system, ("echo never",)


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory):
    """A real zip-format torch checkpoint and its bytes."""
    path = tmp_path_factory.mktemp("torch") / "good.pth"
    torch.save({"a": torch.randn(3000), "b": torch.randn(40, 40)}, path)
    return path.read_bytes()


def write(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder / name


def test_garbage_named_pth_is_not_a_checkpoint_and_not_called_malicious(tmp_path):
    files = [write(tmp_path, "text.pth", b"this is a text file, not weights\n" * 20),
             write(tmp_path, "zip.pth", _zip_of({"hello.txt": b"hi"}))]
    files += [write(tmp_path, f"random{seed}.pth", random.Random(seed).randbytes(5000)) for seed in range(8)]
    for path in files:
        message = refused(lambda: read_state_dict(path))
        assert message.startswith(f"{path} is not a PyTorch checkpoint (") or "truncated" in message, message
        assert "pickled Python objects" not in message and "torch.load" not in message.split("(")[0]


def test_only_a_pickle_naming_python_code_is_called_that(tmp_path):
    for name, data in [("global.pth", pickle.dumps({"a": os.system}, protocol=2)),
                       ("class.pth", pickle.dumps(Payload(), protocol=2))]:
        path = write(tmp_path, name, data)
        message = refused(lambda: load_model(path, device="cpu", dtype="float32"))
        assert message.startswith(f"{path} contains pickled Python objects, not just tensors; refusing to run code")


def test_truncated_and_empty_torch_files_say_so(tmp_path, torch_file):
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.randn(3000)}, legacy, _use_new_zipfile_serialization=False)
    cuts = {"empty.pth": b"", "half.pth": torch_file[: len(torch_file) // 2],
            "no-end-of-directory.pth": torch_file[:-22], "in-a-tensor.pth": torch_file[:3000],
            "legacy-half.pth": legacy.read_bytes()[: legacy.stat().st_size // 2],
            "legacy-end.pth": legacy.read_bytes()[:-100]}
    for name, data in cuts.items():
        path = write(tmp_path, name, data)
        message = refused(lambda: read_state_dict(path))
        assert message.startswith(f"{path} is truncated"), message
        assert "again" in message and "pickled" not in message


def _zip_of(entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _patched(data: bytes, field_offset: int, value: int) -> bytes:
    """``data`` with a 4-byte size field of its largest central-directory entry set to ``value``."""
    entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    largest = max(entries, key=lambda e: e.file_size)
    start, out = 0, bytearray(data)
    while True:
        start = data.index(b"PK\x01\x02", start)
        name_length = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46:start + 46 + name_length].decode() == largest.filename:
            struct.pack_into("<I", out, start + field_offset, value)
            return bytes(out)
        start += 4


@pytest.mark.parametrize("field, says", [(20, "truncated or damaged: its zip directory places data up to byte"),
                                         (24, "corrupt or crafted: it declares 2,147,4")])
def test_a_zip_claiming_more_than_it_holds_is_refused_before_torch_reads_it(tmp_path, torch_file, monkeypatch,
                                                                             field, says):
    path = write(tmp_path, "crafted.pth", _patched(torch_file, field, 2**31 - 1))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load read a crafted file"))
    message = refused(lambda: load_model(path, device="cpu", dtype="float32"))
    assert message.startswith(f"{path} is {says}") and f"{len(torch_file):,}-byte file" in message


def test_a_sound_torch_file_passes_the_zip_check(tmp_path, torch_file):
    assert set(read_state_dict(write(tmp_path, "good.pth", torch_file))) == {"a", "b"}


# ------------------------------------------------------------------------- 6: safetensors

def test_incomplete_or_corrupt_safetensors_say_so(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    assert hub.safetensors_problem(tiny_checkpoint) is None
    header = struct.unpack("<Q", data[:8])[0]
    cases = {"empty": (b"", "incomplete: 0 bytes"),
             "short": (data[:5], "incomplete: 5 bytes"),
             "half": (data[: len(data) // 2], f"incomplete: {len(data) // 2:,} of the {len(data):,} bytes"),
             "header-cut": (data[:100], "incomplete or corrupt: its header claims"),
             "header-lies": (struct.pack("<Q", 10**12) + data[8:], "header claims 1,000,000,000,000 bytes"),
             "not-json": (data[:8] + b"x" * header + data[8 + header:], "header is not a safetensors header"),
             "trailing": (data + b"\0" * 10, f"corrupt: {len(data) + 10:,} bytes where its header announces")}
    for name, (content, says) in cases.items():
        path = write(tmp_path, f"{name}.safetensors", content)
        for attempt in (lambda: read_state_dict(path), lambda: load_model(path, device="cpu", dtype="float32")):
            message = refused(attempt)
            assert message.startswith(f"could not read {path} as a safetensors file: it is"), message
            assert says in message and "delete it" in message, (name, message)


# ------------------------------------------------------------------------- 7: model names

@pytest.mark.parametrize("name, says", [
    ("Bi\0RefNet", "NUL"), ("a\nb.safetensors", "control character"), ("x" * 256, "at most 255 bytes"),
    ("sub/" + "y" * 300 + ".safetensors", "at most 255 bytes"), (".", "'.' and '..' are folders"),
    ("..", "'.' and '..' are folders"), (" .. ", "'.' and '..' are folders")])
def test_impossible_model_names_are_refused_in_one_line(tmp_path, name, says):
    for source in (name, Path(name)):
        message = refused(lambda: load_model(source, models_dir=tmp_path, device="cpu", dtype="float32"))
        assert message.startswith("refusing model name") and says in message and len(message) < 200
    with pytest.raises(ValueError):
        load_model("/tmp/" + "z" * 300 + ".safetensors")


def test_names_with_spaces_are_unknown_names_not_os_errors(tmp_path):
    assert "unknown BiRefNet model 'BiRefNet lite'" in refused(lambda: load_model("BiRefNet lite", models_dir=tmp_path))
    assert "refusing model name 'owner/my repo'" in refused(lambda: load_model("owner/my repo", models_dir=tmp_path))


def test_a_folder_where_a_weights_file_should_be(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("touched the Hub"))
    models = tmp_path / "models"
    (models / "BiRefNet_lite.safetensors").mkdir(parents=True)
    (models / "custom.safetensors").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "somedir.safetensors").mkdir()
    for attempt, folder in [(lambda: load_model("BiRefNet_lite", models_dir=models), models / "BiRefNet_lite.safetensors"),
                            (lambda: hub.download("BiRefNet_lite", models), models / "BiRefNet_lite.safetensors"),
                            (lambda: load_model("custom", models_dir=models), models / "custom.safetensors"),
                            (lambda: load_model("somedir.safetensors", models_dir=models), Path("somedir.safetensors")),
                            (lambda: load_model(tmp_path / "somedir.safetensors"), tmp_path / "somedir.safetensors")]:
        assert refused(attempt) == f"{folder} is a folder, not a weights file; remove or rename it"


def test_an_unreadable_models_folder_is_named(tmp_path, monkeypatch):
    models = tmp_path / "locked"
    models.mkdir()
    real_stat = Path.stat

    def stat(self, *args, **kwargs):  # what a folder without search permission does (root ignores chmod)
        if self.parent == models:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    for attempt in (lambda: load_model("custom", models_dir=models), lambda: hub.download("BiRefNet_lite", models)):
        message = refused(attempt, PermissionError)
        assert message.startswith(f"cannot look into the folder {models} (Permission denied)")


# ---------------------------------------------------------------------------------- 8: hub

class Interrupted(BaseException):
    """Stands in for ComfyUI's InterruptProcessingException (a BaseException)."""


class NoConnection(Exception):
    pass


def fake_hub(monkeypatch, outcome, calls=None):
    """Replace hf_hub_download: the cache lookup finds nothing; a download leaves the debris
    huggingface_hub leaves (a partial file under .cache) and then fails, is interrupted (directly
    or from the progress callback), or succeeds by writing a valid file."""
    import huggingface_hub

    def download(repo_id, filename, *, local_files_only=False, local_dir=None, tqdm_class=None, **_):
        if local_files_only:
            raise NoConnection("not in the cache")
        if calls is not None:
            calls.append(repo_id)
        partial = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{filename}.0123abcd.incomplete"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"\0" * 1000)
        if outcome == "progress":
            tqdm_class(total=100_000, unit="B").update(1000)
        if outcome == "interrupt":
            raise Interrupted("cancelled")
        if outcome == "error":
            raise NoConnection("connection reset")
        save_file({"w": torch.ones(4)}, Path(local_dir) / filename)
        return str(Path(local_dir) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


def interrupt(done, total):
    raise Interrupted(f"cancelled at {done}/{total}")


@pytest.mark.parametrize("outcome, error", [("error", ModelNotAvailableError), ("interrupt", Interrupted),
                                            ("progress", Interrupted)])
def test_a_failed_or_interrupted_download_leaves_nothing_behind(tmp_path, monkeypatch, outcome, error):
    fake_hub(monkeypatch, outcome)
    folder = tmp_path / "models"
    with pytest.raises(error) as caught:
        hub.download("BiRefNet_lite", folder, progress=interrupt)
    if error is ModelNotAvailableError:
        assert URL in one_line(caught)
    assert folder.is_dir() and list(folder.rglob("*")) == []


def test_a_successful_download_is_complete_and_leaves_no_staging(tmp_path, monkeypatch):
    fake_hub(monkeypatch, "ok")
    got = hub.download("BiRefNet_lite", tmp_path, progress=False)
    assert hub.safetensors_problem(got) is None
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["BiRefNet_lite.safetensors"]


@pytest.mark.parametrize("size", [0, "half"])
def test_an_incomplete_download_in_the_folder_is_fetched_again(tmp_path, monkeypatch, tiny_checkpoint, size):
    data = tiny_checkpoint.read_bytes()
    content = b"" if size == 0 else data[: len(data) // 2]
    final = write(tmp_path, "BiRefNet_lite.safetensors", content)
    calls = []
    fake_hub(monkeypatch, "ok", calls)
    assert hub.download("BiRefNet_lite", tmp_path) == final and calls == ["ZhengPeng7/BiRefNet_lite"]
    assert hub.safetensors_problem(final) is None and load_file(final).keys() == {"w"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["BiRefNet_lite.safetensors"]

    write(tmp_path, "BiRefNet_lite.safetensors", content)
    fake_hub(monkeypatch, "error")
    for attempt in (lambda: hub.download("BiRefNet_lite", tmp_path),
                    lambda: load_model("BiRefNet_lite", models_dir=tmp_path, device="cpu", dtype="float32")):
        message = refused(attempt, ModelNotAvailableError)
        assert f"{final} is a broken download (it is incomplete: {len(content):,}" in message
        assert "delete that file" in message and URL in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["BiRefNet_lite.safetensors"]  # left as it was


def test_the_models_folder_is_checked_for_writing_before_any_download(monkeypatch):
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pytest.skip("/sys is writable here")
    except OSError:
        pass
    calls = []
    fake_hub(monkeypatch, "ok", calls)
    folder = Path("/sys/birefnet-test")
    message = refused(lambda: hub.download("BiRefNet_lite", folder), ModelNotAvailableError)
    assert message.startswith(f"cannot write to the models folder {folder}: ")
    assert message.endswith("; choose another with --models-dir or BIREFNET_MODELS_DIR") and calls == []


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), Interrupted("cancelled")])
def test_a_copy_from_the_hugging_face_cache_that_fails_leaves_no_part_file(tmp_path, monkeypatch, failure):
    import shutil

    sha = "0" * 40
    repo = tmp_path / "cache" / "models--ZhengPeng7--BiRefNet_lite"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    save_file({"w": torch.ones(1000)}, repo / "snapshots" / sha / "model.safetensors")

    def no_link(*args):
        raise OSError(18, "Invalid cross-device link")

    def copy_half(source, target):
        Path(target).write_bytes(Path(source).read_bytes()[:100])
        raise failure

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copyfile", copy_half)
    models = tmp_path / "models"
    with pytest.raises(type(failure)):
        hub.download("BiRefNet_lite", models, cache_dir=tmp_path / "cache")
    assert list(models.iterdir()) == []


# ------------------------------------------------------------------------- 9: the loader node

def test_the_loader_validates_any_value_without_raising(pack, tmp_path, monkeypatch, tiny_checkpoint):
    models = tmp_path / "birefnet"
    (models / "folder.safetensors").mkdir(parents=True)
    (models / "tiny.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setenv("BIREFNET_MODELS_DIR", str(models))
    loader = pack.NODE_CLASS_MAPPINGS["BiRefNetLoader"]
    values = [None, 3, 2.5, ["x"], "", ".", "..", "a\0b", "a\nb", "x" * 1000, "sub/" + "y" * 300, "../x",
              "../tiny.safetensors", "/etc/passwd", str(models / "tiny.safetensors"), str(models), "folder.safetensors",
              "missing.safetensors", "background_removal/x.safetensors", "BiRefNet_nope (download)", "\\..\\x"]
    for value in values:
        answer = loader.VALIDATE_INPUTS(model=value)
        assert isinstance(answer, str) and answer and "\n" not in answer and len(answer) < 300, (value, answer)
    for value in ("tiny.safetensors", "BiRefNet_lite (download)", "BiRefNet_lite.safetensors", "BiRefNet_HR"):
        assert loader.VALIDATE_INPUTS(model=value) is True, value


def test_pretrained_backbone_weights_with_nan_are_refused(tmp_path):
    """``train --backbone-weights`` reads its file through the same check as ``load_model``."""
    from birefnet_core import build_model
    from birefnet_core.train.trainer import load_backbone_weights

    model = build_model("pvt_v2_b0")
    weights = {k: v.clone() for k, v in model.bb.state_dict().items()}
    good = tmp_path / "backbone.safetensors"
    save_file(weights, good)
    assert load_backbone_weights(build_model("pvt_v2_b0"), str(good)) == len(weights)
    weights["patch_embed1.proj.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan_backbone.safetensors"
    save_file(weights, bad)
    with pytest.raises(ValueError, match=r"nan_backbone.safetensors: tensor 'patch_embed1.proj.weight' has 1 NaN"):
        load_backbone_weights(build_model("pvt_v2_b0"), str(bad))


# ----------------------------------------------------------- 10: FOCUS and detectron2 checkpoints

@pytest.fixture(scope="module")
def focus_sd():
    """The inference weights of a small FOCUS (width 128, depth 4), real values."""
    from birefnet_core.models.focus import FocusConfig, build_focus
    from reference import load_make_weights

    model = build_focus(FocusConfig(width=128, depth=4, ffn_hidden=256, adapter_heads=4))
    return load_make_weights()(model.state_dict(), seed=5)


def detectron2(model_sd, **extra):
    return {"model": model_sd, "optimizer": {"state": {0: {"exp_avg": torch.randn(1000)}}, "param_groups": []},
            "scheduler": {"base_lrs": [1e-4], "last_epoch": 3}, "iteration": 3, **extra}


def test_a_truncated_detectron2_checkpoint_says_so(tmp_path, focus_sd):
    whole = tmp_path / "whole.pth"
    torch.save(detectron2({**focus_sd, "criterion.empty_weight": torch.ones(3)}), whole)
    data = whole.read_bytes()
    for fraction in (0.1, 0.5, 0.99):
        path = write(tmp_path, f"cut{fraction}.pth", data[: int(len(data) * fraction)])
        for attempt in (lambda: read_state_dict(path), lambda: load_model(path, device="cpu", dtype="float32")):
            assert refused(attempt).startswith(f"{path} is truncated"), fraction


def test_a_detectron2_checkpoint_whose_pickle_needs_code_runs_nothing(tmp_path, focus_sd):
    from birefnet_core.convert import convert_file

    marker = tmp_path / "marker"

    class Config:  # detectron2 could pickle a config object beside the weights: unpickling it imports code
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('code ran')",)

    path = tmp_path / "with_cfg.pth"
    torch.save(detectron2(focus_sd, cfg=Config()), path)
    for attempt in (lambda: read_state_dict(path), lambda: load_model(path, device="cpu", dtype="float32"),
                    lambda: convert_file(path, tmp_path / "out.safetensors")):
        assert refused(attempt).startswith(f"{path} contains pickled Python objects, not just tensors; refusing to "
                                           "run code")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def _mask2former(backbone_keys):
    """The layout of a detectron2 Mask2Former checkpoint (100 queries) with the given backbone."""
    sd = {k: torch.zeros(4) for k in backbone_keys}
    sd.update({"sem_seg_head.pixel_decoder.adapter_1.weight": torch.zeros(256, 256, 1, 1),
               "sem_seg_head.predictor.query_feat.weight": torch.zeros(100, 256),
               "sem_seg_head.predictor.class_embed.weight": torch.zeros(134, 256),
               "criterion.empty_weight": torch.ones(134)})
    return sd


@pytest.mark.parametrize("backbone_keys, says", [
    (["backbone.stem.conv1.weight", "backbone.res2.0.conv1.weight"], "with a ResNet backbone, 100 queries"),
    (["backbone.patch_embed.proj.weight", "backbone.layers.0.blocks.0.norm1.weight"],
     "with a Swin Transformer backbone, 100 queries"),
    (["backbone.pos_embed", "backbone.blocks.0.norm1.weight"],
     "with a ViT backbone (without FOCUS's edge branch), 100 queries"),
])
def test_a_detectron2_checkpoint_of_another_model_is_described(tmp_path, backbone_keys, says):
    from birefnet_core.convert import convert_file

    path = tmp_path / "mask2former.pth"
    torch.save(detectron2(_mask2former(backbone_keys)), path)
    for attempt in (lambda: load_model(path, device="cpu"), lambda: convert_file(path, tmp_path / "o.safetensors")):
        message = refused(attempt)
        assert message.startswith("not a BiRefNet or FOCUS checkpoint: this looks like a detectron2 Mask2Former / "
                                  f"MaskFormer checkpoint {says}, not BiRefNet or FOCUS ("), message
    sd = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(2),
          "backbone.bottom_up.stem.conv1.weight": torch.zeros(2)}
    assert "a detectron2 detection checkpoint" in refused(lambda: load_model(sd, device="cpu", dtype="float32"))


def test_weights_are_checked_for_nan_only_where_inference_reads_them(tmp_path, focus_sd):
    from birefnet_core.models.focus.checkpoint import inference_state_dict

    nan = torch.full((4, 4), float("nan"))
    fine = tmp_path / "nan_in_training_only.pth"
    torch.save(detectron2({**focus_sd, "sem_seg_head.predictor.clip_refiner.w": nan}), fine)
    model = load_model(fine, device="cpu", dtype="float32")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in focus_sd.items())

    key = "sem_seg_head.predictor.query_feat.weight"
    broken = dict(focus_sd)
    broken[key] = broken[key].clone()
    broken[key][0, :3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(detectron2(broken), path)
    assert refused(lambda: load_model(path, device="cpu", dtype="float32")) == (
        f"{path}: tensor '{key}' has 3 NaN/infinite values; the checkpoint is corrupt (re-download or re-export it)")
    twice = {**focus_sd, "sem_seg_head.predictor.static_query.weight": focus_sd[key]}
    assert "old and current names" in refused(lambda: load_model(twice, device="cpu", dtype="float32"))
    assert "old and current names" in refused(lambda: inference_state_dict(twice))


def test_a_focus_checkpoint_missing_a_tensor_or_with_one_of_another_shape(focus_sd):
    key = "backbone.interactions.1.injector.attn.value_proj.weight"
    missing = {k: v for k, v in focus_sd.items() if k != key}
    assert refused(lambda: load_model(missing, device="cpu")).startswith("not a usable FOCUS checkpoint: ")
    assert key in refused(lambda: load_model(missing, device="cpu", dtype="float32"))
    reshaped = {**focus_sd, key: torch.zeros(64, 129)}
    message = refused(lambda: load_model(reshaped, device="cpu", dtype="float32"))
    assert message.startswith("not a usable FOCUS checkpoint: ") and key in message and "[64, 129]" in message
