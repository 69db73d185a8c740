"""FOCUS's edge branch (``backbone.edge``): a ResNet-50 with torchvision's layout and key names
(no avgpool / fc) and four 1x1 convolutions with bias (``fc1..fc4``) to the ViT width.

Written from the architecture description (``shared/notes/focus-reference.md`` section 3.1):
conv1 7x7/2 pad 3, BN, ReLU, max-pool 3x3/2 pad 1, stages of [3, 4, 6, 3] bottlenecks, stride on
the 3x3 conv, downsample = 1x1 conv + BN in the first bottleneck of each stage, BN eps 1e-5.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .common import to_tokens

RESNET50_STAGES = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x these
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), BN after each, residual, ReLU."""

    def __init__(self, in_channels: int, width: int, stride: int, downsample: bool) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(out_channels)) if downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def resnet_stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, width, stride, downsample=True)]
    layers += [Bottleneck(width * EXPANSION, width, 1, downsample=False) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class EdgePriorModule(nn.Module):
    """ResNet-50 on the edge image, its four stage outputs projected to ``dim`` channels.

    [B, 3, Hp, Wp] -> c1 [B, dim, Hp/4, Wp/4] (map), c2 [B, Hp/8 * Wp/8, dim], c3 [B, Hp/16 * Wp/16,
    dim], c4 [B, Hp/32 * Wp/32, dim] (tokens, row-major)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, width) in enumerate(zip(RESNET50_STAGES, RESNET50_WIDTHS)):
            setattr(self, f"layer{index + 1}", resnet_stage(in_channels, width, blocks, 1 if index == 0 else 2))
            in_channels = width * EXPANSION
        for index, width in enumerate(RESNET50_WIDTHS):
            setattr(self, f"fc{index + 1}", nn.Conv2d(width * EXPANSION, dim, 1))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s4 = self.layer1(x)
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        s32 = self.layer4(s16)
        return self.fc1(s4), to_tokens(self.fc2(s8)), to_tokens(self.fc3(s16)), to_tokens(self.fc4(s32))
