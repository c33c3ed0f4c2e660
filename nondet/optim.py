"""Optimizers and learning-rate schedules.

The schedule is a pure function of the step, so a resumed run needs only its step count.
``cosine`` is the paper's: linear warmup to the maximum rate over ``warmup_epochs``, then cosine
decay to zero at the last step. ``snapshot`` is Huang et al. (2017): M cosine cycles, each
restarting at the maximum rate every ceil(T / M) steps.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch


def build_optimizer(cfg: Mapping, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    name = cfg["name"]
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg["lr"],
            momentum=cfg["momentum"],
            nesterov=cfg["nesterov"],
            weight_decay=cfg["weight_decay"],
        )
    if name == "adam":
        return torch.optim.Adam(
            params,
            lr=cfg["lr"],
            betas=tuple(cfg["betas"]),
            eps=cfg["eps"],
            weight_decay=cfg["weight_decay"],
        )
    raise ValueError(f"optimizer.name={name!r}: use sgd or adam")


def learning_rate(cfg: Mapping, max_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``epochs * steps_per_epoch``."""
    name = cfg["name"]
    total = epochs * steps_per_epoch
    if name == "constant":
        return max_lr
    if name == "cosine":
        warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
        if step < warmup:
            return max_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return max_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "snapshot":
        cycle = cycle_length(cfg, total)
        return max_lr * 0.5 * (1.0 + math.cos(math.pi * (step % cycle) / cycle))
    raise ValueError(f"schedule.name={name!r}: use constant, cosine or snapshot")


def cycle_length(cfg: Mapping, total_steps: int) -> int:
    """Steps per snapshot cycle: ceil(T / M)."""
    cycles = cfg["cycles"]
    if cycles < 1:
        raise ValueError(f"schedule.cycles={cycles} must be at least 1")
    return math.ceil(total_steps / cycles)
