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

Several input videos need ``{stem}`` in ``--out`` (``mattes/{stem}.mov``, ``mattes/{stem}/``): each
input's name without its extension, ``_2``, ``_3``... for inputs sharing one (as ``predict``). Every
output is checked before the first video starts; in one process a failure ends the run (the
videos done so far are complete). Under ``torchrun --nproc_per_node=N -m birefnet_core video ...``
the videos are shared between the processes by size (see :mod:`birefnet_core.distributed`): a
video that fails is named at the end by process 0 and the others go on; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .predict import REFINE_HELP, add_compile_argument

FOREGROUND_CHOICES = ("none", "blur_fusion", "multilevel")

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="input",
                        help="video file(s) (anything FFmpeg decodes: .mp4, .mov, .mkv, .webm...)")
    parser.add_argument("--model", required=True, help="registry name (e.g. BiRefNet_lite), hub repo id or file")
    parser.add_argument("--out", required=True,
                        help="output: .mov (ProRes 4444 with alpha), .webm (VP9 with alpha) or a folder "
                             "(PNG sequence frame_000001.png...); for several inputs with {stem} in it, "
                             "e.g. mattes/{stem}.mov")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="frames decoded and run through the network at once (default 4)")
    parser.add_argument("--resolution", default=None,
                        help="native (default), WxH, N, or keep:N (keep aspect, long side N)")
    parser.add_argument("--smoothing", default="light",
                        help="temporal smoothing against flicker: off, light (default), strong or a number in 0..1")
    parser.add_argument("--foreground", default="none", choices=FOREGROUND_CHOICES,
                        help="colours of the RGBA output in soft edges: none (the frame itself, default, as the "
                             "video node), blur_fusion (estimated foreground, as the official refine_foreground) "
                             "or multilevel")
    parser.add_argument("--refine", nargs="?", const="native", default=None, metavar="SIZE", help=REFINE_HELP
                        + "; --refine none|blur_fusion|multilevel, its former meaning, still works as --foreground "
                        "with a warning")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, mps or cpu)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--patch-order", default=None, choices=["auto", "legacy", "current"],
                        help="override the checkpoint's patch order")
    add_compile_argument(parser)
    parser.add_argument("--models-dir", default=None, help="where registry models are downloaded")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output (a video file, or the frame_*.png files of a folder); "
                             "the input is never overwritten")


STEM = "{stem}"


def run(args: argparse.Namespace) -> int:
    if args.refine in FOREGROUND_CHOICES:  # the option's former meaning: the foreground method
        logger.warning("--refine %s is now --foreground %s (--refine SIZE runs two passes)", args.refine, args.refine)
        if args.foreground != "none" and args.foreground != args.refine:
            raise SystemExit(f"error: --refine {args.refine} (the former --foreground) contradicts --foreground "
                             f"{args.foreground}")
        args.foreground, args.refine = args.refine, None
    from .distributed import launched

    if launched():
        return run_shared(args)
    if len(args.inputs) > 1 or STEM in args.out:
        return _run_several(args)
    from .files import same_file
    from .video import parse_strength
    from .video_io import VideoError, VideoReader, check_output, describe_output

    args.input = args.inputs[0]
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
    _report_video(args.input, args.out, description, reader, written)
    return 0


def _report_video(source, out, description: str, reader, written: int) -> None:
    audio = "; audio not copied" if reader.has_audio else ""
    print(f"wrote {written} frames to {out} ({description}, {float(reader.fps):g} fps{audio})")
    if reader.frame_count and written < reader.frame_count:
        logger.warning("warning: %s announces %d frames but only %d could be decoded: the file is probably "
                       "truncated", source, reader.frame_count, written)


def plan_videos(args: argparse.Namespace) -> List[Tuple[Path, str]]:
    """(input, output) for every input video, each file once, with every output checked (its
    extension, never an input, an existing one only with ``--overwrite``) before any work."""
    from .files import file_key, same_file
    from .predict import output_stems
    from .video import parse_strength
    from .video_io import VideoError, check_output, describe_output

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    parse_strength(args.smoothing)
    videos: List[Path] = []
    seen = set()
    for item in args.inputs:
        path = Path(item)
        if not path.exists():
            raise VideoError(f"input not found: {path}")
        if path.is_dir():
            raise VideoError(f"input is a folder, not a video file: {path}")
        key = file_key(path)
        if key not in seen:
            seen.add(key)
            videos.append(path)
    if len(videos) > 1 and STEM not in args.out:
        raise VideoError(f"{len(videos)} input videos need {STEM} in --out, one output each: e.g. --out "
                         "'mattes/{stem}.mov' (or .webm, or mattes/{stem}/ for PNG sequences)")
    stems = output_stems(videos)
    plan = [(video, args.out.replace(STEM, stems[video])) for video in videos]
    for _, out in plan:
        describe_output(out)
    for video, out in plan:
        source = next((v for v in videos if same_file(v, out)), None)
        if source is not None:
            raise VideoError(f"--out {out} is the input video {source}: refusing to overwrite the input; choose "
                             "another output name")
        check_output(out, overwrite=args.overwrite)
    return plan


def _load_predictor(args: argparse.Namespace, device: Optional[str] = None):
    from .checkpoint import load_model
    from .inference import Predictor

    model = load_model(args.model, device=args.device if device is None else device, dtype=args.dtype,
                       patch_order=args.patch_order, models_dir=args.models_dir)
    return Predictor(model, resolution=args.resolution, batch_size=args.batch_size, refine=args.refine,
                     compile=args.compile)


def _run_several(args: argparse.Namespace) -> int:
    """Several videos (or a ``{stem}`` output) in one process: all checked first, one model."""
    from .video import parse_strength
    from .video_io import VideoReader, describe_output

    plan = plan_videos(args)
    strength = parse_strength(args.smoothing)
    predictor = None
    for index, (video, out) in enumerate(plan, 1):
        with VideoReader(video, chunk_size=args.batch_size) as reader:
            if predictor is None:
                predictor = _load_predictor(args)
            written = _matte_video(args, reader, strength, predictor=predictor, out=out,
                                   description=f"video {index}/{len(plan)}" if len(plan) > 1 else "video")
        _report_video(video, out, describe_output(out), reader, written)
    return 0


def _matte_video(args: argparse.Namespace, reader, strength: float, *, predictor=None, out: Optional[str] = None,
                 description: str = "video", on_chunk: Optional[Callable[[int], None]] = None) -> int:
    """The video of ``reader`` matted into ``out`` (default ``--out``); frames written. A bar
    per video, or ``on_chunk(frames written)`` after each chunk instead."""
    from .matting import MatteOptions
    from .progress import ConsoleProgress
    from .video import TemporalSmoother, VideoOutputs, matte_frames
    from .video_io import VideoWriter

    out = args.out if out is None else out
    if predictor is None:
        predictor = _load_predictor(args)
    smoother = TemporalSmoother(strength)
    matte = None if args.foreground == "none" else MatteOptions(foreground=args.foreground)
    h, w = reader.height, reader.width
    buffers = VideoOutputs.allocate(args.batch_size, h, w)  # reused by every chunk
    total = 0 if on_chunk is not None else (reader.estimated_frames or 0)
    with VideoWriter(out, reader.fps, w, h, overwrite=args.overwrite) as writer, \
            ConsoleProgress(total, description) as bar:
        for chunk in reader:
            n = len(chunk)
            outputs = VideoOutputs(buffers.mask[:n], buffers.rgba[:n], buffers.composite[:n])
            matte_frames(predictor, chunk, smoother=smoother, matte=matte, outputs=outputs)
            writer.write(outputs.rgba)
            if on_chunk is not None:
                on_chunk(writer.frames_written)
            if bar.total and writer.frames_written > bar.total:  # the header's estimate was short
                bar.total = writer.frames_written
            bar.update(n, f"frame {writer.frames_written}")
        if bar.total != writer.frames_written and bar.total:
            bar.total = bar.done = writer.frames_written
            bar.update(0, "done")
    return writer.frames_written


def run_shared(args: argparse.Namespace) -> int:
    """``run`` as one of the processes of a torchrun launch: the videos shared out by size."""
    from .distributed import SharedJob

    return SharedJob.run(args.device, lambda job: _video_shared(args, job))


def _video_shared(args: argparse.Namespace, job) -> int:
    import os

    from .distributed import print_failures
    from .video import parse_strength
    from .video_io import VideoReader, describe_output

    def whole_job():
        videos = plan_videos(args)
        return videos, [os.stat(video).st_size for video, _ in videos]

    plan, sizes = job.agree(whole_job, same=lambda p: job.fingerprint([*(x for pair in p[0] for x in pair), *p[1]]))
    strength = parse_strength(args.smoothing)
    job.assign([str(video) for video, _ in plan], sizes)
    predictor = job.load_in_turns(lambda: _load_predictor(args, device=str(job.ctx.device)))
    with job.progress("video"):
        try:
            for index in job.mine:
                video, out = plan[index]
                try:
                    with VideoReader(video, chunk_size=args.batch_size) as reader:
                        written = _matte_video(args, reader, strength, predictor=predictor, out=out,
                                               on_chunk=lambda n, name=video.name: job.beat(f"{name} frame {n}"))
                except Exception as exc:  # noqa: BLE001 - named at the end; the next video follows
                    job.failed(str(video), exc)
                    continue
                _report_video(video, out, describe_output(out), reader, written)
                job.succeeded(video.name)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"{job.prefix}: {job.written} of its {len(job.mine)} video(s) done; the "
                                    "outputs written are complete") from None

        def report(outcome) -> None:  # process 0, for the whole job
            written = sum(outcome.written.values())
            shares = " + ".join(str(outcome.written.get(r, "?")) for r in range(job.world))
            print(f"wrote {written} of {len(plan)} videos ({job.world} processes: {shares})")
            print_failures(outcome, len(plan), "video")

        return job.finish(report)
