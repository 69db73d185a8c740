"""Reading BiRefNet and FOCUS checkpoints safely and turning them into ready-to-run models.

* :func:`read_state_dict` reads ``.safetensors``, or ``.pth/.pt/.bin/.ckpt`` with
  ``torch.load(..., weights_only=True)`` only: a pickle that needs Python code is refused, and an
  incomplete or damaged file is told apart from a foreign one before torch reads it. Zip-format
  torch files are memory-mapped (``mmap=True``): a tensor's bytes are read from disk only when
  it is used, so the optimiser state of a 5-15 GB detectron2 checkpoint (FOCUS's releases) is
  never read into memory.
* :func:`normalise_state_dict` strips ``module.`` / ``_orig_mod.`` prefixes, and a wrapper's prefix
  shared by every key (``model.``, Lightning's ``net.``...) in front of the model's keys.
* :func:`identify` tells the model family (:mod:`birefnet_core.models.families`) from the key
  names, keeps the family's inference weights only and tells the architecture from tensor shapes
  (never from file names); :func:`detect_backbone` does the latter for BiRefNet alone.
* :func:`check_tensors` refuses NaN / infinite weights.
* :func:`load_state_dict_into` loads strictly, explaining any mismatch.
* :func:`load_model` does all of it from a file, a registry name, a Hub repo id or a state dict.

Models folder (used for registry names and repo ids): ``models_dir`` argument, else the
``BIREFNET_MODELS_DIR`` environment variable, else ``~/.cache/birefnet``. Files there are named
``<registry name>.safetensors`` (see :mod:`birefnet_core.hub`).

Nothing here executes code from a weights file or from the Hub: weights are tensors, never
programs.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch

from . import hub
from .config import BACKBONES, PatchOrder
from .files import atomic_output
from .inference import parse_dtype
from .models.backbones import backbone_signature
from .models.families import FAMILIES, FOCUS_PROBES, Family, family_of_model, family_of_state_dict, get_family
from .registry import Variant, find_variant, get_variant

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "BIREFNET_MODELS_DIR"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHTS_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPERS = ("state_dict", "model")
_PROBES = {backbone_signature(name)[0] for name in BACKBONES}  # one key every BiRefNet state dict has
_WRAPPED_PROBES = _PROBES | FOCUS_PROBES  # a key that, once a wrapper's prefix is stripped, reveals a model

StateDict = Dict[str, torch.Tensor]
Source = Union[str, os.PathLike, Variant, Mapping[str, torch.Tensor]]


def default_models_dir() -> Path:
    """``$BIREFNET_MODELS_DIR``, else ``~/.cache/birefnet``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or Path.home() / ".cache" / "birefnet").expanduser()


def default_device() -> torch.device:
    """cuda if available, else mps if available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --------------------------------------------------------------------------------------- reading

def read_state_dict(path: Union[str, os.PathLike]) -> StateDict:
    """The tensors in a weights file, unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}``
    (a detectron2 checkpoint's weights are its ``"model"`` entry; its ``"optimizer"`` and other
    entries are dropped).

    Pickle-based files are read with ``weights_only=True``: one that needs Python code to load
    raises ValueError and nothing in it runs. Zip-format ones (what ``torch.save`` writes) are
    memory-mapped: the returned tensors read their bytes from the file when first used (copy-on-
    write: writing to them never changes the file), and the tensors of the dropped entries are
    never read at all.
    """
    path = Path(path)
    if not hub.is_weights_file(path):
        raise FileNotFoundError(f"BiRefNet weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        problem = hub.safetensors_problem(path)
        if problem is None:
            try:
                data: object = load_file(str(path), device="cpu")
            except Exception as err:
                problem = " ".join(str(err).split())[:200]
        if problem:
            raise ValueError(f"could not read {path} as a safetensors file: {problem}; download or export it "
                             "again, or delete it")
    elif suffix in PICKLE_SUFFIXES:
        problem = _zip_problem(path)
        if problem:
            raise ValueError(problem)
        zipped = _is_zip(path)  # only the zip format can be memory-mapped (the legacy one is read whole)
        try:
            with warnings.catch_warnings():  # torch warns of any pickle protocol but 2; the error says enough
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                data = torch.load(path, map_location="cpu", mmap=zipped, weights_only=True)
        except Exception as err:
            raise ValueError(_load_failure(path, err)) from None
    else:
        raise ValueError(f"unsupported weights file type {suffix or '(none)'!r} for {path}; "
                         f"expected one of {', '.join(WEIGHTS_SUFFIXES)}")
    return _unwrap(data, path)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _zip_problem(path: Path) -> Optional[str]:
    """Why the zip-format torch file ``path`` must not be read, told from its central directory
    alone (nothing is inflated): it lacks that directory (truncated), places data beyond its end,
    or declares far more data than it holds (torch stores tensors uncompressed: only a crafted
    file does). None when it looks sound, or is a legacy pickle (no zip)."""
    if not _is_zip(path):
        return None
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except Exception as err:  # zipfile raises several kinds on a damaged directory
        return (f"{path} is truncated or damaged ({size:,} bytes; its zip directory is unreadable: {err}); "
                "download or save it again")
    end = max((e.header_offset + e.compress_size for e in entries), default=0)
    if end > size:
        return (f"{path} is truncated or damaged: its zip directory places data up to byte {end:,} of a {size:,}-byte "
                "file; download or save it again")
    declared = sum(e.file_size for e in entries)
    if declared > max(4 * size, size + 64 * 2**20):
        return (f"{path} is corrupt or crafted: it declares {declared:,} bytes of data in a {size:,}-byte file; "
                "refusing to read it")
    return None


def _load_failure(path: Path, err: Exception) -> str:
    """One line for anything ``torch.load(path, weights_only=True)`` raised."""
    text = " ".join(str(err).split())
    if "GLOBAL" in text:  # the pickle names a Python class or function: running it could run any code
        return (f"{path} contains pickled Python objects, not just tensors; refusing to run code from a weights "
                "file; convert it to .safetensors (or re-save only the state dict) in an environment you trust")
    if isinstance(err, EOFError) or "EOF" in text or "truncated" in text:
        return (f"{path} is truncated or incomplete ({path.stat().st_size:,} bytes); download or save it again")
    detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    detail = (detail.group(1) if detail else text.split(". ")[0])[:160] or type(err).__name__
    return (f"{path} is not a PyTorch checkpoint ({detail}); check that it is the right file, or save its state "
            "dict again with torch.save, or as .safetensors")


def _unwrap(data: object, path: Path) -> StateDict:
    for _ in range(4):
        if not isinstance(data, Mapping) or all(isinstance(v, torch.Tensor) for v in data.values()):
            break
        inner = next((data[k] for k in _WRAPPERS if isinstance(data.get(k), Mapping)), None)
        if inner is None:
            break
        data = inner
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        kind = type(data).__name__
        keys = list(data)[:8] if isinstance(data, Mapping) else []
        raise ValueError(f"{path} does not hold a state dict of tensors (found a {kind}"
                         + (f" with keys {keys}" if keys else "") + ")")
    return dict(data)


def _header_tensors(path: Union[str, os.PathLike]) -> StateDict:
    """The tensors of a ``.safetensors`` file as meta tensors of their shapes (header only)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def peek_backbone(path: Union[str, os.PathLike]) -> Optional[str]:
    """The backbone of a ``.safetensors`` BiRefNet checkpoint read from its header alone (no tensor
    data is loaded), or None when the file is not a BiRefNet checkpoint or not safetensors."""
    if not str(path).lower().endswith(".safetensors"):
        return None
    try:
        return detect_backbone(_header_tensors(path))
    except Exception:
        return None


def peek_architecture(path: Union[str, os.PathLike]) -> Optional[Tuple[Family, Any]]:
    """The family and architecture (see :func:`identify`) of a ``.safetensors`` checkpoint of any
    family, read from its header alone (no tensor data is loaded), or None when the file is not
    a checkpoint of a known family, not sound, or not safetensors."""
    if not str(path).lower().endswith(".safetensors"):
        return None
    try:
        found = identify(_header_tensors(path))
    except Exception:
        return None
    return found.family, found.architecture


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """The string metadata of a ``.safetensors`` file's header ({} for other files or none)."""
    if not str(path).lower().endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def weights_metadata(family: Family, architecture: Any,
                     patch_order: Union[None, str, PatchOrder] = None) -> Dict[str, str]:
    """The header metadata :func:`save_weights` and ``python -m birefnet_core convert`` record:
    ``birefnet.family``, ``birefnet.architecture`` (a name, or "custom" with the configuration as
    JSON in ``birefnet.config``), and for BiRefNet ``birefnet.backbone`` and, when known,
    ``birefnet.patch_order``."""
    meta = {"format": "pt", "birefnet.family": family.name}
    if isinstance(architecture, str):
        meta["birefnet.architecture"] = architecture
    else:
        import dataclasses
        import json

        meta["birefnet.architecture"] = "custom"
        if dataclasses.is_dataclass(architecture):
            meta["birefnet.config"] = json.dumps(dataclasses.asdict(architecture), sort_keys=True)
    if family.name == "birefnet":
        meta["birefnet.backbone"] = str(architecture)
        if patch_order is not None:
            meta["birefnet.patch_order"] = PatchOrder.parse(patch_order).value
    return meta


def save_weights(model: torch.nn.Module, path: Union[str, os.PathLike], *,
                 metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write a model's weights as ``.safetensors`` with the official key layout (wrappers such
    as DDP's ``module.`` and torch.compile's ``_orig_mod.`` stripped), recording its family and
    architecture (a BiRefNet's backbone and patch order) in the header so that
    :func:`load_model` needs no guess (see :func:`weights_metadata`). Written to a temporary
    name first and renamed, so an interruption never leaves a half-written file."""
    from safetensors.torch import save_file

    path = Path(path)
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in normalise_state_dict(inner.state_dict()).items()}
    found = identify(sd)
    meta = weights_metadata(found.family, found.architecture, getattr(inner, "patch_order", None))
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as partial:
        save_file(sd, str(partial), metadata=meta)
    return path


def normalise_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """``sd`` with leading ``module.`` and ``_orig_mod.`` (any order, repeated) stripped from every
    key, then, when no key is a BiRefNet backbone key (``bb.patch_embed.proj.weight`` /
    ``bb.patch_embed1.proj.weight``) or a FOCUS one (``backbone.pos_embed``,
    ``sem_seg_head.predictor.query_feat.weight``) but one appears once the first one to three
    dotted parts shared by every key are stripped, those parts (a wrapper such as Lightning's
    ``model.``).
    Tensors are kept as they are (any dtype); nothing is dropped."""
    out: StateDict = {}
    for key, value in sd.items():
        name = key
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise ValueError(f"state dict has two tensors named {name!r} once prefixes are stripped")
        out[name] = value
    return _strip_wrapper(out)


def _strip_wrapper(sd: StateDict) -> StateDict:
    if not sd or _WRAPPED_PROBES & sd.keys():
        return sd
    first = next(iter(sd)).split(".")
    for depth in range(1, min(4, len(first))):
        prefix = ".".join(first[:depth]) + "."
        if not all(key.startswith(prefix) for key in sd):
            break
        if any(key[len(prefix):] in _WRAPPED_PROBES for key in sd):
            logger.info("stripped the prefix %r shared by all %d tensor names (a training wrapper's)", prefix, len(sd))
            return {key[len(prefix):]: value for key, value in sd.items()}
    return sd


def check_tensors(sd: Mapping[str, torch.Tensor], source: Union[str, os.PathLike]) -> None:
    """Raise ValueError naming the first floating tensor of ``sd`` holding NaN or infinite values
    (a corrupt checkpoint: the model would output NaN); ``source`` (a file) is named too. One
    ``isfinite`` pass per tensor."""
    for key, value in sd.items():
        if value.is_floating_point() and not value.is_meta and not bool(torch.isfinite(value).all()):
            count = int(value.numel() - torch.isfinite(value).sum())
            raise ValueError(f"{source}: tensor {key!r} has {count} NaN/infinite values; the checkpoint is corrupt "
                             "(re-download or re-export it)")


# ------------------------------------------------------------------------------------- detection

def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)})


#: the deformable ASPP modules (``dec_att``) of a BiRefNet, each with three branches since 2024-05-02
_ASPP_PREFIXES = ("squeeze_module.0.dec_att.aspp_deforms.",
                  *(f"decoder.decoder_block{i}.dec_att.aspp_deforms." for i in (4, 3, 2, 1)))


def older_architecture(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Why the BiRefNet state dict ``sd`` (names normalised) holds the architecture of the official
    code before 2024-05-02, in one line, else None.

    That day (github.com/ZhengPeng7/BiRefNet commit b0c7031, "Fix some conflicts in model details
    with the description in paper, corresponding ckpts need to be updated!") the decoder gained the
    image patches at its deepest stage (``decoder.ipt_blk5``; ``decoder_block4`` takes their
    channels too), the gradient attention at stage 4 (``decoder.gdt_convs_4``,
    ``gdt_convs_pred_4``, ``gdt_convs_attn_4``), and each deformable ASPP three parallel branches
    of 1x1, 3x3 and 7x7 kernels (``aspp_deforms.0-2``) where it had one 3x3 branch. Checkpoints of
    the earlier code (``BiRefNet-ep480.pth``, ``BiRefNet-DIS_ep580.pth``; other packs keep a
    separate "old" copy of the code for them, and run them with another input normalisation)
    would not load strictly into this network, and loading them partially would give wrong masks.
    Only decoder tensors are looked at: a state dict without a decoder is not judged here."""
    differences = []
    if "decoder.ipt_blk4.conv1.weight" in sd and "decoder.ipt_blk5.conv1.weight" not in sd:
        differences.append("no image patches at the deepest decoder stage (decoder.ipt_blk5)")
    if "decoder.gdt_convs_3.0.weight" in sd and "decoder.gdt_convs_4.0.weight" not in sd:
        differences.append("no gradient attention at stage 4 (decoder.gdt_convs_4)")
    for prefix in _ASPP_PREFIXES:
        branches = _count_blocks(sd, prefix)
        if branches and branches != 3:
            weight = sd.get(prefix + "0.atrous_conv.regular_conv.weight")
            kernel = "x".join(str(int(n)) for n in weight.shape[-2:]) + " " if weight is not None else ""
            differences.append(f"{branches} {kernel}deformable ASPP branch{'es' if branches > 1 else ''} where the "
                               f"current code has three (1x1, 3x3, 7x7): {prefix[:-1]}")
            break
    if not differences:
        return None
    return ("this BiRefNet checkpoint has the decoder of the official code before 2024-05-02 ("
            + "; ".join(differences) + "), like BiRefNet-ep480.pth or BiRefNet-DIS_ep580.pth; this pack runs only "
            "the current architecture (every checkpoint on the Hugging Face Hub has it, BiRefNet-legacy included), "
            "so it does not load this one: use a released checkpoint instead, e.g. BiRefNet-DIS5K (trained on "
            "DIS5K) or BiRefNet (general use)")


def detect_backbone(sd: Mapping[str, torch.Tensor]) -> str:
    """The backbone name (a key of :data:`~birefnet_core.config.BACKBONES`) from tensor shapes.

    Raises ValueError describing what the checkpoint looks like when it is not a BiRefNet one, or
    naming what differs when it is a BiRefNet of the architecture before 2024-05-02
    (:func:`older_architecture`), which is never loaded into this network.
    """
    sd = normalise_state_dict(sd)
    found = {}  # probe key -> (width, stage-3 blocks) seen in this state dict
    for name in BACKBONES:
        probe, stage3, width, blocks = backbone_signature(name)
        if probe in sd:
            found[probe] = (int(sd[probe].shape[0]), _count_blocks(sd, stage3))
            if found[probe] == (width, blocks):
                older = older_architecture(sd)
                if older is not None:
                    raise ValueError(older)
                return name
    if found:
        (probe, (width, blocks)), = found.items()
        known = ", ".join(f"{n} {backbone_signature(n)[2]}/{backbone_signature(n)[3]}" for n in BACKBONES
                          if backbone_signature(n)[0] == probe)
        raise ValueError(f"unsupported BiRefNet backbone: embedding width {width}, {blocks} blocks in stage 3 "
                         f"(supported: {known})")
    raise ValueError(_describe_foreign(sd))


def _describe_foreign(sd: Mapping[str, torch.Tensor], any_family: bool = False) -> str:
    """Why ``sd`` is not a checkpoint we run, in one line: not BiRefNet (``any_family`` False,
    :func:`detect_backbone`'s wording), or of no family at all (True: :func:`identify`'s)."""
    keys = list(sd)
    names = " or ".join(f.title for f in FAMILIES) if any_family else "BiRefNet"

    def starts(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    other = None if any_family else family_of_state_dict(sd)
    if other is not None and other.name != "birefnet":
        what = f"a {other.title} checkpoint"
    elif starts("sem_seg_head.", "criterion.") and starts("backbone."):
        what = _describe_detectron2(sd)
    elif starts("roi_heads.", "proposal_generator.") and starts("backbone."):
        what = "a detectron2 detection checkpoint (e.g. Mask R-CNN / Faster R-CNN)"
    elif starts("model.diffusion_model.", "diffusion_model.", "input_blocks.", "double_blocks.", "joint_blocks."):
        what = "a Stable Diffusion / UNet (image generation) checkpoint"
    elif starts("first_stage_model.", "encoder.down", "decoder.up"):
        what = "a VAE (autoencoder) checkpoint"
    elif starts("cond_stage_model.", "conditioner.", "text_model.", "text_encoders."):
        what = "a text encoder (CLIP / T5) checkpoint"
    elif any("lora" in k.lower() for k in keys):
        what = "a LoRA"
    elif starts("patch_embed.proj.", "layers.0.blocks."):
        what = "a bare Swin Transformer backbone (e.g. ImageNet-pretrained), not a complete BiRefNet"
    elif starts("patch_embed1.proj."):
        what = "a bare PVT-v2 backbone (e.g. ImageNet-pretrained), not a complete BiRefNet"
    elif any_family:
        return (f"not a {names} checkpoint: none of its {len(keys)} tensors is a BiRefNet backbone weight "
                f"(bb.patch_embed.proj.weight or bb.patch_embed1.proj.weight) or FOCUS's backbone.pos_embed with "
                f"backbone.edge.* or sem_seg_head.predictor.query_feat.weight; first keys: {keys[:5]}")
    else:
        return (f"not a BiRefNet checkpoint: none of its {len(keys)} tensors is a BiRefNet backbone weight "
                f"(bb.patch_embed.proj.weight or bb.patch_embed1.proj.weight); first keys: {keys[:5]}")
    return (f"not a {names} checkpoint: this looks like {what}, not {names} "
            f"({len(keys)} tensors, first keys: {keys[:3]})")


def _describe_detectron2(sd: Mapping[str, torch.Tensor]) -> str:
    """A detectron2 segmentation checkpoint (Mask2Former / MaskFormer layout) that is not FOCUS."""
    keys = list(sd)

    def starts(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if starts("backbone.layers.", "backbone.patch_embed.", "backbone.absolute_pos_embed"):
        backbone = "a Swin Transformer backbone"
    elif starts("backbone.stem.", "backbone.res2.", "backbone.bottom_up."):
        backbone = "a ResNet backbone"
    elif starts("backbone.blocks.", "backbone.pos_embed", "backbone.net."):
        backbone = "a ViT backbone (without FOCUS's edge branch)"
    else:
        backbone = f"a backbone starting {next(k for k in keys if k.startswith('backbone.'))!r}"
    queries = sd.get("sem_seg_head.predictor.query_feat.weight")
    counted = f", {int(queries.shape[0])} queries" if queries is not None and queries.dim() == 2 else ""
    return f"a detectron2 Mask2Former / MaskFormer checkpoint with {backbone}{counted}"


class Identified(NamedTuple):
    """What :func:`identify` found in a state dict."""

    family: Family
    architecture: Any  # what ``family.build`` takes: a backbone name, a FOCUS configuration name or object
    state_dict: StateDict  # the inference weights, normalised names, the caller's tensors (not copies)


def identify(sd: Mapping[str, torch.Tensor]) -> Identified:
    """The family of ``sd`` (from its key names), its inference weights (names normalised, then
    the family's training-only tensors dropped and legacy names renamed; tensors not copied nor
    read) and the architecture they fit (from their shapes alone: meta tensors do).

    Raises ValueError in one line: ``"not a BiRefNet or FOCUS checkpoint: this looks like ..."``
    when no family claims the keys, or the family's reason why the shapes fit none of its
    architectures.
    """
    sd = normalise_state_dict(sd)
    family = family_of_state_dict(sd)
    if family is None:
        raise ValueError(_describe_foreign(sd, any_family=True))
    weights = family.inference_weights(sd)
    if family.name == "birefnet":
        return Identified(family, family.recognise(weights), weights)  # its messages, exactly as they were
    try:
        architecture = family.recognise(weights)
    except ValueError as err:
        if family.name == "focus" and not any(key.startswith("backbone.edge.") for key in weights):
            # a ViT Mask2Former has FOCUS's probe keys, but not its edge branch: another model
            raise ValueError(_describe_foreign(sd, any_family=True)) from None
        detail = " ".join(str(err).split())
        raise ValueError(f"not a usable {family.title} checkpoint: {detail}") from None
    return Identified(family, architecture, weights)


# --------------------------------------------------------------------------------------- loading

def load_state_dict_into(model: torch.nn.Module, sd: Mapping[str, torch.Tensor],
                         source: Optional[Union[str, os.PathLike]] = None) -> torch.nn.Module:
    """Strictly load ``sd`` (prefixes stripped) into ``model``, casting floating tensors to the
    model's dtypes. A model on the ``meta`` device takes the tensors over (``assign=True``).

    Raises ValueError (naming ``source``, the file, when given) with the missing / unexpected /
    reshaped keys and a hint on mismatch, or with the tensors stored as integers where the model's
    are floating point.
    """
    sd = normalise_state_dict(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    reshaped = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    what = str(source) if source is not None else "checkpoint"
    if missing or unexpected or reshaped:
        raise ValueError(f"{what} does not fit the model: " + _mismatch_message(model, sd, missing, unexpected,
                                                                                reshaped))
    integral = [k for k in own if own[k].is_floating_point() and not sd[k].is_floating_point()]
    if integral:
        key = integral[0]
        raise ValueError(f"{what}: tensor {key!r} is stored as {sd[key].dtype} where the model's is {own[key].dtype} "
                         f"({len(integral)} such tensors): these weights are not usable; export the checkpoint "
                         "again with floating-point weights")
    cast = {k: v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v
            for k, v in sd.items()}
    model.load_state_dict(cast, strict=True, assign=any(t.is_meta for t in own.values()))
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors not in the state dict stayed on the meta device: {left[:4]}")
    return model


def _mismatch_message(model: torch.nn.Module, sd: StateDict, missing: List[str], unexpected: List[str],
                      reshaped: List[str]) -> str:
    parts = [f"{len(missing)} missing keys {missing[:4]}, "
             f"{len(unexpected)} unexpected keys {unexpected[:4]}"]
    if reshaped:
        shapes = [f"{k}: {list(sd[k].shape)} vs {list(model.state_dict()[k].shape)}" for k in reshaped[:3]]
        parts.append(f"{len(reshaped)} keys with other shapes (checkpoint vs model) {shapes}")
    family = family_of_model(model)
    if family.name == "birefnet":
        built = getattr(getattr(model, "config", None), "backbone", None)
        try:
            found: Optional[str] = detect_backbone(sd)
        except ValueError as err:
            found = None
            parts.append(str(err))
        if found and built and found != built:
            parts.append(f"the checkpoint's backbone is {found} but the model was built for {built}")
    else:
        try:
            other = identify(sd)
        except ValueError as err:
            parts.append(" ".join(str(err).split()))
        else:
            built_for = family.recognise(model.state_dict())  # the model's own architecture, as a file's is told
            if other.family is not family:
                parts.append(f"the checkpoint is a {other.family.title} one but the model is a {family.title}")
            elif other.architecture != built_for:
                parts.append(f"the checkpoint is a {family.describe(other.architecture)} "
                             f"{family.title} but the model was built for {family.describe(built_for)}")
    if not any(k.endswith("running_mean") for k in sd) and any(k.endswith("running_mean") for k in missing):
        parts.append("the checkpoint has no BatchNorm statistics: it was trained with batch size 1 "
                     "(the official code then drops BatchNorm), which is not supported")
    return "; ".join(parts)


def _placed(t: torch.Tensor, device: torch.device, dtype: torch.dtype, *, copy: bool) -> torch.Tensor:
    """``t`` on ``device`` (floating tensors in ``dtype``) in memory of its own: a caller's tensors
    are never aliased, and CPU tensors are 64-byte aligned (safetensors hands out unaligned ones,
    which CPU kernels run through other code paths)."""
    out = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    if (copy and out.data_ptr() == t.data_ptr()) or (out.device.type == "cpu" and out.data_ptr() % 64):
        out = out.clone()
    return out


def _is_plain_name(text: str) -> bool:
    return bool(text) and text not in (".", "..") and not any(c in text for c in "/\\:\0")


def check_model_name(text: str) -> None:
    """Raise ValueError when ``text`` (a model name or path) could not name any file: a NUL or
    other control character, a part longer than 255 bytes, or a lone '.' or '..'."""
    problem = None
    if any(ord(c) < 32 for c in text):
        problem = "it contains a NUL or another control character"
    elif text.strip() in (".", ".."):
        problem = "'.' and '..' are folders, not models"
    elif any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in re.split(r"[/\\]", text)):
        problem = "a file name (or a folder name in a path) is at most 255 bytes long"
    if problem:
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise ValueError(f"refusing model name {shown!r}: {problem}")


def _registry_file(variant: Variant, folder: Path, token: Optional[str], progress: hub.Progress) -> Path:
    """The weights file of registry entry ``variant``: ``<folder>/<name>.safetensors`` when it is
    complete; else a complete copy other tools keep in ComfyUI's models folder when ``folder`` is
    ComfyUI's ``models/birefnet`` (:func:`birefnet_core.hub.find_copy`, used where it is); else
    what :func:`birefnet_core.hub.download` gets (the Hugging Face cache, then the Hub)."""
    own = hub.local_path(variant, folder)
    if hub.is_weights_file(own) and hub.safetensors_problem(own) is None:
        return own
    root = hub.comfy_models_root(folder)
    copy = hub.find_copy(variant, [root]) if root is not None else None
    if copy is not None:
        logger.info("%s: using the copy in %s (another tool's file, used where it is)", variant.name, copy)
        return copy
    return hub.download(variant, folder, token=token, progress=progress)


def _resolve(source: Source, models_dir: Optional[Union[str, os.PathLike]], token: Optional[str],
             progress: hub.Progress = True) -> Tuple[Optional[Path], Optional[Variant]]:
    """The weights file for ``source`` and the registry entry it was asked for by (if any)."""
    folder = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    if isinstance(source, Variant):
        return _registry_file(source, folder, token, progress), source
    if isinstance(source, (str, os.PathLike)):
        check_model_name(str(source))
    if isinstance(source, os.PathLike):
        path = Path(source).expanduser()
    elif isinstance(source, str):
        text = source.strip()
        variant = find_variant(text)
        if variant is not None:
            return _registry_file(variant, folder, token, progress), variant
        relative = not os.path.isabs(os.path.expanduser(text))
        if relative and ".." in text.replace("\\", "/").split("/"):
            raise ValueError(f"refusing model source {text!r}: '..' in a name or relative path could leave the "
                             "models folder; pass a pathlib.Path (or an absolute path) to load a file from elsewhere")
        has_suffix = text.lower().endswith(WEIGHTS_SUFFIXES)
        if not relative:
            path = Path(text).expanduser()
        elif _is_plain_name(text):  # a file in the models folder, else (with a suffix) in the working directory
            path = folder / (text if has_suffix else f"{text}.safetensors")
            if not hub.is_weights_file(path):
                if not has_suffix:
                    get_variant(text)  # raises ValueError listing close matches
                path = Path(text)
        elif has_suffix:
            path = Path(text).expanduser()
        elif hub.is_repo_id(text):
            return hub.download(text, folder, token=token, progress=progress), None
        else:
            raise ValueError(f"refusing model name {text!r}: a name may not contain path separators; it is looked "
                             f"up inside the models folder {folder}; pass a pathlib.Path to load a file elsewhere")
    else:
        raise TypeError(f"cannot load a BiRefNet model from a {type(source).__name__}")
    if not hub.is_weights_file(path):
        raise FileNotFoundError(f"BiRefNet weights file not found: {path}")
    return path, None


def load_model(source: Source, *, device: Union[None, str, torch.device] = None,
               dtype: Union[None, str, torch.dtype] = None, patch_order: Union[None, str, PatchOrder] = None,
               models_dir: Optional[Union[str, os.PathLike]] = None, token: Optional[str] = None,
               progress: hub.Progress = True, variant: Optional[Variant] = None) -> torch.nn.Module:
    """A model (BiRefNet or FOCUS, told from the weights) with loaded weights, in eval mode, on
    ``device`` in ``dtype``.

    ``source``:
      * a registry name or its repo id (``"BiRefNet_lite"``, ``"ZhengPeng7/BiRefNet_HR"``,
        ``"focus_large_sd"``) or a :class:`~birefnet_core.registry.Variant`:
        ``<models_dir>/<name>.safetensors``, downloaded there first if missing (see
        :func:`birefnet_core.hub.download`; a FOCUS release is reduced to its inference weights);
      * any other Hub repo id ``"owner/name"``: its ``model.safetensors``, downloaded likewise;
      * another plain name (no path separators): ``<models_dir>/<name>`` or
        ``<models_dir>/<name>.safetensors``; with a weights suffix and not there, that file in the
        working directory;
      * a ``pathlib.Path``, an absolute path, or a relative path ending in a weights suffix
        (``.safetensors .pth .pt .bin .ckpt``): that file (a detectron2 checkpoint too: its
        ``"model"`` entry is read, memory-mapped, and its optimiser state never is). Strings with
        '..' components, and other strings with separators, are refused, so a name never reads
        outside the folder;
      * a mapping of tensors (a state dict).

    The family comes from the key names and the architecture (BiRefNet backbone, FOCUS
    configuration) from the tensor shapes; training-only tensors (FOCUS's CLIP refiner...) are
    dropped first. A registry entry whose file holds another family's or architecture's weights
    is an error, and so is a file named like a registry entry of the other family.

    ``device``: default cuda, else mps, else cpu. ``dtype``: a torch dtype or "float32"/
    "float16"/"bfloat16"; None or "auto" means the device's default
    (:func:`birefnet_core.inference.auto_dtype`: bfloat16 or float16 on CUDA; on CPU bfloat16
    where the CPU has it natively, else float32; float32 elsewhere).
    ``patch_order`` (BiRefNet only; FOCUS has no image patches and ignores it, with a warning
    when one is given): "legacy"/"current", or None/"auto" for the order recorded in the file,
    else the registry entry's (also for a file named after a registry entry), else legacy.
    ``models_dir``: default ``$BIREFNET_MODELS_DIR``, else ``~/.cache/birefnet``; when it is
    ComfyUI's ``models/birefnet``, a registry model not there yet is first looked for among the files
    ComfyUI's own nodes and other packs keep (:func:`birefnet_core.hub.find_copy`). ``token``: Hub
    token for gated repos. ``progress``: download progress (see :func:`birefnet_core.hub.download`).
    ``variant``: the registry entry a file or state dict holds when its name does not say so (a
    copy another tool keeps under its own name): its architecture is checked and its patch order
    used, as for a registry name; a ``source`` that names another entry is an error.

    The model gets ``model.variant`` (the registry entry or None) and ``model.source`` (str).
    """
    target_device = torch.device(device) if device is not None else default_device()
    target_dtype = parse_dtype(dtype, target_device)  # argument errors before any file is read
    _choose_patch_order(patch_order, None, None)
    if variant is not None and not isinstance(variant, Variant):
        raise TypeError(f"variant must be a registry entry (birefnet_core.registry.Variant), not "
                        f"{type(variant).__name__}")
    given = variant
    asked = source if isinstance(source, Variant) else find_variant(source) if isinstance(source, str) else None
    if given is not None and asked is not None and asked is not given:
        raise ValueError(f"model {asked.name} was asked for with variant={given.name}: give one of them")
    in_memory = isinstance(source, Mapping)
    if in_memory:
        path, variant = None, None
        found = identify(source)
    else:
        path, variant = _resolve(source, models_dir, token, progress)
        found = identify(read_state_dict(path))  # the file's other tensors (optimiser...) are dropped here
    variant = variant or given
    family, architecture, sd = found
    del found
    check_tensors(sd, path or "the state dict")
    if variant is not None:
        _check_variant(variant, family, architecture, path)
    named = None
    if variant is None and path is not None:
        named = find_variant(path.stem)
        if named is not None and named.family != family.name:
            raise ValueError(f"{path} is named like registry model {named.name} (a {_title(named.family)} "
                             f"{named.backbone}) but holds a {family.title} checkpoint "
                             f"({family.describe(architecture)}): rename the file")
        if named is not None and named.backbone != architecture:
            logger.warning("%s is named like registry model %s (%s) but holds a %s %s; ignoring the name",
                           path, named.name, named.backbone, family.describe(architecture),
                           family.title)
            named = None
    options: Dict[str, Any] = {}
    if family.name == "birefnet":
        recorded = read_metadata(path).get("birefnet.patch_order") if path is not None else None
        order, why = _choose_patch_order(patch_order, variant, named, recorded)
        logger.info("BiRefNet %s from %s: patch order %s (%s)", architecture, path or "a state dict", order.value,
                    why)
        options["patch_order"] = order
    else:
        if patch_order is not None and str(getattr(patch_order, "value", patch_order)).lower() != "auto":
            logger.warning("patch_order %r ignored: %s models have no image patches",
                           str(getattr(patch_order, "value", patch_order)), family.title)
        logger.info("%s %s from %s (%d inference tensors)", family.title, family.describe(architecture),
                    path or "a state dict", len(sd))

    # build without memory on 'meta', then take over the tensors already moved to device and dtype;
    # tensors read from a torch file are copied out of its memory map (the model never keeps the file)
    copy = in_memory or (path is not None and path.suffix.lower() in PICKLE_SUFFIXES)
    for key in list(sd):  # one at a time, so each original is freed as soon as it is replaced
        sd[key] = _placed(sd[key], target_device, target_dtype, copy=copy)
    with torch.device("meta"):
        model = family.build(architecture, **options).to(dtype=target_dtype)
    load_state_dict_into(model, sd, path)
    model = model.to(device=target_device).eval()
    model.variant = variant or named
    model.source = str(path) if path is not None else "<state dict>"
    return model


def _title(family_name: str) -> str:
    return get_family(family_name).title


def _check_variant(variant: Variant, family: Family, architecture: Any, path: Union[None, str, Path]) -> None:
    """Refuse the file of registry entry ``variant`` when it holds another family or architecture."""
    path = path if path is not None else "the state dict"
    if variant.family != family.name:
        raise ValueError(f"{path} should hold model '{variant.name}' (a {_title(variant.family)} {variant.backbone}) "
                         f"but its tensors are a {family.title} checkpoint "
                         f"({family.describe(architecture)}): the file is misnamed or corrupt; delete or "
                         "rename it")
    if variant.backbone != architecture:
        what = "backbone" if family.name == "birefnet" else "architecture"
        raise ValueError(f"{path} should hold model '{variant.name}' ({what} {variant.backbone}) but its tensors "
                         f"are a {family.describe(architecture)} {family.title}: the file is misnamed "
                         "or corrupt; delete or rename it")


def _choose_patch_order(requested: Union[None, str, PatchOrder], variant: Optional[Variant],
                        named: Optional[Variant], recorded: Optional[str] = None) -> Tuple[PatchOrder, str]:
    if requested is not None and str(getattr(requested, "value", requested)).lower() != "auto":
        return PatchOrder.parse(requested), "requested"
    if recorded:
        try:
            return PatchOrder.parse(recorded), "recorded in the file"
        except ValueError:
            logger.warning("ignoring unknown patch order %r recorded in the checkpoint", recorded)
    if variant is not None:
        return variant.patch_order, f"registry entry {variant.name}"
    if named is not None:
        return named.patch_order, f"the file name matches registry entry {named.name}"
    return PatchOrder.LEGACY, ("default for an unknown checkpoint: most released checkpoints predate the "
                               "2024-11-05 change; choose patch order 'current' (loader widget, --patch-order, "
                               "patch_order=) for newer ones")


__all__ = ["MODELS_DIR_ENV", "WEIGHTS_SUFFIXES", "Identified", "check_model_name", "check_tensors", "default_device",
           "default_models_dir", "detect_backbone", "identify", "older_architecture", "peek_architecture",
           "peek_backbone", "load_model", "load_state_dict_into", "normalise_state_dict", "read_metadata",
           "read_state_dict", "save_weights", "weights_metadata"]
