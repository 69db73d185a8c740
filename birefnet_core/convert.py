"""``python -m birefnet_core convert IN OUT.safetensors``: any checkpoint we can load, as a slim
``.safetensors`` file holding its inference weights only.

The input is anything :func:`birefnet_core.checkpoint.read_state_dict` reads (``.safetensors``,
``.pth/.pt/.bin/.ckpt`` with ``weights_only=True``; a detectron2 checkpoint's ``"model"`` entry,
memory-mapped so that its optimiser state is never read). Its family and architecture must be
recognised (:func:`birefnet_core.checkpoint.identify`), its tensors must be finite; training-only
tensors are dropped and legacy names renamed. The output is written atomically (a temporary name,
then one rename) with the metadata :func:`birefnet_core.checkpoint.save_weights` records
(``birefnet.family``, ``birefnet.architecture``; for BiRefNet ``birefnet.backbone`` and the patch
order when the input records it or is named like a registry entry), plus
``birefnet.converted_from`` (the input's file name). A released FOCUS checkpoint (5.1 GB for
DINOv2-L, 15.4 GB for DINOv2-G) becomes 1.5 GB / 4.9 GB in float32.

:func:`convert_file` is what :mod:`birefnet_core.hub` uses for FOCUS downloads.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")


class Converted(NamedTuple):
    """What :func:`convert_file` wrote."""

    path: Path
    family: str  # the family's name ("birefnet", "focus")
    architecture: str  # its description ("swin_v1_l", "focus_dinov2_l", "custom focus (width 128, depth 4)")
    tensors: int  # tensors written
    dropped: int  # training-only tensors left out
    nbytes: int  # size of the written file

    def summary(self) -> str:
        """One line for the command line and logs."""
        from .models.families import get_family

        dropped = f", {self.dropped} training-only tensors left out" if self.dropped else ""
        return (f"wrote {self.path}: {self.tensors} tensors of a {get_family(self.family).title} {self.architecture} "
                f"({_size(self.nbytes)}{dropped})")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def convert_file(source: Union[str, os.PathLike], output: Union[str, os.PathLike], *,
                 dtype: Union[None, str, torch.dtype] = None, overwrite: bool = False,
                 check_outputs: bool = True) -> Converted:
    """Write the inference weights of the checkpoint ``source`` to ``output`` (``.safetensors``).

    ``dtype``: None keeps each tensor's stored dtype; "float32"/"float16"/"bfloat16" (or a torch
    dtype) casts the floating tensors (integer buffers are kept). ``output`` may not be
    ``source`` (by any path or link), nor, unless ``overwrite``, an existing file
    (``check_outputs=False`` skips that policy: the caller has checked). Raises ValueError (one
    line) for a file that is not a recognised, sound checkpoint; nothing is written then.
    """
    from safetensors.torch import save_file

    from .checkpoint import (check_tensors, identify, read_metadata, read_state_dict,
                             weights_metadata)
    from .config import PatchOrder
    from .files import atomic_output, check_outputs as check_policy, prepare_folder
    from .registry import find_variant

    source, output = Path(source).expanduser(), Path(output).expanduser()
    if output.suffix.lower() != ".safetensors":
        raise ValueError(f"output {output} must end in .safetensors (the only format written)")
    cast = _parse_dtype(dtype)
    if check_outputs:
        check_policy([output], [source], overwrite=overwrite)
    raw = read_state_dict(source)
    total = len(raw)
    family, architecture, sd = identify(raw)
    del raw  # the file's other entries (optimiser state...) go here, unread
    check_tensors(sd, source)
    order = None
    if family.name == "birefnet":
        recorded = read_metadata(source).get("birefnet.patch_order")
        named = find_variant(source.stem)
        if recorded:
            order = PatchOrder.parse(recorded)
        elif named is not None and named.family == family.name and named.backbone == architecture:
            order = named.patch_order
    meta = weights_metadata(family, architecture, order)
    meta["birefnet.converted_from"] = source.name
    tensors = _own_memory({k: v.to(cast) if cast is not None and v.is_floating_point() else v for k, v in sd.items()})
    del sd
    prepare_folder(output.parent, "output folder")
    with atomic_output(output) as partial:
        save_file(tensors, str(partial), metadata=meta)
    return Converted(output, family.name, family.describe(architecture), len(tensors),
                     total - len(tensors), output.stat().st_size)


def _parse_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in DTYPES:
        raise ValueError(f"dtype must be {', '.join(DTYPES)} (or omitted to keep the stored one), got {dtype!r}")
    return getattr(torch, str(dtype).lower())


def _own_memory(sd: dict) -> dict:
    """``sd`` with every tensor contiguous and alone in its storage (safetensors refuses tensors
    that share memory; views of one storage are copied). Nothing is copied otherwise."""
    seen = set()
    out: dict[str, Any] = {}
    for key, value in sd.items():
        value = value.detach().contiguous()
        storage = value.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or storage.nbytes() != value.numel() * value.element_size():
            value = value.clone()
            ptr = value.untyped_storage().data_ptr()
        seen.add(ptr)
        out[key] = value
    return out


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write a checkpoint's inference weights as .safetensors: training-only tensors (FOCUS's "
                          "CLIP refiner, a detectron2 file's optimiser state) are left out, the family and "
                          "architecture are recorded in the header. Reads .safetensors, .pth, .pt, .bin, .ckpt "
                          "(never running code from a pickle).")
    parser.add_argument("input", type=Path, help="checkpoint to read (e.g. a released focus_large_sod.pth)")
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="store the floating-point weights in this precision (default: as stored)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")


def run(args: argparse.Namespace) -> int:
    done = convert_file(args.input, args.output, dtype=args.dtype, overwrite=args.overwrite)
    print(done.summary())
    return 0


__all__ = ["Converted", "DTYPES", "add_arguments", "convert_file", "run"]
