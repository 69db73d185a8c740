"""``python -m birefnet_core video``: a video in, an alpha video out (ProRes 4444 .mov, VP9 .webm,
PNG folder), equal to ``matte_frames`` over the whole clip; chunked; one-line errors.

Alpha round trip against ``matte_frames`` in float, as measured with the tiny model at 64x48
(alpha spread 0.29..0.72): PNG <= 0.5/255 (8-bit rounding); ProRes 4444 max ~0.16/255 (10-bit
alpha, decoded as 12-bit); VP9 (lossy, crf 15) max ~7/255, mean ~0.9/255. The bounds below leave
room for encoder differences between FFmpeg builds.
"""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from birefnet_core import load_model
from birefnet_core.inference import Predictor
from birefnet_core.video import TemporalSmoother, matte_frames


av = pytest.importorskip("av")
from birefnet_core.video_io import VideoReader, VideoWriter, read_rgba, write_test_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FPS = Fraction(24000, 1001)
N, H, W = 12, 48, 64
BATCH = 5  # chunks of 5, 5, 2: the smoother's state crosses two chunk boundaries, the last is short


def moving_square(n=N, h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    frames[..., 0] = (xx * 255 // w)[None]
    frames[..., 1] = (yy * 255 // h)[None]
    frames[..., 2] = 60
    for t in range(n):
        frames[t, 12:36, 4 + 4 * t:24 + 4 * t] = (230, 200, 40)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """An H.264 .mp4 at 23.976 fps with a (silent) audio track."""
    return write_test_video(tmp_path_factory.mktemp("clip") / "clip.mp4", moving_square(), fps=FPS, audio=True)


@pytest.fixture(scope="module")
def expected(clip, tiny_checkpoint):
    """RGBA from matte_frames over the whole decoded clip at once, smoothing 'light'."""
    with VideoReader(clip, chunk_size=1000) as reader:
        frames = torch.cat(list(reader))
    assert frames.shape == (N, H, W, 3)
    predictor = Predictor(load_model(tiny_checkpoint, device="cpu"), resolution=64, batch_size=BATCH)
    rgba = matte_frames(predictor, frames, smoother=TemporalSmoother("light")).rgba
    assert rgba[..., 3].std() > 0.03  # a matte with something in it, so the comparisons mean something
    return rgba


def cli(*args):
    return subprocess.run([sys.executable, "-m", "birefnet_core", "video", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, codec, alpha_max, alpha_mean, rgb_mean, foreground", [
    pytest.param("out.mov", "prores", 0.5 / 255, 0.2 / 255, 1.5 / 255, "--foreground", id="prores4444"),
    pytest.param("out.webm", "vp9", 16 / 255, 2.0 / 255, 5 / 255, "--foreground", id="vp9"),
    # --refine METHOD, the option's former name, still names the foreground method
    pytest.param("frames/", None, 0.5 / 255 + 1e-6, 0.5 / 255, 0.5 / 255 + 1e-6, "--refine", id="png"),
])
def test_video_writes_the_alpha_of_matte_frames(tmp_path, clip, tiny_checkpoint, expected, name, codec, alpha_max,
                                                alpha_mean, rgb_mean, foreground):
    out = tmp_path / name
    result = cli(clip, "--model", tiny_checkpoint, "--out", f"{out}/" if name.endswith("/") else out,
                 "--resolution", "64", "--batch-size", BATCH, "--smoothing", "light", foreground, "none",
                 "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert ("--refine none is now --foreground none" in result.stderr) == (foreground == "--refine")
    assert f"wrote {N} frames" in result.stdout and "audio not copied" in result.stdout
    if codec is None:
        assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:06d}.png" for i in range(1, N + 1)]
    else:
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == codec
            assert stream.average_rate == FPS  # the input's frame rate is kept
            assert not container.streams.audio
    got = read_rgba(out)
    assert got.shape == (N, H, W, 4)
    alpha_error = (got[..., 3] - expected[..., 3]).abs()
    assert alpha_error.max() <= alpha_max and alpha_error.mean() <= alpha_mean
    assert (got[..., :3] - expected[..., :3]).abs().mean() <= rgb_mean


def test_video_is_processed_one_chunk_at_a_time(tmp_path, clip, tiny_checkpoint, expected, monkeypatch):
    """matte_frames sees batch_size frames at a time and the writer gets them before the next chunk
    is decoded (nothing grows with the video's length); the smoother carried across chunks gives
    the whole-clip result."""
    from birefnet_core import video, video_io
    from birefnet_core.__main__ import main

    events = []
    real_matte, real_write, real_frames = video.matte_frames, VideoWriter.write, VideoReader.frames

    def matte(predictor, frames, **kwargs):
        events.append(("matte", len(frames)))
        return real_matte(predictor, frames, **kwargs)

    def write(self, rgba):
        events.append(("write", len(rgba)))
        return real_write(self, rgba)

    def frames(self):
        for frame in real_frames(self):
            events.append(("decode", 1))
            yield frame

    monkeypatch.setattr(video, "matte_frames", matte)
    monkeypatch.setattr(video_io.VideoWriter, "write", write)
    monkeypatch.setattr(video_io.VideoReader, "frames", frames)
    out = tmp_path / "png"
    status = main(["video", str(clip), "--model", str(tiny_checkpoint), "--out", str(out), "--resolution", "64",
                   "--batch-size", str(BATCH), "--device", "cpu"])
    assert status == 0
    chunks = [(kind, n) for kind, n in events if kind != "decode"]
    assert chunks == [("matte", 5), ("write", 5), ("matte", 5), ("write", 5), ("matte", 2), ("write", 2)]
    decoded_before_first_write = events.index(("write", 5))
    assert sum(n for kind, n in events[:decoded_before_first_write] if kind == "decode") <= BATCH + 1
    torch.testing.assert_close(read_rgba(out)[..., 3], expected[..., 3], atol=0.5 / 255 + 1e-6, rtol=0)


def test_video_errors_are_one_line(tmp_path, clip, tiny_checkpoint):
    def fails(result, text):
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().count("\n") == 0 and text in result.stderr, result.stderr
        assert result.stderr.startswith("error: ")

    fails(cli(tmp_path / "absent.mp4", "--model", tiny_checkpoint, "--out", tmp_path / "o.mov"), "input not found")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    fails(cli(text, "--model", tiny_checkpoint, "--out", tmp_path / "o.mov"), f"cannot decode video {text}")
    for bad in ("o.mp4",):
        fails(cli(clip, "--model", tiny_checkpoint, "--out", tmp_path / bad), "unknown output extension")
        assert not (tmp_path / bad).exists()
    fails(cli(clip, "--model", tiny_checkpoint, "--out", tmp_path / "o.mov", "--smoothing", "lots"), "smoothing")
    fails(cli(clip, "--model", tmp_path / "nope.safetensors", "--out", tmp_path / "o.mov"), "not found")
    assert not (tmp_path / "o.mov").exists()  # nothing is written before the model loads


@pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
                    reason="this PyAV cannot write a display matrix")
def test_reader_applies_the_display_rotation(tmp_path):
    frames = np.zeros((3, 48, 64, 3), dtype=np.uint8)
    frames[:, :16, :16] = 255  # a white block at the top left
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)  # shown turned 90 degrees counter-clockwise, as FFmpeg shows it
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with VideoReader(path, chunk_size=2) as reader:
        assert (reader.width, reader.height, reader.fps) == (48, 64, 24)
        chunks = list(reader)
    assert [tuple(c.shape) for c in chunks] == [(2, 64, 48, 3), (1, 64, 48, 3)]
    white = (chunks[0][0, ..., 0] > 128).nonzero().float().mean(0)
    assert white.tolist() == [55.5, 7.5]  # bottom left, where FFmpeg's autorotate puts it


def test_writer_round_trips_odd_sizes_chunk_by_chunk(tmp_path):
    rgba = torch.rand(4, 47, 63, 4, generator=torch.Generator().manual_seed(0))
    rgba[..., :3] = 0.5  # flat colour: only the alpha's own coding is measured
    out = tmp_path / "odd.mov"
    with VideoWriter(out, 30, 63, 47) as writer:
        writer.write(rgba[:3])
        writer.write(rgba[3])
    assert writer.frames_written == 4
    assert (read_rgba(out)[..., 3] - rgba[..., 3]).abs().max() <= 0.5 / 255


def digest(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_video(*args):
    """The CLI in this process: (status, stderr lines)."""
    import contextlib
    import io

    from birefnet_core.__main__ import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["video", *map(str, args)])
    return status, [line for line in err.getvalue().splitlines() if line.strip() and "\r" not in line]


def test_the_input_is_never_the_output(tmp_path, clip, tiny_checkpoint):
    """By the same path, another spelling, a symbolic link or a hard link: refused before anything
    is written, with --overwrite too."""
    source = tmp_path / "in.mov"
    source.write_bytes(Path(clip).read_bytes())
    before = digest(source)
    (tmp_path / "link.mov").symlink_to(source)
    import os

    os.link(source, tmp_path / "hard.mov")
    for out in (source, tmp_path / "." / "in.mov", tmp_path / "link.mov", tmp_path / "hard.mov"):
        status, err = run_video(source, "--model", tiny_checkpoint, "--out", out, "--overwrite", "--device", "cpu")
        assert status == 1 and len(err) == 1 and "is the input video" in err[0], err
    assert digest(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.mov", "in.mov", "link.mov"]


def test_an_existing_output_is_replaced_only_when_asked_and_only_when_complete(tmp_path, clip, tiny_checkpoint,
                                                                             monkeypatch):
    out = tmp_path / "alpha.mov"
    out.write_bytes(b"an earlier result the user keeps")
    args = (clip, "--model", tiny_checkpoint, "--out", out, "--resolution", "64", "--batch-size", BATCH,
            "--device", "cpu")
    status, err = run_video(*args)
    assert status == 1 and len(err) == 1 and "--overwrite" in err[0]
    assert out.read_bytes() == b"an earlier result the user keeps"

    # a decode error half-way: nothing under the final name changes, no temporary file stays
    real_frames = VideoReader.frames

    def breaks_after_six(self):
        for index, frame in enumerate(real_frames(self)):
            if index == 6:
                raise video_io.VideoError(f"cannot decode video {self.path}: invalid data found")
            yield frame

    from birefnet_core import video_io

    monkeypatch.setattr(video_io.VideoReader, "frames", breaks_after_six)
    status, err = run_video(*args, "--overwrite")
    assert status == 1 and len(err) == 1 and "invalid data" in err[0], err
    assert out.read_bytes() == b"an earlier result the user keeps"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.mov"]
    monkeypatch.undo()

    status, err = run_video(*args, "--overwrite")
    assert status == 0, err
    assert read_rgba(out).shape == (N, H, W, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.mov"]


def test_a_png_sequence_never_mixes_in_stale_frames(tmp_path, clip, tiny_checkpoint):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(1, 31):  # an earlier, longer sequence
        (frames / f"frame_{i:06d}.png").write_bytes(b"old")
    (frames / "notes.txt").write_text("the user's own file")
    args = (clip, "--model", tiny_checkpoint, "--out", frames, "--resolution", "64", "--batch-size", BATCH,
            "--device", "cpu")
    status, err = run_video(*args)
    assert status == 1 and "holds 30 frame_*.png" in err[0] and len(list(frames.iterdir())) == 31
    status, err = run_video(*args, "--overwrite")
    assert status == 0, err
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_{i:06d}.png" for i in range(1, N + 1)] + ["notes.txt"]
    assert read_rgba(frames).shape == (N, H, W, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no staging folder left


def test_a_truncated_video_says_so(tmp_path, tiny_checkpoint, caplog):
    """An MP4 with its index first (faststart) and its frame data cut: fewer frames than it announces."""
    path = tmp_path / "cut.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "18", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i, image in enumerate(moving_square(n=40)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with VideoReader(path) as reader:
        assert reader.frame_count == 40
    out = tmp_path / "out.mov"
    with caplog.at_level("WARNING"):
        status, err = run_video(path, "--model", tiny_checkpoint, "--out", out, "--resolution", "64", "--device", "cpu")
    assert status == 0, err
    written = len(read_rgba(out))
    assert 0 < written < 40
    assert f"announces 40 frames but only {written} could be decoded" in caplog.text
