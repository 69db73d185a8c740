"""The only module of the pack that touches ComfyUI.

Inside ComfyUI it uses ``folder_paths`` (the ``birefnet`` model folder, ``extra_model_paths.yaml``,
and the folders where ComfyUI's own nodes and other packs keep checkpoints we can reuse),
``comfy.model_management`` (devices, memory, interruption), ``comfy.model_patcher.ModelPatcher``
(so "Unload models" frees the model and other models can evict it), ``comfy.utils.ProgressBar``
and the server's messages to the frontend. Without ComfyUI (tests, scripts) the same functions
fall back to plain PyTorch: the device from torch, the models folder from ``BIREFNET_MODELS_DIR``
(or the core's default; other tools' files are looked for beside it only when it is
``<ComfyUI>/models/birefnet``), a console progress bar.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional

import torch

from ..birefnet_core import hub
from ..birefnet_core.checkpoint import WEIGHTS_SUFFIXES, default_device, default_models_dir
from ..birefnet_core.progress import ConsoleProgress

logger = logging.getLogger(__name__)

try:  # ComfyUI is importable only inside a running ComfyUI (or its test set-up)
    import comfy.model_management as model_management
    import comfy.model_patcher
    import comfy.utils
    import folder_paths

    IN_COMFYUI = True
except ImportError:
    IN_COMFYUI = False

MODEL_FOLDER = "birefnet"  # folder_paths key; default <ComfyUI>/models/birefnet
BUILTIN_FOLDER = "background_removal"  # ComfyUI's own background-removal models


def register_model_folder() -> None:
    """Make ``birefnet`` a model folder, keeping paths users added in extra_model_paths.yaml."""
    if not IN_COMFYUI:
        return
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    paths = list(paths) + ([default] if default not in paths else [])
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | set(WEIGHTS_SUFFIXES))


def model_folders(key: str = MODEL_FOLDER) -> List[Path]:
    """The folders of a model folder key, the writable default first where ComfyUI says so."""
    if IN_COMFYUI:
        if key not in folder_paths.folder_names_and_paths:
            return []
        return [Path(p) for p in folder_paths.get_folder_paths(key)]
    if key != MODEL_FOLDER:
        return []
    return [Path(os.environ["BIREFNET_MODELS_DIR"]) if os.environ.get("BIREFNET_MODELS_DIR") else default_models_dir()]


def list_model_files(key: str = MODEL_FOLDER) -> List[str]:
    """Weights files in a model folder key, as names relative to their folder."""
    if IN_COMFYUI:
        if key not in folder_paths.folder_names_and_paths:
            return []
        return [n for n in folder_paths.get_filename_list(key) if n.lower().endswith(WEIGHTS_SUFFIXES)]
    names = []
    for folder in model_folders(key):
        if folder.is_dir():
            names += sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                            if p.is_file() and p.suffix.lower() in WEIGHTS_SUFFIXES and ".download" not in p.parts)
    return names


def model_file(key: str, name: str) -> Optional[Path]:
    """The file called ``name`` in a model folder key, or None. Names never leave the folders:
    absolute names and names with '..' are refused (a symbolic link the user put in a folder is
    followed: that is the user's choice, not the name's)."""
    parts = Path(name.replace("\\", "/")).parts
    if not name or Path(name).is_absolute() or ".." in parts or name.startswith(("/", "\\")):
        raise ValueError(f"model name {name!r} is not a file name inside the {key} model folder")
    for folder in model_folders(key):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def other_models_roots() -> List[Path]:
    """ComfyUI's models folder, under which ComfyUI's own nodes and other packs keep their files
    (``background_removal/``, ``RMBG/BiRefNet/``, ``BiRefNet/``...): ``folder_paths.models_dir``
    inside ComfyUI; outside, the parent of ``BIREFNET_MODELS_DIR`` when that is
    ``<ComfyUI>/models/birefnet``; else none."""
    if IN_COMFYUI:
        return [Path(folder_paths.models_dir)]
    configured = os.environ.get("BIREFNET_MODELS_DIR")
    root = hub.comfy_models_root(configured) if configured else None
    return [root] if root is not None else []


def other_key_folders() -> Dict[str, List[Path]]:
    """ComfyUI's folders by (lower-case) folder key, ``extra_model_paths.yaml`` included: where
    ``background_removal``, 1038lab's ``rmbg`` and the other keys' files also lie; {} outside
    ComfyUI."""
    if not IN_COMFYUI:
        return {}
    folders: Dict[str, List[Path]] = {}
    for key in list(folder_paths.folder_names_and_paths):
        try:
            paths = folder_paths.get_folder_paths(key)
        except Exception:  # a key another pack registered oddly: not ours to judge
            continue
        folders.setdefault(str(key).lower(), []).extend(Path(p) for p in paths)
    return folders


def find_copy(variant, quiet: bool = False) -> Optional[Path]:
    """A complete copy of registry entry ``variant`` that ComfyUI's own nodes or another pack
    downloaded (see :func:`birefnet_core.hub.find_copy`), to be used where it is, else None.
    ``quiet``: no warning about broken copies (for listings, which run often)."""
    roots = other_models_roots()
    keys = other_key_folders()
    if not roots and not keys:
        return None
    return hub.find_copy(variant, roots, keys, quiet=quiet)


def device_choices() -> List[str]:
    """"auto", "cpu" and every accelerator torch sees."""
    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        choices += [f"xpu:{i}" for i in range(torch.xpu.device_count())]
    return choices


def torch_device(choice: str) -> torch.device:
    """The device for a ``device`` widget value; a device that is not present is an error."""
    if choice == "auto":
        return model_management.get_torch_device() if IN_COMFYUI else default_device()
    if choice not in device_choices():
        raise ValueError(f"device {choice!r} is not available on this machine; choose one of "
                         f"{', '.join(device_choices())}")
    return torch.device(choice)


def offload_device() -> torch.device:
    return model_management.unet_offload_device() if IN_COMFYUI else torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where node outputs live (CPU unless ComfyUI runs with --gpu-only)."""
    return model_management.intermediate_device() if IN_COMFYUI else torch.device("cpu")


def free_cached_memory() -> None:
    if IN_COMFYUI:
        model_management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


class ManagedModel:
    """A loaded BiRefNet under ComfyUI's memory management (the ``BIREFNET_MODEL`` type).

    ``ready()`` returns the network on its device, loading it there first if ComfyUI (or
    "Unload models") had moved it away.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.variant = getattr(model, "variant", None)
        self.source = getattr(model, "source", "")
        self.dtype = next(model.parameters()).dtype
        if IN_COMFYUI:
            model = model.to(offload_device())
            self.patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=offload_device())
        else:
            self.patcher = None
        self._model = model

    def ready(self) -> torch.nn.Module:
        if self.patcher is not None:
            # whole-model loading: the network is plain torch, it cannot run partially offloaded
            model_management.load_models_gpu([self.patcher], force_full_load=True)
            return self.patcher.model
        return self._model.to(self.device)

    def __repr__(self) -> str:
        return f"BiRefNet({self.source}, {self.device}, {self.dtype})"


def progress_reporter(total: int, description: str = "BiRefNet") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback: ComfyUI's progress bar (which also raises when the
    user cancels), or a console bar outside ComfyUI."""
    if IN_COMFYUI:
        bar = comfy.utils.ProgressBar(total)

        def report(done: int, _total: int) -> None:
            model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        return report
    console = ConsoleProgress(total, description)

    def report_console(done: int, _total: int) -> None:
        console.update(done - console.done)
        if done >= total:
            console.close()

    return report_console


def send_to_frontend(event: str, data: dict) -> None:
    """A message to the browser (the web extension listens for ``birefnet.*`` events)."""
    if not IN_COMFYUI:
        return
    try:
        from server import PromptServer

        if PromptServer.instance is not None:
            PromptServer.instance.send_sync(event, data)
    except Exception as exc:  # the frontend is optional: never fail a run over a message
        logger.debug("could not send %s to the frontend: %s", event, exc)


# ---------------------------------------------------------------------------------------------
# Which outputs of a node the workflow links (so that unlinked ones need not be computed)
#
# What ComfyUI does (checked in its source: 0.3.64 = commit a125cd84, line numbers below; the same
# code in a later main-branch snapshot, execution.py at 04e2a914):
# - a node's output cache key is built in comfy_execution/caching.py,
#   CacheKeySetInputSignature.get_immediate_node_signature (0.3.64: lines 103-123) from its
#   class, the value IS_CHANGED returned, its node id (when UNIQUE_ID is among its hidden inputs),
#   its own inputs and, recursively, its ancestors' - never from the nodes downstream. Linking one
#   more output of a node to a new consumer therefore leaves the node's key unchanged, and its
#   cached outputs would be handed on: the set of linked outputs has to enter the key, and
#   IS_CHANGED's value is the only way in. The value goes through to_hashable (caching.py:48-59):
#   strings and numbers compare by value; NaN never equals itself, so the node runs every time.
# - IS_CHANGED is called by execution.py IsChangedCache.get (0.3.64: lines 54-88) with
#   get_input_data(..., outputs=None) and no DynamicPrompt: linked inputs arrive as None, UNIQUE_ID
#   as the node id, but the hidden PROMPT as {} (execution.py:189-190). It cannot see the graph
#   through its arguments. It does run inside CurrentNodeContext(prompt_id, node id)
#   (execution.py:276, comfy_execution/utils.py) after PromptExecutor.execute_async has called
#   reset_progress_state(prompt_id, DynamicPrompt(prompt)) (execution.py:664), whose registry
#   (comfy_execution/progress.py:325-350) holds that prompt: :func:`running_prompt`
#   reads it there, and only when the registry's prompt id is the one being keyed.
# - When the node itself runs, PROMPT is dynprompt.get_original_prompt(): the API prompt as
#   queued, the same dict running_prompt() finds.
# ---------------------------------------------------------------------------------------------


def is_link(value) -> bool:
    """ComfyUI's link in an API prompt: [source node id (str), output slot (int)]."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


def linked_outputs(prompt, node_id) -> Optional[FrozenSet[int]]:
    """The output slots of node ``node_id`` that an input of another node in ``prompt`` links to.

    ``prompt`` is ComfyUI's API prompt, ``{id: {"class_type": ..., "inputs": {name: value or
    [source id, slot]}}}``, as the hidden ``PROMPT`` input gives it. None when the prompt does not
    hold the node (no prompt: a script or a test; or a node that another node's expansion made
    while the prompt ran): then nothing is known about its consumers."""
    if not isinstance(prompt, dict) or node_id is None or str(node_id) not in prompt:
        return None
    node_id = str(node_id)
    slots = set()
    for other_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if str(other_id) == node_id or not isinstance(inputs, dict):
            continue
        for value in inputs.values():
            if is_link(value) and value[0] == node_id:
                slots.add(int(value[1]))
    return frozenset(slots)


def running_prompt() -> Optional[dict]:
    """The API prompt ComfyUI is keying or executing now, for IS_CHANGED (which gets PROMPT = {});
    None outside ComfyUI or where this ComfyUI does not expose it (see the notes above)."""
    if not IN_COMFYUI:
        return None
    try:
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        state = get_progress_state()
        if context is None or state is None or getattr(state, "prompt_id", None) != context.prompt_id:
            return None
        prompt = state.dynprompt.get_original_prompt()
    except Exception as exc:  # an older or newer ComfyUI without these: the caller falls back
        logger.debug("the running prompt is not readable here: %s", exc)
        return None
    return prompt if isinstance(prompt, dict) else None
