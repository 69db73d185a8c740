"""birefnet_core.image_io on real files of every mode Pillow reads, and its two users:
evaluation (read_grey, evaluate_folders) and training data (read_image, read_mask)."""

import logging
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from birefnet_core import image_io
from birefnet_core.image_io import (ImageReadError, image_to_array, image_to_mask, open_image, read_image_size,
                                    read_mask, read_rgb, to_uint8)
from birefnet_core.train import data, evaluate

GREY16 = np.array([[0, 32768, 65535], [1000, 257 * 128, 12345]], np.uint16)


def _png(path, ihdr: bytes, raw: bytes) -> None:
    """A PNG written byte by byte, for what Pillow cannot write (16-bit RGB, a zero width)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _one_line_naming(exc: pytest.ExceptionInfo, path) -> str:
    message = str(exc.value)
    assert "\n" not in message and str(path) in message, message
    return message


# ---------------------------------------------------------------------------------- deep grey files

@pytest.mark.parametrize("name, mode", [("g.png", "I;16"), ("g.tif", "I;16"), ("g.pgm", "I")])
def test_16_bit_grey_reads_in_its_real_range(tmp_path, name, mode):
    path = tmp_path / name
    Image.fromarray(GREY16).save(path)
    assert open_image(path).mode == mode
    expected = GREY16 / 65535.0
    mask = read_mask(path)
    assert mask.dtype == np.float32 and mask.shape == (2, 3)
    np.testing.assert_allclose(mask, expected, atol=1e-6)
    assert abs(mask[0, 1] - 0.5) < 1e-4
    rgb = read_rgb(path)
    assert rgb.dtype == np.float32 and rgb.shape == (2, 3, 3)
    np.testing.assert_allclose(rgb, np.repeat(expected[..., None], 3, axis=2), atol=1e-6)
    assert to_uint8(mask)[1, 1] == 128


def test_big_endian_16_bit_tiff(tmp_path):
    Image.fromarray(GREY16.astype(">u2")).save(tmp_path / "g.tif")
    assert open_image(tmp_path / "g.tif").mode == "I;16B"
    np.testing.assert_allclose(read_mask(tmp_path / "g.tif"), GREY16 / 65535.0, atol=1e-6)


def test_pgm_of_any_maxval_is_on_the_16_bit_scale(tmp_path):
    path = tmp_path / "m.pgm"
    path.write_bytes(b"P5\n3 1\n4095\n" + np.array([0, 2048, 4095], ">u2").tobytes())
    assert open_image(path).mode == "I"  # Pillow scales 0..maxval to 0..65535
    np.testing.assert_allclose(read_mask(path)[0], [0.0, 2048 / 4095, 1.0], atol=1e-4)


def test_32_bit_integer_tiff(tmp_path):
    Image.fromarray(GREY16.astype(np.int32)).save(tmp_path / "i.tif")
    assert open_image(tmp_path / "i.tif").mode == "I"
    np.testing.assert_allclose(read_mask(tmp_path / "i.tif"), GREY16 / 65535.0, atol=1e-6)
    Image.fromarray(np.array([[-5, 0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match="-5 to 70000") as exc:
        read_rgb(tmp_path / "wide.tif")
    _one_line_naming(exc, tmp_path / "wide.tif")


def test_16_bit_rgb_png_is_read_as_8_bit_by_pillow(tmp_path):
    rgb8 = np.array([[[0, 128, 255], [10, 20, 30]]], np.uint8)
    rows = b"".join(b"\0" + row.tobytes() for row in (rgb8.astype(">u2") * 257))
    _png(tmp_path / "rgb16.png", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0), rows)
    assert open_image(tmp_path / "rgb16.png").mode == "RGB"
    rgb = read_rgb(tmp_path / "rgb16.png")
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, rgb8)


def test_float_tiff_as_is_clipped_with_one_warning_nan_refused(tmp_path, caplog):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    assert open_image(tmp_path / "f.tif").mode == "F"
    np.testing.assert_array_equal(read_mask(tmp_path / "f.tif"), values)
    np.testing.assert_array_equal(read_rgb(tmp_path / "f.tif")[..., 1], values)
    assert not caplog.records

    Image.fromarray(np.array([[-0.5, 0.25, 3.0]], np.float32), "F").save(tmp_path / "over.tif")
    with caplog.at_level(logging.WARNING, logger="birefnet_core.image_io"):
        mask = read_mask(tmp_path / "over.tif")
    np.testing.assert_array_equal(mask, [[0.0, 0.25, 1.0]])
    assert len(caplog.records) == 1 and "over.tif" in caplog.records[0].getMessage()

    Image.fromarray(np.array([[0.5, np.nan]], np.float32), "F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match="NaN") as exc:
        read_mask(tmp_path / "nan.tif")
    _one_line_naming(exc, tmp_path / "nan.tif")


# ---------------------------------------------------------------------------------- 8-bit files

def test_8_bit_grey_rgb_and_bilevel(tmp_path):
    grey = np.array([[0, 1, 128, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    assert np.array_equal(read_rgb(tmp_path / "l.png"), np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_allclose(read_mask(tmp_path / "l.png"), grey / 255.0, atol=1e-7)
    assert np.array_equal(to_uint8(read_mask(tmp_path / "l.png")), grey)

    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_rgb(tmp_path / "rgb.png"), rgb)
    luminance = np.asarray(Image.fromarray(rgb).convert("L"))  # ITU-R 601: 76, 150, 29, 90
    assert np.array_equal(to_uint8(read_mask(tmp_path / "rgb.png")), luminance)

    bits = np.array([[True, False, True]])
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert open_image(tmp_path / "b.png").mode == "1"
    assert np.array_equal(read_mask(tmp_path / "b.png"), bits.astype(np.float32))
    assert np.array_equal(read_rgb(tmp_path / "b.png")[..., 0], bits * np.uint8(255))


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_cmyk(tmp_path, suffix):
    image = Image.new("CMYK", (4, 2), (10, 20, 30, 40))
    image.save(tmp_path / f"c{suffix}", quality=100)
    assert open_image(tmp_path / f"c{suffix}").mode == "CMYK"
    expected = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(read_rgb(tmp_path / f"c{suffix}").astype(int) - expected).max() <= 2


@pytest.mark.parametrize("mode", ["LAB", "YCbCr"])
def test_lab_and_ycbcr_tiff(tmp_path, mode):
    rgb = np.array([[[200, 30, 40], [20, 160, 90], [128, 128, 128]]], np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    image.save(tmp_path / "x.tif")
    assert open_image(tmp_path / "x.tif").mode == mode
    expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(read_rgb(tmp_path / "x.tif"), expected)
    assert np.abs(expected.astype(int) - rgb).max() <= 3  # the conversion itself is close
    assert np.array_equal(to_uint8(read_mask(tmp_path / "x.tif")), np.asarray(Image.fromarray(expected).convert("L")))


def test_palette_with_and_without_transparency(tmp_path):
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0]
    index = np.array([[0, 1, 2, 1]], np.uint8)
    colours = np.array(palette, np.uint8).reshape(3, 3)[index]
    for name, transparency, alpha in [("plain.png", None, None), ("index.png", 0, [0, 1, 1, 1]),
                                      ("bytes.png", bytes([0, 128, 255]), [0, 128 / 255, 1, 128 / 255])]:
        image = Image.fromarray(index, "P")
        image.putpalette(palette)
        image.save(tmp_path / name, **({} if transparency is None else {"transparency": transparency}))
        opened = open_image(tmp_path / name)
        assert opened.mode == "P" and ("transparency" in opened.info) == (transparency is not None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's "palette with transparency" warning stays inside
            assert np.array_equal(read_rgb(tmp_path / name), colours)
            mask = read_mask(tmp_path / name)
        if alpha is None:
            assert np.array_equal(to_uint8(mask), np.asarray(Image.fromarray(colours).convert("L")))
        else:
            np.testing.assert_allclose(mask[0], alpha, atol=1e-6)


def test_alpha_is_the_mask_when_it_varies_else_the_luminance(tmp_path):
    colour = np.array([[[255, 255, 255], [0, 0, 0], [100, 100, 100]]], np.uint8)
    rgba = np.concatenate([colour, np.array([[[0], [255], [64]]], np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    np.testing.assert_allclose(read_mask(tmp_path / "alpha.png")[0], [0, 1, 64 / 255], atol=1e-6)
    assert np.array_equal(read_rgb(tmp_path / "alpha.png"), colour)  # alpha dropped, colour kept

    rgba[..., 3] = 255  # a mask saved as RGBA with an opaque alpha must not read as all white
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    np.testing.assert_allclose(read_mask(tmp_path / "opaque.png")[0], [1, 0, 100 / 255], atol=1e-6)

    la = np.array([[[10, 0], [20, 255]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png").mode == "LA"
    np.testing.assert_allclose(read_mask(tmp_path / "la.png")[0], [0, 1])
    la[..., 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la_opaque.png")
    np.testing.assert_allclose(read_mask(tmp_path / "la_opaque.png")[0], [10 / 255, 20 / 255], atol=1e-6)
    assert np.array_equal(read_rgb(tmp_path / "la.png")[0, :, 0], [10, 20])

    pa = Image.fromarray(rgba).convert("PA")
    pa.putalpha(Image.fromarray(np.array([[0, 255, 128]], np.uint8)))
    pa.save(tmp_path / "pa.tif")
    assert open_image(tmp_path / "pa.tif").mode == "PA"
    np.testing.assert_allclose(read_mask(tmp_path / "pa.tif")[0], [0, 1, 128 / 255], atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBX", "HSV", "RGBa", "La", "I;16L", "I;16N", "PA", "RGBA", "LA", "P"])
def test_every_mode_pillow_has_converts_in_memory(mode):
    """Modes no file writer here produces are still read: "La" and "RGBa" need an intermediate."""
    rgba = np.array([[[200, 100, 50, 255], [20, 40, 60, 128], [90, 90, 90, 0]]], np.uint8)
    source = Image.fromarray(rgba)
    if mode.startswith("I;16"):
        image = Image.frombytes(mode, (3, 2), GREY16.astype("<u2" if mode == "I;16L" else "=u2").tobytes())
        np.testing.assert_allclose(image_to_mask(image), GREY16 / 65535.0, atol=1e-6)
        assert image_to_array(image).shape == (2, 3, 3)
        return
    image = source.convert("LA").convert("La") if mode == "La" else source.convert(mode)
    rgb = image_to_array(image)
    mask = image_to_mask(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert mask.dtype == np.float32 and mask.shape == (1, 3) and 0 <= mask.min() and mask.max() <= 1
    if mode in ("RGBX", "RGBa", "RGBA"):  # premultiplied colour is undone (fully transparent colour is lost)
        assert np.abs(rgb[0, :2].astype(int) - rgba[0, :2, :3]).max() <= 2
    if mode in ("RGBa", "La", "RGBA", "LA"):
        np.testing.assert_allclose(mask[0], [1, 128 / 255, 0], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_exif_orientation_is_applied_and_the_file_closed(tmp_path, dtype):
    grey = np.arange(6, dtype=dtype).reshape(2, 3) * 40
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(grey).save(tmp_path / "turned.png", exif=exif)
    image = open_image(tmp_path / "turned.png")
    assert getattr(image, "fp", None) is None
    assert np.array_equal(np.asarray(image), np.rot90(grey, -1))
    assert read_mask(tmp_path / "turned.png").shape == (3, 2)
    assert read_image_size(tmp_path / "turned.png") == (3, 2)  # as stored


# ---------------------------------------------------------------------------------- failures

def test_damaged_and_missing_files_name_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    whole = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "x.png").mkdir()
    _png(tmp_path / "empty.png", struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0), b"\0" * 5)
    for name in ("half.png", "text.png", "x.png", "missing.png", "empty.png"):
        for read in (open_image, read_image_size, read_rgb, read_mask):
            with pytest.raises(ImageReadError) as exc:
                read(tmp_path / name)
            _one_line_naming(exc, tmp_path / name)
    assert "truncated" in str(pytest.raises(ImageReadError, open_image, tmp_path / "half.png").value)
    assert "folder" in str(pytest.raises(ImageReadError, open_image, tmp_path / "x.png").value)
    assert "not found" in str(pytest.raises(ImageReadError, open_image, tmp_path / "missing.png").value)


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setenv("BIREFNET_MAX_IMAGE_PIXELS", "100")
    for read in (open_image, read_image_size, read_rgb, read_mask):
        with pytest.raises(ImageReadError, match=r"is 20x20 \(400 pixels\), above the limit of 100 pixels") as exc:
            read(tmp_path / "big.png")
        assert "BIREFNET_MAX_IMAGE_PIXELS=" in _one_line_naming(exc, tmp_path / "big.png")

    monkeypatch.setenv("BIREFNET_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ImageReadError, match="BIREFNET_MAX_IMAGE_PIXELS='lots'") as exc:
        open_image(tmp_path / "big.png")
    _one_line_naming(exc, tmp_path / "big.png")

    monkeypatch.delenv("BIREFNET_MAX_IMAGE_PIXELS")  # without it, PIL's limit, with our message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(ImageReadError, match="20x20"):
        open_image(tmp_path / "big.png")


@pytest.mark.parametrize("name", ["big.png", "big.tif", "big.gif"])
def test_a_limit_above_pils_own_reads_without_warning(tmp_path, monkeypatch, name):
    """PIL warns above its limit and raises above twice it, at open and again while decoding
    (TIFF); with a larger limit of ours neither escapes, and PIL's limit is put back."""
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(tmp_path / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    monkeypatch.setenv("BIREFNET_MAX_IMAGE_PIXELS", "1000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_rgb(tmp_path / name).shape == (20, 20, 3)
        assert read_image_size(tmp_path / name) == (20, 20)
    assert Image.MAX_IMAGE_PIXELS == 50
    assert image_io.max_image_pixels() == 1000


def test_concurrent_reads_put_pils_limit_back(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(tmp_path / "a.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    monkeypatch.setenv("BIREFNET_MAX_IMAGE_PIXELS", "1000")
    with ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(lambda _: read_mask(tmp_path / "a.tif").shape, range(64)))
    assert shapes == [(20, 20)] * 64 and Image.MAX_IMAGE_PIXELS == 50


def test_to_uint8_rounds_and_keeps_uint8():
    assert np.array_equal(to_uint8(np.array([0.0, 0.5, 1.0, 1.5, -0.1, 0.5 / 255 - 1e-6], np.float32)),
                          [0, 128, 255, 255, 0, 0])
    pixels = np.array([1, 2], np.uint8)
    assert to_uint8(pixels) is pixels
    with pytest.raises(TypeError):
        to_uint8(np.array([1, 2], np.int32))


# ---------------------------------------------------------------------------------- evaluation

def test_read_grey_of_16_bit_and_float_masks(tmp_path):
    levels = np.array([[0, 1, 127, 128, 254, 255]], np.uint8)
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "m16.png")
    assert np.array_equal(evaluate.read_grey(tmp_path / "m16.png"), levels)
    Image.fromarray(levels / np.float32(255), "F").save(tmp_path / "mf.tif")
    assert np.array_equal(evaluate.read_grey(tmp_path / "mf.tif"), levels)
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "half.png")
    assert evaluate.read_grey(tmp_path / "half.png").tolist() == [[0, 128, 255]]
    (tmp_path / "bad.png").write_text("no")
    with pytest.raises(evaluate.EvaluationError, match="bad.png"):
        evaluate.read_grey(tmp_path / "bad.png")


def test_evaluate_folders_on_16_bit_ground_truth_equals_8_bit(tmp_path):
    rng = np.random.default_rng(3)
    for folder in ("pred", "gt8", "gt16", "predf"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        gt = np.zeros((40, 48), np.uint8)
        gt[8 + i:30, 10:36 - i] = 255
        gt[20, 5:40] = 200  # soft levels survive the scale change
        pred = np.clip(gt.astype(int) + rng.integers(-80, 80, gt.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pred).save(tmp_path / "pred" / f"{i}.png")
        Image.fromarray(pred / np.float32(255), "F").save(tmp_path / "predf" / f"{i}.tif")
        Image.fromarray(gt).save(tmp_path / "gt8" / f"{i}.png")
        Image.fromarray(gt.astype(np.uint16) * 257).save(tmp_path / "gt16" / f"{i}.png")
    names = ("S", "maxF", "meanE", "MAE")
    eight = evaluate.evaluate_folders(tmp_path / "pred", tmp_path / "gt8", metrics=names)
    sixteen = evaluate.evaluate_folders(tmp_path / "pred", tmp_path / "gt16", metrics=names)
    floats = evaluate.evaluate_folders(tmp_path / "predf", tmp_path / "gt16", metrics=names)
    assert eight["pairs"] == sixteen["pairs"] == floats["pairs"] == 3
    assert sixteen["metrics"] == eight["metrics"] and floats["metrics"] == eight["metrics"]
    assert 0.5 < eight["metrics"]["S"] < 1


# ---------------------------------------------------------------------------------- training data

def test_training_data_reads_16_bit_and_float_files(tmp_path):
    Image.fromarray(GREY16).save(tmp_path / "m16.png")
    mask = data.read_mask(tmp_path / "m16.png")
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), to_uint8(GREY16 / 65535.0))
    image = data.read_image(tmp_path / "m16.png")
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 2], np.asarray(mask))

    values = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    assert np.asarray(data.read_mask(tmp_path / "f.tif")).tolist() == [[0, 64, 128, 255]]
    assert np.asarray(data.read_image(tmp_path / "f.tif"))[0, :, 1].tolist() == [0, 64, 128, 255]

    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[..., :3] = [[[255, 255, 255], [0, 0, 0]]]
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert np.asarray(data.read_mask(tmp_path / "opaque.png")).tolist() == [[255, 0]]


def test_training_data_applies_the_same_bomb_limit_to_headers_and_pixels(tmp_path, monkeypatch):
    for folder in ("im", "gt"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "im" / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "gt" / "a.png")
    monkeypatch.setenv("BIREFNET_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(data.DataError, match="20x20"):
        data.find_pairs([tmp_path])
    with pytest.raises(data.DataError, match="20x20"):
        data.read_image(tmp_path / "im" / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setenv("BIREFNET_MAX_IMAGE_PIXELS", "400")
    pairs = data.find_pairs([tmp_path])
    assert data.read_image(pairs[0].image).size == data.read_mask(pairs[0].mask).size == (20, 20)

