"""FOCUS (You et al., "Towards Universal Foreground Segmentation", AAAI 2025): Mask2Former with 2
queries and 2 classes (+ "no object") on a DINOv2 ViT-Adapter whose side branch sees a
Canny-edge-blended copy of the image.

Written from ``shared/notes/focus-reference.md``; module and parameter names follow the released
checkpoints (their inference keys load with ``strict=True``). Inference only: the training-only
parts (CLIP refiner, CLIP-loss projections, box head, criterion) are not built.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from .adapter import EdgeEnhancer
from .config import FocusConfig, focus_config
from .decoder import MaskedTransformerDecoder
from .edges import edge_input, require_opencv
from .pixel_decoder import PixelDecoder, PixelDecoderOutput

SIZE_MULTIPLE = 32


class FocusFeatures(NamedTuple):
    """Everything before the transformer decoder (:meth:`FOCUS.forward_features`)."""

    edges: torch.Tensor  # [B, 3, Hp, Wp] float32 edge-branch input (BGR, 0..1)
    backbone: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # res2..res5 [B, D, Hp/s, Wp/s]
    pixel_decoder: PixelDecoderOutput  # mask_features [B, 256, Hp/4, Wp/4], maps at strides 32, 16, 8


class FocusOutputs(NamedTuple):
    """The last decoder head; with ``aux=True`` also the 9 earlier heads (initial queries first)."""

    class_logits: torch.Tensor  # [B, 2, 3]: per query, logits of foreground, background, no object
    mask_logits: torch.Tensor  # [B, 2, Hp/4, Wp/4]: per query
    aux_class_logits: Optional[torch.Tensor] = None  # [9, B, 2, 3]
    aux_mask_logits: Optional[torch.Tensor] = None  # [9, B, 2, Hp/4, Wp/4]


class FocusHead(nn.Module):
    """``sem_seg_head``: the pixel decoder and the transformer decoder (``predictor``)."""

    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        self.pixel_decoder = PixelDecoder(config)
        self.predictor = MaskedTransformerDecoder(config)


class FOCUS(nn.Module):
    """The network. ``model(x)`` with ``x`` the normalised ((img - mean) / std, 0..255 RGB scale),
    bottom/right zero-padded image [B, 3, Hp, Wp], Hp and Wp positive multiples of 32 (any aspect
    ratio), returns :class:`FocusOutputs`; ``model(x, aux=True)`` adds the auxiliary heads.

    Intermediates: ``forward_features(x)`` -> :class:`FocusFeatures` (edge input, res2..res5,
    pixel-decoder outputs) and ``decode(features, aux)`` -> :class:`FocusOutputs` split the
    forward in two. The edge branch's outputs and the tokens of an interaction stage are the
    outputs of ``backbone.edge`` ((c1 map, c2, c3, c4 tokens)) and ``backbone.interactions[k]``
    ((ViT tokens, adapter tokens, cls)): read them with forward hooks.

    Precision: pass ``x`` in float32 even when the model is cast to bfloat16/float16 (``.to``):
    the edge input is computed from ``x`` as given (byte-exact only from float32), then ``x`` is
    cast to the model's dtype. The decoder's attention masks are decided in float32.
    """

    family = "focus"  # see birefnet_core.models.families

    def __init__(self, config: FocusConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = EdgeEnhancer(config)
        self.sem_seg_head = FocusHead(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.pos_embed.dtype

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"FOCUS expects float images [B, 3, H, W], got {x.dtype} shape {list(x.shape)}")
        h, w = x.shape[-2:]
        if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"FOCUS needs H and W that are positive multiples of {SIZE_MULTIPLE}, got {h}x{w}: "
                             "zero-pad the normalised image at the bottom and right first")

    def forward_features(self, x: torch.Tensor) -> FocusFeatures:
        self._check_input(x)
        edges = edge_input(x)
        res = self.backbone(x.to(self.dtype), edges.to(self.dtype))
        return FocusFeatures(edges, res, self.sem_seg_head.pixel_decoder(res))

    def decode(self, features: FocusFeatures, aux: bool = False) -> FocusOutputs:
        pix = features.pixel_decoder
        heads = self.sem_seg_head.predictor(pix.multi_scale_features, pix.mask_features, aux=aux)
        if not aux:
            return FocusOutputs(heads.class_logits[-1], heads.mask_logits[-1])
        return FocusOutputs(heads.class_logits[-1], heads.mask_logits[-1], heads.class_logits[:-1],
                            heads.mask_logits[:-1])

    def forward(self, x: torch.Tensor, aux: bool = False) -> FocusOutputs:
        return self.decode(self.forward_features(x), aux=aux)


def build_focus(name_or_config: Union[str, FocusConfig] = "focus_dinov2_l") -> FOCUS:
    """FOCUS for a preset name (``FOCUS_CONFIGS``) or a :class:`FocusConfig`, randomly
    initialised, in eval mode. Raises :class:`edges.OpenCVMissingError` (an ImportError) when
    OpenCV is not installed. Build under ``torch.device("meta")`` for shapes only."""
    require_opencv()
    config = focus_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if not isinstance(config, FocusConfig):
        raise TypeError(f"build_focus takes a preset name or a FocusConfig, got {type(name_or_config).__name__}")
    return FOCUS(config).eval()
