"""Train a pack of replicas in one process, as one fused computation (``pack=P``).

    python launch.py -m source=init replicates=100 pack=25     # 4 jobs of 25 replicas each

The protocol trains R replicas of one recipe; small models leave a GPU (and a CPU) idle when they
are trained one per process. A pack trains P replicas of the same configuration and source
together, one forward and one backward per step for all of them:

- Parameters, buffers and optimizer state are stacked along a leading replica axis, ``(P, *shape)``,
  under the solo model's own names. Activations keep the replica axis folded into the channel (or
  feature) axis, ``(B, P*C, H, W)`` or ``(B, P*F)``, so the models' own ``forward`` methods run
  unchanged with their layers swapped: a convolution becomes a grouped one (or P convolutions,
  see ``conv_mode``), BatchNorm over P*C channels keeps running statistics per replica, a linear
  layer becomes P GEMMs issued by one ``baddbmm``, dropout draws each replica's mask from that
  replica's generator.
- Everything random comes from each replica's own generators, drawn with the same calls in the
  same order as the solo loop (``nondet/train.py``): shuffle order, within-batch permutation,
  crop offsets and flips, dropout masks, bit flip. Replicas whose generator of a per-step source is
  in the same state share one generator object (their draws are identical anyway), so
  ``source=none`` draws once per step, not P times.
- The learning rate is ``nondet.optim.learning_rate(step)``, the same for all. The optimizer
  update is torch's own functional ``sgd``/``adam`` applied to the stacked tensors, with the
  hyperparameters and flags of the replicas' own ``torch.optim`` objects, so the elementwise
  arithmetic is torch's.
- Each replica keeps its run directory and its ``checkpoint.pt`` in exactly the solo format: the
  pack writes its state back into the replicas' solo model and optimizer before a checkpoint and
  at the end, and ``nondet.train`` writes the files (config, env, seeds, metrics, logits, labels,
  weights, result last). ``env.json`` adds ``pack`` (members, mode); ``train_seconds`` is the
  pack's time divided by the number of replicas trained together (amortised, so it sums to the
  job's time).

Exactness, measured on the CPU in strict fp32 (tests/test_pack.py, docs/benchmarks.md):

- ``linear`` and ``mlp``: a replica trained in a pack is bitwise identical to the same replica
  trained alone (logits, weights, metrics). The GEMMs are issued so that MKL runs, per replica,
  the same ``sgemm`` call (orientation, transposition) as ``F.linear`` and its autograd do; the
  bias gradient and the training loss reduce in the solo order.
- ``conv1``, ``cnn1d`` and the ResNets on the CPU: ``conv_mode="split"`` (the CPU default) runs one
  convolution per replica and is bitwise identical too; ``"grouped"`` (one grouped convolution,
  the CUDA default) differs from solo by float32 rounding (see docs/benchmarks.md) and may depend
  on how many replicas share the call. So ``pack`` is part of a run's identity (its group hash:
  tables never mix pack sizes silently), and where the arithmetic may depend on P (grouped
  convolutions, anything on CUDA) a pack short of P members is filled with spare copies, so every
  replica of a configuration is computed by kernels of one shape (``fills_pack``).
- On a GPU nothing is promised bitwise against solo (cuBLAS/cuDNN pick kernels by shape);
  ``benchmarks/gpu_checks.py`` measures it.

Resume: each replica resumes from its own checkpoint; finished replicas are skipped by the job.
If the replicas of a job stand at different epochs (one was restarted from scratch, say), the
ones behind train as a pack until they reach the next ones, then all continue together.

The job trains its replicas one after another instead, with a log line, for models without a
packed form (vgg11, shufflenetv2_050: max-pooling and channel shuffles would mix replicas) and,
on the CPU, for convolutional models too large to gain from a pack (``sequential_reason``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.adam import adam as adam_update
from torch.optim.sgd import sgd as sgd_update

from nondet import train
from nondet.backend import autocast
from nondet.data import Dataset
from nondet.models import SeededDropout, SmeLU
from nondet.models.cnn1d import CNN1D
from nondet.models.layers import GlobalAvgPool
from nondet.models.resnet import BasicBlock, ResNet
from nondet.models.shallow import MLP, Conv1Net, LinearClassifier
from nondet.optim import learning_rate
from nondet.pipeline import batch_bounds, crop_flip, crop_flip_draws, epoch_order, within_batch_permutation

log = logging.getLogger("nondet")

# Models whose every layer has a packed form below.
PACKABLE_MODELS = frozenset({"linear", "mlp", "conv1", "cnn1d", "resnet6", "resnet10", "resnet14", "resnet18"})
# On the CPU, convolutional packs whose first-layer output per replica exceeds this many bytes
# train one replica at a time instead (see sequential_reason).
CPU_CONV_ACTIVATIONS = 128 * 1024
# Per-step sources: replicas whose generator is in the same state share it within a pack.
SHARED_SOURCES = ("shuffle", "augment", "dropout", "reduction")
# Modules that act on each channel (or element) alone, so the folded replica axis passes through.
_PER_CHANNEL = (
    nn.Sequential, nn.Identity, nn.AvgPool2d, GlobalAvgPool,
    nn.ReLU, nn.GELU, nn.SiLU, nn.Softplus, nn.Tanh, nn.LeakyReLU, SmeLU,
    BasicBlock, ResNet, MLP, LinearClassifier, Conv1Net, CNN1D,
)


class NotPackableError(TypeError):
    pass


def sequential_reason(config: dict, data: Dataset) -> str | None:
    """Why the job should train its replicas one after another rather than as one fused pack,
    or None when a pack is the way.

    Besides models with no packed form: on the CPU a pack of convolutional models pays only while
    each replica's activations are small (measured: about 1.3-1.5x at 128 KiB of first-layer
    output per replica, 0.9x from 512 KiB, docs/benchmarks.md); beyond that the replicas are
    trained one after another. On the CPU the split convolutions are the solo computation, so
    the results are bitwise the same either way.
    """
    name = config["model"]["name"]
    if name not in PACKABLE_MODELS:
        return f"model={name} has no packed form (packable: {', '.join(sorted(PACKABLE_MODELS))})"
    if config["schedule"]["name"] == "snapshot":
        return "schedule=snapshot takes its snapshots in the solo loop"
    if config["device"] == "cpu" and name not in ("linear", "mlp") and len(data.input_shape) == 3:
        _, height, width = data.input_shape
        size = config["batch_size"] * config["model"]["width"] * height * width * 4
        if size > CPU_CONV_ACTIVATIONS:
            return (f"on the CPU a pack of {name} with {size // 1024} KiB of activations per "
                    "replica and layer is slower than one replica at a time (docs/benchmarks.md); "
                    "the results are bitwise the same either way")
    return None


def default_conv_mode(device: str) -> str:
    """``split`` on the CPU (bitwise equal to solo, and no slower there: docs/benchmarks.md),
    ``grouped`` on CUDA (one kernel for the pack)."""
    return "grouped" if device == "cuda" else "split"


# ------------------------------------------------------------------------------ packed layers


def _gemm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: int) -> None:
    """out[p] = beta * out[p] + a[p] @ b[p] for every p, in place.

    On the CPU ``out`` is a non-contiguous view (P, M, N) of a (M, P, N) tensor, so ``baddbmm_``
    takes its per-batch path: one ``addmm`` per replica, the very BLAS call (shape, strides,
    transposition) that the solo layer makes. A contiguous result would send it to MKL's batched
    GEMM, whose kernels round differently for some shapes.
    """
    if out.device.type == "cpu" and out.is_contiguous():
        for p in range(out.shape[0]):  # P == 1 or M == 1: no per-batch path to rely on
            out[p].addmm_(a[p], b[p], beta=beta)
    else:
        out.baddbmm_(a, b, beta=beta)


class _PackedLinearFunction(torch.autograd.Function):
    """y[:, p] = x[:, p] @ w[p].T + b[p] for x (B, P, I), w (P, O, I), b (P, O) -> y (B, P, O).

    The backward mirrors the autograd of ``F.linear`` = ``addmm(b, x, w.t())`` GEMM for GEMM:
    grad_x = grad @ w and grad_w = grad.t() @ x (torch's ``mm_mat2_backward`` for a transposed
    mat2), grad_b = the sum of grad over the batch, reduced per replica over a (P, B, O) tensor
    as solo reduces a (B, O) one.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        batch, packs, _ = x.shape
        outputs = weight.shape[1]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            out = x.new_empty(batch, packs, outputs)
        else:
            out = bias.unsqueeze(0).expand(batch, packs, outputs).contiguous()
        _gemm_into(out.transpose(0, 1), x.transpose(0, 1), weight.transpose(1, 2), 0 if bias is None else 1)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        batch, packs, inputs = x.shape
        outputs = weight.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.new_empty(batch, packs, inputs)
            _gemm_into(grad_x.transpose(0, 1), grad.transpose(0, 1), weight, 0)
        if ctx.needs_input_grad[1]:
            grad_w = grad.new_empty(outputs, packs, inputs)
            _gemm_into(grad_w.transpose(0, 1), grad.permute(1, 2, 0), x.transpose(0, 1), 0)
            grad_w = grad_w.transpose(0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.transpose(0, 1).contiguous().sum(1)
        return grad_x, grad_w, grad_b


class PackedLinear(nn.Module):
    """P ``nn.Linear`` layers: (B, P*I) -> (B, P*O); weight (P, O, I), bias (P, O)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packs, outputs, inputs = self.weight.shape
        x = x.reshape(x.shape[0], packs, inputs)
        weight, bias = self.weight, self.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # autocast does not reach inside an autograd.Function: cast here, as autocast would.
            dtype = torch.get_autocast_dtype(device_type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            with torch.autocast(device_type, enabled=False):
                out = _PackedLinearFunction.apply(x, weight, bias)
        else:
            out = _PackedLinearFunction.apply(x.contiguous(), weight, bias)
        return out.reshape(out.shape[0], packs * outputs)


class PackedConv2d(nn.Module):
    """P ``nn.Conv2d`` layers: (B, P*I, H, W) -> (B, P*O, H', W'); weight (P, O, I, k, k).
    P ``nn.Conv1d`` layers likewise: (B, P*I, L) -> (B, P*O, L'); weight (P, O, I, k).

    ``mode="grouped"``: one convolution with ``groups=P``. ``mode="split"``: one convolution per
    replica on its channel slice, bitwise the solo convolution (on the CPU).
    """

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, mode: str) -> None:
        super().__init__()
        if mode not in ("grouped", "split"):
            raise ValueError(f"conv_mode={mode!r}: use grouped or split")
        if conv.padding_mode != "zeros":
            raise NotPackableError(f"Conv2d with padding_mode={conv.padding_mode!r}")
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.mode = mode
        self.conv = F.conv1d if isinstance(conv, nn.Conv1d) else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packs = self.weight.shape[0]
        if self.mode == "grouped" or packs == 1:
            bias = None if self.bias is None else self.bias.flatten()
            return self.conv(x, self.weight.flatten(0, 1), bias, self.stride, self.padding,
                            self.dilation, self.groups * packs)
        slices = x.unflatten(1, (packs, -1)).unbind(1)
        outs = [
            self.conv(slices[p], self.weight[p], None if self.bias is None else self.bias[p],
                     self.stride, self.padding, self.dilation, self.groups)
            for p in range(packs)
        ]
        return torch.stack(outs, 1).flatten(1, 2)


class PackedBatchNorm2d(nn.Module):
    """P ``nn.BatchNorm2d(C)`` as one batch norm over P*C channels: per-channel statistics are
    per-replica statistics. Parameters and running statistics (P, C); num_batches_tracked (P,)."""

    def __init__(self, bn: nn.BatchNorm2d, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if not (bn.affine and bn.track_running_stats) or bn.momentum is None:
            raise NotPackableError("BatchNorm2d without affine, running statistics or momentum")
        self.weight = nn.Parameter(tensors["weight"])
        self.bias = nn.Parameter(tensors["bias"])
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, tensors[name])
        self.momentum, self.eps = bn.momentum, bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.view(-1),
            self.bias.view(-1), self.training, self.momentum, self.eps,
        )


def dropout_mask(shape: Sequence[int], rate: float, generator: torch.Generator) -> torch.Tensor:
    """The mask ``SeededDropout`` draws for an input of ``shape``: the same calls, the same order."""
    mask = torch.empty(tuple(shape), dtype=torch.float32, device=generator.device)
    mask.bernoulli_(1.0 - rate, generator=generator)
    mask.mul_(1.0 / (1.0 - rate))
    return mask


class PackedDropout(nn.Module):
    """P ``SeededDropout`` layers: replica p's mask, of its own shape (B, F, ...), comes from
    ``generators[p]``; replicas that share a generator object share the one draw."""

    def __init__(self, rate: float, generators: list[torch.Generator]) -> None:
        super().__init__()
        self.p = float(rate)
        self.generators = generators

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        packs = len(self.generators)
        shape = (x.shape[0], x.shape[1] // packs, *x.shape[2:])
        drawn: dict[int, torch.Tensor] = {}
        for generator in self.generators:
            if id(generator) not in drawn:
                drawn[id(generator)] = dropout_mask(shape, self.p, generator)
        mask = torch.cat([drawn[id(g)] for g in self.generators], dim=1)
        return x * mask.to(device=x.device, dtype=x.dtype)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).clone()


def _pack_children(module: nn.Module, sources: list[nn.Module], dropout_generators, conv_mode) -> None:
    for name, child in list(module.named_children()):
        originals = [getattr(source, name) for source in sources]
        if isinstance(child, nn.Linear):
            packed = PackedLinear(
                _stack([m.weight for m in originals]),
                None if child.bias is None else _stack([m.bias for m in originals]),
            )
        elif isinstance(child, (nn.Conv1d, nn.Conv2d)):
            packed = PackedConv2d(
                child, _stack([m.weight for m in originals]),
                None if child.bias is None else _stack([m.bias for m in originals]), conv_mode,
            )
        elif isinstance(child, nn.BatchNorm2d):
            names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            packed = PackedBatchNorm2d(child, {n: _stack([getattr(m, n) for m in originals]) for n in names})
        elif isinstance(child, SeededDropout):
            packed = PackedDropout(child.p, dropout_generators)
        elif isinstance(child, nn.Flatten):
            if child.start_dim != 1 or child.end_dim != -1:
                raise NotPackableError(f"{name}: Flatten({child.start_dim}, {child.end_dim})")
            continue
        elif isinstance(child, _PER_CHANNEL):
            if any(True for _ in child.parameters(recurse=False)) or any(True for _ in child.buffers(recurse=False)):
                raise NotPackableError(f"{name}: {type(child).__name__} holds its own tensors")
            _pack_children(child, originals, dropout_generators, conv_mode)
            continue
        else:
            raise NotPackableError(f"{name}: no packed form of {type(child).__name__}")
        setattr(module, name, packed)


def pack_model(models: list[nn.Module], dropout_generators: list[torch.Generator], conv_mode: str) -> nn.Module:
    """One module computing all ``models`` (same architecture) on the folded layout; its
    ``state_dict`` has the solo names with every tensor stacked to (P, *solo shape)."""
    template = models[0]
    memo = {id(m.generator): None for m in template.modules() if isinstance(m, SeededDropout)}
    packed = copy.deepcopy(template, memo)
    if not isinstance(packed, _PER_CHANNEL):
        raise NotPackableError(f"no packed form of {type(packed).__name__}")
    _pack_children(packed, models, dropout_generators, conv_mode)
    solo, stacked = template.state_dict(), packed.state_dict()
    if list(solo) != list(stacked) or any(
        stacked[k].shape != (len(models), *solo[k].shape) for k in solo
    ):
        raise NotPackableError("the packed model does not mirror the solo model's state")
    return packed.to(next(template.parameters()).device)


# ------------------------------------------------------------------------------ the pack


def _share_generators(replicas: list[train.Replica]) -> None:
    """Replicas whose per-step generator of a source is in the same state share one object."""
    for source in SHARED_SOURCES:
        seen: list[torch.Generator] = []
        for replica in replicas:
            mine = replica.generators[source]
            state = mine.get_state()
            for other in seen:
                if other.device == mine.device and torch.equal(other.get_state(), state):
                    replica.generators[source] = other
                    break
            else:
                seen.append(mine)


class Pack:
    """The fused training state of replicas that stand at the same epoch and step."""

    def __init__(self, replicas: list[train.Replica], config: dict, conv_mode: str) -> None:
        epochs = {(r.epoch, r.step) for r in replicas}
        if len(epochs) != 1:
            raise ValueError(f"a pack needs replicas at one epoch and step, got {sorted(epochs)}")
        self.replicas, self.config = replicas, config
        self.epoch, self.step = replicas[0].epoch, replicas[0].step
        _share_generators(replicas)
        self.model = pack_model(
            [r.model for r in replicas], [r.generators["dropout"] for r in replicas], conv_mode
        )
        self.names = [name for name, _ in replicas[0].model.named_parameters()]
        params = dict(self.model.named_parameters())
        self.params = [params[name] for name in self.names]
        self.group = replicas[0].optimizer.param_groups[0]
        self.lr = self.group["lr"]
        self._load_optimizer_state()

    @property
    def size(self) -> int:
        return len(self.replicas)

    # --- optimizer --------------------------------------------------------------------------

    def _solo_states(self, replica: train.Replica) -> list[dict]:
        return [replica.optimizer.state.get(p, {}) for p in replica.optimizer.param_groups[0]["params"]]

    def _load_optimizer_state(self) -> None:
        name = self.config["optimizer"]["name"]
        states = [self._solo_states(r) for r in self.replicas]
        self.state: dict[str, list] = {}
        if name == "sgd":
            self.state["momentum_buffer"] = [
                _stack([s[i]["momentum_buffer"] for s in states])
                if states[0][i].get("momentum_buffer") is not None else None
                for i in range(len(self.params))
            ]
        elif name == "adam":
            for key in ("exp_avg", "exp_avg_sq"):
                self.state[key] = [
                    _stack([s[i][key] for s in states]) if states[0][i] else torch.zeros_like(p)
                    for i, p in enumerate(self.params)
                ]
            scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            self.state["step"] = [
                states[0][i]["step"].clone() if states[0][i] else torch.tensor(0.0, dtype=scalar)
                for i in range(len(self.params))
            ]
        else:
            raise ValueError(f"optimizer.name={name!r}: use sgd or adam")

    def optimizer_step(self) -> None:
        """torch's own functional update over the stacked tensors, as ``optimizer.step()``."""
        group = self.group
        with torch.no_grad():
            live = [i for i, p in enumerate(self.params) if p.grad is not None]
            params = [self.params[i] for i in live]
            grads = [self.params[i].grad for i in live]
            if self.config["optimizer"]["name"] == "sgd":
                buffers = [self.state["momentum_buffer"][i] for i in live]
                sgd_update(
                    params, grads, buffers, weight_decay=group["weight_decay"],
                    momentum=group["momentum"], lr=self.lr, dampening=group["dampening"],
                    nesterov=group["nesterov"], maximize=group["maximize"],
                    foreach=group["foreach"], fused=group["fused"],
                )
                if group["momentum"] != 0:
                    for i, buffer in zip(live, buffers):
                        self.state["momentum_buffer"][i] = buffer
            else:
                beta1, beta2 = group["betas"]
                adam_update(
                    params, grads, [self.state["exp_avg"][i] for i in live],
                    [self.state["exp_avg_sq"][i] for i in live], [],
                    [self.state["step"][i] for i in live], amsgrad=group["amsgrad"],
                    beta1=beta1, beta2=beta2, lr=self.lr, weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=group["maximize"], foreach=group["foreach"],
                    capturable=group["capturable"], differentiable=group["differentiable"],
                    fused=group["fused"], decoupled_weight_decay=group["decoupled_weight_decay"],
                )

    # --- back to the solo replicas ------------------------------------------------------------

    def write_back(self) -> None:
        """Copy the pack's state into each replica's solo model, optimizer and counters, so
        ``Replica.state_dict()`` (checkpoint.pt) and weights.pt are exactly the solo format."""
        stacked = self.model.state_dict()
        name = self.config["optimizer"]["name"]
        for p, replica in enumerate(self.replicas):
            with torch.no_grad():
                for key, tensor in replica.model.state_dict().items():
                    tensor.copy_(stacked[key][p])
            replica.epoch, replica.step = self.epoch, self.step
            optimizer = replica.optimizer
            for group in optimizer.param_groups:
                group["lr"] = self.lr
            for i, param in enumerate(optimizer.param_groups[0]["params"]):
                if name == "sgd":
                    buffer = self.state["momentum_buffer"][i]
                    if buffer is not None:
                        optimizer.state[param] = {"momentum_buffer": buffer[p].clone()}
                elif self.state["step"][i].item() > 0:
                    optimizer.state[param] = {
                        "step": self.state["step"][i].clone(),
                        "exp_avg": self.state["exp_avg"][i][p].clone(),
                        "exp_avg_sq": self.state["exp_avg_sq"][i][p].clone(),
                    }

    # --- data -------------------------------------------------------------------------------

    def _distinct(self, source: str) -> tuple[list[torch.Generator], torch.Tensor]:
        """The distinct generators of ``source`` and, per replica, the index of its own."""
        distinct: list[torch.Generator] = []
        which = []
        for replica in self.replicas:
            generator = replica.generators[source]
            for k, other in enumerate(distinct):
                if other is generator:
                    which.append(k)
                    break
            else:
                which.append(len(distinct))
                distinct.append(generator)
        return distinct, torch.tensor(which, device=self.config["device"])


def _nll_mean_cpu(losses: torch.Tensor) -> torch.Tensor:
    """The mean over the last axis as torch's CPU ``nll_loss(reduction='mean')`` computes it:
    a cascade of 8 partial sums, each level flushed every 2**k additions, then one division.
    Vectorised over the leading axes (one Python iteration per example of a batch)."""
    levels, count = 8, losses.shape[-1]
    power = max(4, math.ceil(math.log2(count)) // levels) if count > 1 else 4
    mask = (1 << power) - 1
    zero = torch.zeros(losses.shape[:-1], dtype=losses.dtype, device=losses.device)
    partial = [zero] * levels
    for b in range(count):
        partial[0] = partial[0] + losses[..., b]
        for j in range(levels - 1):
            if b & (mask << (j * power)):
                break
            partial[j + 1] = partial[j + 1] + partial[j]
            partial[j] = zero
    total = zero
    for value in partial:
        total = total + value
    return total / count


def _epoch_loss(step_losses: list[torch.Tensor], n: int, device: str) -> torch.Tensor:
    """Per replica, the solo loop's ``loss_sum / n``: each step's mean cross-entropy computed as
    ``F.cross_entropy`` computes it (CPU; a plain mean on CUDA), accumulated step by step."""
    by_size: dict[int, list[int]] = {}
    for s, losses in enumerate(step_losses):
        by_size.setdefault(losses.shape[0], []).append(s)
    means: list[torch.Tensor | None] = [None] * len(step_losses)
    for size, steps in by_size.items():
        batch = torch.stack([step_losses[s] for s in steps]).transpose(1, 2)  # (S, P, B)
        values = _nll_mean_cpu(batch) if device == "cpu" else batch.mean(-1)
        for k, s in enumerate(steps):
            means[s] = values[k]
    total = torch.zeros_like(means[0])
    for losses, mean in zip(step_losses, means):
        total += mean * losses.shape[0]
    return total / n


def train_pack_epoch(pack: Pack, data: Dataset) -> torch.Tensor:
    """One pass over the training set for every replica of the pack; returns their mean
    training losses (P,) on the device. No host synchronisation in the step loop."""
    config, model = pack.config, pack.model
    n = len(data.y_train)
    bounds = batch_bounds(n, config["batch_size"])
    augment = config["dataset"]["augment"] and data.is_image
    precision, device = config["precision"], config["device"]
    packs = pack.size
    shufflers, shuffle_of = pack._distinct("shuffle")
    reducers, reduction_of = pack._distinct("reduction")
    augmenters, augment_of = pack._distinct("augment")
    model.train()
    orders = torch.stack([epoch_order(n, g, config["shuffle_window"]) for g in shufflers])
    orders = orders.to(device)[shuffle_of]  # (P, n)
    step_losses = []
    for start, stop in bounds:
        size = stop - start
        perms = torch.stack([within_batch_permutation(size, g) for g in reducers]).to(device)
        index = orders[:, start:stop].gather(1, perms[reduction_of]).t()  # (B, P)
        x, y = data.x_train[index], data.y_train[index]  # (B, P, ...), (B, P)
        if augment:
            draws = [crop_flip_draws(size, g, 4) for g in augmenters]
            offsets = torch.stack([o for o, _ in draws]).to(device)[augment_of]  # (P, 2, B)
            flips = torch.stack([f for _, f in draws]).to(device)[augment_of]  # (P, B)
            x = crop_flip(
                x.flatten(0, 1), offsets.permute(1, 2, 0).flatten(1), flips.t().flatten()
            ).unflatten(0, (size, packs))
        x = data.normalize(x).flatten(1, 2)  # (B, P*C, H, W) or (B, P*D)
        pack.lr = learning_rate(config["schedule"], config["optimizer"]["lr"], pack.step, len(bounds), config["epochs"])
        with autocast(precision, device):
            logits = model(x)
        logits = logits.float().unflatten(1, (packs, -1))  # (B, P, K)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(size, packs)
        for param in pack.params:
            param.grad = None
        losses.mean(0).sum().backward()
        pack.optimizer_step()
        step_losses.append(losses.detach())
        pack.step += 1
    return _epoch_loss(step_losses, n, device)


@torch.no_grad()
def evaluate_pack(pack: Pack, data: Dataset) -> tuple[torch.Tensor, list[float], list[float]]:
    """All replicas in one batched pass: test logits (P, N, K) float32 on the device, and per
    replica accuracy (percent) and cross-entropy (nats), computed as ``train.evaluate`` does."""
    config, model, packs = pack.config, pack.model, pack.size
    model.eval()
    chunks = []
    for start, stop in batch_bounds(len(data.y_test), train.EVAL_BATCH):
        x = data.normalize(data.x_test[start:stop])
        x = x.unsqueeze(1).expand(x.shape[0], packs, *x.shape[1:]).flatten(1, 2)
        with autocast(config["precision"], config["device"]):
            chunks.append(model(x).float().unflatten(1, (packs, -1)))
    logits = torch.cat(chunks).transpose(0, 1).contiguous()  # (P, N, K)
    accuracy = (logits.argmax(dim=2) == data.y_test).float().mean(dim=1) * 100.0
    cross_entropy = torch.stack([F.cross_entropy(logits[p], data.y_test) for p in range(packs)])
    scores = torch.stack([accuracy, cross_entropy]).tolist()  # one host synchronisation
    return logits, scores[0], scores[1]


# ------------------------------------------------------------------------------ a job's pack


def fills_pack(config: dict, conv_mode: str) -> bool:
    """Whether a pack with fewer members than ``pack`` (the last pack of a sweep, or the rest of
    one whose other replicas are finished) is filled up with spare copies of a member.

    Where a replica's arithmetic may depend on how many replicas share a kernel (grouped
    convolutions, batched GEMMs on CUDA), every replica of a configuration must be computed by
    kernels of the same shape, or a ``source=none`` control would differ between packs and a
    resumed pack would not repeat itself. The CPU's split convolutions and per-replica GEMMs are
    the solo computation whatever P is, and need no spares.
    """
    return conv_mode == "grouped" or config["device"] == "cuda"


def _spare(replica: train.Replica, config: dict, data: Dataset) -> train.Replica:
    """A copy of ``replica`` (weights, optimizer, generators) that fills a pack; never recorded."""
    spare = train.new_replica({**config, "replicate": replica.plan.replicate}, data)
    spare.load_state_dict(replica.state_dict())
    return spare


def _train_segment(members: list[tuple[train.Replica, dict]], data: Dataset, stop: int, conv_mode: str) -> None:
    """Train ``members`` (all at one epoch) together up to epoch ``stop``, writing metrics and
    checkpoints as the solo loop does; at ``stop == epochs`` finish every run directory."""
    config = members[0][1]["config"]  # what the members share: all but ``replicate``
    epochs, onset = config["epochs"], config["onset_epoch"]
    flips = "bitflip" in config["source"]["vary"]
    replicas = [replica for replica, _ in members]
    if fills_pack(config, conv_mode):  # kernels of one shape for every replica of the config
        replicas += [_spare(replicas[0], config, data) for _ in range(config["pack"] - len(replicas))]
    pack = Pack(replicas, config, conv_mode)
    final = None
    while pack.epoch < stop:
        if pack.epoch == onset and (onset > 0 or flips):
            # the solo start_of_epoch on the solo replicas: new generators, the bit flip
            pack.write_back()
            for replica in replicas:
                train.start_of_epoch(replica, config)
            pack = Pack(replicas, config, conv_mode)
        else:  # nothing changes in the replicas then, but the low-level switch of an onset sweep
            for replica in replicas:
                train.start_of_epoch(replica, config)
        began = time.perf_counter()
        train_loss = train_pack_epoch(pack, data)
        if config["device"] == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - began) / len(members)  # amortised over the pack
        pack.epoch += 1
        last = pack.epoch == epochs
        for replica in replicas:  # spares too: start_of_epoch reads the epoch
            replica.epoch = pack.epoch
        for replica, _ in members:
            replica.train_seconds += seconds
        if last or pack.epoch % config["eval_every"] == 0:
            logits, accuracy, cross_entropy = evaluate_pack(pack, data)
            losses = train_loss.tolist()
            for p, (replica, member) in enumerate(members):
                replica.optimizer.param_groups[0]["lr"] = pack.lr
                train.record_evaluation(
                    replica, member["directory"], config, losses[p], accuracy[p], cross_entropy[p]
                )
            final = (logits, accuracy, cross_entropy) if last else None
        if not last and pack.epoch % config["checkpoint_every"] == 0:
            pack.write_back()
            for replica, member in members:
                train.write_checkpoint(replica, member["directory"])
    pack.write_back()
    if stop < epochs:
        return
    if final is None:  # epochs == 0: the untrained models
        final = evaluate_pack(pack, data)
    logits, accuracy, cross_entropy = final
    for p, (replica, member) in enumerate(members):
        member["result"] = train.finish_replica(
            replica, member["config"], member["directory"], data, member["lowlevel"],
            logits[p], accuracy[p], cross_entropy[p],
        )


def train_pack(
    jobs: list[tuple[dict, Path]],
    data: Dataset,
    lowlevel: str,
    finished: Callable[[Path, dict], None],
    failed: Callable[[Path], None],
    conv_mode: str | None = None,
) -> None:
    """Train the unfinished replicas ``jobs`` = [(config, directory)] of one job as a pack.

    Each replica opens its run directory as the solo loop does (resuming from its checkpoint);
    one that fails to open fails alone. Replicas at different epochs catch up: the ones furthest
    behind train together until they reach the next ones. ``finished(directory, result)`` and
    ``failed(directory)`` (called inside an ``except`` block) report each replica.
    """
    if not jobs:
        return
    conv_mode = conv_mode or default_conv_mode(jobs[0][0]["device"])
    members = []
    env = {"pack": {"size": jobs[0][0]["pack"], "members": [c["replicate"] for c, _ in jobs],
                    "mode": "fused", "conv_mode": conv_mode}}
    for config, directory in jobs:
        try:
            replica = train.open_replica(config, directory, data, lowlevel, env)
            if 0 < config["onset_epoch"] <= config["epochs"] and replica.epoch < config["onset_epoch"]:
                # the shared prefix of an onset sweep, trained once for all (nondet/onset.py)
                train.fork_from_prefix(replica, config, Path(directory), data)
        except Exception:
            failed(directory)
            continue
        members.append((replica, {"config": config, "directory": directory, "lowlevel": lowlevel}))
    log.info("a pack of %d replicas in one process (conv_mode=%s)", len(members), conv_mode)
    epochs = jobs[0][0]["epochs"]
    while members:
        start = min(r.epoch for r, _ in members)
        behind = [m for m in members if m[0].epoch == start]
        ahead = [r.epoch for r, _ in members if r.epoch > start]
        stop = min(ahead) if ahead else epochs
        if ahead:
            log.info("replicas at epoch %d catch up with those at epoch %d", start, stop)
        try:
            _train_segment(behind, data, stop, conv_mode)
        except Exception:
            for _, member in behind:
                failed(member["directory"])
            stop = epochs
        if stop == epochs:
            for _, member in behind:
                if "result" in member:
                    finished(member["directory"], member["result"])
            gone = {id(m) for m in behind}
            members = [m for m in members if id(m) not in gone]
