"""CIFAR VGGs (Simonyan & Zisserman, 2015) as the paper trains them.

vgg11 follows the paper: no batch norm, conv bias, and a 512-512-512-classes classifier with
dropout 0.5. The blocks are the ReLU modules after each conv layer (8 for vgg11), named
``features.<i>`` as ``named_modules()`` lists them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model, scaled

CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 10, width: float = 1.0, batch_norm: bool = False,
                 dropout: float = 0.5, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        self.block_names = []
        in_ch = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out_ch = scaled(v, width)
            layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU())  # one module per conv: a hook on a reused ReLU would fire twice
            self.block_names.append(f"features.{len(layers) - 1}")
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        hidden = scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Linear(in_ch, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        )
        self.num_features = hidden
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) -> (B, hidden): the output of the last hidden classifier layer."""
        out = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _register(name: str) -> None:
    @register_model(name)
    def build(num_classes: int = 10, width: float = 1.0, batch_norm: bool = False, in_channels: int = 3,
              **_) -> VGG:
        return VGG(CFGS[name], num_classes, width, batch_norm, in_channels=in_channels)


for _name in CFGS:
    _register(_name)
