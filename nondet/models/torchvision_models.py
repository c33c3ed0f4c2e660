"""VGG-11 and ShuffleNetV2 (0.5x) from torchvision, adapted to small images.

Torchvision is imported lazily (only these two models need it), and its modules are constructed
on the meta device: its constructors initialise from the global RNG and VGG-11's ImageNet
classifier alone has 120M parameters; allocation happens afterwards with ``to_empty`` and
``init_parameters`` then writes every value from the init generator.

- ``vgg11``: torchvision's ``vgg11()`` (configuration "A", no BatchNorm) ``features`` as they are
  (eight 3x3 convs, five 2x2 max-pools: 32x32 -> 1x1), its ReLUs replaced by ``model.activation``
  and its first conv rebuilt when the images do not have 3 channels. The ImageNet head
  (AdaptiveAvgPool2d(7, 7) and a 4096-wide classifier with dropout, sized for 224px inputs) is
  replaced by the common CIFAR head: mean over H and W -> dropout -> Linear(512, num_classes).
  ``model.width`` does not apply. Needs images of at least 32x32.
- ``shufflenetv2_050``: torchvision's ``shufflenet_v2_x0_5`` (stage widths 48/96/192, 1024-wide
  final 1x1 conv). For images smaller than 64 pixels on a side (CIFAR, MNIST) the stem conv has
  stride 1 and the stem max-pool is dropped (the CIFAR adaptation; on 32x32 torchvision's stem
  would leave an 8x8 map before the first stage); larger images keep the ImageNet stem. The stem
  conv is rebuilt for the input's channel count. ReLUs are replaced by ``model.activation``;
  torchvision's ``x.mean([2, 3])`` pooling is kept (as a hookable module), with dropout before
  ``fc``. ``model.width`` does not apply.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

from .activations import make_activation
from .dropout import SeededDropout
from .layers import GlobalAvgPool

# Below this many pixels on the shorter side, shufflenetv2_050 uses the CIFAR stem.
SMALL_IMAGE = 64


def _replace_relus(module: nn.Module, activation: str, smelu_beta: float) -> None:
    """Swap every nn.ReLU (torchvision's are in-place) for a fresh ``activation`` module."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, make_activation(activation, smelu_beta))
        else:
            _replace_relus(child, activation, smelu_beta)


class VGG11(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        activation: str,
        smelu_beta: float,
        dropout: float,
    ) -> None:
        super().__init__()
        import torchvision

        channels, height, width = input_shape
        if min(height, width) < 32:
            raise ValueError(
                f"vgg11 halves the resolution five times and needs images of at least 32x32, "
                f"got {height}x{width}"
            )
        with torch.device("meta"):
            features = torchvision.models.vgg11(weights=None).features
        features = features.to_empty(device="cpu")
        if channels != 3:
            first = features[0]
            features[0] = nn.Conv2d(channels, first.out_channels, 3, padding=1)
        _replace_relus(features, activation, smelu_beta)
        self.features = features
        self.pool = GlobalAvgPool()
        self.dropout = SeededDropout(dropout)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x))))

    def representation_layers(self) -> Dict[str, nn.Module]:
        pools = [m for m in self.features if isinstance(m, nn.MaxPool2d)]
        layers: Dict[str, nn.Module] = {f"block{i + 1}": m for i, m in enumerate(pools)}
        layers["pool"] = self.pool
        layers["logits"] = self.fc
        return layers


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        activation: str,
        smelu_beta: float,
        dropout: float,
    ) -> None:
        super().__init__()
        import torchvision

        channels, height, width = input_shape
        small = min(height, width) < SMALL_IMAGE
        with torch.device("meta"):
            tv = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=num_classes)
        tv = tv.to_empty(device="cpu")
        stem_conv = tv.conv1[0]
        tv.conv1[0] = nn.Conv2d(
            channels,
            stem_conv.out_channels,
            3,
            stride=1 if small else 2,
            padding=1,
            bias=False,
        )
        _replace_relus(tv, activation, smelu_beta)
        # Registered in forward order (first_layer_weight and init order rely on it).
        self.conv1 = tv.conv1
        self.maxpool = nn.Identity() if small else tv.maxpool
        self.stage2 = tv.stage2
        self.stage3 = tv.stage3
        self.stage4 = tv.stage4
        self.conv5 = tv.conv5
        self.pool = GlobalAvgPool()
        self.dropout = SeededDropout(dropout)
        self.fc = tv.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(self.dropout(self.pool(x)))

    def representation_layers(self) -> Dict[str, nn.Module]:
        return {
            "conv1": self.conv1,
            "stage2": self.stage2,
            "stage3": self.stage3,
            "stage4": self.stage4,
            "conv5": self.conv5,
            "pool": self.pool,
            "logits": self.fc,
        }
