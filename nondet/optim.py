"""Optimizers and learning-rate schedules.

The schedule is a pure function of the step, so a resumed run needs only its step count.
``cosine`` is the paper's: linear warmup to the maximum rate over ``warmup_epochs``, then cosine
decay to zero at the last step. ``snapshot`` is Huang et al. (2017): M cosine cycles, each
restarting at the maximum rate every ceil(T / M) steps.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterable, Mapping

import torch


def _optimizer_class(cfg: Mapping) -> tuple[type, dict[str, Any]]:
    """The ``torch.optim`` class of ``cfg`` and the keyword arguments nondet gives it."""
    name = cfg["name"]
    if name == "sgd":
        return torch.optim.SGD, {"lr": cfg["lr"], "momentum": cfg["momentum"],
                                 "nesterov": cfg["nesterov"], "weight_decay": cfg["weight_decay"]}
    if name == "adam":
        return torch.optim.Adam, {"lr": cfg["lr"], "betas": tuple(cfg["betas"]), "eps": cfg["eps"],
                                  "weight_decay": cfg["weight_decay"]}
    raise ValueError(f"optimizer.name={name!r}: use sgd or adam")


def build_optimizer(cfg: Mapping, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    cls, kwargs = _optimizer_class(cfg)
    return cls(params, **kwargs)


def param_group(cfg: Mapping) -> dict[str, Any]:
    """The hyperparameters and flags that ``build_optimizer(cfg, ...)`` holds in its param group
    (without ``params``), read from the class's signature rather than by constructing one: the
    first ``torch.optim`` optimizer of a process imports ``torch._dynamo`` (about a second), which
    a pack, stepping through torch's functional ``sgd``/``adam``, does without."""
    cls, kwargs = _optimizer_class(cfg)
    defaults = {
        name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **kwargs}


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
