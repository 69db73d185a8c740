"""Predictor: any image in, a probability mask of the same size out."""

import logging

import pytest
import torch

from birefnet_core import Predictor, Resolution, build_model
from birefnet_core.inference import IMAGENET_MEAN, IMAGENET_STD, as_images

from reference import load_make_weights

make_weights = load_make_weights()


def tiny_model(patch_order="current"):
    model = build_model("pvt_v2_b0", patch_order=patch_order)
    model.load_state_dict(make_weights(model.state_dict(), seed=0), strict=True)
    return model


@pytest.fixture(scope="module")
def predictor():
    return Predictor(tiny_model(), resolution=64, batch_size=2)


def test_probabilities_at_the_input_size_equal_the_network_on_the_resized_input(predictor):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 64, 64, generator=gen)  # already at the network's size: no resize
    probs = predictor.predict(images)
    assert probs.shape == (3, 64, 64) and probs.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = predictor.model((images - mean) / std).sigmoid()[:, 0]
    torch.testing.assert_close(probs, want, atol=1e-6, rtol=1e-6)


def test_channels_last_rgba_grey_and_uint8_inputs_give_the_same_mask(predictor):
    gen = torch.Generator().manual_seed(1)
    rgb = torch.rand(2, 3, 50, 70, generator=gen)
    want = predictor.predict(rgb)
    rgba = torch.cat([rgb, torch.rand(2, 1, 50, 70, generator=gen)], dim=1)
    torch.testing.assert_close(predictor.predict(rgb.permute(0, 2, 3, 1)), want)  # ComfyUI's [B, H, W, C]
    torch.testing.assert_close(predictor.predict(rgba), want)
    torch.testing.assert_close(predictor.predict(rgb[0]), want[:1])  # a single image
    quantised = (rgb * 255).round().to(torch.uint8)
    torch.testing.assert_close(predictor.predict(quantised), predictor.predict(quantised.float() / 255))
    grey = rgb[:, :1]
    torch.testing.assert_close(predictor.predict(grey), predictor.predict(grey.expand(-1, 3, -1, -1)))


def test_chunking_does_not_change_the_result_and_reports_progress():
    model = tiny_model()
    images = torch.rand(5, 3, 40, 30, generator=torch.Generator().manual_seed(2))
    whole = Predictor(model, resolution=64, batch_size=5).predict(images)
    calls = []
    chunked = Predictor(model, resolution=64, batch_size=2).predict(images, progress=lambda d, t: calls.append((d, t)))
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_tiny_and_large_images(predictor):
    one_pixel = predictor.predict(torch.rand(1, 3, 1, 1), layout="BCHW")
    assert one_pixel.shape == (1, 1, 1) and bool(torch.isfinite(one_pixel).all())
    wide = predictor.predict(torch.rand(1, 3, 9, 4000))
    assert wide.shape == (1, 9, 4000) and 0 <= wide.min() <= wide.max() <= 1
    eight_k = torch.randint(0, 256, (1, 4320, 7680, 3), dtype=torch.uint8)  # ComfyUI layout, uint8
    probs = predictor.predict(eight_k)
    assert probs.shape == (1, 4320, 7680) and bool(torch.isfinite(probs).all())


def test_empty_batch_gives_an_empty_mask(predictor):
    assert predictor.predict(torch.rand(0, 3, 20, 30)).shape == (0, 20, 30)


@pytest.mark.parametrize("bad,message", [
    (torch.full((1, 3, 8, 8), float("nan")), "NaN or infinite"),
    (torch.full((1, 3, 8, 8), float("inf")), "NaN or infinite"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.bool), "float in 0..1 or integer 8-bit levels"),
    (torch.full((1, 3, 8, 8), 300, dtype=torch.int32), "8-bit levels 0..255"),
    (torch.zeros(1, 2, 8, 8), "1, 3 or 4 channels"),
    (torch.zeros(8, 8), r"\[B, C, H, W\]"),
    (torch.zeros(1, 3, 0, 8), "must not be empty"),
])
def test_bad_input_is_a_clear_error(predictor, bad, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(bad)


def test_resolutions():
    assert Resolution.parse(None, (2560, 1440)).size_for(100, 100) == (1440, 2560)
    assert Resolution.parse("native", (512, 512)).size_for(7, 9) == (512, 512)
    assert Resolution.parse("1024x768").size_for(1, 1) == (768, 1024)
    assert Resolution.parse(512).size_for(1, 1) == (512, 512)
    keep = Resolution.parse("keep:1024")
    assert keep.size_for(1080, 1920) == (576, 1024)
    assert keep.size_for(4000, 3000) == (1024, 768)
    assert keep.size_for(1, 5000) == (32, 1024)
    with pytest.raises(ValueError, match="resolution must be"):
        Resolution.parse("big")


def test_resolution_not_a_multiple_of_32_is_rounded_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        resolution = Resolution.parse("1000x700")
    assert resolution.size_for(1, 1) == (704, 992)
    assert "not a multiple of 32" in caplog.text


def test_keep_aspect_runs_the_network_at_the_input_aspect():
    predictor = Predictor(tiny_model(), resolution="keep:96")
    seen = []
    hook = predictor.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    predictor.predict(torch.rand(1, 3, 100, 200))
    hook.remove()
    assert seen == [(64, 96)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_cpu_is_close_to_float32(dtype):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    want = Predictor(tiny_model(), resolution=64).predict(images)
    got = Predictor(tiny_model(), resolution=64, dtype=dtype).predict(images)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert (got - want).abs().max() < 0.02


def test_as_images_is_a_view():
    x = torch.rand(2, 5, 6, 3)
    view = as_images(x)
    assert view.data_ptr() == x.data_ptr()
    torch.testing.assert_close(view, x.permute(0, 3, 1, 2), atol=0, rtol=0)


class RunsOutOfMemoryAbove(torch.nn.Module):
    """The real network, behind a device that 'runs out of memory' for batches above ``limit``."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit, self.batches = model, limit, []

    def forward(self, x):
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return self.model(x)


def test_out_of_memory_halves_the_chunk_and_reports_once(caplog):
    model = tiny_model()
    images = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    want = Predictor(model, resolution=64, batch_size=7).predict(images)
    flaky = RunsOutOfMemoryAbove(model, limit=2)
    with caplog.at_level(logging.WARNING):
        got = Predictor(flaky, resolution=64, batch_size=8).predict(images)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert flaky.batches == [7, 4, 2, 2, 2, 1]
    assert caplog.text.count("out of memory") == 1
    with pytest.raises(torch.OutOfMemoryError):
        Predictor(RunsOutOfMemoryAbove(model, limit=0), resolution=64, batch_size=2).predict(images)


@pytest.mark.parametrize("height", [1, 3, 4])
def test_the_caller_states_the_layout_of_images_a_few_pixels_tall(predictor, height):
    """An image 1, 3 or 4 pixels tall reads the same in either layout, never by a guess from its size."""
    pixels = torch.rand(2, 3, height, 20, generator=torch.Generator().manual_seed(height))  # B C H W
    channels_first = predictor.predict(pixels, layout="BCHW")
    channels_last = predictor.predict(pixels.permute(0, 2, 3, 1).contiguous(), layout="BHWC")
    assert channels_first.shape == (2, height, 20)
    torch.testing.assert_close(channels_first, channels_last, atol=1e-6, rtol=0)  # memory order only
    with pytest.raises(ValueError, match="reads both as"):  # ambiguous without a layout: refused, not guessed
        predictor.predict(pixels.permute(0, 2, 3, 1)[:, :, :4, :])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_integer_images_are_8_bit_levels(predictor, dtype):
    levels = torch.randint(0, 256, (1, 3, 16, 24), generator=torch.Generator().manual_seed(1))
    want = predictor.predict(levels.float() / 255, layout="BCHW")
    torch.testing.assert_close(predictor.predict(levels.to(dtype), layout="BCHW"), want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="8-bit levels 0..255"):
        predictor.predict((levels * 257).to(torch.int32), layout="BCHW")


def test_float_values_outside_0_1_are_clamped_with_one_warning(predictor, caplog):
    from birefnet_core import inference

    inference._warned.discard("range")
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with caplog.at_level("WARNING"):
        got = predictor.predict(image * 3 - 1, layout="BCHW")
        predictor.predict(image * 3 - 1, layout="BCHW")
    torch.testing.assert_close(got, predictor.predict((image * 3 - 1).clamp(0, 1), layout="BCHW"))
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "outside 0..1" in caplog.records[0].message


@pytest.mark.parametrize("resolution,size", [("32", (64, 64)), ("keep:32", (64, 64)), ("32x128", (128, 64))])
def test_sizes_below_the_backbone_minimum_are_raised_to_it(resolution, size):
    """PVT-v2 runs at sides of 64 and more; smaller sizes the widgets and keep:N allow are raised."""
    predictor = Predictor(tiny_model(), resolution=resolution)
    assert predictor.min_side == 64 and predictor.network_size(40, 70) == size  # (H, W)
    probs = predictor.predict(torch.rand(1, 3, 40, 40), layout="BCHW")
    assert probs.shape == (1, 40, 40) and bool(torch.isfinite(probs).all())


def test_predictors_sharing_a_model_follow_its_dtype():
    model = tiny_model()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    first = Predictor(model, resolution=64)
    want = first.predict(image, layout="BCHW")
    second = Predictor(model, resolution=64, dtype="bfloat16")  # casts the shared model
    assert first.dtype == second.dtype == torch.bfloat16
    assert (first.predict(image, layout="BCHW") - want).abs().max() < 0.02  # the first still runs
    model.float()  # cast back (the weights keep their bfloat16 rounding): both follow again
    assert second.dtype == torch.float32
    torch.testing.assert_close(second.predict(image, layout="BCHW"), first.predict(image, layout="BCHW"), atol=0,
                               rtol=0)
