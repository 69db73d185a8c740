"""Video files in and alpha videos out, a chunk of frames at a time (PyAV, the ``av`` package).

:class:`VideoReader` decodes any video FFmpeg reads into uint8 RGB chunks [n, H, W, 3];
:class:`VideoWriter` encodes float RGBA chunks [n, H, W, 4] (0..1, straight alpha) as

- ``.mov``: ProRes 4444 with alpha (``prores_ks``, yuva444p10le: 10-bit colour and alpha),
- ``.webm``: VP9 with alpha (``libvpx-vp9``, yuva420p: 8-bit, chroma at half resolution),
- a folder (or a path ending with ``/``, or with no extension): ``frame_000001.png``... 8-bit RGBA.

Neither holds more than one chunk. The RGB -> Y'CbCr conversion (BT.709, limited range, as the
streams are tagged) and the quantisation are done here rather than by swscale, whose alpha
conversion is off by up to 2 levels: alpha is written as round(alpha * (2^bits - 1)).
Audio and subtitles are not read or written. PyAV is imported on first use, so this module
imports without it.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .files import remove, temporary_name

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_FPS = Fraction(25)
# suffix -> (description, codec, pixel format, codec options)
VIDEO_FORMATS = {
    ".mov": ("ProRes 4444 with alpha", "prores_ks", "yuva444p10le", {"profile": "4444", "vendor": "apl0"}),
    ".webm": ("VP9 with alpha", "libvpx-vp9", "yuva420p",
              {"crf": "15", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}),
}
PNG_SEQUENCE = "PNG sequence (8-bit RGBA)"
BT709 = (0.2126, 0.0722)  # Kr, Kb


class VideoError(ValueError):
    """A video that cannot be read or written; the message is one line naming the file."""


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency, but ComfyUI installs may lack it
        raise VideoError("video files need PyAV: pip install av") from None
    return av


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def output_kind(path: PathLike) -> str:
    """"png" for a folder (an existing one, a path ending with a separator, or no extension),
    else the suffix (".mov", ".webm"); raises :class:`VideoError` for any other extension."""
    text = os.fspath(path)
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.is_dir() or not p.suffix:
        return "png"
    suffix = p.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise VideoError(f"unknown output extension {p.suffix!r} for {text}: use .mov (ProRes 4444 with alpha), "
                         ".webm (VP9 with alpha) or a folder (PNG sequence)")
    return suffix


def describe_output(path: PathLike) -> str:
    kind = output_kind(path)
    return PNG_SEQUENCE if kind == "png" else VIDEO_FORMATS[kind][0]


def to_rgb_array(frame, fmt: str = "rgb24", **kwargs) -> np.ndarray:
    """``frame.to_ndarray(format=fmt)`` (an RGB format) with the frame's own colour matrix and range
    given explicitly, and full-range RGB asked for (PyAV 14 otherwise leaves limited-range levels
    unstretched); untagged frames get FFmpeg's defaults (BT.601, limited range)."""
    space = int(frame.colorspace or 2)
    if space in (1, 4, 5, 6, 7, 9, 10):  # BT.709, FCC, BT.601 (x2), SMPTE 240M, BT.2020 (x2)
        kwargs["src_colorspace"] = min(space, 9)
    source = frame
    if fmt != "rgb24" and frame.format.name.startswith("yuva420"):
        source = frame.reformat(format="yuv444p16le")  # swscale garbles yuva420p -> 16-bit RGB at odd widths
    return source.to_ndarray(format=fmt, src_color_range=frame.color_range, dst_color_range=2, **kwargs)


class VideoReader:
    """Frames of the first video stream of ``path`` as uint8 RGB tensors.

    ``for chunk in VideoReader(path, chunk_size=8)`` yields [n, H, W, 3] chunks (n <= chunk_size)
    in display order; :meth:`frames` yields single [H, W, 3] frames. Attributes: ``fps``
    (Fraction), ``frame_count`` (from the header, None when the container does not say),
    ``estimated_frames`` (frame_count, else duration x fps, else None), ``width``, ``height``
    (as displayed: a rotation by a multiple of 90 degrees in the display matrix, as phones write,
    is applied; PyAV >= 15 reports it), ``has_audio``.
    The first frame is decoded on opening, so an undecodable file fails here, naming the file.
    """

    def __init__(self, path: PathLike, chunk_size: int = 8) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        av = _av()
        self.path = Path(path)
        self.chunk_size = chunk_size
        if not self.path.exists():
            raise VideoError(f"input not found: {self.path}")
        if self.path.is_dir():
            raise VideoError(f"input is a folder, not a video file: {self.path}")
        try:
            self._container = av.open(str(self.path), "r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise VideoError(f"cannot decode video {self.path}: {_reason(exc)}") from None
        try:
            if not self._container.streams.video:
                raise VideoError(f"cannot decode video {self.path}: no video stream")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            self._stream = stream
            self.has_audio = bool(self._container.streams.audio)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = Fraction(rate) if rate else DEFAULT_FPS
            self.frame_count: Optional[int] = stream.frames or None
            self.estimated_frames = self.frame_count or self._estimate_frames()
            self._decoded = self._container.decode(stream)
            first = next(self._decoded, None)
            if first is None:
                raise VideoError(f"cannot decode video {self.path}: no frames")
        except av.FFmpegError as exc:
            self.close()
            raise VideoError(f"cannot decode video {self.path}: {_reason(exc)}") from None
        except VideoError:
            self.close()
            raise
        self._first = first
        self._coded_size = (first.width, first.height)
        self._turns = (round((getattr(first, "rotation", 0) or 0) / 90)) % 4
        self.width, self.height = self._coded_size if self._turns % 2 == 0 else self._coded_size[::-1]

    def _estimate_frames(self) -> Optional[int]:
        stream = self._stream
        if stream.duration and stream.time_base:
            seconds = float(stream.duration * stream.time_base)
        elif self._container.duration:
            seconds = self._container.duration / 1_000_000
        else:
            return None
        return max(1, round(seconds * float(self.fps)))

    def _to_rgb(self, frame) -> np.ndarray:
        w, h = self._coded_size
        rgb = to_rgb_array(frame, "rgb24", width=w, height=h)
        return np.rot90(rgb, self._turns) if self._turns else rgb

    def frames(self) -> Iterator[torch.Tensor]:
        """Every frame (once: the file is read as it goes), uint8 [H, W, 3]."""
        av = _av()
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield torch.from_numpy(np.ascontiguousarray(self._to_rgb(first)))
            for frame in self._decoded:
                yield torch.from_numpy(np.ascontiguousarray(self._to_rgb(frame)))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode video {self.path}: {_reason(exc)}") from None

    def __iter__(self) -> Iterator[torch.Tensor]:
        chunk = []
        for frame in self.frames():
            chunk.append(frame)
            if len(chunk) == self.chunk_size:
                yield torch.stack(chunk)
                chunk = []
        if chunk:
            yield torch.stack(chunk)

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rgba_to_yuva(rgba: torch.Tensor, bits: int, subsample: bool):
    """float RGBA [n, H, W, 4] in 0..1 -> integer planes (Y [n,H,W], Cb, Cr [n,H',W'], A [n,H,W]):
    BT.709 limited range at ``bits`` bits; Cb/Cr averaged over 2x2 blocks when ``subsample``
    (4:2:0, an odd last row/column averaged with itself); alpha full range."""
    x = torch.nan_to_num(rgba.float(), nan=0.0).clamp(0.0, 1.0).movedim(-1, 1)  # [n, 4, H, W]
    r, g, b, a = x.unbind(1)
    kr, kb = BT709
    y = kr * r + (1.0 - kr - kb) * g + kb * b
    chroma = torch.stack([(b - y) / (2.0 * (1.0 - kb)), (r - y) / (2.0 * (1.0 - kr))], 1)
    if subsample:
        h, w = chroma.shape[-2:]
        chroma = F.pad(chroma, (0, w % 2, 0, h % 2), mode="replicate")
        chroma = F.avg_pool2d(chroma, 2)
    scale = float(1 << (bits - 8))
    top = (1 << bits) - 1
    dtype = torch.int32
    y_plane = ((16.0 + 219.0 * y) * scale).round().clamp(0, top).to(dtype)
    c_planes = ((128.0 + 224.0 * chroma) * scale).round().clamp(0, top).to(dtype)
    a_plane = (a * top).round().to(dtype)
    return y_plane, c_planes[:, 0], c_planes[:, 1], a_plane


def _fill_plane(plane, values: np.ndarray, dtype: str) -> None:
    item = np.dtype(dtype).itemsize
    view = np.frombuffer(plane, dtype=dtype).reshape(plane.height, plane.line_size // item)
    view[:, :plane.width] = values


FRAME_NAME = re.compile(r"frame_\d{6,}\.png")  # what the PNG sequence writer names its files


def sequence_frames(folder: Path) -> List[Path]:
    """The ``frame_NNNNNN.png`` files of a PNG sequence folder, in order ([] when there is none)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if FRAME_NAME.fullmatch(p.name))


def check_output(path: PathLike, *, overwrite: bool = False) -> None:
    """Raise :class:`VideoError` when :class:`VideoWriter` would refuse ``path``: an unknown
    extension, a file where a PNG folder should be (or a folder where a video file should be), or
    an existing output (a video file, or a folder holding ``frame_*.png``) without ``overwrite``."""
    path = Path(path)
    if output_kind(path) == "png":
        if path.exists() and not path.is_dir():
            raise VideoError(f"output {path} is a file, not a folder for a PNG sequence")
        earlier = sequence_frames(path)
        if earlier and not overwrite:
            raise VideoError(f"{path} holds {len(earlier)} frame_*.png file(s) already: pass --overwrite "
                             "to replace them (no earlier frame is kept), or choose another folder")
    elif path.is_dir():
        raise VideoError(f"output {path} is a folder: remove it or choose another file name")
    elif os.path.lexists(path) and not overwrite:
        raise VideoError(f"output {path} exists already: pass --overwrite to replace it, or choose another name")


class VideoWriter:
    """Writes float RGBA chunks [n, H, W, 4] (0..1, straight alpha; torch or numpy) to ``path``:
    ``.mov`` ProRes 4444, ``.webm`` VP9 with alpha, or a folder of ``frame_000001.png``...
    (see :func:`output_kind`), at ``fps`` (constant). Use as a context manager; ``frames_written``
    counts what was written.

    Nothing appears under ``path`` until the writer closes without error: a video is encoded
    under a temporary name beside it, PNG frames into a temporary folder beside it, and both are
    moved into place at the end; a failure or interruption removes them. An existing file (or a
    folder holding ``frame_*.png`` files) is refused unless ``overwrite``; then it is replaced
    when the new one is complete, and no frame of the earlier sequence is left among the new ones.
    """

    def __init__(self, path: PathLike, fps, width: int, height: int, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.kind = output_kind(path)
        self.description = describe_output(path)
        self.fps = Fraction(fps).limit_denominator(1_000_000) if fps else DEFAULT_FPS
        if self.fps <= 0:
            raise VideoError(f"frame rate must be positive, got {fps}")
        self.width, self.height = int(width), int(height)
        self.frames_written = 0
        self._container = None
        self._stream = None
        check_output(self.path, overwrite=overwrite)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VideoError(f"cannot create the folder {self.path.parent}: {exc.strerror or exc}") from None
        self._partial = temporary_name(self.path)  # a folder for PNG frames, a file for video
        if self.kind == "png":
            try:
                self._partial.mkdir()
            except OSError as exc:
                raise VideoError(f"cannot write to {self.path.parent}: {exc.strerror or exc}") from None
            return
        av = _av()
        _, codec, pix_fmt, options = VIDEO_FORMATS[self.kind]
        self._pix_fmt = pix_fmt
        self._bits = av.VideoFormat(pix_fmt).components[0].bits
        self._subsample = pix_fmt.startswith("yuva420")
        self._dtype = "<u2" if self._bits > 8 else "u1"
        try:
            self._container = av.open(str(self._partial), "w", format=self.kind.lstrip("."))
            stream = self._container.add_stream(codec, rate=self.fps, options=dict(options))
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, pix_fmt
            context = stream.codec_context
            # AVCOL_SPC_BT709, AVCOL_RANGE_MPEG (limited), AVCOL_PRI_BT709, AVCOL_TRC_BT709
            context.colorspace, context.color_range, context.color_primaries, context.color_trc = 1, 1, 1, 1
            self._stream = stream
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._abandon()
            raise VideoError(f"cannot write video {self.path}: {_reason(exc)}") from None

    def _frame(self, rgba: torch.Tensor, index: int):
        av = _av()
        frame = av.VideoFrame(self.width, self.height, self._pix_fmt)
        planes = rgba_to_yuva(rgba[None], self._bits, self._subsample)
        for plane, values in zip(frame.planes, planes):
            _fill_plane(plane, values[0].numpy().astype(self._dtype), self._dtype)
        frame.colorspace, frame.color_range = 1, 1  # BT.709, limited range
        frame.pts = index
        frame.time_base = 1 / self.fps
        return frame

    def write(self, rgba: Union[torch.Tensor, np.ndarray, Sequence]) -> None:
        rgba = torch.as_tensor(np.asarray(rgba) if not isinstance(rgba, torch.Tensor) else rgba).detach().cpu()
        if rgba.ndim == 3:
            rgba = rgba[None]
        if rgba.ndim != 4 or rgba.shape[-1] != 4 or tuple(rgba.shape[1:3]) != (self.height, self.width):
            raise ValueError(f"expected RGBA frames [n, {self.height}, {self.width}, 4], got {list(rgba.shape)}")
        if self.kind == "png":
            self._write_png(rgba)
            return
        av = _av()
        try:
            for image in rgba:
                for packet in self._stream.encode(self._frame(image, self.frames_written)):
                    self._container.mux(packet)
                self.frames_written += 1
        except av.FFmpegError as exc:
            raise VideoError(f"cannot write video {self.path}: {_reason(exc)}") from None

    def _write_png(self, rgba: torch.Tensor) -> None:
        from PIL import Image

        pixels = (torch.nan_to_num(rgba.float(), nan=0.0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        for image in pixels:
            self.frames_written += 1
            Image.fromarray(image, mode="RGBA").save(self._partial / f"frame_{self.frames_written:06d}.png")

    def _abandon(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - already failing; the first error is the one to report
                pass
            self._container = None
        if self._partial is not None:
            remove(self._partial)
            self._partial = None

    def close(self) -> None:
        """Flushes the encoder, finishes the file and moves it (or the frames) into place."""
        if self._partial is None:
            return
        av = _av()
        try:
            if self._container is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._container.close()
                self._container = None
                os.replace(self._partial, self.path)
            else:
                self._place_frames()
        except BaseException as exc:
            self._abandon()
            if isinstance(exc, (av.FFmpegError, OSError)):
                raise VideoError(f"cannot write video {self.path}: {_reason(exc)}") from None
            raise
        self._partial = None

    def _place_frames(self) -> None:
        """The staged frames into the target folder: the folder itself when it is new, else each
        frame (after removing the earlier sequence, which ``overwrite`` allowed)."""
        if not self.path.exists():
            os.replace(self._partial, self.path)
            return
        for stale in sequence_frames(self.path):
            stale.unlink()
        for frame in sorted(self._partial.iterdir()):
            os.replace(frame, self.path / frame.name)
        self._partial.rmdir()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abandon()


def read_rgba(path: PathLike) -> torch.Tensor:
    """Every frame of an alpha video (``.mov``/``.webm`` as written here) or PNG folder as float
    RGBA [N, H, W, 4] in 0..1 (the whole video: for checks and small clips). Alpha is read from the
    decoded alpha plane exactly (VP9 alpha needs the libvpx decoder, chosen here); a video
    without alpha reads as opaque."""
    p = Path(path)
    if p.is_dir():
        from PIL import Image

        files = sorted(p.glob("frame_*.png"))
        return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGBA"))) for f in files]).float() / 255
    av = _av()
    frames = []
    with av.open(str(p)) as container:
        stream = container.streams.video[0]
        decoder = None
        if stream.codec_context.name in ("vp8", "vp9") and stream.metadata.get("alpha_mode") == "1":
            decoder = av.CodecContext.create("libvpx" if stream.codec_context.name == "vp8" else "libvpx-vp9", "r")
            decoder.extradata = stream.codec_context.extradata
            decoded = (f for packet in container.demux(stream) for f in decoder.decode(packet))
        else:
            decoded = container.decode(stream)
        for frame in decoded:
            rgba = np.ones((frame.height, frame.width, 4), dtype=np.float32)
            rgba[..., :3] = to_rgb_array(frame, "rgb48le") / 65535.0
            alpha = next((c for c in frame.format.components if c.is_alpha), None)
            if alpha is not None:
                plane = frame.planes[alpha.plane]
                dtype = "<u2" if alpha.bits > 8 else "u1"
                item = np.dtype(dtype).itemsize
                values = np.frombuffer(plane, dtype=dtype).reshape(plane.height, plane.line_size // item)
                rgba[..., 3] = values[:, :plane.width] / float((1 << alpha.bits) - 1)
            frames.append(torch.from_numpy(rgba))
    return torch.stack(frames).clamp(0.0, 1.0)


def write_test_video(path: PathLike, frames, fps=25, *, audio: bool = False) -> Path:
    """Writes uint8 RGB frames [N, H, W, 3] (even H and W) as a small video: H.264 (libx264,
    yuv420p, near-lossless) in ``.mp4``/``.mov``, FFV1 (lossless, yuv444p) in ``.mkv``, with a
    silent AAC track if ``audio``. For tests and examples."""
    av = _av()
    path = Path(path)
    pixels = np.asarray(frames, dtype=np.uint8)
    n, h, w, _ = pixels.shape
    lossless = path.suffix.lower() == ".mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1" if lossless else "libx264", rate=Fraction(fps),
                                      options={} if lossless else {"crf": "1", "preset": "ultrafast"})
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=48000)
            sound.layout = "mono"
        for i, image in enumerate(pixels):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if sound is not None:
            samples = round(48000 * n / float(fps))
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, samples), dtype=np.float32), format="fltp",
                                               layout="mono")
            chunk.sample_rate = 48000
            chunk.pts = 0
            for packet in sound.encode(chunk):
                container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path
