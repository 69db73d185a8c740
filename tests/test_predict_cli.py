"""``python -m birefnet_core predict``: files in, masks and cut-outs out, clear one-line errors."""

import os
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


def test_predict_refine_runs_the_two_pass_predictor(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(5)
    image = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    result = cli(image, "--model", tiny_checkpoint, "--out", out, "--resolution", "64", "--refine", "96",
                 "--device", "cpu", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    pixels = torch.from_numpy(np.array(Image.open(image).convert("RGB")))
    model = load_model(tiny_checkpoint, device="cpu", dtype="float32")
    two = Predictor(model, resolution=64, refine=96).predict(pixels)[0]
    one = Predictor(model, resolution=64).predict(pixels)[0]
    written = torch.from_numpy(np.array(Image.open(out / "big_mask.png"))).float() / 255
    assert (written - two).abs().max() <= 0.5 / 255 + 1e-6
    assert (two - one).abs().max() > 2 / 255  # the second pass changed the mask
    bad = cli(image, "--model", tiny_checkpoint, "--out", tmp_path / "o2", "--refine", "keep:512", "--device", "cpu")
    assert bad.returncode == 1 and "fixed size" in bad.stderr and bad.stderr.strip().count("\n") == 0


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


def run_predict(*args):
    """The CLI in this process: (status, stderr lines)."""
    import contextlib
    import io

    from birefnet_core.__main__ import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["predict", *map(str, args)])
    return status, [line for line in err.getvalue().splitlines() if line.strip()]


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def noise_png(path, seed=0, size=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_never_overwrites_what_it_did_not_write(tmp_path, tiny_checkpoint):
    """Naming: the same file twice is done once; inputs sharing a stem get _2, _3 (never a name
    another input's output has); existing outputs need --overwrite; an input is never an output."""
    a_png, a_jpg = noise_png(tmp_path / "x" / "a.png", 1), noise_png(tmp_path / "x" / "a.jpg", 2)
    a_2 = noise_png(tmp_path / "y" / "a_2.png", 3)
    a_other = noise_png(tmp_path / "y" / "a.png", 4)
    out = tmp_path / "out"
    common = ("--model", tiny_checkpoint, "--resolution", "64", "--device", "cpu")
    status, err = run_predict(a_png, tmp_path / "x" / ".." / "x" / "a.png", a_jpg, a_2, a_other, "--out", out, *common)
    assert status == 0, err
    assert sorted(snapshot(out)) == sorted(f"{stem}_{kind}.png" for stem in ("a", "a_2", "a_3", "a_2_2")
                                           for kind in ("mask", "rgba"))
    first = snapshot(out)

    (out / "a_mask.png").write_bytes(b"the user's own file")
    status, err = run_predict(a_png, "--out", out, *common)
    assert status == 1 and len(err) == 1 and "exist already" in err[0] and "--overwrite" in err[0], err
    assert (out / "a_mask.png").read_bytes() == b"the user's own file"
    status, err = run_predict(a_png, "--out", out, "--overwrite", *common)
    assert status == 0, err
    assert (out / "a_mask.png").read_bytes() == first["a_mask.png"]

    # --out is the input folder, which holds the user's own a_mask.png: an input, never replaced
    own = tmp_path / "own"
    noise_png(own / "a.png", 5)
    noise_png(own / "a_mask.png", 6)
    before = snapshot(own)
    for extra in ((), ("--overwrite",)):
        status, err = run_predict(own, "--out", own, *extra, *common)
        assert status == 1 and len(err) == 1 and "is the input" in err[0], err
        assert snapshot(own) == before


def test_predict_interrupted_leaves_complete_files_only(tmp_path, tiny_checkpoint, monkeypatch):
    """Ctrl-C in the middle of writing the second image: status 130, one line, the first image's
    outputs complete, nothing half-written, an earlier file of the same name untouched."""
    from PIL import Image as PILImage

    for i in range(3):
        noise_png(tmp_path / "in" / f"{i}.png", i)
    out = tmp_path / "out"
    out.mkdir()
    (out / "1_rgba.png").write_bytes(b"earlier")
    real_save, calls = PILImage.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 4:  # the second image's cut-out, half-way through writing it
            Path(fp).write_bytes(b"half a PNG")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", save)
    status, err = run_predict(tmp_path / "in", "--out", out, "--overwrite", "--model", tiny_checkpoint,
                              "--resolution", "64", "--device", "cpu")
    assert status == 130 and len(err) == 1 and err[0].startswith("interrupted: 1 of 3"), err
    assert sorted(snapshot(out)) == ["0_mask.png", "0_rgba.png", "1_mask.png", "1_rgba.png"]
    assert (out / "1_rgba.png").read_bytes() == b"earlier"
    assert Image.open(out / "0_rgba.png").size == (32, 24)


def test_predict_reads_16_bit_and_float_images_in_their_range(tmp_path, tiny_checkpoint):
    """A 16-bit PNG and a float TIFF give the mask of the same picture in 8 bits (not white / black)."""
    levels = np.random.default_rng(7).integers(0, 256, (40, 48), dtype=np.uint16)
    Image.fromarray(levels.astype(np.uint8), mode="L").save(tmp_path / "eight.png")
    Image.fromarray(levels * 257).save(tmp_path / "sixteen.png")
    Image.fromarray((levels / 255).astype(np.float32), mode="F").save(tmp_path / "float.tif")
    status, err = run_predict(tmp_path / "eight.png", tmp_path / "sixteen.png", tmp_path / "float.tif", "--out",
                              tmp_path / "out", "--model", tiny_checkpoint, "--resolution", "64", "--device", "cpu")
    assert status == 0, err
    want = np.array(Image.open(tmp_path / "out" / "eight_mask.png"), dtype=np.int16)
    assert want.std() > 1
    for stem in ("sixteen", "float"):
        got = np.array(Image.open(tmp_path / "out" / f"{stem}_mask.png"), dtype=np.int16)
        assert np.abs(got - want).max() <= 1, stem


def test_predict_output_folder_errors(tmp_path, tiny_checkpoint):
    image = noise_png(tmp_path / "a.png")
    a_file = tmp_path / "taken"
    a_file.write_text("a file, not a folder")
    status, err = run_predict(image, "--out", a_file, "--model", tiny_checkpoint)
    assert status == 1 and len(err) == 1 and "is a file, not a folder" in err[0], err
    readonly = Path("/sys/birefnet-test-out")
    if not os.access("/sys", os.W_OK) or not readonly.parent.exists():
        return
    status, err = run_predict(image, "--out", readonly, "--model", tiny_checkpoint)
    assert status == 1 and len(err) == 1 and "cannot write to the output folder" in err[0], err
