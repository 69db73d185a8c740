"""FOCUS configuration: what differs between the released models (the DINOv2 ViT and the adapter's
attention heads), the fixed rest (pixel decoder, transformer decoder), and inference of the
configuration from a state dict's shapes.

Facts from ``shared/notes/focus-reference.md`` (sections 0, 3 and 7): L and G differ only in the
ViT (width, depth, FFN) and the adapter's deformable-attention heads; every task checkpoint of a
size builds the same network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Dict, Mapping, Tuple

import torch

from .checkpoint import TRAINING_ONLY_PREFIXES

FFN_KINDS = ("mlp", "swiglu")  # Mlp fc1 -> exact GELU -> fc2 (L); SwiGLU w12 -> silu(a)*b -> w3 (G)
HEAD_DIM = 64  # DINOv2 attention head width
ADAPTER_LEVELS = 3  # the injector samples c2, c3, c4 (strides 8, 16, 32)


@dataclass(frozen=True)
class FocusConfig:
    """One FOCUS network. ``width``/``depth``/``ffn``/``ffn_hidden`` describe the DINOv2 ViT
    (attention heads = width / 64), ``adapter_heads`` the adapter's deformable attention; the
    rest is the same in every released model. ``name`` (the preset's, "" for other sizes) takes
    no part in comparisons: equal configurations build the same network."""

    family: ClassVar[str] = "focus"  # see birefnet_core.models.families
    width: int = 1024  # ViT width D
    depth: int = 24  # ViT blocks, split in 4 equal interaction ranges
    ffn: str = "mlp"  # "mlp" or "swiglu"
    ffn_hidden: int = 4096
    adapter_heads: int = 16
    adapter_points: int = 4
    adapter_value_ratio: float = 0.5  # adapter value width = D * ratio
    adapter_ffn_ratio: float = 0.25  # ConvFFN hidden = D * ratio
    patch_size: int = 14
    pos_grid: int = 37  # position embedding grid (pretrained at 518 = 37 * 14)
    # pixel decoder (MSDeformAttn encoder + one FPN level) and masked-attention decoder
    conv_dim: int = 256
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_points: int = 4
    encoder_ffn: int = 1024
    decoder_layers: int = 9
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    num_queries: int = 2
    num_classes: int = 2  # 0 = foreground, 1 = background (+ 1 "no object" logit)
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"FocusConfig.ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.width <= 0 or self.width % HEAD_DIM:
            raise ValueError(f"FocusConfig.width must be a positive multiple of {HEAD_DIM}, got {self.width}")
        if self.depth <= 0 or self.depth % 4:
            raise ValueError(f"FocusConfig.depth must be a positive multiple of 4 (4 interaction stages), "
                             f"got {self.depth}")
        value_dim = int(self.width * self.adapter_value_ratio)
        if self.adapter_heads <= 0 or value_dim % self.adapter_heads:
            raise ValueError(f"FocusConfig.adapter_heads ({self.adapter_heads}) must divide the adapter value "
                             f"width {value_dim}")
        if self.conv_dim % 32 or self.conv_dim % self.encoder_heads or self.conv_dim % self.decoder_heads:
            raise ValueError(f"FocusConfig.conv_dim ({self.conv_dim}) must be a multiple of 32 (GroupNorm) and of "
                             "the encoder and decoder head counts")

    @property
    def heads(self) -> int:
        """ViT attention heads (head width 64, as in DINOv2)."""
        return self.width // HEAD_DIM

    @property
    def interaction_ranges(self) -> Tuple[Tuple[int, int], ...]:
        """First and last ViT block (inclusive) of each of the 4 interaction stages."""
        step = self.depth // 4
        return tuple((k * step, (k + 1) * step - 1) for k in range(4))

    @property
    def adapter_value_dim(self) -> int:
        return int(self.width * self.adapter_value_ratio)

    @property
    def adapter_ffn_hidden(self) -> int:
        return int(self.width * self.adapter_ffn_ratio)


FOCUS_CONFIGS: Dict[str, FocusConfig] = {
    "focus_dinov2_l": FocusConfig(name="focus_dinov2_l", width=1024, depth=24, ffn="mlp", ffn_hidden=4096,
                                  adapter_heads=16),
    "focus_dinov2_g": FocusConfig(name="focus_dinov2_g", width=1536, depth=40, ffn="swiglu", ffn_hidden=4096,
                                  adapter_heads=24),
}


def focus_config(name: str) -> FocusConfig:
    try:
        return FOCUS_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown FOCUS model {name!r}; choose one of {', '.join(FOCUS_CONFIGS)}") from None


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> Tuple[int, ...]:
    try:
        return tuple(sd[key].shape)
    except KeyError:
        raise ValueError(f"not a FOCUS state dict: key {key!r} is missing") from None


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> FocusConfig:
    """The configuration whose model has exactly the keys and shapes of ``sd`` (inference keys,
    official names; training-only keys, ``checkpoint.TRAINING_ONLY_PREFIXES``, are ignored).

    Inferred: width and position grid from ``backbone.pos_embed``, depth from the block count,
    the FFN kind from its key names and its hidden width from their shapes, the adapter heads
    from the injector's ``sampling_offsets`` rows / (3 levels * 4 points * 2). Every other
    tensor is then checked against a model built on the meta device. Raises ValueError with a
    one-line message when ``sd`` is not FOCUS or is inconsistent. Tensors may be on any device
    (including meta): only shapes are read. A released size returns its preset (with its name).
    """
    pos = _shape(sd, "backbone.pos_embed")
    grid = round((pos[1] - 1) ** 0.5) if len(pos) == 3 and pos[1] > 1 else 0
    if len(pos) != 3 or pos[0] != 1 or grid * grid + 1 != pos[1]:
        raise ValueError(f"FOCUS state dict: 'backbone.pos_embed' has shape {list(pos)}, expected "
                         "[1, 1 + g*g, width]")
    width = pos[2]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))}
    depth = len(blocks)
    if blocks != set(range(depth)):
        raise ValueError(f"FOCUS state dict: ViT block indices are not 0..{depth - 1} "
                         f"(found {sorted(blocks)[:3]}...{sorted(blocks)[-3:]})")
    if "backbone.blocks.0.mlp.fc1.weight" in sd:
        ffn, hidden = "mlp", _shape(sd, "backbone.blocks.0.mlp.fc1.weight")[0]
    elif "backbone.blocks.0.mlp.w12.weight" in sd:
        ffn, hidden = "swiglu", _shape(sd, "backbone.blocks.0.mlp.w12.weight")[0] // 2
    else:
        raise ValueError("not a FOCUS state dict: neither 'backbone.blocks.0.mlp.fc1.weight' (Mlp) "
                         "nor 'backbone.blocks.0.mlp.w12.weight' (SwiGLU) is present")
    offsets = _shape(sd, "backbone.interactions.0.injector.attn.sampling_offsets.weight")[0]
    per_head = ADAPTER_LEVELS * FocusConfig.adapter_points * 2
    if offsets % per_head:
        raise ValueError(f"FOCUS state dict: 'backbone.interactions.0.injector.attn.sampling_offsets.weight' "
                         f"has {offsets} rows, not a multiple of {per_head} (3 levels x 4 points x 2)")
    try:
        config = FocusConfig(width=width, depth=depth, ffn=ffn, ffn_hidden=hidden,
                             adapter_heads=offsets // per_head, pos_grid=grid)
    except ValueError as e:
        raise ValueError(f"FOCUS state dict: inconsistent shapes ({e})") from None
    check_state_dict_shapes(sd, config)
    return next((preset for preset in FOCUS_CONFIGS.values() if preset == config), config)


def check_state_dict_shapes(sd: Mapping[str, torch.Tensor], config: FocusConfig) -> None:
    """Raise ValueError (one line) unless ``sd`` has exactly the inference keys of ``config``'s
    model with the same shapes (training-only keys ignored)."""
    from .model import FOCUS  # the model imports this module

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in FOCUS(config).state_dict().items()}
    given = [k for k in sd if not k.startswith(TRAINING_ONLY_PREFIXES)]
    described = f"(width {config.width}, depth {config.depth}, {config.ffn} FFN, {config.adapter_heads} adapter heads)"
    missing = [k for k in expected if k not in sd]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"FOCUS state dict {described}: key {missing[0]!r}{more} missing")
    unexpected = [k for k in given if k not in expected]
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ValueError(f"FOCUS state dict {described}: unexpected key {unexpected[0]!r}{more}")
    wrong = [k for k in given if tuple(sd[k].shape) != expected[k]]
    if wrong:
        key = wrong[0]
        more = f" ({len(wrong) - 1} more tensors have other shapes)" if len(wrong) > 1 else ""
        raise ValueError(f"FOCUS state dict {described}: {key!r} has shape {list(sd[key].shape)}, "
                         f"expected {list(expected[key])}{more}")
