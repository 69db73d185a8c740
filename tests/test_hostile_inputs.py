"""Every command line against a corpus of bad files, names and folders made here.

Each case runs the real CLI in its own process (as a user would, offline, with its own HOME and
models folder) and must end with status 1 (130 for Ctrl-C), exactly one line on stderr that says
what went wrong without a traceback, no file created or changed anywhere but in the case's own
output folder, and every input byte for byte as it was.
"""

import hashlib
import importlib.util
import os
import pickle
import shlex
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
READ_ONLY = Path("/sys")  # refuses writes even to root (chmod does not), where tests usually run


def read_only_available() -> bool:
    try:
        (READ_ONLY / "birefnet-probe").mkdir()
    except OSError:
        return READ_ONLY.is_dir()
    return False


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_checkpoint):
    """``root/`` with ``in/`` (the bad inputs and a few good ones), ``models/`` (the models folder,
    holding a broken download of a registry model), ``home/`` and ``work/`` (HOME and the working
    directory of every run)."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "in"
    for folder in (data, root / "models", root / "home", root / "work", root / "out", data / "gt", data / "pred",
                   data / "no-images", data / "own"):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    # weights
    good = load_file(str(tiny_checkpoint))
    (data / "tiny.safetensors").write_bytes(Path(tiny_checkpoint).read_bytes())
    (data / "text.pth").write_text("these are my notes, not weights\n" * 10)
    (data / "random.pth").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (data / "empty.pth").write_bytes(b"")
    torch.save({"w": torch.zeros(64, 64)}, data / "whole.pth")
    (data / "truncated.pth").write_bytes((data / "whole.pth").read_bytes()[:3000])
    zipped = bytearray((data / "whole.pth").read_bytes())
    central = zipped.index(b"PK\x01\x02")  # the first entry of the zip directory: claim 2 GiB
    zipped[central + 20:central + 28] = struct.pack("<II", 2**31, 2**31)
    (data / "overclaim.pth").write_bytes(bytes(zipped))
    (data / "whole.pth").unlink()
    (data / "code.pth").write_bytes(pickle.dumps(print, protocol=2))  # names a Python global: code, not tensors
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        broken = dict(good)
        key = next(k for k, v in broken.items() if k.startswith("decoder.") and v.is_floating_point())
        broken[key] = broken[key].clone()
        broken[key].view(-1)[0] = value
        save_file(broken, data / f"{name}.safetensors")
    integer = dict(good)
    key = next(k for k, v in integer.items() if v.is_floating_point() and k.endswith(".weight"))
    integer[key] = integer[key].round().to(torch.int64)
    save_file(integer, data / "int.safetensors")
    whole = Path(tiny_checkpoint).read_bytes()
    (data / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    (data / "empty.safetensors").write_bytes(b"")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, data / "unet.safetensors")
    (data / "folder.safetensors").mkdir()
    (root / "models" / "BiRefNet_lite.safetensors").write_bytes(whole[:1000])  # an interrupted download

    # images
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(data / "ok.png")
    (data / "text.png").write_text("not an image")
    (data / "empty.png").write_bytes(b"")
    png = (data / "ok.png").read_bytes()
    (data / "truncated.png").write_bytes(png[: len(png) // 2])
    Image.new("1", (12000, 12000)).save(data / "bomb.png")  # 144 megapixels in a few kilobytes
    (data / "folder.png").mkdir()
    Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)).save(data / "own" / "a.png")
    Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)).save(data / "own" / "a_mask.png")
    Image.fromarray((rng.random((24, 32)) > 0.5).astype(np.uint8) * 255).save(data / "gt" / "a.png")
    (data / "pred" / "a.png").write_text("not an image")
    for sub in ("im", "gt"):  # a dataset of two pairs for training runs that must fail on something else
        (data / "ds" / sub).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(data / "ds" / sub / f"{i}.png")

    # videos and other files
    (data / "text.mp4").write_text("not a video\n" * 50)
    (data / "notes.mov").write_text("not a video either\n" * 50)
    if importlib.util.find_spec("av"):
        from birefnet_core.video_io import write_test_video

        write_test_video(data / "clip.mp4", rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    (data / "empty.mp4").write_bytes(b"")
    (data / "taken").write_text("a file where a folder is expected")
    return root


def snapshot(root: Path, skip: Path):
    """{relative path: sha256} of every file and folder under ``root`` outside ``skip``."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "/"
    return found


# (id, command line with {in} and {out} placeholders (shell quoting), a word the error must contain)
MODEL = "--model {in}/tiny.safetensors"
CASES = [
    # weights files and model names
    ("weights-text", "predict {in}/ok.png --model {in}/text.pth --out {out}", "not a PyTorch checkpoint"),
    ("weights-random", "predict {in}/ok.png --model {in}/random.pth --out {out}", "not a PyTorch checkpoint"),
    ("weights-empty-pth", "predict {in}/ok.png --model {in}/empty.pth --out {out}", "empty.pth"),
    ("weights-truncated-pth", "predict {in}/ok.png --model {in}/truncated.pth --out {out}", "truncated.pth"),
    ("weights-zip-overclaim", "predict {in}/ok.png --model {in}/overclaim.pth --out {out}", "overclaim.pth"),
    ("weights-code-pickle", "predict {in}/ok.png --model {in}/code.pth --out {out}", "refusing"),
    ("weights-nan", "predict {in}/ok.png --model {in}/nan.safetensors --out {out}", "NaN"),
    ("weights-inf", "predict {in}/ok.png --model {in}/inf.safetensors --out {out}", "NaN/infinite"),
    ("weights-int", "predict {in}/ok.png --model {in}/int.safetensors --out {out}", "int64"),
    ("weights-truncated-st", "predict {in}/ok.png --model {in}/truncated.safetensors --out {out}",
     "truncated.safetensors"),
    ("weights-empty-st", "predict {in}/ok.png --model {in}/empty.safetensors --out {out}", "empty.safetensors"),
    ("weights-foreign", "predict {in}/ok.png --model {in}/unet.safetensors --out {out}", "Stable Diffusion"),
    ("weights-folder", "predict {in}/ok.png --model {in}/folder.safetensors --out {out}", "is a folder"),
    ("name-long", "predict {in}/ok.png --model " + "a" * 300 + " --out {out}", "255 bytes"),
    ("name-space", "predict {in}/ok.png --model 'my model' --out {out}", "my model"),
    ("name-dot", "predict {in}/ok.png --model . --out {out}", "'.'"),
    ("name-dotdot", "predict {in}/ok.png --model ../../etc/passwd --out {out}", ".."),
    ("registry-broken-download", "predict {in}/ok.png --model BiRefNet_lite --out {out}", "delete"),
    ("models-dir-read-only", "predict {in}/ok.png --model BiRefNet_HR --models-dir /sys/birefnet-models --out {out}",
     "cannot write to the models folder"),
    ("models-dir-is-a-file", "predict {in}/ok.png --model BiRefNet_HR --models-dir {in}/taken --out {out}", "taken"),
    # images
    ("image-text", "predict {in}/text.png " + MODEL + " --out {out}", "text.png"),
    ("image-empty", "predict {in}/empty.png " + MODEL + " --out {out}", "empty.png"),
    ("image-truncated", "predict {in}/truncated.png " + MODEL + " --out {out}", "truncated.png"),
    ("image-bomb", "predict {in}/bomb.png " + MODEL + " --out {out}", "BIREFNET_MAX_IMAGE_PIXELS"),
    ("image-folder-without-images", "predict {in}/no-images " + MODEL + " --out {out}", "no images"),
    ("image-missing", "predict {in}/absent.png " + MODEL + " --out {out}", "input not found"),
    # outputs
    ("out-is-a-file", "predict {in}/ok.png " + MODEL + " --out {in}/taken", "is a file"),
    ("out-read-only", "predict {in}/ok.png " + MODEL + " --out /sys/birefnet-out", "cannot write"),
    ("out-holds-own-mask", "predict {in}/own " + MODEL + " --out {in}/own --overwrite", "is the input"),
    ("bad-batch-size", "predict {in}/ok.png " + MODEL + " --out {out} --batch-size 0", "batch-size"),
    ("bad-resolution", "predict {in}/ok.png " + MODEL + " --out {out} --resolution huge", "resolution"),
    ("bad-dtype", "predict {in}/ok.png " + MODEL + " --out {out} --dtype int8", "dtype"),
    ("bad-device", "predict {in}/ok.png " + MODEL + " --out {out} --device quantum", "quantum"),
    # video
    ("video-text", "video {in}/text.mp4 " + MODEL + " --out {out}/o.mov", "text.mp4"),
    ("video-empty", "video {in}/empty.mp4 " + MODEL + " --out {out}/o.mov", "empty.mp4"),
    ("video-out-is-input", "video {in}/notes.mov " + MODEL + " --out {in}/notes.mov --overwrite", "is the input"),
    ("video-out-unknown", "video {in}/text.mp4 " + MODEL + " --out {out}/o.gif", "extension"),
    ("video-out-is-a-file", "video {in}/clip.mp4 " + MODEL + " --out {in}/taken", "taken"),
    ("video-out-exists", "video {in}/clip.mp4 " + MODEL + " --out {in}/notes.mov", "--overwrite"),
    ("video-bad-smoothing", "video {in}/text.mp4 " + MODEL + " --out {out}/o.mov --smoothing 3", "smoothing"),
    # evaluation
    ("eval-missing-pred", "eval --pred {in}/absent --gt {in}/gt", "absent"),
    ("eval-missing-gt", "eval --pred {in}/pred --gt {in}/absent", "absent"),
    ("eval-unreadable-pred", "eval --pred {in}/pred --gt {in}/gt --metrics MAE", "a.png"),
    ("eval-unknown-metric", "eval --pred {in}/pred --gt {in}/gt --metrics XYZ", "XYZ"),
    # training
    ("train-init-text", "train --data {in}/ds --batch-size 2 --epochs 1 --out {out} --init {in}/text.pth", "not a PyTorch checkpoint"),
    ("train-init-nan", "train --data {in}/ds --batch-size 2 --epochs 1 --out {out} --init {in}/nan.safetensors", "NaN"),
    ("train-missing-data", "train --data {in}/absent --epochs 1 --out {out}", "absent"),
    ("train-size-below-minimum", "train --data {in}/ds --batch-size 2 --epochs 1 --out {out} --backbone pvt_v2_b0 --size 32 32",
     "at least 64"),
    ("train-out-is-a-file", "train --data {in}/ds --batch-size 2 --epochs 1 --out {in}/taken --backbone pvt_v2_b0", "taken"),
    # benchmarks
    ("bench-unknown-backbone", "bench model --backbone resnet50 --size 64 --repeats 1", "resnet50"),
    ("bench-bad-size", "bench model --backbone pvt_v2_b0 --size huge --repeats 1", "huge"),
]


def command(template: str, corpus: Path, out: Path):
    words = shlex.split(template.format(**{"in": corpus / "in", "out": out}))
    if words[0] == "train":
        return [sys.executable, "-m", "birefnet_core.train", *words[1:], "--no-progress"]
    return [sys.executable, "-m", "birefnet_core", *words]


def environment(corpus: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BIREFNET_", "HUGGING"))}
    env.update(HOME=str(corpus / "home"), BIREFNET_MODELS_DIR=str(corpus / "models"), HF_HUB_OFFLINE="1",
               HF_HOME=str(corpus / "home" / "hf"), PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore::DeprecationWarning")
    return env


@pytest.mark.parametrize("case, template, word", CASES, ids=[c[0] for c in CASES])
def test_every_bad_input_ends_in_one_line(corpus, case, template, word):
    if "/sys/" in template and not read_only_available():
        pytest.skip("no folder that refuses writes to this user")
    out = corpus / "out" / case
    before = snapshot(corpus, out)
    result = subprocess.run(command(template, corpus, out), cwd=corpus / "work", env=environment(corpus),
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in lines[0], result.stderr
    assert word in lines[0], lines[0]
    assert snapshot(corpus, out) == before  # inputs unchanged, nothing new outside the case's output folder
    if out.exists():
        assert not [p for p in out.rglob("*") if ".partial-" in p.name]


def _default_sigint():
    """A shell that starts the test run in the background (``cmd &``) ignores SIGINT, and Python
    keeps an inherited SIG_IGN (no KeyboardInterrupt): give the child the default, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_predict_is_one_line_and_leaves_complete_files(corpus, tmp_path):
    """A real SIGINT while predict works through a folder: status 130, one line, no temporary files."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        Image.fromarray(np.full((64, 64, 3), i % 256, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    out = tmp_path / "out"
    process = subprocess.Popen(command(f"predict {folder} --model {{in}}/tiny.safetensors --out {{out}} "
                                       "--resolution 64 --device cpu", corpus, out),
                               cwd=corpus / "work", env=environment(corpus), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*_rgba.png"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 130 and len(lines) == 1 and lines[0].startswith("interrupted"), stderr
    written = sorted(p.name for p in out.iterdir())
    assert not [name for name in written if ".partial-" in name]
    for path in out.iterdir():
        Image.open(path).load()  # every file there is a complete PNG
