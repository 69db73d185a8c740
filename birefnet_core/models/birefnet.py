"""BiRefNet: localization module (backbone on two scales, context fusion, squeeze block) and
reconstruction module (decoder with inward and outward references).

Zheng et al., "Bilateral Reference for High-Resolution Dichotomous Image Segmentation" (CAAI AIR
2024). Written from the published description and the facts in the project's reference notes;
module and parameter names follow the released checkpoints so that they load unchanged.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BiRefNetConfig, PatchOrder
from .backbones import build_backbone
from .blocks import BasicDecBlk, BasicLatBlk, SimpleConvs, resize


def image_patches(x: torch.Tensor, grid: int, order: PatchOrder) -> torch.Tensor:
    """Cut [B, 3, H, W] into a grid x grid array of patches stacked on channels:
    [B, 3 * grid^2, H / grid, W / grid], in the channel order the checkpoint expects."""
    b, c, h, w = x.shape
    t = x.view(b, c, grid, h // grid, grid, w // grid)  # b c hg h wg w
    if order is PatchOrder.CURRENT:
        t = t.permute(0, 1, 2, 4, 3, 5)  # b c hg wg h w
    else:
        t = t.permute(0, 4, 2, 1, 3, 5)  # b wg hg c h w
    return t.reshape(b, c * grid * grid, h // grid, w // grid)


def gradient_target(x: torch.Tensor) -> torch.Tensor:
    """Ground truth of the outward reference: 5x5 Laplacian (normalised by the sum of its
    absolute values, reflect border) of the image's channel mean. [B, 3, H, W] -> [B, 1, H, W]."""
    gray = x.mean(dim=1, keepdim=True)
    kernel = torch.ones(5, 5, dtype=x.dtype, device=x.device)
    kernel[2, 2] = -24.0
    kernel = (kernel / 48.0).view(1, 1, 5, 5)
    return F.conv2d(F.pad(gray, (2, 2, 2, 2), mode="reflect"), kernel)


class TrainingOutputs(NamedTuple):
    """What the network returns in training mode (multi-stage and gradient supervision)."""

    side_logits: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # stages 4, 3, 2: H/32, H/16, H/8
    logits: torch.Tensor  # [B, 1, H, W]
    gradient_preds: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # stages 4, 3, 2
    gradient_labels: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # at H x W


class Decoder(nn.Module):
    """Four decoder stages. At each, the image cut into patches (inward reference) joins the
    features; the first three stages are gated by a gradient-attention map (outward reference).
    ``channels`` are the encoder maps' channels, deepest first: (C0, C1, C2, C3)."""

    def __init__(self, channels: Tuple[int, int, int, int], patch_order: PatchOrder) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.patch_order = patch_order
        # inward reference: grids 32, 16, 8, 4 and the whole image
        self.ipt_blk5 = SimpleConvs(3 * 32**2, c0 // 8)
        self.ipt_blk4 = SimpleConvs(3 * 16**2, c0 // 8)
        self.ipt_blk3 = SimpleConvs(3 * 8**2, c1 // 8)
        self.ipt_blk2 = SimpleConvs(3 * 4**2, c2 // 8)
        self.ipt_blk1 = SimpleConvs(3, c3 // 8)
        self.decoder_block4 = BasicDecBlk(c0 + c0 // 8, c1)
        self.decoder_block3 = BasicDecBlk(c1 + c0 // 8, c2)
        self.decoder_block2 = BasicDecBlk(c2 + c1 // 8, c3)
        self.decoder_block1 = BasicDecBlk(c3 + c2 // 8, c3 // 2)
        self.conv_out1 = nn.Sequential(nn.Conv2d(c3 // 2 + c3 // 8, 1, 1))
        self.lateral_block4 = BasicLatBlk(c1, c1)
        self.lateral_block3 = BasicLatBlk(c2, c2)
        self.lateral_block2 = BasicLatBlk(c3, c3)
        for stage, width in ((4, c1), (3, c2), (2, c3)):
            # side output (training), and the outward reference's features, prediction, attention
            setattr(self, f"conv_ms_spvn_{stage}", nn.Conv2d(width, 1, 1))
            setattr(self, f"gdt_convs_{stage}", nn.Sequential(
                nn.Conv2d(width, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True)))
            setattr(self, f"gdt_convs_pred_{stage}", nn.Sequential(nn.Conv2d(16, 1, 1)))
            setattr(self, f"gdt_convs_attn_{stage}", nn.Sequential(nn.Conv2d(16, 1, 1)))

    def _with_patches(self, p: torch.Tensor, x: torch.Tensor, ipt_blk: nn.Module) -> torch.Tensor:
        grid = x.shape[-2] // p.shape[-2]
        patches = image_patches(x, grid, self.patch_order) if grid > 1 else x
        return torch.cat([p, ipt_blk(resize(patches, p.shape[-2:]))], dim=1)

    def forward(
        self,
        x: torch.Tensor,
        features: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        gradient_gt: Optional[torch.Tensor] = None,
    ):
        """``x`` the normalised image, ``features`` (x1, x2, x3, x4) shallowest first.
        Returns the logits [B, 1, H, W], or :class:`TrainingOutputs` when ``gradient_gt`` is given."""
        x1, x2, x3, x4 = features
        side: List[torch.Tensor] = []
        preds: List[torch.Tensor] = []
        labels: List[torch.Tensor] = []
        p = x4
        stages = ((4, self.ipt_blk5, self.decoder_block4, None, None),
                  (3, self.ipt_blk4, self.decoder_block3, self.lateral_block4, x3),
                  (2, self.ipt_blk3, self.decoder_block2, self.lateral_block3, x2))
        for stage, ipt_blk, block, lateral, skip in stages:
            if lateral is not None:
                p = resize(p, skip.shape[-2:]) + lateral(skip)
            p = block(self._with_patches(p, x, ipt_blk))
            gdt = getattr(self, f"gdt_convs_{stage}")(p)
            if gradient_gt is not None:
                m = getattr(self, f"conv_ms_spvn_{stage}")(p)
                side.append(m)
                labels.append(gradient_gt * resize(m, gradient_gt.shape[-2:]))
                preds.append(getattr(self, f"gdt_convs_pred_{stage}")(gdt))
            p = p * getattr(self, f"gdt_convs_attn_{stage}")(gdt).sigmoid()
        p = resize(p, x1.shape[-2:]) + self.lateral_block2(x1)
        p = self.decoder_block1(self._with_patches(p, x, self.ipt_blk2))
        p = resize(p, x.shape[-2:])
        logits = self.conv_out1(self._with_patches(p, x, self.ipt_blk1))
        if gradient_gt is None:
            return logits
        return TrainingOutputs(tuple(side), logits, tuple(preds), tuple(labels))


class BiRefNet(nn.Module):
    """The full network. ``model(x)`` with x [B, 3, H, W] ImageNet-normalised, H and W multiples
    of 32: in eval mode the logits [B, 1, H, W] (apply sigmoid for the mask); in training mode
    :class:`TrainingOutputs`."""

    def __init__(self, config: BiRefNetConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        # stochastic depth is a training setting, not part of what a checkpoint is: not in config
        self.bb = build_backbone(config.backbone, drop_path_rate)
        # multi-scale "cat" input doubles every channel count; deepest first
        channels = tuple(2 * c for c in reversed(config.spec.channels))
        self.squeeze_module = nn.Sequential(BasicDecBlk(sum(channels), channels[0]))
        self.decoder = Decoder(channels, config.patch_order)

    @property
    def patch_order(self) -> PatchOrder:
        return self.decoder.patch_order

    @patch_order.setter
    def patch_order(self, value: "PatchOrder | str") -> None:
        self.decoder.patch_order = PatchOrder.parse(value)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Localization module: the backbone on the image and on a half-size copy, maps
        concatenated per stage, the three shallower maps fused into the deepest, squeezed."""
        full = self.bb(x)
        half = self.bb(resize(x, (x.shape[-2] // 2, x.shape[-1] // 2)))
        x1, x2, x3, x4 = (torch.cat([f, resize(h, f.shape[-2:])], dim=1) for f, h in zip(full, half))
        size = x4.shape[-2:]
        x4 = torch.cat([resize(x1, size), resize(x2, size), resize(x3, size), x4], dim=1)
        return x1, x2, x3, self.squeeze_module(x4)

    def forward(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"BiRefNet expects images [B, 3, H, W], got shape {list(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32 or x.shape[-2] == 0 or x.shape[-1] == 0:
            raise ValueError(
                f"BiRefNet needs H and W that are positive multiples of 32, got {x.shape[-2]}x{x.shape[-1]}: "
                "resize the input first (birefnet_core.Predictor does this)"
            )
        features = self.forward_features(x)
        return self.decoder(x, features, gradient_target(x) if self.training else None)


def build_model(backbone: str = "swin_v1_l", *, patch_order: "PatchOrder | str" = PatchOrder.CURRENT,
                drop_path_rate: float = 0.0) -> BiRefNet:
    """BiRefNet in the released configuration for ``backbone``, randomly initialised, in eval mode.

    ``drop_path_rate``: stochastic depth of the backbone in training mode (the official training
    uses 0.1 for PVT-v2 and Swin's default 0.2; 0 turns it off); no effect in eval mode. For a
    model built or loaded otherwise, :func:`birefnet_core.models.backbones.set_drop_path_rate`."""
    return BiRefNet(BiRefNetConfig(backbone, PatchOrder.parse(patch_order)), drop_path_rate).eval()
