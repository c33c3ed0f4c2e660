"""A small CNN of your own: its own initialisation and its own nn.Dropout.

    python examples/custom_cnn/make_data.py /tmp/toy.npz
    python launch.py -m source=none,init,shuffle,dropout model=custom \
        model._target_=examples.custom_cnn.nets.SmallCNN +model.channels=8 \
        dataset=npz dataset.path=/tmp/toy.npz

nondet calls ``SmallCNN(channels=8, dropout=0.25, input_shape=(C, H, W), num_classes=K)``:
``channels`` from ``+model.channels``, ``dropout`` from ``model.dropout`` (a key of nondet's own
that the signature names: ``model.dropout=0.5`` gives 0.5; left unset, this default, which
config.yaml records), the other two because the signature names them. Nothing here seeds
anything: the initialisation draws from the global RNG, which nondet seeds from the init source
while the constructor runs, and the dropout masks draw from the global RNG, which holds the
dropout source's stream during each training step.
"""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, input_shape, num_classes, channels: int = 16, dropout: float = 0.25):
        super().__init__()
        in_channels = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        # its own init: truncated normal convolutions, a zero classifier bias
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.2)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        return self.classifier(self.dropout(self.features(x)))
