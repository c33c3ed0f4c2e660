"""``cnn1d``: the convolutional network of the MNIST-1D paper (Greydanus 2020), for 1-D signals.

    python launch.py dataset=mnist1d model=cnn1d

Input (C, L) (MNIST-1D: (1, 40)). Conv1d(C, w, 5, stride 2, padding 1) -> activation ->
Conv1d(w, w, 3, stride 2, padding 1) -> activation -> Conv1d(w, w, 3, stride 2, padding 1) ->
activation -> flatten -> dropout -> Linear(w * L3, classes); w = ``model.width`` (25 in the paper),
L3 the length after the three strides (40 -> 19 -> 10 -> 5). Initialised, like every model here,
by ``init_parameters`` from the ``init`` source's generator (not PyTorch's default init).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Sequence

import torch
from torch import nn

from .activations import make_activation
from .dropout import SeededDropout

# (kernel, stride, padding) of the three convolutions.
LAYERS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))


class CNN1D(nn.Module):
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
        channels, length = input_shape
        layers = OrderedDict()
        for i, (kernel, stride, padding) in enumerate(LAYERS):
            length = (length + 2 * padding - kernel) // stride + 1
            if length < 1:
                raise ValueError(f"cnn1d: signals of length {input_shape[1]} are too short for its three strided convolutions")
            # One Sequential per layer, so its output is the post-activation representation.
            layers[f"conv{i + 1}"] = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv1d(channels, width, kernel, stride=stride, padding=padding),
                    act=make_activation(activation, smelu_beta),
                )
            )
            channels = width
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.dropout = SeededDropout(dropout)
        self.fc = nn.Linear(width * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.flatten(self.features(x))))

    def representation_layers(self) -> Dict[str, nn.Module]:
        layers: Dict[str, nn.Module] = dict(self.features.named_children())
        layers["logits"] = self.fc
        return layers
