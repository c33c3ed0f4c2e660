"""The paper's shallow models: a linear classifier and networks with one hidden layer.

Summers & Dinneen (2021, Sec. 4.2 and Table 8) contrast a linear model, which is stable under a
one-ULP change of a weight, with a model whose single hidden layer is fully connected (``mlp``) or
convolutional (``conv1``), which are not.

- ``linear``: flatten -> dropout -> Linear. Dropout here acts on the inputs and is off by default.
- ``mlp``: flatten -> [Linear(width) -> activation] x depth -> dropout -> Linear.
- ``conv1``: Conv2d(C, width, 3, padding=1) -> activation -> 4x4 average pooling (kernel 4,
  stride 4: a 32x32 image gives an 8x8 map, width*64 features) -> flatten -> dropout -> Linear.
  The pooling only shrinks the classifier; it has no parameters and a deterministic backward.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, Sequence

import torch
from torch import nn

from .activations import make_activation
from .dropout import SeededDropout


class LinearClassifier(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, dropout: float) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.dropout = SeededDropout(dropout)
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.flatten(x)))

    def representation_layers(self) -> Dict[str, nn.Module]:
        return {"logits": self.fc}


class MLP(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int,
        depth: int,
        activation: str,
        smelu_beta: float,
        dropout: float,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"mlp needs model.depth >= 1 (use model=linear for none), got {depth}")
        self.flatten = nn.Flatten()
        layers = []
        fan_in = math.prod(input_shape)
        for _ in range(depth):
            # One Sequential per hidden layer, so its output is the post-activation representation.
            layers.append(
                nn.Sequential(
                    OrderedDict(
                        linear=nn.Linear(fan_in, width),
                        act=make_activation(activation, smelu_beta),
                    )
                )
            )
            fan_in = width
        self.hidden = nn.Sequential(*layers)
        self.dropout = SeededDropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.hidden(self.flatten(x))))

    def representation_layers(self) -> Dict[str, nn.Module]:
        layers = {f"hidden{i + 1}": layer for i, layer in enumerate(self.hidden)}
        layers["logits"] = self.fc
        return layers


class Conv1Net(nn.Module):
    POOL = 4

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int,
        activation: str,
        smelu_beta: float,
        dropout: float,
    ) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        if height < self.POOL or width_px < self.POOL:
            raise ValueError(
                "conv1 pools 4x4 windows and needs images of at least 4x4 pixels, "
                f"got {height}x{width_px}"
            )
        self.features = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(channels, width, 3, padding=1),
                act=make_activation(activation, smelu_beta),
            )
        )
        self.pool = nn.AvgPool2d(self.POOL)
        self.flatten = nn.Flatten()
        self.dropout = SeededDropout(dropout)
        self.fc = nn.Linear(width * (height // self.POOL) * (width_px // self.POOL), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.flatten(self.pool(self.features(x)))))

    def representation_layers(self) -> Dict[str, nn.Module]:
        return {"conv": self.features, "logits": self.fc}
