"""``python -m birefnet_core video``: a video file in, an alpha video (or PNG sequence) out.

The input is decoded ``--batch-size`` frames at a time; each chunk goes through
:func:`~birefnet_core.video.matte_frames` with one :class:`~birefnet_core.video.TemporalSmoother`
carried from chunk to chunk (so the result equals one run over the whole video) and is encoded
before the next is decoded: memory stays the same whatever the length of the video. The output
keeps the input's frame rate (a variable frame rate becomes its average) and frame count; audio
is not copied. The output appears only when complete: a failed or interrupted run leaves nothing,
and an earlier file of that name as it was. An existing output needs ``--overwrite``; the input
is never the output. Formats (see :mod:`birefnet_core.video_io`): ``.mov`` ProRes 4444 with 10-bit
alpha, ``.webm`` VP9 with alpha, or a folder of 8-bit RGBA PNGs.
"""

from __future__ import annotations

import argparse
import logging

REFINE_CHOICES = ("none", "blur_fusion", "multilevel")

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="video file (anything FFmpeg decodes: .mp4, .mov, .mkv, .webm...)")
    parser.add_argument("--model", required=True, help="registry name (e.g. BiRefNet_lite), hub repo id or file")
    parser.add_argument("--out", required=True,
                        help="output: .mov (ProRes 4444 with alpha), .webm (VP9 with alpha) or a folder "
                             "(PNG sequence frame_000001.png...)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="frames decoded and run through the network at once (default 4)")
    parser.add_argument("--resolution", default=None,
                        help="native (default), WxH, N, or keep:N (keep aspect, long side N)")
    parser.add_argument("--smoothing", default="light",
                        help="temporal smoothing against flicker: off, light (default), strong or a number in 0..1")
    parser.add_argument("--refine", default="none", choices=REFINE_CHOICES,
                        help="colours of the RGBA output in soft edges: none (the frame itself, default, as the "
                             "video node), blur_fusion (estimated foreground, as the official refine_foreground) "
                             "or multilevel")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, mps or cpu)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--patch-order", default=None, choices=["auto", "legacy", "current"],
                        help="override the checkpoint's patch order")
    parser.add_argument("--models-dir", default=None, help="where registry models are downloaded")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output (a video file, or the frame_*.png files of a folder); "
                             "the input is never overwritten")


def run(args: argparse.Namespace) -> int:
    from .files import same_file
    from .video import parse_strength
    from .video_io import VideoError, VideoReader, check_output, describe_output

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    strength = parse_strength(args.smoothing)
    description = describe_output(args.out)  # output problems fail before any work
    if same_file(args.input, args.out):
        raise VideoError(f"--out {args.out} is the input video {args.input}: refusing to overwrite the input; choose "
                         "another output name")
    check_output(args.out, overwrite=args.overwrite)
    with VideoReader(args.input, chunk_size=args.batch_size) as reader:
        written = _matte_video(args, reader, strength)
    audio = "; audio not copied" if reader.has_audio else ""
    print(f"wrote {written} frames to {args.out} ({description}, {float(reader.fps):g} fps{audio})")
    if reader.frame_count and written < reader.frame_count:
        logger.warning("warning: %s announces %d frames but only %d could be decoded: the file is probably "
                       "truncated", args.input, reader.frame_count, written)
    return 0


def _matte_video(args: argparse.Namespace, reader, strength: float) -> int:
    from .checkpoint import load_model
    from .inference import Predictor
    from .matting import MatteOptions
    from .progress import ConsoleProgress
    from .video import TemporalSmoother, VideoOutputs, matte_frames
    from .video_io import VideoWriter

    model = load_model(args.model, device=args.device, dtype=args.dtype, patch_order=args.patch_order,
                       models_dir=args.models_dir)
    predictor = Predictor(model, resolution=args.resolution, batch_size=args.batch_size)
    smoother = TemporalSmoother(strength)
    matte = None if args.refine == "none" else MatteOptions(foreground=args.refine)
    h, w = reader.height, reader.width
    buffers = VideoOutputs.allocate(args.batch_size, h, w)  # reused by every chunk
    total = reader.estimated_frames or 0
    with VideoWriter(args.out, reader.fps, w, h, overwrite=args.overwrite) as writer, \
            ConsoleProgress(total, "video") as bar:
        for chunk in reader:
            n = len(chunk)
            outputs = VideoOutputs(buffers.mask[:n], buffers.rgba[:n], buffers.composite[:n])
            matte_frames(predictor, chunk, smoother=smoother, matte=matte, outputs=outputs)
            writer.write(outputs.rgba)
            if bar.total and writer.frames_written > bar.total:  # the header's estimate was short
                bar.total = writer.frames_written
            bar.update(n, f"frame {writer.frames_written}")
        if bar.total != writer.frames_written and bar.total:
            bar.total = bar.done = writer.frames_written
            bar.update(0, "done")
    return writer.frames_written
