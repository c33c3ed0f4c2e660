"""The bit-flip source: one float32 weight moved by exactly one ULP.

The weight is an element of ``bitflip.param`` (a name from ``named_parameters()``); by default
the first layer's weight for the built-in models, the first float32 parameter in
``named_parameters()`` order for your own (``model=custom``).

Summers & Dinneen (2021, Sec. 4) show that this smallest possible change, made before training,
ends in models as different as a fresh initialisation: training is unstable. The weight, and the
direction (up or down), are chosen by the bitflip source's generator; the record keeps exact
values as hex floats so the change can be checked bit for bit.

    python launch.py -m source=bitflip
    python launch.py -m source=bitflip bitflip.param=classifier.weight
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nondet.models import first_layer_weight
from nondet.usermodel import flip_parameter


def flipped_parameter(model: nn.Module, config: dict | None = None) -> tuple[str, nn.Parameter]:
    """(name, parameter) the bitflip source moves in a run of ``config``."""
    config = config or {}
    param = (config.get("bitflip") or {}).get("param")
    if param is not None or (config.get("model") or {}).get("name") == "custom":
        return flip_parameter(model, param)
    return first_layer_weight(model)


def flip_one_ulp(model: nn.Module, generator: torch.Generator, config: dict | None = None) -> dict:
    """Move one element of the run's flipped parameter (``flipped_parameter``) to its float32
    neighbour; returns the record stored in result.json: ``{param, index, direction, before,
    after}``."""
    name, weight = flipped_parameter(model, config)
    if weight.dtype != torch.float32:
        raise TypeError(f"bit flip needs a float32 weight; {name} is {weight.dtype}")
    index = int(torch.randint(weight.numel(), (1,), generator=generator))
    up = bool(torch.randint(2, (1,), generator=generator))
    with torch.no_grad():
        flat = weight.view(-1)
        before = flat[index].clone()
        target = torch.full_like(before, math.inf if up else -math.inf)
        after = torch.nextafter(before, target)
        flat[index] = after
    return {
        "param": name,
        "index": index,
        "direction": "up" if up else "down",
        "before": float(before).hex(),
        "after": float(after).hex(),
    }
