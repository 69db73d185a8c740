"""Command line: ``python -m birefnet_core <command> ...``.

Commands: ``predict`` (masks and cut-outs for image files), ``video`` (alpha video for a video
file), ``eval`` (metrics of predicted masks against ground truth, equal to PySODMetrics),
``bench`` (benchmarks that print figures), ``doctor`` (what this machine runs, for bug
reports) and ``convert`` (a checkpoint's inference weights as a slim .safetensors). They are
built on the same core API as the ComfyUI nodes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from . import bench, convert, doctor, predict, video_cli
    from .train import evaluate

    parser = argparse.ArgumentParser(prog="python -m birefnet_core",
                                     description="BiRefNet: segmentation, matting, video, evaluation, benchmarks "
                                                 "and a report on this machine.")
    commands = parser.add_subparsers(dest="command", metavar="command")
    predict.add_arguments(commands.add_parser("predict", help="write a mask and an RGBA cut-out per image"))
    video_cli.add_arguments(commands.add_parser("video", help="write an alpha video (ProRes 4444, VP9 WebM or PNGs) "
                                                              "for a video file"))
    evaluate.add_arguments(commands.add_parser("eval", help="metrics (S, F, E, wF, MAE, HCE) of predicted masks "
                                                            "against ground-truth masks"))
    bench.add_arguments(commands.add_parser("bench", help="print speed and memory figures"))
    doctor.add_arguments(commands.add_parser("doctor", help="versions, devices, kernels, dtypes and models of this "
                                                            "machine, for a bug report"))
    convert.add_arguments(commands.add_parser("convert", help="write a checkpoint's inference weights (e.g. of a "
                                                              "5 GB FOCUS .pth) as a slim .safetensors"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status: 0 done, 1 an error (one line on stderr), 2 a usage error, 130 interrupted."""
    from .cli import run_command, setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    setup_logging()
    if args.command == "predict":
        from . import predict as command
    elif args.command == "video":
        from . import video_cli as command
    elif args.command == "eval":
        from .train import evaluate as command
    elif args.command == "doctor":
        from . import doctor as command
    elif args.command == "convert":
        from . import convert as command
    else:
        from . import bench as command
    return run_command(lambda: command.run(args))


if __name__ == "__main__":
    sys.exit(main())
