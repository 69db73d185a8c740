"""``python -m birefnet_core predict``: cut-outs and masks for image files.

For every input image it writes ``<stem>_mask.png`` (8-bit grey) and ``<stem>_rgba.png`` (the
image with the mask as straight alpha), both at the input's size, into ``--out``. A folder input
means every image in it (not recursive). File reading and writing happen here, at the boundary;
the pipeline itself works on tensors (``Predictor``).

Naming and existing files:

* The same file given twice (by any path or link) is processed once.
* Inputs that share a stem (``a.png`` and ``a.jpg``, or ``x/a.png`` and ``y/a.png``) get
  ``_2``, ``_3``... in the order given (``a_mask.png``, ``a_2_mask.png``), never a name another
  input's output already has.
* Before anything runs, every output name is checked: an output that is an input (``--out`` the
  input folder holding a user's ``<stem>_mask.png``) is always refused; an output that exists
  already is refused unless ``--overwrite``. Nothing is overwritten that this run did not write.
* Each file is written under a temporary name and moved into place when complete: an interrupted
  run (Ctrl-C: status 130) leaves complete files only.

Under ``torchrun --nproc_per_node=N -m birefnet_core predict ...`` the images are shared between
the N processes (one GPU each: ``cuda:LOCAL_RANK``), see :mod:`birefnet_core.distributed`: every
process checks the whole job as above (same names, same refusals, same message everywhere), then
does its share (round-robin over the input order); an image that fails is named with its reason
and the others go on; process 0 draws the job's progress and lists every failed image at the
end, and every process then exits with 1. The outputs are those of one process.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .files import atomic_output, check_outputs, file_key, prepare_folder, remove_if_empty

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
OUTPUT_SUFFIXES = ("_mask", "_rgba")

logger = logging.getLogger(__name__)


class UserError(ValueError):
    """An error the user can fix; printed as one line, exit status 1."""


def find_images(inputs: Sequence[str]) -> List[Path]:
    """The image files named by ``inputs`` (files, or folders of images), each file once."""
    files: List[Path] = []
    seen = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        elif path.is_file():
            found = [path]
        else:
            raise UserError(f"input not found: {path}")
        for file in found:
            key = file_key(file)
            if key in seen:
                logger.info("%s is given more than once: processed once", file)
                continue
            seen.add(key)
            files.append(file)
    return files


def read_image(path: Path) -> torch.Tensor:
    """RGB [H, W, 3] in the file's real range (uint8 for 8-bit files, float32 0..1 for deeper
    ones), EXIF orientation applied."""
    from .image_io import read_rgb

    return torch.from_numpy(read_rgb(path))


def output_stems(files: Sequence[Path]) -> Dict[Path, str]:
    """Output stems: each input's own, suffixed ``_2``, ``_3``... where an earlier input has it."""
    taken = set()
    stems = {}
    for path in files:
        stem, count = path.stem, 1
        while stem in taken:
            count += 1
            stem = f"{path.stem}_{count}"
        taken.add(stem)
        stems[path] = stem
    return stems


def output_paths(out_dir: Path, stem: str) -> Tuple[Path, Path]:
    return tuple(out_dir / f"{stem}{suffix}.png" for suffix in OUTPUT_SUFFIXES)  # type: ignore[return-value]


def write_outputs(rgb: torch.Tensor, probs: torch.Tensor, out_dir: Path, stem: str) -> Tuple[Path, Path]:
    from PIL import Image

    from .image_io import to_uint8

    alpha = (probs * 255).round().to(torch.uint8).cpu().numpy()
    mask_path, rgba_path = output_paths(out_dir, stem)
    with atomic_output(mask_path) as partial:
        Image.fromarray(alpha, mode="L").save(partial, format="PNG")
    with atomic_output(rgba_path) as partial:
        Image.fromarray(np.dstack([to_uint8(rgb.numpy()), alpha]), mode="RGBA").save(partial, format="PNG")
    return mask_path, rgba_path


def _group_is_complete(group: Sequence[Tuple[Path, torch.Tensor]], image: torch.Tensor, batch_size: int) -> bool:
    return bool(group) and (len(group) == batch_size or group[0][1].shape != image.shape
                            or group[0][1].dtype != image.dtype)


def batches(files: Sequence[Path], batch_size: int) -> Iterator[List[Tuple[Path, torch.Tensor]]]:
    """Consecutive images of equal size and dtype, up to ``batch_size`` at a time."""
    group: List[Tuple[Path, torch.Tensor]] = []
    for path in files:
        image = read_image(path)
        if _group_is_complete(group, image, batch_size):
            yield group
            group = []
        group.append((path, image))
    if group:
        yield group


def batches_or_failures(files: Sequence[Path], batch_size: int
                        ) -> Iterator[Tuple[List[Tuple[Path, torch.Tensor]], Optional[Tuple[Path, Exception]]]]:
    """As :func:`batches`, yielding ``(group, None)``, with unreadable files in their place in
    the order as ``([], (path, error))`` (the shared job goes on after them)."""
    group: List[Tuple[Path, torch.Tensor]] = []
    for path in files:
        try:
            image = read_image(path)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason, the next file follows
            if group:
                yield group, None
                group = []
            yield [], (path, exc)
            continue
        if _group_is_complete(group, image, batch_size):
            yield group, None
            group = []
        group.append((path, image))
    if group:
        yield group, None


REFINE_HELP = ("two passes for large images: find the subject at --resolution, then segment its cut-out from the "
               "full-resolution image again at SIZE (N or WxH; without SIZE the model's own), merged with a feathered "
               "edge (see birefnet_core.two_pass)")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", nargs="?", const="on", default="off", choices=["off", "on", "cudagraphs"],
                        help="torch.compile the network: on (when given alone), cudagraphs (also CUDA graphs, for a "
                             "fixed size and batch) or off (the default); the first batch of each size compiles "
                             "(see birefnet_core.compiled)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--model", required=True,
                        help="registry name (e.g. BiRefNet_lite, focus_large_sd), hub repo id or file")
    parser.add_argument("--out", default="birefnet_out", help="output folder (default ./birefnet_out)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that exist already (never an input file)")
    parser.add_argument("--resolution", default=None,
                        help="native (default), WxH, N, keep:N (keep aspect, long side N) or short:N[:M] "
                             "(keep aspect, short side N, long side at most M; FOCUS's native is short:512:2048)")
    parser.add_argument("--refine", nargs="?", const="native", default=None, metavar="SIZE",
                        help=REFINE_HELP)
    add_compile_argument(parser)
    parser.add_argument("--binary", action="store_true",
                        help="write the model's 0/1 mask instead of the soft one (FOCUS: its official mask of "
                             "interest; BiRefNet: probability > 0.5)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, mps or cpu)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (equal sizes)")
    parser.add_argument("--patch-order", default=None, choices=["auto", "legacy", "current"],
                        help="override a BiRefNet checkpoint's patch order (FOCUS has none)")
    parser.add_argument("--models-dir", default=None, help="where registry models are downloaded")
    parser.epilog = ("Writes <stem>_mask.png and <stem>_rgba.png per image; inputs sharing a stem get _2, _3... "
                     "Existing outputs are refused unless --overwrite; an input is never overwritten.")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .distributed import launched
    from .inference import Predictor
    from .progress import ConsoleProgress

    if launched():
        return run_shared(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    files = find_images(args.inputs)
    out_dir = Path(args.out)
    stems = output_stems(files)
    planned = [path for stem in stems.values() for path in output_paths(out_dir, stem)]
    check_outputs(planned, files, overwrite=args.overwrite)  # before anything is created or loaded
    created = prepare_folder(out_dir)
    done = 0
    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype, patch_order=args.patch_order,
                           models_dir=args.models_dir)
        predictor = Predictor(model, resolution=args.resolution, batch_size=args.batch_size, binary=args.binary,
                              refine=args.refine, compile=args.compile)
        with ConsoleProgress(len(files), "predict") as bar:
            for group in batches(files, args.batch_size):
                probs = predictor.predict(torch.stack([image for _, image in group]), layout="BHWC")
                for (path, image), prob in zip(group, probs):
                    write_outputs(image, prob, out_dir, stems[path])
                    done += 1
                    bar.update(1, path.name)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"{done} of {len(files)} image(s) done; their outputs in {out_dir} are complete") \
            from None
    finally:
        if created:
            remove_if_empty(out_dir)
    print(f"wrote {2 * len(files)} files to {out_dir}")
    return 0


def run_shared(args: argparse.Namespace) -> int:
    """``run`` as one of the processes of a torchrun launch (see the module doc)."""
    from .distributed import SharedJob

    return SharedJob.run(args.device, lambda job: _predict_shared(args, job))


def _predict_shared(args: argparse.Namespace, job) -> int:
    from .checkpoint import load_model
    from .distributed import print_failures
    from .inference import Predictor

    out_dir = Path(args.out)

    def plan():  # the whole job, on every process alike, before anything is created or loaded
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        files = find_images(args.inputs)
        stems = output_stems(files)
        planned = [path for stem in stems.values() for path in output_paths(out_dir, stem)]
        check_outputs(planned, files, overwrite=args.overwrite)
        return files, stems, out_dir.exists()

    files, stems, existed = job.agree(plan, same=lambda p: job.fingerprint([*p[0], *p[1].values()]))
    job.assign([str(path) for path in files])
    mine = [files[i] for i in job.mine]

    def report(outcome) -> None:  # process 0, for the whole job
        written = sum(outcome.written.values())
        shares = " + ".join(str(outcome.written.get(r, "?")) for r in range(job.world))
        print(f"wrote {2 * written} files to {out_dir} ({written} of {len(files)} images; {job.world} processes: "
              f"{shares})")
        print_failures(outcome, len(files), "image")

    try:
        job.agree(lambda: prepare_folder(out_dir))
        model = job.load_in_turns(lambda: load_model(args.model, device=str(job.ctx.device), dtype=args.dtype,
                                                     patch_order=args.patch_order, models_dir=args.models_dir))
        with job.progress("predict"):
            if mine:
                predictor = Predictor(model, resolution=args.resolution, batch_size=args.batch_size,
                                      binary=args.binary, refine=args.refine, compile=args.compile)
                try:
                    _predict_share(job, predictor, mine, stems, out_dir, args.batch_size)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(f"{job.prefix}: {job.written} of its {len(mine)} image(s) done; their "
                                            f"outputs in {out_dir} are complete") from None
            return job.finish(report)
    finally:
        if job.main and not existed:
            remove_if_empty(out_dir)


def _predict_share(job, predictor, mine: Sequence[Path], stems: Dict[Path, str], out_dir: Path,
                   batch_size: int) -> None:
    """This process's images; one that fails is recorded with its reason, the next follows."""
    for group, failure in batches_or_failures(mine, batch_size):
        if failure is not None:
            job.failed(str(failure[0]), failure[1])
            continue
        try:
            probs = predictor.predict(torch.stack([image for _, image in group]), layout="BHWC")
        except Exception as exc:  # noqa: BLE001 - the group's images fail, the next group follows
            for path, _ in group:
                job.failed(str(path), exc)
            continue
        for (path, image), prob in zip(group, probs):
            try:
                write_outputs(image, prob, out_dir, stems[path])
            except Exception as exc:  # noqa: BLE001 - recorded, the next image follows
                job.failed(str(path), exc)
                continue
            job.succeeded(path.name)
