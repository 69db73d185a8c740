"""``python -m birefnet_core predict``: files in, masks and cut-outs out, clear one-line errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from birefnet_core import Predictor, load_model


REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "birefnet_core", "predict", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_predict_writes_a_mask_and_a_cutout_per_image(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (33, 21, 4), dtype=np.uint8), mode="RGBA").save(folder / "b.png")
    single = tmp_path / "c.jpg"
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(single)
    out = tmp_path / "out"
    result = cli(folder, single, "--model", tiny_checkpoint, "--out", out, "--resolution", "64", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for stem, size in (("a", (70, 40)), ("b", (21, 33)), ("c", (16, 16))):
        mask = Image.open(out / f"{stem}_mask.png")
        rgba = Image.open(out / f"{stem}_rgba.png")
        assert (mask.mode, mask.size) == ("L", size)
        assert (rgba.mode, rgba.size) == ("RGBA", size)
        assert np.array_equal(np.array(rgba)[..., 3], np.array(mask))
    # the mask is the Predictor's probabilities in 8 bits
    image = torch.from_numpy(np.array(Image.open(folder / "a.png").convert("RGB")))
    probs = Predictor(load_model(tiny_checkpoint, device="cpu"), resolution=64).predict(image)[0]
    written = torch.from_numpy(np.array(Image.open(out / "a_mask.png"))).float() / 255
    assert (written - probs).abs().max() <= 0.5 / 255 + 1e-6


def test_predict_errors_are_one_line(tmp_path, tiny_checkpoint):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    missing_model = cli(image, "--model", tmp_path / "nope.safetensors", "--out", tmp_path / "o")
    assert missing_model.returncode == 1
    assert missing_model.stderr.strip().count("\n") == 0 and "not found" in missing_model.stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    unreadable = cli(broken, "--model", tiny_checkpoint, "--out", tmp_path / "o", "--device", "cpu")
    assert unreadable.returncode == 1 and "cannot read image" in unreadable.stderr
    no_input = cli(tmp_path / "absent.png", "--model", tiny_checkpoint)
    assert no_input.returncode == 1 and "input not found" in no_input.stderr
