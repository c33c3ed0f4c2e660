"""Packs of your own model through ``torch.func``: P replicas as one vmapped computation.

    python launch.py -m source=init model=custom model._target_=my_pkg.nets.SmallCNN pack=4

The built-in models have hand-written packed layers (``nondet/pack.py``). A model nondet did not
write is packed with ``torch.func``: ``stack_module_state`` stacks the replicas' parameters and
buffers along a leading axis, ``functional_call`` runs the model's own ``forward`` on one slice,
and ``vmap`` maps it over the replicas. A pack must be what the replicas trained alone would
be, so ``pack_reason`` tries one training step both ways on the job's own data and packs only
when the losses and gradients agree bit for bit; otherwise the job trains the replicas one
after another and says why in one log line:

- the model cannot be vmapped (data-dependent control flow, ``.item()``, in-place updates of
  an unbatched tensor, ...): the error names the operation;
- the batched kernels round differently from the solo ones on this device;
- the model draws random numbers while training and the pack's dropout streams differ
  (``vmap`` hands every replica the same draws, ``randomness="same"``, which is exactly the solo
  stream when the dropout source is not varied and nothing else when it is).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def stacked(models: Sequence[nn.Module]) -> tuple[nn.Module, dict, dict]:
    """(a stateless copy of the model on the meta device, stacked parameters, stacked buffers)."""
    from torch.func import stack_module_state

    params, buffers = stack_module_state(list(models))
    return copy.deepcopy(models[0]).to("meta"), params, buffers


def packed_losses(base: nn.Module, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor,
                  randomness: str, loss: Callable = F.cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-replica losses (P,), logits (P, N, C)) of one vmapped forward on the same batch."""
    from torch.func import functional_call, vmap

    def one(p, b):
        logits = functional_call(base, (p, b), (x,))
        return loss(logits.float(), y), logits

    return vmap(one, in_dims=(0, 0), randomness=randomness)(params, buffers)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def draws_random_numbers(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether a training-mode forward of ``model`` changes its device's global generator."""
    model = copy.deepcopy(model).train()
    device = x.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        before = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
        with torch.no_grad():
            model(x)
        after = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    return not torch.equal(before, after)


ROUNDING = "torch.func's batched kernels round differently from the model trained alone on this device"


def pack_reason(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor,
                shared_dropout: bool = True, exact: bool | None = None) -> str | None:
    """None when ``torch.func`` trains ``models`` (training mode, on ``x``'s device) as one pack;
    else why not, in one line. ``exact`` (default: on the CPU, where a pack must equal the solo
    runs bit for bit): one step's losses, gradients and buffers must equal each model's own.
    ``shared_dropout``: the replicas' dropout streams are in the same state (the dropout source
    is not varied). The models are not changed."""
    if exact is None:
        exact = x.device.type == "cpu"
    models = [copy.deepcopy(m).train() for m in models]
    random = draws_random_numbers(models[0], x)
    if random and not shared_dropout:
        return ("the model draws random numbers while training and the replicas' dropout streams "
                "differ; vmap gives every replica the same draws")
    device = x.device
    fork = [device] if device.type == "cuda" else []
    try:
        base, params, buffers = stacked(models)
        with torch.random.fork_rng(devices=fork):
            losses, _ = packed_losses(base, params, buffers, x, y, "same" if random else "error")
        grads = torch.autograd.grad(losses.sum(), list(params.values()), allow_unused=True)
    except Exception as exc:  # noqa: BLE001 - any failure means: no pack, say why
        return f"torch.func cannot vmap its training step ({_first_line(exc)})"
    if not exact:
        return None
    for i, model in enumerate(models):
        with torch.random.fork_rng(devices=fork):
            loss = F.cross_entropy(model(x).float(), y)
        names = list(params)
        solo = torch.autograd.grad(loss, [dict(model.named_parameters())[n] for n in names], allow_unused=True)
        if not torch.equal(loss.detach(), losses[i].detach()):
            return ROUNDING
        for name, g_pack, g_solo in zip(names, grads, solo):
            if (g_pack is None) != (g_solo is None) or (g_solo is not None and not torch.equal(g_pack[i], g_solo)):
                return f"{ROUNDING} (gradient of {name})"
        for name, b in model.named_buffers():
            if name in buffers and not torch.equal(buffers[name][i], b):
                return f"the packed step updates buffer {name} differently from the model trained alone"
    return None


def _packed_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, P*C, ...) or (B, P*D) in, (B, P*K) out: each replica's slice through the model's own
    forward, its parameters and buffers the replica's slice of the stacked ones."""
    from torch.func import functional_call, vmap

    base, packs = self.__dict__["_nondet_base"], self.__dict__["_nondet_packs"]
    base.train(self.training)
    params, buffers = dict(self.named_parameters()), dict(self.named_buffers())
    xs = x.unflatten(1, (packs, -1)).transpose(0, 1)  # (P, B, C, ...)

    def one(p, b, xi):
        return functional_call(base, (p, b), (xi,))

    # "same": the draws are those of one solo step (the pack shares one dropout stream)
    logits = vmap(one, randomness="same")(params, buffers, xs)  # (P, B, K)
    return logits.transpose(0, 1).flatten(1)


def pack_model(models: Sequence[nn.Module]) -> nn.Module:
    """The replicas as one module with the solo model's parameter and buffer names, each tensor
    stacked to (P, *shape) (what ``nondet.pack.Pack`` trains and writes back), whose forward runs
    the solo forward under ``vmap``; the replica axis folded into the feature axis, as in
    ``nondet.models.packed``."""
    import types

    base, params, buffers = stacked(models)
    packed = copy.deepcopy(models[0])
    for name, tensor in [*params.items(), *buffers.items()]:
        owner, _, leaf = name.rpartition(".")
        module = packed.get_submodule(owner)
        if name in params:
            module._parameters[leaf] = nn.Parameter(tensor.detach().clone())
        else:
            module._buffers[leaf] = tensor.detach().clone()
    packed.__dict__["_nondet_base"] = base
    packed.__dict__["_nondet_packs"] = len(models)
    packed.forward = types.MethodType(_packed_forward, packed)
    return packed
