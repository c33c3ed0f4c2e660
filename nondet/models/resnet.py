"""CIFAR-style ResNets (resnet6/10/14/18): the paper's main model family.

3x3 stem conv (stride 1, no max-pool, since 32x32 inputs are already small) + BN + activation,
then stages of basic blocks, global mean pooling, dropout and a linear classifier. Stage ``i``
(0-based) has width ``w * 2**i`` and, except the first, halves the resolution in its first block.
The layer count is stem + 2 per block + fc; the 1x1 projection shortcuts are not counted. The
table of layouts is in the package docstring (``nondet/models/__init__.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Sequence

import torch
from torch import nn

from .activations import make_activation
from .dropout import SeededDropout
from .layers import GlobalAvgPool

# name -> blocks per stage
RESNET_STAGES = {
    "resnet6": (1, 1),
    "resnet10": (1, 1, 1, 1),
    "resnet14": (2, 2, 2),
    "resnet18": (2, 2, 2, 2),
}


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN, activation after the first and after the residual sum.

    The shortcut is the identity, or a 1x1 conv + BN when the stride or width changes. No in-place
    operations: forward hooks keep references to outputs.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, activation: str, smelu_beta: float
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = make_activation(activation, smelu_beta)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = make_activation(activation, smelu_beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        stages: Sequence[int],
        input_shape: Sequence[int],
        num_classes: int,
        width: int,
        activation: str,
        smelu_beta: float,
        dropout: float,
    ) -> None:
        super().__init__()
        channels = input_shape[0]
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(channels, width, 3, 1, padding=1, bias=False),
                bn=nn.BatchNorm2d(width),
                act=make_activation(activation, smelu_beta),
            )
        )
        in_channels = width
        self.stage_names = []
        for i, blocks in enumerate(stages):
            out_channels = width * 2**i
            layers = []
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                layers.append(BasicBlock(in_channels, out_channels, stride, activation, smelu_beta))
                in_channels = out_channels
            name = f"stage{i + 1}"
            self.add_module(name, nn.Sequential(*layers))
            self.stage_names.append(name)
        self.pool = GlobalAvgPool()
        self.dropout = SeededDropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.dropout(self.pool(x)))

    def representation_layers(self) -> Dict[str, nn.Module]:
        layers: Dict[str, nn.Module] = {"conv1": self.stem}
        for name in self.stage_names:
            layers[name] = getattr(self, name)
        layers["pool"] = self.pool
        layers["logits"] = self.fc
        return layers
