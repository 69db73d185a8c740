"""Video: streaming in chunks, temporal state across windows, bounded memory, cancel."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from birefnet_core import Predictor, build_model
from birefnet_core.matting import MatteOptions
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


# ---- only the outputs asked for, in float32 or float16 ----

def test_outputs_for_300_frames_of_1080p_fit_the_budgets():
    """The issue's budgets: RGBA alone in 10 GB, the mask alone in 2.5 GB (bytes of the real
    tensors, made on the meta device: no memory is taken)."""
    full = 300, 1080, 1920
    sizes = {(which, dtype): VideoOutputs.allocate(*full, device="meta", which=(which,), dtype=dtype).nbytes
             for which in ("mask", "rgba", "composite") for dtype in (torch.float32, torch.float16)}
    assert sizes["rgba", torch.float32] == 300 * 1080 * 1920 * 4 * 4 == 9_953_280_000
    assert sizes["rgba", torch.float16] == 4_976_640_000
    assert sizes["mask", torch.float32] == 2_488_320_000
    assert sizes["rgba", torch.float32] < 10e9 and sizes["mask", torch.float32] < 2.5e9
    assert sizes["mask", torch.float16] == 1_244_160_000
    assert sizes["composite", torch.float16] == 3_732_480_000
    for (which, dtype), size in sizes.items():
        assert VideoOutputs.nbytes_for(*full, which=(which,), dtype=dtype) == size
    everything = VideoOutputs.allocate(*full, device="meta")
    assert everything.computed == ("mask", "rgba", "composite") and everything.nbytes == 19_906_560_000
    only = VideoOutputs.allocate(2, 3, 4, which=("composite", "mask"), dtype=torch.float16)
    assert only.rgba is None and only.computed == ("mask", "composite") and only.mask.dtype == torch.float16


class ClipLengthAllocations(TorchDispatchMode):
    """Records (shape, dtype) of every new tensor storage whose first dimension is the clip's
    length: the outputs (chunks hold fewer frames; views of the input frames are not new)."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length, self.made, self._inputs = length, [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                self._inputs.add(t.untyped_storage().data_ptr())
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() >= 3 and t.shape[0] == self.length:
                key = t.untyped_storage().data_ptr()
                if key not in self._inputs:
                    self._inputs.add(key)
                    self.made.append((tuple(t.shape), t.dtype))
        return out


def test_only_the_outputs_asked_for_are_allocated_and_computed(network):
    """Each output equals the one computed with all three; only the asked outputs are ever made
    at the clip's length, and peak memory is those outputs plus the same chunk working set,
    whatever the set (measured on every tensor storage made)."""
    frames = clip(n=6, h=96, w=128)
    predictor = Predictor(network, resolution=64, batch_size=3)
    results, working_set = {}, {}
    shapes = {"mask": (6, 96, 128), "rgba": (6, 96, 128, 4), "composite": (6, 96, 128, 3)}
    for which, dtype in ((("mask", "rgba", "composite"), torch.float32), (("rgba",), torch.float32),
                         (("mask", "composite"), torch.float16)):
        with torch.no_grad(), LiveTensorBytes() as tracker, ClipLengthAllocations(6) as made:
            results[which] = matte_frames(predictor, frames, smoother=TemporalSmoother("light"), which=which,
                                          dtype=dtype)
        assert results[which].computed == which
        assert sorted(made.made) == sorted((shapes[name], dtype) for name in which)
        working_set[which] = tracker.peak - VideoOutputs.nbytes_for(6, 96, 128, which=which, dtype=dtype)
    everything = results["mask", "rgba", "composite"]
    torch.testing.assert_close(results["rgba",].rgba, everything.rgba, rtol=0, atol=0)
    assert results["rgba",].mask is None and results["rgba",].composite is None
    half = results["mask", "composite"]
    assert half.rgba is None and half.mask.dtype == half.composite.dtype == torch.float16
    torch.testing.assert_close(half.mask.float(), everything.mask, rtol=0, atol=2.0 ** -12)
    # the outputs left out are never allocated: what remains is the same chunk working set
    base = working_set["mask", "rgba", "composite"]
    assert all(abs(value - base) <= 0.01 * base for value in working_set.values()), working_set


def test_float16_outputs_equal_float32_within_half_precision(network):
    frames = clip(n=4, h=40, w=56)
    predictor = Predictor(network, resolution=64, batch_size=2)
    matte = MatteOptions(foreground="blur_fusion")
    full = matte_frames(predictor, frames, matte=matte, background_color="#336699")
    half = matte_frames(predictor, frames, matte=matte, background_color="#336699", dtype=torch.float16)
    for name in ("mask", "rgba", "composite"):
        a, b = getattr(half, name), getattr(full, name)
        assert a.dtype == torch.float16 and b.dtype == torch.float32 and a.shape == b.shape
        # rounding to float16 moves a value in 0..1 by at most half a unit in the last place: 2^-12
        torch.testing.assert_close(a.float(), b, rtol=0, atol=2.0 ** -12)
        assert bool((a.float() != b).any())  # really rounded: this is not float32 under another name


def test_mask_threshold_rgba_fill_and_skipped_foreground(network, monkeypatch):
    from birefnet_core import matting

    frames = clip(n=4, h=40, w=56)
    predictor = Predictor(network, resolution=64, batch_size=2)
    soft = matte_frames(predictor, frames).mask
    out = matte_frames(predictor, frames, mask_threshold=0.5, rgba_fill="#ff0000", which=("mask", "rgba"))
    torch.testing.assert_close(out.mask, (soft >= 0.5).float())
    outside = out.mask == 0
    assert bool(outside.any())
    torch.testing.assert_close(out.rgba[..., :3][outside], torch.tensor([1.0, 0.0, 0.0]).expand(int(outside.sum()), 3))

    def no_colours(*args, **kwargs):
        raise AssertionError("foreground colours estimated for a mask-only run")

    monkeypatch.setattr(matting, "estimate_foreground", no_colours)
    mask_only = matte_frames(predictor, frames, matte=MatteOptions(foreground="blur_fusion"), which=("mask",))
    torch.testing.assert_close(mask_only.mask, soft)
    with pytest.raises(AssertionError, match="foreground colours"):
        matte_frames(predictor, frames, matte=MatteOptions(foreground="blur_fusion"), which=("rgba",))


def test_bad_output_requests(network):
    frames = clip(n=2, h=24, w=24)
    predictor = Predictor(network, resolution=64, batch_size=2)
    for which in ((), ("alpha",), ("mask", "rgb")):
        with pytest.raises(ValueError, match="outputs must name one or more of mask, rgba, composite"):
            matte_frames(predictor, frames, which=which)
    with pytest.raises(ValueError, match="floating-point"):
        matte_frames(predictor, frames, dtype=torch.uint8)
    with pytest.raises(ValueError, match="not both"):
        matte_frames(predictor, frames, outputs=VideoOutputs.allocate(2, 24, 24), which=("mask",))
    with pytest.raises(ValueError, match=r"outputs.rgba must be a float tensor of shape \[2, 24, 24, 4\]"):
        matte_frames(predictor, frames, outputs=VideoOutputs(rgba=torch.empty(2, 24, 24, 3)))
    with pytest.raises(ValueError, match="nothing to compute"):
        matte_frames(predictor, frames, outputs=VideoOutputs())


def test_bench_video_memory_part_prints_a_row_per_output_set(capsys):
    from birefnet_core import bench
    from birefnet_core.__main__ import build_parser

    args = build_parser().parse_args(["bench", "video", "--parts", "memory", "--memory-frames", "3", "--memory-size",
                                      "64x48", "--memory-outputs", "rgba", "all", "--memory-dtypes", "float16",
                                      "--batch", "2", "--device", "cpu"])
    bench.run(args)
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:2] in (
        ["rgba", "float16"], ["mask+rgba+composite", "float16"])]
    assert [row[0] for row in rows] == ["rgba", "mask+rgba+composite"]
    # the last figure: 300 frames of 1080p = their outputs (4.98 GB for float16 RGBA) + the working set
    assert 4.97 < float(rows[0][-3].rstrip("G")) < 6 and 9.95 <= float(rows[1][-3].rstrip("G")) < 11
