"""``BiRefNetLoader``: a checkpoint from the model folders (or the registry, downloaded on run)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

from ..birefnet_core.checkpoint import load_model, peek_backbone
from ..birefnet_core.compiled import COMPILE_MODES, parse_mode, set_compile
from ..birefnet_core.hub import download, local_path, safetensors_problem
from ..birefnet_core.models.families import describe_model
from ..birefnet_core.registry import VARIANTS, find_variant
from . import comfy

logger = logging.getLogger(__name__)

DOWNLOAD_MARK = " (download)"
BUILTIN_PREFIX = comfy.BUILTIN_FOLDER + "/"


def _downloaded(name: str) -> Optional[Path]:
    for folder in comfy.model_folders():
        path = local_path(name, folder)
        if path.is_file():
            return path
    return None


def model_choices() -> List[str]:
    """Checkpoints in the ``birefnet`` folders, BiRefNet checkpoints in ComfyUI's
    ``background_removal`` folder, then the registry models not in the ``birefnet`` folders: by
    their plain name when ComfyUI's own nodes or another pack already downloaded them (used where
    they are, see :func:`comfy.find_copy`), else as ``<name> (download)`` (downloaded on run)."""
    choices = comfy.list_model_files()
    for name in comfy.list_model_files(comfy.BUILTIN_FOLDER):
        path = comfy.model_file(comfy.BUILTIN_FOLDER, name)
        if path is not None and peek_backbone(path) is not None:
            choices.append(BUILTIN_PREFIX + name)
    for v in VARIANTS:
        if _downloaded(v.name) is None:
            choices.append(v.name if comfy.find_copy(v, quiet=True) is not None else v.name + DOWNLOAD_MARK)
    return choices


def _complete(path: Path) -> bool:
    try:
        return path.is_file() and safetensors_problem(path) is None
    except OSError:
        return False


def _resolve(choice: str, progress=None) -> Tuple[Path, Optional[object], bool]:
    """:func:`resolve_choice`, plus whether the file is known to hold that registry entry (fetched
    for it now, or a copy of it that another tool keeps) rather than only being named like it."""
    name = choice[: -len(DOWNLOAD_MARK)] if choice.endswith(DOWNLOAD_MARK) else choice
    if name.startswith(BUILTIN_PREFIX):
        path = comfy.model_file(comfy.BUILTIN_FOLDER, name[len(BUILTIN_PREFIX):])
        if path is None:
            raise FileNotFoundError(f"{name[len(BUILTIN_PREFIX):]} is not in ComfyUI's {comfy.BUILTIN_FOLDER} folder")
        return path, None, False
    path = comfy.model_file(comfy.MODEL_FOLDER, name)
    variant = find_variant(Path(name).stem) if name.lower().endswith(".safetensors") else find_variant(name)
    if path is not None and (variant is None or path != local_path(variant, path.parent)):
        return path, variant, False
    if path is None and variant is not None:
        path = _downloaded(variant.name)
    if variant is not None and (path is None or not _complete(path)):
        copy = comfy.find_copy(variant)  # another tool's file, used where it is (never moved or changed)
        if copy is not None:
            logger.info("%s: using %s (already downloaded by another tool)", variant.name, copy)
            return copy, variant, True
    if path is not None:  # a registry model's file: download() returns it, or fetches a broken one again
        # (a file placed here by hand may hold something else: load_model judges it by its name, as before)
        return download(variant, path.parent, progress=progress), variant, False
    if variant is None:
        folders = ", ".join(str(f) for f in comfy.model_folders())
        raise FileNotFoundError(f"model {name!r} is neither in the birefnet model folder ({folders}) nor a known "
                                "BiRefNet model name")
    folders = comfy.model_folders()
    if not folders:
        raise FileNotFoundError("no birefnet model folder is configured")
    return download(variant, folders[0], progress=progress), variant, True


def resolve_choice(choice: str, progress=None) -> Tuple[Path, Optional[object]]:
    """The weights file for a ``model`` widget value and the registry entry it names, if any: a
    file in the model folders; for a registry model not there, a complete copy that ComfyUI's own
    nodes or another pack downloaded (used where it is), else a download (the Hugging Face cache
    first). Values saved before a download (``<name> (download)``) still resolve after it."""
    path, variant, _ = _resolve(choice, progress)
    return path, variant


class BiRefNetLoader:
    DESCRIPTION = (
        "Loads a BiRefNet or FOCUS checkpoint: any file in models/birefnet (or the folders "
        "extra_model_paths.yaml adds), BiRefNet files in ComfyUI's background_removal folder, or a released "
        "model: one that ComfyUI's own nodes or another pack (models/background_removal, models/RMBG/BiRefNet, "
        "models/BiRefNet) already downloaded is used where it is, others are downloaded into models/birefnet "
        "the first time they run. The family and backbone are read from the weights. The model is managed by "
        "ComfyUI: 'Unload models' frees it."
    )
    CATEGORY = "BiRefNet"
    RETURN_TYPES = ("BIREFNET_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded BiRefNet or FOCUS model, for BiRefNet Segment and the other BiRefNet nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        choices = model_choices()
        return {
            "required": {
                "model": (choices, {
                    "default": choices[0] if choices else "BiRefNet_lite" + DOWNLOAD_MARK,
                    "tooltip": "Checkpoint to load. Names ending in '(download)' are released models not on disk "
                               "yet: they are downloaded into models/birefnet when the node runs; a released model "
                               "listed by its plain name is already on disk in another tool's folder (ComfyUI's "
                               "background_removal, another pack's) and is used from there. BiRefNet_lite is "
                               "fast; BiRefNet is the general model; -matting and -portrait give soft hair edges; "
                               "RMBG-2.0 is non-commercial and needs a Hugging Face token. focus_* are FOCUS models "
                               "(large: DINOv2-L, 1.5 GB once slimmed; giant: DINOv2-G, 5 GB), one per task: sod = "
                               "salient object, cod = camouflaged object, sd = shadows, dbd = defocus blur "
                               "detection (the region its training data's ground truth marks white, i.e. blurred vs "
                               "sharp as in the DUT/CUHK DBD sets), fd = forged (manipulated) region. "
                               "The released FOCUS files are 5-15 GB; only the inference weights are kept.",
                }),
                "device": (comfy.device_choices(), {
                    "default": "auto",
                    "tooltip": "Where the model runs. auto: ComfyUI's device (the GPU when there is one).",
                }),
                "dtype": (["auto", "float32", "float16", "bfloat16"], {
                    "default": "auto",
                    "tooltip": "Precision. auto: bfloat16 on GPUs that support it, else float16; on CPU bfloat16 "
                               "where the CPU has it natively (AVX512-BF16/AMX: faster), else float32; float32 on "
                               "Apple MPS. Half precision halves the memory with no visible change to masks.",
                }),
                "patch_order": (["auto", "legacy", "current"], {
                    "default": "auto",
                    "tooltip": "BiRefNet only (FOCUS ignores it): how the image patches are fed to the decoder. "
                               "auto: what the checkpoint was trained with, as best known (legacy for models released "
                               "before November 2024). Change it only if masks of a custom checkpoint look wrong.",
                }),
            },
            "optional": {
                "compile": (list(COMPILE_MODES), {
                    "default": "off",
                    "tooltip": "torch.compile the network (off by default). on: fused kernels, faster on GPUs after "
                               "a first run that compiles (seconds to minutes, again for each new image size); "
                               "cudagraphs: also replays CUDA graphs, best with a fixed resolution and batch size. "
                               "Falls back to uncompiled, with a warning, where compiling fails.",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        # any saved value that resolves is valid: a model chosen as "X (download)" is listed as
        # "X.safetensors" once downloaded, and workflows saved before must keep working. Whatever
        # a workflow holds, the answer is True or one line, never an exception. Only ``model`` is
        # taken: ComfyUI skips its own list check for the inputs named here (all of them with a
        # ``**kwargs``), so device, dtype, patch_order and compile keep ComfyUI's check.
        from ..birefnet_core.checkpoint import check_model_name

        if not isinstance(model, str):
            return f"model must be a file or model name, not {type(model).__name__}"
        name = model[: -len(DOWNLOAD_MARK)] if model.endswith(DOWNLOAD_MARK) else model
        try:
            check_model_name(name)
            if name.startswith(BUILTIN_PREFIX):
                found = comfy.model_file(comfy.BUILTIN_FOLDER, name[len(BUILTIN_PREFIX):])
            else:
                found = comfy.model_file(comfy.MODEL_FOLDER, name) or find_variant(
                    Path(name).stem if name.lower().endswith(".safetensors") else name)
        except (ValueError, OSError) as exc:
            return " ".join(str(exc).split())
        if found is None:
            folders = ", ".join(str(f) for f in comfy.model_folders())
            return f"model {name!r} is neither in the birefnet model folder ({folders}) nor a known BiRefNet model name"
        return True

    def load(self, model: str, device: str, dtype: str, patch_order: str, compile: str = "off"):
        compile = parse_mode(compile)  # a bad value fails before anything loads
        target = comfy.torch_device(device)
        node_progress = comfy.progress_reporter(100, "download")

        def progress(done: int, total: int) -> None:
            if total:
                node_progress(int(100 * done / total), 100)
            comfy.send_to_frontend("birefnet.download", {"model": model, "done": done, "total": total})

        path, variant, holds = _resolve(model, progress=progress)
        network = load_model(path, device=target, dtype=dtype, patch_order=patch_order,
                              variant=variant if holds else None)
        if network.variant is None and variant is not None:
            network.variant = variant
        set_compile(network, compile)
        logger.info("%s loaded from %s on %s (%s)", describe_model(network), path, target,
                    next(network.parameters()).dtype)
        return (comfy.ManagedModel(network, target),)
