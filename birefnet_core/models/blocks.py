"""Decoder building blocks of BiRefNet, with the official parameter names.

Every resize in the network is bilinear with ``align_corners=True`` (``resize`` below).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import DeformableConv2d

INTER_CHANNELS = 64  # "fixed" inner width of every decoder block


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (a no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class ASPPBranch(nn.Module):
    """Deformable conv (k x k, no bias) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    """Five parallel branches on the same map, concatenated and fused by a 1x1 conv:
    deformable 1x1, deformable 1x1, 3x3 and 7x7, and global average pooling (broadcast back)."""

    def __init__(self, in_channels: int = INTER_CHANNELS, out_channels: int = INTER_CHANNELS,
                 branch_channels: int = 256) -> None:
        super().__init__()
        self.aspp1 = ASPPBranch(in_channels, branch_channels, 1)
        self.aspp_deforms = nn.ModuleList(ASPPBranch(in_channels, branch_channels, k) for k in (1, 3, 7))
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
        )
        self.conv1 = nn.Conv2d(branch_channels * 5, out_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.aspp1(x)] + [branch(x) for branch in self.aspp_deforms]
        pooled = self.global_avg_pool(x)  # [B, 256, 1, 1]
        # the official bilinear resize of a 1x1 map with align_corners=True is a broadcast
        branches.append(pooled.expand(-1, -1, *branches[0].shape[-2:]))
        return self.dropout(self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1)))))


class BasicDecBlk(nn.Module):
    """conv3x3 -> BN -> ReLU -> ASPPDeformable -> conv3x3 -> BN (no final activation)."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = INTER_CHANNELS) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.relu_in = nn.ReLU(inplace=True)
        self.dec_att = ASPPDeformable(inter_channels, inter_channels)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)
        self.bn_in = nn.BatchNorm2d(inter_channels)
        self.bn_out = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_in(self.bn_in(self.conv_in(x)))
        x = self.dec_att(x)
        return self.bn_out(self.conv_out(x))


class BasicLatBlk(nn.Module):
    """Lateral connection: one 1x1 conv with bias."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SimpleConvs(nn.Module):
    """Inward-reference encoder of image patches: conv3x3 -> conv3x3, no norm, no activation."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = INTER_CHANNELS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))
