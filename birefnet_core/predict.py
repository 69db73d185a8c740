"""``python -m birefnet_core predict``: cut-outs and masks for image files.

For every input image it writes ``<stem>_mask.png`` (8-bit grey) and ``<stem>_rgba.png`` (the
image with the mask as straight alpha), both at the input's size. A folder input means every
image in it (not recursive). File reading and writing happen here, at the boundary; the
pipeline itself works on tensors (``Predictor``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class UserError(Exception):
    """An error the user can fix; printed as one line, exit status 1."""


def find_images(inputs: Sequence[str]) -> List[Path]:
    files: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"input not found: {path}")
    return files


def read_image(path: Path) -> torch.Tensor:
    """RGB uint8 [H, W, 3], EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            return torch.from_numpy(np.array(image))
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def write_outputs(rgb: torch.Tensor, probs: torch.Tensor, out_dir: Path, stem: str) -> Tuple[Path, Path]:
    from PIL import Image

    alpha = (probs * 255).round().to(torch.uint8).cpu().numpy()
    mask_path = out_dir / f"{stem}_mask.png"
    rgba_path = out_dir / f"{stem}_rgba.png"
    Image.fromarray(alpha, mode="L").save(mask_path)
    Image.fromarray(np.dstack([rgb.numpy(), alpha]), mode="RGBA").save(rgba_path)
    return mask_path, rgba_path


def unique_stems(files: Sequence[Path]) -> Dict[Path, str]:
    """Output stems, suffixed where two inputs share a name, so no output overwrites another."""
    seen: Dict[str, int] = {}
    stems = {}
    for path in files:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems[path] = path.stem if count == 0 else f"{path.stem}_{count + 1}"
    return stems


def batches(files: Sequence[Path], batch_size: int) -> Iterator[List[Tuple[Path, torch.Tensor]]]:
    """Consecutive images of equal size, up to ``batch_size`` at a time."""
    group: List[Tuple[Path, torch.Tensor]] = []
    for path in files:
        image = read_image(path)
        if group and (len(group) == batch_size or group[0][1].shape != image.shape):
            yield group
            group = []
        group.append((path, image))
    if group:
        yield group


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--model", required=True, help="registry name (e.g. BiRefNet_lite), hub repo id or file")
    parser.add_argument("--out", default="birefnet_out", help="output folder (default ./birefnet_out)")
    parser.add_argument("--resolution", default=None,
                        help="native (default), WxH, N, or keep:N (keep aspect, long side N)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, mps or cpu)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (equal sizes)")
    parser.add_argument("--patch-order", default=None, choices=["auto", "legacy", "current"],
                        help="override the checkpoint's patch order")
    parser.add_argument("--models-dir", default=None, help="where registry models are downloaded")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .inference import Predictor
    from .progress import ConsoleProgress

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        files = find_images(args.inputs)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = load_model(args.model, device=args.device, dtype=args.dtype, patch_order=args.patch_order,
                           models_dir=args.models_dir)
        predictor = Predictor(model, resolution=args.resolution, batch_size=args.batch_size)
        stems = unique_stems(files)
        with ConsoleProgress(len(files), "predict") as bar:
            for group in batches(files, args.batch_size):
                probs = predictor.predict(torch.stack([image for _, image in group]))
                for (path, image), prob in zip(group, probs):
                    write_outputs(image, prob, out_dir, stems[path])
                    bar.update(1, path.name)
    except (UserError, ValueError, FileNotFoundError, RuntimeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"wrote {2 * len(files)} files to {out_dir}")
    return 0
