"""Video: streaming in chunks, temporal state across windows, bounded memory, cancel."""

import pytest
import torch

from birefnet_core import Predictor, build_model
from birefnet_core.video import TemporalSmoother, VideoOutputs, matte_frames, parse_strength

from memory_tracking import LiveTensorBytes
from reference import load_make_weights


@pytest.fixture(scope="module")
def network():
    model = build_model("pvt_v2_b0")
    model.load_state_dict(load_make_weights()(model.state_dict(), seed=0), strict=True)
    return model


def clip(n=60, h=40, w=56, seed=0):
    """A square moving over a slowly panning gradient, plus a little sensor noise."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    frames = []
    for t in range(n):
        frame = torch.stack([(xx + 0.01 * t) % 1, yy, 0.5 * (xx + yy)], dim=-1)
        x0 = 5 + t % (w - 20)
        frame[10:30, x0:x0 + 14] = torch.tensor([0.9, 0.2, 0.1])
        frames.append((frame + 0.02 * torch.randn(h, w, 3, generator=gen)).clamp(0, 1))
    return torch.stack(frames)  # [N, H, W, 3] like ComfyUI's IMAGE


def test_chunks_of_seven_equal_one_call(network):
    frames = clip()
    one = matte_frames(Predictor(network, resolution=64, batch_size=60), frames)
    sevens = matte_frames(Predictor(network, resolution=64, batch_size=7), frames)
    for a, b in ((one.mask, sevens.mask), (one.rgba, sevens.rgba), (one.composite, sevens.composite)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert one.mask.shape == (60, 40, 56) and one.rgba.shape == (60, 40, 56, 4)
    torch.testing.assert_close(one.rgba[..., 3], one.mask)


def test_smoothing_state_carries_across_windows(network):
    frames = clip()
    whole = matte_frames(Predictor(network, resolution=64, batch_size=8), frames,
                         smoother=TemporalSmoother("strong")).mask
    unsmoothed = matte_frames(Predictor(network, resolution=64, batch_size=8), frames).mask
    assert (whole - unsmoothed).abs().max() > 1e-3  # smoothing really changes the result
    smoother = TemporalSmoother("strong")
    windows = [matte_frames(Predictor(network, resolution=64, batch_size=size), frames[a:b], smoother=smoother).mask
               for (a, b), size in (((0, 20), 3), ((20, 40), 7), ((40, 60), 20))]
    torch.testing.assert_close(torch.cat(windows), whole, atol=1e-5, rtol=1e-5)
    assert smoother.frames_seen == 60


def test_smoothing_starts_afresh_at_a_cut_and_a_new_size(network):
    smoother = TemporalSmoother("strong")
    a, b = clip(n=6, seed=1), 1 - clip(n=6, seed=2)  # a very different shot
    predictor = Predictor(network, resolution=64, batch_size=6)
    matte_frames(predictor, a, smoother=smoother)
    after_cut = matte_frames(predictor, b, smoother=smoother).mask
    fresh = matte_frames(predictor, b, smoother=TemporalSmoother("strong")).mask
    torch.testing.assert_close(after_cut, fresh)
    other_size = matte_frames(predictor, clip(n=3, h=24, w=24), smoother=smoother).mask
    assert other_size.shape == (3, 24, 24)


def test_memory_does_not_grow_with_the_video(network):
    predictor = Predictor(network, resolution=64, batch_size=4)
    peaks = {}
    for n in (8, 48):
        frames = clip(n=n)
        outputs = VideoOutputs.allocate(n, 40, 56)
        with torch.no_grad(), LiveTensorBytes() as tracker:
            matte_frames(predictor, frames, smoother=TemporalSmoother("light"), outputs=outputs)
        peaks[n] = tracker.peak
    assert peaks[48] <= 1.1 * peaks[8]  # measured: the same chunk-sized peak for 6x the frames


def test_cancel_leaves_written_frames_and_stops(network):
    frames = clip(n=20)
    calls = []

    def cancel_at_second_chunk(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    outputs = VideoOutputs.allocate(20, 40, 56)
    outputs.mask.fill_(-1)
    with pytest.raises(KeyboardInterrupt):
        matte_frames(Predictor(network, resolution=64, batch_size=5), frames, outputs=outputs,
                     progress=cancel_at_second_chunk)
    assert calls == [5, 10]
    assert bool((outputs.mask[:10] >= 0).all()) and bool((outputs.mask[10:] == -1).all())


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (3, 7, 5, 3), (1, 33, 17, 4), (2, 9, 11, 1)])
def test_odd_sizes_single_frames_and_channel_counts(network, shape):
    frames = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    out = matte_frames(Predictor(network, resolution=64, batch_size=2), frames, smoother=TemporalSmoother("light"))
    assert out.mask.shape == shape[:3] and out.rgba.shape == (*shape[:3], 4)
    assert bool(torch.isfinite(out.composite).all())


def test_strength_parsing():
    assert parse_strength("off") == 0 and parse_strength("strong") > parse_strength("light") > 0
    assert parse_strength("0.3") == pytest.approx(0.3)
    for bad in ("wobbly", 1.0, -0.1):
        with pytest.raises(ValueError, match="smoothing"):
            parse_strength(bad)
