"""Training data: pairing, bad files, mask handling, augmentation and the batch plan."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from birefnet_core.train.data import (Augmentation, BatchPlan, DataError, SegmentationDataset, SizePolicy, augment,
                                      find_pairs, read_mask)


def _write(root, stem, size=(40, 30), mask_size=None, seed=0, image_ext=".jpg"):
    (root / "im").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "im" / f"{stem}{image_ext}")
    mw, mh = mask_size or size
    mask = np.zeros((mh, mw), np.uint8)
    mask[:, : mw // 2] = 255  # left half
    Image.fromarray(mask).save(root / "gt" / f"{stem}.png")


def test_pairs_by_stem_over_several_roots_and_lonely_files_listed_once(tmp_path, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(3):
        _write(a, f"x{i}", seed=i)
    _write(b, "y0")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(a / "im" / "lonely.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(a / "gt" / "orphan.png")
    with caplog.at_level(logging.WARNING):
        pairs = find_pairs([a, b])
    assert [p.stem for p in pairs] == ["x0", "x1", "x2", "y0"]
    assert all(p.image.stem == p.mask.stem for p in pairs)
    lonely = [r for r in caplog.records if "lonely" in r.getMessage()]
    assert len(lonely) == 1 and "without a mask" in lonely[0].getMessage()
    assert sum("orphan" in r.getMessage() for r in caplog.records) == 1


def test_empty_dataset_and_missing_folders_are_clear_errors(tmp_path):
    (tmp_path / "e" / "im").mkdir(parents=True)
    (tmp_path / "e" / "gt").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs found"):
        find_pairs([tmp_path / "e"])
    with pytest.raises(DataError, match="im/"):
        find_pairs([tmp_path / "nowhere"])
    with pytest.raises(DataError, match="no dataset"):
        find_pairs([])


def test_unreadable_file_is_named_before_training(tmp_path):
    _write(tmp_path, "good")
    _write(tmp_path, "bad")
    (tmp_path / "gt" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="bad.png"):
        find_pairs([tmp_path])


def test_mask_of_another_size_is_resized_with_its_image(tmp_path):
    _write(tmp_path, "s", size=(40, 30), mask_size=(80, 60))
    ds = SegmentationDataset(find_pairs([tmp_path]), augmentation=Augmentation.none(), default_size=(64, 32))
    x, y, index = ds[0]
    assert x.shape == (3, 32, 64) and y.shape == (1, 32, 64) and index == 0
    assert y[0, :, :28].min() > 0.99 and y[0, :, 36:].max() < 0.01  # left half still the left half


def test_16_bit_and_alpha_masks_are_read_on_the_8_bit_scale(tmp_path):
    deep = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert read_mask(tmp_path / "deep.png").getpixel((1, 0)) == 128
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = [[0, 255], [255, 0]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert np.array_equal(np.asarray(read_mask(tmp_path / "alpha.png")), rgba[..., 3])


def test_augmentation_is_deterministic_and_flips_image_and_mask_together():
    rng = np.random.default_rng(0)
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :12] = 255  # a white band on the left, and the mask marks it
    image, mask = Image.fromarray(pixels), Image.fromarray(pixels[..., 0])
    flipped = 0
    for seed in range(12):
        out1 = augment(image, mask, np.random.default_rng(seed), Augmentation(flip=True, enhance=False,
                                                                               rotate=False, pepper=False))
        out2 = augment(image, mask, np.random.default_rng(seed), Augmentation(flip=True, enhance=False,
                                                                               rotate=False, pepper=False))
        assert np.array_equal(np.asarray(out1[0]), np.asarray(out2[0]))
        band = np.asarray(out1[0])[..., 0] > 128
        assert np.array_equal(band, np.asarray(out1[1]) > 128)
        flipped += bool(band[:, -1].all())
    assert 0 < flipped < 12
    full = Augmentation()
    a = augment(image, mask, np.random.default_rng(rng.integers(1 << 30)), full)
    assert a[0].size == image.size and a[1].size == mask.size
    pepper = np.asarray(augment(Image.fromarray(np.full((100, 100, 3), 128, np.uint8)), mask.resize((100, 100)),
                                np.random.default_rng(1), Augmentation(False, False, False, True))[0])
    changed = (pepper != 128).any(-1).sum()
    assert changed == pytest.approx(15, abs=3)  # 0.15 % of the pixels (a few may repeat)


def test_augmentation_names():
    assert Augmentation.parse(["none"]) == Augmentation.none()
    assert Augmentation.parse(["flip"]) == Augmentation(True, False, False, False)
    with pytest.raises(ValueError, match="unknown augmentation"):
        Augmentation.parse(["blur"])


def test_process_shares_make_up_the_single_process_batches():
    sizes = SizePolicy((64, 64))
    whole = list(BatchPlan(22, 4, sizes=sizes, seed=3, epoch=2))
    assert len(whole) == 5  # 22 // 4, the incomplete batch dropped
    shares = [list(BatchPlan(22, 2, sizes=sizes, seed=3, epoch=2, rank=r, world_size=2)) for r in range(2)]
    for b, batch in enumerate(whole):
        assert [i for i, _, _ in batch] == [i for r in range(2) for i, _, _ in shares[r][b]]
    assert list(BatchPlan(22, 4, sizes=sizes, seed=3, epoch=2, start=3)) == whole[3:]
    other_epoch = list(BatchPlan(22, 4, sizes=sizes, seed=3, epoch=3))
    assert [i for b in other_epoch for i, _, _ in b] != [i for b in whole for i, _, _ in b]


def test_dynamic_sizes_are_multiples_of_32_in_range_and_agree_across_processes():
    sizes = SizePolicy((256, 256), dynamic=(100, 300))
    drawn = {sizes.draw(0, 1, b) for b in range(40)}
    assert len(drawn) > 5
    assert all(w % 32 == 0 and h % 32 == 0 and 96 <= w <= 288 and 96 <= h <= 288 for w, h in drawn)
    plans = [list(BatchPlan(16, 2, sizes=sizes, seed=0, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert [b[0][1] for b in plans[0]] == [b[0][1] for b in plans[1]]
    with pytest.raises(ValueError, match="multiple of 32"):
        SizePolicy((100, 64))


def test_items_from_the_plan_have_the_batch_size(tmp_path):
    for i in range(4):
        _write(tmp_path, f"s{i}", seed=i)
    ds = SegmentationDataset(find_pairs([tmp_path]), seed=1)
    plan = BatchPlan(len(ds), 2, sizes=SizePolicy((64, 96)), seed=1, epoch=1)
    batch = next(iter(plan))
    x, y, _ = ds[batch[0]]
    assert x.shape == (3, 96, 64) and y.shape == (1, 96, 64)
    assert torch.equal(ds[batch[0]][0], x)  # the same sample, epoch and seed give the same tensor
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
