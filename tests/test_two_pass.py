"""Two-pass segmentation (``Predictor(refine=...)``, :mod:`birefnet_core.two_pass`): the box, the
cut-out, the merge, and every odd case the issue names."""

import logging

import pytest
import torch
import torch.nn as nn

from birefnet_core import Predictor, build_model
from birefnet_core.inference import IMAGENET_MEAN, IMAGENET_STD
from birefnet_core.two_pass import TwoPass, crop_box, feather_weights, refine, subject_boxes

from reference import load_make_weights


class ColourOracle(nn.Module):
    """A stand-in network whose mask is known exactly: logit = 40 x (red - 0.5) per pixel of the
    (de-normalised) input, so red pixels are the subject. What it returns at any resolution is a
    resize of the image's own red channel: the merge can be checked against the image."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(40.0))
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        red = x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        return self.scale * (red - 0.5)


def disc_image(height, width, cy, cx, radius, strands=False):
    """[1, 3, H, W]: a red disc (the subject) on a dark green background; with ``strands`` 1-pixel
    red lines leaving it (thin structure a small network size loses)."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    subject = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2).float()
    if strands:
        for k in range(-3, 4):
            line = (yy - cy - k * radius / 3).abs() < 0.5
            near = (xx - cx).abs() < 2 * radius
            subject = torch.maximum(subject, (line & near).float())
    image = torch.stack([subject, 0.3 * torch.ones_like(subject), 0.1 * torch.ones_like(subject)])
    return image[None], subject


# -- geometry ---------------------------------------------------------------------------------

def test_subject_boxes_cover_every_part_above_the_threshold_and_say_none_when_empty():
    probs = torch.zeros(3, 20, 30)
    probs[0, 2:5, 3:4] = 0.9  # two separate parts: the box holds both
    probs[0, 15, 25] = 0.6
    probs[1, 5:7, 5:7] = 0.4  # below the threshold: nothing
    probs[2] = 1.0
    assert subject_boxes(probs, 0.5) == [(2, 16, 3, 26), None, (0, 20, 0, 30)]


def test_crop_box_adds_margins_takes_the_network_aspect_and_stays_inside_the_image():
    # a 100x100 box in the middle of a 1000x2000 (H x W) image, network aspect 1: margin 10 on each side
    assert crop_box((450, 550, 950, 1050), 1000, 2000, 1.0, 0.1, 0) == (440, 560, 940, 1060)
    # network aspect 2 (W = 2H): the width doubles about the centre
    y0, y1, x0, x1 = crop_box((450, 550, 950, 1050), 1000, 2000, 2.0, 0.1, 0)
    assert (y1 - y0, x1 - x0) == (120, 240) and (x0 + x1) / 2 == 1000
    # a subject touching the left border: the cut-out is moved inside, not cut
    assert crop_box((400, 600, 0, 100), 1000, 2000, 1.0, 0.0, 0) == (400, 600, 0, 200)
    # an image too narrow for the aspect: the whole width, and the height is not shrunk
    y0, y1, x0, x1 = crop_box((0, 300, 10, 20), 300, 40, 1.0, 0.0, 0)
    assert (y0, y1, x0, x1) == (0, 300, 0, 40)
    # a 1-pixel subject in a 1-pixel image
    assert crop_box((0, 1, 0, 1), 1, 1, 1.0, 0.1, 8) == (0, 1, 0, 1)
    # the minimum margin in pixels
    assert crop_box((50, 51, 50, 51), 100, 100, 1.0, 0.1, 8) == (42, 59, 42, 59)


def test_feather_is_one_inside_and_zero_at_inner_edges_but_not_at_the_image_border():
    w = feather_weights((0, 40, 10, 50), 100, 100, 0.25, torch.device("cpu"))  # top edge on the image border
    assert w.shape == (40, 40)
    assert w[0, 20] == 1.0  # the image's top border: no fade
    assert w[-1, 20] < 0.1 and w[20, 0] < 0.1 and w[20, -1] < 0.1  # edges inside the image fade out
    assert w[20, 20] == 1.0
    assert torch.all(w[:, 15:25] <= 1.0) and torch.all(w >= 0.0)


def test_settings_parse_and_refuse():
    assert TwoPass.parse(None) is None and TwoPass.parse("off") is None and TwoPass.parse(False) is None
    assert TwoPass.parse("native") == TwoPass() and TwoPass.parse(True) == TwoPass()
    assert TwoPass.parse(2048).size == 2048 and TwoPass.parse("1536x1024").size == "1536x1024"
    with pytest.raises(ValueError, match="fixed size"):
        TwoPass.parse("keep:2048")
    with pytest.raises(ValueError, match="threshold"):
        TwoPass(threshold=1.0)
    with pytest.raises(ValueError, match="margin"):
        TwoPass(margin=-0.1)
    with pytest.raises(ValueError, match="refine must be"):
        TwoPass.parse(3.5)


# -- the merge, with a pass 2 whose answer is known -------------------------------------------

def test_merge_is_pass_two_inside_pass_one_outside_and_a_blend_between():
    image, _ = disc_image(200, 300, 100, 150, 20)
    pass1 = torch.full((1, 200, 300), 0.2)
    pass1[0, 90:110, 140:160] = 0.9  # the subject seen by pass 1

    def pass2(batch):  # pass 2 "sees" the green channel of the cut-out (0.3 everywhere)
        assert batch.shape == (1, 3, 64, 64)
        return batch[:, 1]

    settings = TwoPass(threshold=0.5, margin=0.5, feather=0.1, min_margin_px=0)
    merged, empty = refine(image, pass1.clone(), settings, (64, 64), [(64, 64)], pass2)
    assert empty == []
    box = crop_box((90, 110, 140, 160), 200, 300, 1.0, 0.5, 0)  # (80, 120, 130, 170)
    y0, y1, x0, x1 = box
    assert torch.all(merged[0, :y0] == 0.2) and torch.all(merged[0, :, :x0] == 0.2)  # outside: pass 1
    inner = merged[0, y0 + 5:y1 - 5, x0 + 5:x1 - 5]
    torch.testing.assert_close(inner, torch.full_like(inner, 0.3))  # inside the band: pass 2
    edge = merged[0, y0, (x0 + x1) // 2]  # on the band: between the two
    assert 0.2 < edge < 0.3


def test_whole_image_box_at_the_pass_one_size_repeats_nothing_and_empty_images_are_reported():
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pass1 = torch.zeros(2, 32, 32)
    pass1[0] = 0.9  # the whole image is subject
    calls = []
    merged, empty = refine(image, pass1.clone(), TwoPass(), (32, 32), [(32, 32)] * 2,
                           lambda b: calls.append(b) or b[:, 0])
    assert calls == [] and empty == [1]
    torch.testing.assert_close(merged, pass1)


# -- through the Predictor ----------------------------------------------------------------------

def test_two_pass_recovers_thin_strands_a_small_network_loses():
    oracle = ColourOracle()
    image, subject = disc_image(512, 768, 260, 380, 30, strands=True)
    one = Predictor(oracle, resolution=64).predict(image)[0]
    two = Predictor(oracle, resolution=64, refine=128).predict(image)[0]
    strands = (subject > 0) & ~(((torch.arange(512)[:, None] - 260) ** 2
                                 + (torch.arange(768)[None] - 380) ** 2) <= 30 ** 2)
    # pass 1 at 64 px blurs 1-pixel strands away; pass 2 sees the cut-out 12x larger
    assert two[strands].mean() > one[strands].mean() + 0.15
    err_one = (one - subject).abs().mean()
    err_two = (two - subject).abs().mean()
    assert err_two < 0.8 * err_one
    assert oracle.calls[-1] == (1, 3, 128, 128)  # pass 2 ran at the refine size


def test_two_pass_batches_cut_outs_of_different_sizes_and_equals_one_image_at_a_time():
    oracle = ColourOracle()
    a, _ = disc_image(300, 400, 100, 100, 15)
    b, _ = disc_image(300, 400, 200, 250, 60)
    c = torch.zeros(1, 3, 300, 400)  # nothing: pass 2 skipped for it
    images = torch.cat([a, b, c])
    predictor = Predictor(oracle, resolution=64, batch_size=3, refine=96)
    oracle.calls.clear()
    batched = predictor.predict(images)
    assert (3, 3, 64, 64) in oracle.calls and (2, 3, 96, 96) in oracle.calls  # one pass-2 batch of 2
    singles = torch.cat([Predictor(oracle, resolution=64, batch_size=1, refine=96).predict(x[None]) for x in images])
    torch.testing.assert_close(batched, singles, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched[2], Predictor(oracle, resolution=64).predict(c)[0])


def test_nothing_found_is_said_once_and_the_mask_is_pass_ones(caplog):
    oracle = ColourOracle()
    images = torch.zeros(3, 3, 40, 50)  # no red anywhere
    with caplog.at_level(logging.WARNING, logger="birefnet_core.inference"):
        two = Predictor(oracle, resolution=32, batch_size=2, refine="native").predict(images)
    said = [r for r in caplog.records if "no subject found" in r.getMessage()]
    assert len(said) == 1 and "3 of 3" in said[0].getMessage()
    torch.testing.assert_close(two, Predictor(oracle, resolution=32).predict(images))


def test_subject_touching_the_border_crop_smaller_than_the_network_and_one_pixel_images():
    oracle = ColourOracle()
    image, subject = disc_image(100, 160, 50, 0, 25)  # half a disc on the left border
    two = Predictor(oracle, resolution=32, refine=256).predict(image)[0]  # crop (~60 px) < network (256)
    assert (two - subject).abs().mean() < (Predictor(oracle, resolution=32).predict(image)[0] - subject).abs().mean()
    assert two[:, 0].min() >= 0 and torch.isfinite(two).all()  # no seam or hole at the border column
    pixel = torch.tensor([1.0, 0.3, 0.1]).view(1, 3, 1, 1)
    out = Predictor(oracle, resolution=32, refine=64).predict(pixel, layout="BCHW")
    assert out.shape == (1, 1, 1) and out.item() > 0.99


def test_binary_two_pass_is_zero_or_one():
    oracle = ColourOracle()
    image, _ = disc_image(120, 120, 60, 60, 20, strands=True)
    out = Predictor(oracle, resolution=32, refine=64, binary=True).predict(image)
    assert set(out.unique().tolist()) <= {0.0, 1.0} and out.sum() > 0


def test_real_network_whole_image_subject_equals_one_pass_and_chunks_agree():
    make_weights = load_make_weights()
    model = build_model("pvt_v2_b0")
    model.load_state_dict(make_weights(model.state_dict(), seed=0), strict=True)
    images = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(3))
    one = Predictor(model, resolution=64).predict(images)
    # every pixel counts as subject: the cut-out is the whole image at the pass-1 size, pass 2 would repeat pass 1
    same = Predictor(model, resolution=64, refine=TwoPass(size=64, threshold=1e-6)).predict(images)
    torch.testing.assert_close(same, one, atol=0, rtol=0)
    two = Predictor(model, resolution=64, batch_size=2, refine=TwoPass(size=96, threshold=float(one.median())))
    chunked = Predictor(model, resolution=64, batch_size=1, refine=TwoPass(size=96, threshold=float(one.median())))
    torch.testing.assert_close(two.predict(images), chunked.predict(images), atol=1e-5, rtol=0)
    assert two.refine_size == (96, 96)
