"""The synthetic DIS-like dataset: determinism, content, layout, CLI, and the fallback without
scikit-image."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from birefnet_core.train import synthetic
from birefnet_core.train.synthetic import (
    PRESETS,
    make_layers,
    make_sample,
    resolve_difficulty,
    sample_seed,
    write_dataset,
)

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SIZE = (128, 112)  # (W, H)
SEEDS = [sample_seed(0, i) for i in range(24)]


@pytest.fixture(scope="module")
def batch():
    return [make_sample(SIZE, s) for s in SEEDS]


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    padded = np.pad(mask, r, constant_values=True)
    out = np.ones_like(mask)
    h, w = mask.shape
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= padded[dy:dy + h, dx:dx + w]
    return out


def _opening(mask: np.ndarray, r: int) -> np.ndarray:
    return ~_erode(~_erode(mask, r), r)  # dilation = complement of the complement's erosion


def _enclosed_background(mask: np.ndarray) -> int:
    """Background pixels not 4-connected to the frame (the holes of the object)."""
    padded = Image.fromarray(np.pad(mask, 1).astype(np.uint8) * 255).copy()  # fromarray may share read-only memory
    ImageDraw.floodfill(padded, (0, 0), 128)
    return int((np.asarray(padded) == 0).sum())


def test_same_seed_same_bytes_other_seed_differs():
    image, mask = make_sample(SIZE, 7)
    again_image, again_mask = make_sample(SIZE, 7)
    assert image.tobytes() == again_image.tobytes() and mask.tobytes() == again_mask.tobytes()
    other_image, other_mask = make_sample(SIZE, 8)
    assert other_image.tobytes() != image.tobytes() and other_mask.tobytes() != mask.tobytes()
    jpeg, jpeg_mask = make_sample(SIZE, 7, jpeg_quality=80)
    assert jpeg.tobytes() == make_sample(SIZE, 7, jpeg_quality=80)[0].tobytes()
    assert jpeg.tobytes() != image.tobytes() and jpeg_mask.tobytes() == mask.tobytes()


def test_shapes_dtypes_ranges_and_soft_edges(batch):
    for image, mask in batch:
        assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
        assert mask.shape == (SIZE[1], SIZE[0]) and mask.dtype == np.uint8
        assert mask.min() == 0 and mask.max() == 255
        assert ((mask > 0) & (mask < 255)).mean() > 0.002  # 4x4 supersampled edges
        assert image.std() > 10  # textured, not flat


def test_layers_composite_exactly():
    layers = make_layers(SIZE, 3)
    a = layers.alpha[..., None]
    np.testing.assert_allclose(layers.image, a * layers.foreground + (1 - a) * layers.background, atol=1e-6)
    for array in (layers.image, layers.alpha, layers.foreground, layers.background):
        assert array.dtype == np.float32 and array.min() >= 0 and array.max() <= 1


def test_coverage_within_documented_range(batch):
    coverage = np.array([(mask > 127).mean() for _, mask in batch])
    assert coverage.min() >= 0.10 and coverage.max() <= 0.50, coverage
    assert coverage.std() > 0.03  # sizes vary


def test_thin_structures_and_holes_present(batch):
    thin = holes = 0
    for _, mask in batch:
        inside = mask > 127
        removed = inside & ~_opening(inside, 2)  # 5x5 opening removes strokes up to ~4 px wide
        thin += removed.sum() > 10
        holes += _enclosed_background(inside) > 0.01 * inside.size  # rings, lattices, cut holes, handles
    assert thin >= len(batch) // 3
    assert holes >= len(batch) // 4


def test_difficulty_presets_and_validation():
    assert resolve_difficulty("easy") == PRESETS["easy"] and resolve_difficulty("0.7") == 0.7
    assert resolve_difficulty(1) == 1.0
    for bad in ("impossible", 1.5, -0.1):
        with pytest.raises(ValueError):
            resolve_difficulty(bad)
    easy = make_sample(SIZE, 5, difficulty="easy")[0]
    hard = make_sample(SIZE, 5, difficulty="hard")[0]
    assert easy.tobytes() != hard.tobytes()
    with pytest.raises(ValueError):
        make_sample((8, 64), 0)


def test_sample_seeds_do_not_collide():
    seeds = {sample_seed(s, i) for s in range(3) for i in range(500)}
    assert len(seeds) == 1500


def test_written_layout(tmp_path):
    stems = write_dataset(tmp_path / "train", 3, size=(64, 48), seed=3, start=5)
    assert stems == ["synth_000005", "synth_000006", "synth_000007"]
    for stem in stems:
        with Image.open(tmp_path / "train" / "im" / f"{stem}.jpg") as image, \
                Image.open(tmp_path / "train" / "gt" / f"{stem}.png") as mask:
            assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (64, 48)
    assert sorted(p.stem for p in (tmp_path / "train" / "im").iterdir()) == stems
    assert sorted(p.stem for p in (tmp_path / "train" / "gt").iterdir()) == stems

    # the same index under the same seed is the same sample; another seed gives another
    write_dataset(tmp_path / "again", 2, size=(64, 48), seed=3, start=6, jpeg_quality=None)
    mask_a = np.asarray(Image.open(tmp_path / "train" / "gt" / "synth_000006.png"))
    mask_b = np.asarray(Image.open(tmp_path / "again" / "gt" / "synth_000006.png"))
    np.testing.assert_array_equal(mask_a, mask_b)
    png = np.asarray(Image.open(tmp_path / "again" / "im" / "synth_000006.png"))
    np.testing.assert_array_equal(png, make_sample((64, 48), sample_seed(3, 6))[0])
    write_dataset(tmp_path / "val", 1, size=(64, 48), seed=4, start=6)
    assert not np.array_equal(mask_a, np.asarray(Image.open(tmp_path / "val" / "gt" / "synth_000006.png")))


def test_size_jitter(tmp_path):
    class Counter:
        steps = 0

        def update(self, steps=1, note=""):
            self.steps += steps

    counter = Counter()
    stems = write_dataset(tmp_path, 6, size=(64, 64), size_jitter=0.5, progress=counter)
    assert counter.steps == 6
    sizes = set()
    for stem in stems:
        image, mask = Image.open(tmp_path / "im" / f"{stem}.jpg"), Image.open(tmp_path / "gt" / f"{stem}.png")
        assert image.size == mask.size
        assert all(32 <= side <= 96 for side in image.size)
        sizes.add(image.size)
    assert len(sizes) > 1


def test_cli_main(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path), "--count", "2", "--size", "48", "40", "--seed", "1",
                           "--difficulty", "hard", "--jpeg-quality", "0"]) == 0
    assert sorted(p.name for p in (tmp_path / "im").iterdir()) == ["synth_000000.png", "synth_000001.png"]
    assert Image.open(tmp_path / "gt" / "synth_000001.png").size == (48, 40)
    assert "wrote 2 samples" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path), "--count", "1", "--difficulty", "nope"])


def test_without_scikit_image_matches_procedural_only(monkeypatch):
    expected = make_sample(SIZE, 11, use_skimage=False)
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ImportError
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    blocked = make_sample(SIZE, 11)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(expected, blocked))
    assert synthetic._horse(True) is None and synthetic._library(True) == {}


def test_module_runs_without_scikit_image_or_scipy(tmp_path):
    """``python -m birefnet_core.train.synthetic`` with both libraries unimportable."""
    code = ("import runpy, sys; sys.modules['skimage'] = None; sys.modules['scipy'] = None; "
            f"sys.argv = ['synthetic', '--out', {str(tmp_path)!r}, '--count', '2', '--size', '40', '40']; "
            "runpy.run_module('birefnet_core.train.synthetic', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "synthetic [" not in result.stderr  # stderr is a pipe: no progress bar debris
    assert len(list((tmp_path / "gt").glob("synth_*.png"))) == 2
