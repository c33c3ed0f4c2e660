"""Packs of your own model through ``torch.func``: P replicas as one vmapped computation.

    python launch.py -m source=init model=custom model._target_=my_pkg.nets.SmallCNN pack=4

The built-in models have hand-written packed layers (``nondet/pack.py``). A model nondet did not
write is packed with ``torch.func``: ``stack_module_state`` stacks the replicas' parameters and
buffers along a leading axis, ``functional_call`` runs the model's own ``forward`` on one slice,
and ``vmap`` maps it over the replicas. A pack must be what the replicas trained alone would
be, so ``pack_reason`` tries one step both ways on the job's own data, for every batch shape the
job will see (the full and the short last training batch, every evaluation chunk), and on the
CPU packs only where losses, gradients and logits agree bit for bit; otherwise the job trains
the replicas one after another and says why in one log line:

- the model cannot be vmapped (data-dependent control flow, ``.item()``, in-place updates of
  an unbatched tensor, ...): the error names the operation;
- the batched kernels round differently from the solo ones on this device;
- the model draws random numbers while training and the pack's dropout streams differ
  (``vmap`` hands every replica the same draws, ``randomness="same"``, which is exactly the solo
  stream when the dropout source is not varied and nothing else when it is).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def stacked(models: Sequence[nn.Module]) -> tuple[nn.Module, dict, dict]:
    """(a stateless copy of the model on the meta device, stacked parameters, stacked buffers)."""
    from torch.func import stack_module_state

    params, buffers = stack_module_state(list(models))
    return copy.deepcopy(models[0]).to("meta"), params, buffers


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


def _fold(x: torch.Tensor, packs: int) -> torch.Tensor:
    """One batch as a pack of ``packs`` reads it: (B, P*C, ...), each replica's slice a copy of
    ``x`` (the gathered batch of ``nondet.pack.train_pack_epoch``, the test chunk of
    ``nondet.pack.evaluate_pack``)."""
    return x.unsqueeze(1).expand(x.shape[0], packs, *x.shape[1:]).contiguous().flatten(1, 2)


def _training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, packs: int) -> torch.Tensor:
    """The step of ``nondet.pack.train_pack_epoch`` for a folded pack of ``packs`` (1: the
    replica alone): per-example losses (B, P), gradients left in ``.grad``."""
    logits = model(x).unflatten(1, (packs, -1)).float()
    labels = y.unsqueeze(1).expand(len(y), packs)
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
    losses.mean(0).sum().backward()
    return losses.detach()


def _evaluation(model: nn.Module, x: torch.Tensor, packs: int) -> torch.Tensor:
    """The logits (P, B, K) of ``nondet.pack.evaluate_pack`` for one chunk, folded pack."""
    with torch.no_grad():
        return model(_fold(x, packs)).float().unflatten(1, (packs, -1)).transpose(0, 1)


def _exact_training(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, fork: list) -> str | None:
    """Why one training step of the pack on (x, y) is not each model's own, bit for bit."""
    packed, solos = pack_model(models), [copy.deepcopy(m) for m in models]
    with torch.random.fork_rng(devices=fork):
        losses = _training_step(packed, _fold(x, len(models)), y, len(models))
    where = f"training batch of {len(y)}"
    stacked = dict(packed.named_parameters())
    buffers = dict(packed.named_buffers())
    for i, model in enumerate(solos):
        with torch.random.fork_rng(devices=fork):
            loss = _training_step(model, x, y, 1)
        if not torch.equal(loss[:, 0], losses[:, i]):
            return f"{ROUNDING} ({where}, loss)"
        for name, param in model.named_parameters():
            g_pack, g_solo = stacked[name].grad, param.grad
            if (g_pack is None) != (g_solo is None) or (g_solo is not None and not torch.equal(g_pack[i], g_solo)):
                return f"{ROUNDING} ({where}, gradient of {name})"
        for name, buffer in model.named_buffers():
            if name in buffers and not torch.equal(buffers[name][i], buffer):
                return f"the packed step updates buffer {name} differently from the model trained alone ({where})"
    return None


def _exact_evaluation(models: list[nn.Module], x: torch.Tensor, fork: list) -> str | None:
    """Why the pack's test logits on the chunk ``x`` are not each model's own, bit for bit."""
    packed = pack_model(models).eval()
    with torch.random.fork_rng(devices=fork):
        logits = _evaluation(packed, x, len(models))
    for i, model in enumerate(models):
        with torch.random.fork_rng(devices=fork):
            solo = _evaluation(copy.deepcopy(model).eval(), x, 1)[0]
        if not torch.equal(solo, logits[i]):
            return f"{ROUNDING} (evaluation chunk of {len(x)}, logits)"
    return None


def pack_reason(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor,
                shared_dropout: bool = True, exact: bool | None = None,
                sizes: Sequence[int] = (), x_test: torch.Tensor | None = None,
                test_sizes: Sequence[int] = ()) -> str | None:
    """None when ``torch.func`` trains ``models`` (training mode, on ``x``'s device) as one pack
    of ``len(models)``; else why not, in one line. The pack is tried on a training batch
    ``x[:size]`` of every size in ``sizes`` (default ``len(x)``) and, for evaluation, on
    ``x_test[:size]`` of every size in ``test_sizes``. ``exact`` (default: on the CPU, where a
    pack must equal the solo runs bit for bit): every step's losses, gradients and buffers and
    every chunk's logits must equal each model's own. Batched kernels are chosen by shape,
    alignment, batch count and thread count, so every batch shape the job will see is tried
    (the short last training batch and the last evaluation chunk too), with the job's pack
    size, in the job's process. ``shared_dropout``: the replicas' dropout streams are in the
    same state (the dropout source is not varied). The models are not changed."""
    if exact is None:
        exact = x.device.type == "cpu"
    models = [copy.deepcopy(m).train() for m in models]
    random = draws_random_numbers(models[0], x)
    if random and not shared_dropout:
        return ("the model draws random numbers while training and the replicas' dropout streams "
                "differ; vmap gives every replica the same draws")
    device = x.device
    fork = [device] if device.type == "cuda" else []
    sizes = list(dict.fromkeys(sizes)) or [len(x)]
    for size in sizes if exact else sizes[:1]:
        try:
            if not exact:  # one vmapped step says whether torch.func can train the model
                with torch.random.fork_rng(devices=fork):
                    _training_step(pack_model(models), _fold(x[:size], len(models)), y[:size], len(models))
                return None
            why = _exact_training(models, x[:size], y[:size], fork)
        except Exception as exc:  # noqa: BLE001 - any failure means: no pack, say why
            return f"torch.func cannot vmap its training step ({_first_line(exc)})"
        if why is not None:
            return why
    for size in dict.fromkeys(test_sizes):
        try:
            why = _exact_evaluation(models, x_test[:size], fork)
        except Exception as exc:  # noqa: BLE001
            return f"torch.func cannot vmap its evaluation ({_first_line(exc)})"
        if why is not None:
            return why
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
