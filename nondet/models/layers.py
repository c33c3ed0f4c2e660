"""Small shared layers."""

from __future__ import annotations

import torch
from torch import nn


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions, (N, C, H, W) -> (N, C).

    Written as ``x.mean(dim=(2, 3))`` rather than ``AdaptiveAvgPool2d(1)``, whose CUDA backward
    has no deterministic implementation. A module (not an inline call) so that analysis can hook
    the pooled features.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))
