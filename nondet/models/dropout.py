"""Dropout whose masks come from an explicit generator (the ``dropout`` source).

``nn.Dropout`` draws from the global RNG, which would tie the dropout masks to whatever else
touches that stream; every dropout in the package's models is a :class:`SeededDropout` instead.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class SeededDropout(nn.Module):
    """Inverted dropout: in training, keep each element with probability 1 - p, scale by 1/(1 - p).

    The mask is drawn from ``self.generator`` (set with :func:`set_dropout_generator`). It is drawn
    in float32 on the generator's device and then moved to the input's device and dtype, so the
    masks depend only on the generator's state: not on the precision (fp32 / bf16) or on whether
    the model runs on the CPU or a GPU (a CPU generator with a CUDA model costs a host-to-device
    copy of the mask; give a CUDA generator to avoid it).

    Identity in eval mode and when p == 0 (no random numbers are drawn then, so the generator's
    stream is not advanced).
    """

    def __init__(self, p: float = 0.0, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = float(p)
        # A plain attribute, not a buffer: a generator is not part of the model's state_dict.
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        g = self.generator
        if g is None:
            raise RuntimeError(
                f"SeededDropout(p={self.p}) is in training mode but has no generator: call "
                "nondet.models.set_dropout_generator(model, generator) before training "
                "(dropout never falls back to the global RNG)"
            )
        mask = torch.empty(x.shape, dtype=torch.float32, device=g.device)
        mask.bernoulli_(1.0 - self.p, generator=g)
        mask.mul_(1.0 / (1.0 - self.p))
        return x * mask.to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, generator={'set' if self.generator is not None else 'unset'}"


def set_dropout_generator(model: nn.Module, generator: torch.Generator) -> None:
    """Make every :class:`SeededDropout` in ``model`` draw its masks from ``generator``.

    All of a model's dropout layers share the one stream, consumed in forward order, which is
    deterministic. Raises if the model holds a stock ``nn.Dropout`` (it would use the global RNG).
    """
    from nondet.usermodel import is_custom_model  # your own model: nn.Dropout is fed the stream

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and not is_custom_model(model):
            raise TypeError(
                f"{name} is a {type(module).__name__}, which draws from the global RNG; "
                "use nondet.models.SeededDropout"
            )
        if isinstance(module, SeededDropout):
            module.generator = generator
