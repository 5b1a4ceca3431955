"""Wide ResNets (Zagoruyko & Komodakis, 2016), pre-activation blocks, CIFAR layout.

``wrn{depth}_{widen}``: (depth - 4) / 6 blocks per stage, three stages. The blocks are
``block1.0`` ... ``block3.{n-1}`` (12 for wrn28_10). Their outputs are pre-activations,
which is why FeatureNorm applies a ReLU first.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .registry import Builder, register_family, register_model, scaled


def parse_wrn_name(name: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"wrn(\d+)_(\d+)", name)
    return (int(match.group(1)), int(match.group(2))) if match else None


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.equal = in_planes == planes and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(out)
        return out + (x if self.equal else self.shortcut(act))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, width: float = 1.0,
                 dropout: float = 0.0, in_channels: int = 3, **_):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise UserError(f"WideResNet depth must be 6n+4 (e.g. 16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        channels = [scaled(16, width)] + [scaled(c * widen, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        in_planes = channels[0]
        for stage, (planes, stride) in enumerate(zip(channels[1:], (1, 2, 2)), 1):
            blocks = []
            for i in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
            setattr(self, f"block{stage}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes
        self.head = nn.Linear(in_planes, num_classes)
        self.block_names = [f"block{s}.{i}" for s in (1, 2, 3) for i in range(n)]
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model("wrn28_10")
def wrn28_10(num_classes: int = 10, width: float = 1.0, **options) -> WideResNet:
    return WideResNet(28, 10, num_classes, width, **options)


@register_family("wrn{depth}_{widen}")
def _wide_resnet_family(name: str) -> Builder | None:
    parsed = parse_wrn_name(name)
    if parsed is None:
        return None
    depth, widen = parsed
    return lambda num_classes, **options: WideResNet(depth, widen, num_classes, **options)
