"""The model families the pack runs, in one table.

A family says how its checkpoints are recognised from tensor shapes (never from file names), how
its network is built, how a file's state dict is reduced to the inference weights, and which
pipeline runs it (resize, normalise, network, post-processing; see :mod:`birefnet_core.inference`).
Adding a third family means adding one :class:`Family` to :data:`FAMILIES`.

An *architecture* is what the family's ``build`` takes: a BiRefNet backbone name
(``"swin_v1_l"``), a FOCUS configuration name (``"focus_dinov2_l"``) or a FOCUS configuration
object (checkpoints of other sizes, e.g. the tests' tiny ones).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str  # "birefnet", "focus": the value of a built model's ``family`` attribute
    title: str  # for messages and UIs
    architectures: Callable[[], Tuple[str, ...]]  # the names ``build`` accepts
    owns: Callable[[Mapping[str, torch.Tensor]], bool]  # cheap: does this state dict claim to be ours?
    recognise: Callable[[Mapping[str, torch.Tensor]], Any]  # architecture from shapes; ValueError if broken
    build: Callable[..., nn.Module]  # (architecture, **options) -> model in eval mode, random weights
    inference_weights: Callable[[StateDict], StateDict]  # drop training-only tensors, rename legacy keys
    pipeline: str  # "module:Class" of the Predictor pipeline, the module relative to this package

    def pipeline_class(self) -> type:
        # relative: the pack loads its own copy of the core under another package name
        module, _, name = self.pipeline.partition(":")
        return getattr(importlib.import_module(module, package=__package__), name)

    def describe(self, architecture: Any) -> str:
        """A short name: the architecture's name, else (a configuration of another size)
        "custom <family>" with its main sizes."""
        if isinstance(architecture, str):
            return architecture
        if getattr(architecture, "name", ""):
            return architecture.name
        sizes = [f"{field} {getattr(architecture, field)}" for field in ("width", "depth") if hasattr(architecture, field)]
        return f"custom {self.name} ({', '.join(sizes)})" if sizes else str(architecture)


# ------------------------------------------------------------------------------------ BiRefNet

def _birefnet_architectures() -> Tuple[str, ...]:
    from ..config import BACKBONES

    return tuple(BACKBONES)


def _birefnet_probes() -> frozenset:
    from ..config import BACKBONES
    from .backbones import backbone_signature

    return frozenset(backbone_signature(name)[0] for name in BACKBONES)


def _birefnet_owns(sd: Mapping[str, torch.Tensor]) -> bool:
    return bool(_birefnet_probes() & sd.keys())


def _birefnet_recognise(sd: Mapping[str, torch.Tensor]) -> str:
    from ..checkpoint import detect_backbone

    return detect_backbone(sd)


def _birefnet_build(architecture: str, **options) -> nn.Module:
    from ..config import PatchOrder
    from .birefnet import build_model

    # patch_order and drop_path_rate; anything else is a TypeError, never silently ignored
    return build_model(architecture, **{**options, "patch_order": options.get("patch_order") or PatchOrder.CURRENT})


# --------------------------------------------------------------------------------------- FOCUS

FOCUS_PROBES = frozenset({"backbone.pos_embed", "sem_seg_head.predictor.query_feat.weight"})


def _focus_architectures() -> Tuple[str, ...]:
    from .focus import FOCUS_CONFIGS

    return tuple(FOCUS_CONFIGS)


def _focus_owns(sd: Mapping[str, torch.Tensor]) -> bool:
    # the edge branch is what sets FOCUS apart from other detectron2 ViT Mask2Formers
    return "backbone.pos_embed" in sd and any(k.startswith("backbone.edge.") for k in sd)


def _focus_recognise(sd: Mapping[str, torch.Tensor]) -> Any:
    from .focus import FOCUS_CONFIGS, config_from_state_dict

    config = config_from_state_dict(sd)
    return next((name for name, preset in FOCUS_CONFIGS.items() if preset == config), config)


def _focus_build(architecture: Any, **options) -> nn.Module:
    from .focus import build_focus

    if options:
        raise TypeError(f"FOCUS models take no build options, got {', '.join(sorted(options))}")
    return build_focus(architecture)


def _focus_inference_weights(sd: StateDict) -> StateDict:
    from .focus.checkpoint import inference_state_dict

    return inference_state_dict(sd)


FAMILIES: Tuple[Family, ...] = (
    Family("birefnet", "BiRefNet", _birefnet_architectures, _birefnet_owns, _birefnet_recognise, _birefnet_build,
           lambda sd: sd, "..inference:BiRefNetPipeline"),
    Family("focus", "FOCUS", _focus_architectures, _focus_owns, _focus_recognise, _focus_build,
           _focus_inference_weights, "..inference:FocusPipeline"),
)


def get_family(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def family_of_model(model: nn.Module) -> Family:
    """The family of a built model (its ``family`` attribute; BiRefNet when it has none)."""
    return get_family(getattr(model, "family", "birefnet"))


def family_of_architecture(architecture: Any) -> Optional[Family]:
    if not isinstance(architecture, str):
        return next((f for f in FAMILIES if f.name == getattr(architecture, "family", None)), None)
    return next((f for f in FAMILIES if architecture in f.architectures()), None)


def family_of_state_dict(sd: Mapping[str, torch.Tensor]) -> Optional[Family]:
    """The family whose keys ``sd`` has (not yet checked for shapes), or None."""
    return next((f for f in FAMILIES if f.owns(sd)), None)


def describe_model(model: nn.Module) -> str:
    """One line naming a built model: family, architecture, and what else decides its output."""
    family = family_of_model(model)
    variant = getattr(model, "variant", None)
    named = f" ({variant.name})" if variant is not None else ""
    if family.name == "birefnet":
        return f"BiRefNet {model.config.backbone}{named}, patch order {model.patch_order.value}"
    task = f", task {variant.task}" if variant is not None and getattr(variant, "task", "") else ""
    return f"{family.title} {family.describe(model.config)}{named}{task}"


def architecture_names() -> Tuple[str, ...]:
    return tuple(name for family in FAMILIES for name in family.architectures())


def build_model(architecture: Any = "swin_v1_l", **options) -> nn.Module:
    """A randomly initialised model in eval mode: ``architecture`` is a BiRefNet backbone name
    (``"swin_v1_l"``; options ``patch_order`` and ``drop_path_rate``, the backbone's stochastic
    depth in training) or a FOCUS configuration (``"focus_dinov2_l"``, ``"focus_dinov2_g"`` or a
    ``FocusConfig``; no options). An unknown option is a TypeError."""
    family = family_of_architecture(architecture)
    if family is None:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(architecture_names())}")
    return family.build(architecture, **options)


__all__ = ["FAMILIES", "FOCUS_PROBES", "Family", "architecture_names", "build_model", "describe_model", "family_of_architecture",
           "family_of_model", "family_of_state_dict", "get_family"]
