"""Activation functions selectable by ``model.activation``, including SmeLU.

SmeLU (Shamir et al. 2020, "Smooth activations and reproducibility in deep networks") is ReLU with
the kink replaced by a quadratic piece, so the gradient is continuous. The synthetic study compares
it with ReLU and the other smooth activations to see whether smoothness reduces run-to-run
variability.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = ("relu", "smelu", "gelu", "silu", "softplus", "tanh", "leaky_relu")


class SmeLU(nn.Module):
    """Smooth ReLU: 0 for x <= -beta, (x + beta)^2 / (4 beta) for |x| <= beta, x for x >= beta.

    Value and first derivative agree at both joints (0 and 0 at -beta; beta and 1 at +beta), so
    the gradient is continuous. Written with ``clamp`` and ``torch.where`` rather than masks built
    from comparisons and multiplied in, so autograd follows the piece that is selected:
    ``clamp`` makes the quadratic constant below -beta (gradient 0) and the ``where`` picks the
    identity above +beta, never evaluating a discarded branch's gradient into the result.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"SmeLU needs beta > 0, got {beta}")
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta
        inside = torch.clamp(x, -beta, beta)
        quadratic = (inside + beta) ** 2 / (4.0 * beta)
        return torch.where(x >= beta, x, quadratic)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def make_activation(name: str, smelu_beta: float = 1.0) -> nn.Module:
    """A fresh activation module for ``name`` (never in-place: forward hooks read the outputs)."""
    if name == "relu":
        return nn.ReLU()
    if name == "smelu":
        return SmeLU(smelu_beta)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "softplus":
        return nn.Softplus()
    if name == "tanh":
        return nn.Tanh()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
