"""The image family of the run lifecycle (``nondet/train.py``): its replica, its step and its
evaluation, over a pack of P replicas trained as one fused computation; a solo run is a pack of
one (the replica's own model and optimizer, the solo computation itself).

    python launch.py -m source=init replicates=100 pack=25     # 4 jobs of 25 replicas each
    python launch.py -m source=init                            # pack=auto: fused where it pays

The protocol trains R replicas of one recipe; small models leave a GPU (and a CPU) idle when they
are trained one per process. A pack trains P replicas of the same configuration and source
together, one forward and one backward per step for all of them:

- Parameters, buffers and optimizer state are stacked along a leading replica axis, ``(P, *shape)``,
  under the solo model's own names. The models' own ``forward`` methods run unchanged with their
  layers swapped (``nondet.models.packed``): a convolution becomes a grouped one (or P
  convolutions, see ``conv_mode``), BatchNorm over P*C channels keeps running statistics per
  replica, a linear layer becomes one batched GEMM (or P GEMMs, where the batched kernel would
  round differently: ``nondet.models.packed.gemm_way``), dropout draws each replica's
  mask from that replica's generator. Activations of ``linear`` and ``mlp`` packs are
  replica-major, ``(P, B, F)``; those of convolutional packs keep the replica axis folded into
  the channel axis, ``(B, P*C, H, W)``, so that convolutions, batch norm and pooling see one batch.
- Everything random comes from each replica's own generators, drawn with the same calls in the
  same order as a replica alone: shuffle order, within-batch permutation,
  crop offsets and flips, dropout masks, bit flip. Replicas whose generator of a per-step source is
  in the same state share one generator object (their draws are identical anyway), so
  ``source=none`` draws once per step, not P times. Under ``source=data`` each replica's epoch
  order permutes positions within its own resample of the training set (``Replica.resample``,
  the same count for all, so the pack stays rectangular).
- The learning rate is ``nondet.optim.learning_rate(step)``, the same for all. The optimizer
  update is torch's own functional ``sgd``/``adam`` applied to the stacked tensors, with the
  hyperparameters and flags that the replicas' own ``torch.optim`` objects hold
  (``nondet.optim.param_group``), so the elementwise arithmetic is torch's.
- Each replica keeps its run directory and its ``checkpoint.pt`` in exactly the solo format: the
  pack writes its state back into the replicas' solo model and optimizer before a checkpoint
  (which is when those optimizers are built: the first ``torch.optim`` object of a process
  imports ``torch._dynamo``, about a second) and the model at the end, and ``nondet.train`` writes the files (config, env, seeds, metrics, logits, labels,
  weights, result last). ``env.json`` adds ``pack`` (members, mode); ``train_seconds`` is the
  pack's time divided by the number of replicas trained together (amortised, so it sums to the
  job's time).

Exactness, measured on the CPU in strict fp32 (tests/test_pack.py, docs/benchmarks.md):

- ``linear`` and ``mlp``: a replica trained in a pack is bitwise identical to the same replica
  trained alone (logits, weights, metrics). Each GEMM has the orientation of the solo layer's
  (``F.linear`` and its autograd), batched where a trial on this machine and thread count finds
  the batched kernel computing each replica's bits alone, one per replica elsewhere (on fresh
  copies of its operands where a replica's slice starts off a 16-byte boundary, which MKL
  rounds differently); the bias gradient and the training loss reduce in the solo order.
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

Your own model (``model=custom``) packs through ``torch.func`` (``nondet/funcpack.py``) where one
step of a pack is what its replicas compute alone (on the CPU: bit for bit, for every batch shape
of the job, training and evaluation, tried when the job starts); its training steps
run with the global generator holding the dropout stream (``Pack.randomness``).

The job trains its replicas one after another instead (each a pack of one, through the same
loop), with a log line, for models without a packed form (vgg11, shufflenetv2_050: max-pooling and
channel shuffles would mix replicas), on the CPU for convolutional models too large to gain from a
pack (``sequential_reason``), and with ``pack=auto`` on a GPU (``ImageFamily.apart``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.optim.adam import adam as adam_update
from torch.optim.sgd import sgd as sgd_update

from nondet import funcpack, records, train, usermodel
from nondet.backend import autocast
from nondet.data import Dataset
from nondet.models import build_model, set_dropout_generator
from nondet.models.dense import DenseStep
from nondet.models.packed import _stack, is_replica_major, pack_model
from nondet.optim import build_optimizer, learning_rate, param_group
from nondet.pipeline import (
    batch_bounds, crop_flip, crop_flip_draws, epoch_order, resample, resample_size,
    within_batch_permutation,
)
from nondet.seeds import SeedPlan

log = logging.getLogger("nondet")

# Models whose every layer has a packed form below.
PACKABLE_MODELS = frozenset({"linear", "mlp", "conv1", "cnn1d", "resnet6", "resnet10", "resnet14", "resnet18"})
# On the CPU, convolutional packs whose first-layer output per replica exceeds this many bytes
# train one replica at a time instead (see sequential_reason).
CPU_CONV_ACTIVATIONS = 128 * 1024
# Per-step sources: replicas whose generator is in the same state share it within a pack.
SHARED_SOURCES = ("shuffle", "augment", "dropout", "reduction")

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
    """The training state of replicas that stand at the same epoch and step: one fused model over
    stacked tensors, or, for a pack of one (a solo run, or a model without a packed form), the
    replica's own model and ``torch.optim`` optimizer, which is the solo computation itself."""

    def __init__(self, replicas: list[train.Replica], config: dict, conv_mode: str) -> None:
        epochs = {(r.epoch, r.step) for r in replicas}
        if len(epochs) != 1:
            raise ValueError(f"a pack needs replicas at one epoch and step, got {sorted(epochs)}")
        self.replicas, self.config = replicas, config
        self.epoch, self.step = replicas[0].epoch, replicas[0].step
        self.group = param_group(config["optimizer"])
        self.lr = replicas[0].optimizer.param_groups[0]["lr"] if replicas[0].has_optimizer else self.group["lr"]
        self.direct = len(replicas) == 1
        if self.direct:
            self.model = replicas[0].model
            self.params = list(self.model.parameters())
            return
        _share_generators(replicas)
        for replica in replicas:  # a pack trains: the replica that trained a shared prefix and
            replica.model.train()  # evaluated it comes in eval mode, a forked one in train mode
        if usermodel.is_custom_model(replicas[0].model):  # your own model: through torch.func
            self.model = funcpack.pack_model([r.model for r in replicas])
        else:
            self.model = pack_model(
                [r.model for r in replicas], [r.generators["dropout"] for r in replicas], conv_mode
            )
        self.names = [name for name, _ in replicas[0].model.named_parameters()]
        params = dict(self.model.named_parameters())
        self.params = [params[name] for name in self.names]
        self._load_optimizer_state()

    @property
    def size(self) -> int:
        return len(self.replicas)

    def randomness(self, training: bool):
        """Where a model of yours draws its random numbers: in training, the global generator
        holds the dropout source's stream (one stream: a torch.func pack shares it); in
        evaluation, a fixed stream that touches nothing. nondet's own models draw from their
        generators explicitly."""
        if not usermodel.is_custom_model(self.replicas[0].model):
            return contextlib.nullcontext()
        if not training:
            return usermodel.forked_global_rng(0)
        # The first replica's stream (no per-step device copy of which replica shares which).
        return usermodel.global_rng_from([self.replicas[0].generators["dropout"]])

    # --- optimizer --------------------------------------------------------------------------

    def _solo_states(self, replica: train.Replica) -> list[dict]:
        if not replica.has_optimizer:  # a fresh replica: no state yet
            return [{} for _ in self.params]
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
        if self.direct:
            for group in self.replicas[0].optimizer.param_groups:
                group["lr"] = self.lr
            self.replicas[0].optimizer.step()
            return
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

    def write_back(self, with_optimizer: bool = True) -> None:
        """Copy the pack's state into each replica's solo model, optimizer and counters, so
        ``Replica.state_dict()`` (checkpoint.pt) and weights.pt are exactly the solo format.
        ``with_optimizer=False``: the runs are finished, their optimizer state goes nowhere."""
        if self.direct:
            replica = self.replicas[0]
            replica.epoch, replica.step = self.epoch, self.step
            if replica.has_optimizer:
                for group in replica.optimizer.param_groups:
                    group["lr"] = self.lr
            return
        stacked = self.model.state_dict()
        name = self.config["optimizer"]["name"]
        for p, replica in enumerate(self.replicas):
            with torch.no_grad():
                for key, tensor in replica.model.state_dict().items():
                    tensor.copy_(stacked[key][p])
            replica.epoch, replica.step = self.epoch, self.step
            if not with_optimizer:
                continue
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
    """Per replica, a solo loop's ``loss_sum / n`` from each step's losses (P, B): each step's
    mean cross-entropy computed as ``F.cross_entropy`` computes it (CPU; a plain mean on CUDA),
    accumulated step by step."""
    by_size: dict[int, list[int]] = {}
    for s, losses in enumerate(step_losses):
        by_size.setdefault(losses.shape[1], []).append(s)
    means: list[torch.Tensor | None] = [None] * len(step_losses)
    for size, steps in by_size.items():
        batch = torch.stack([step_losses[s] for s in steps])  # (S, P, B)
        values = _nll_mean_cpu(batch) if device == "cpu" else batch.mean(-1)
        for k, s in enumerate(steps):
            means[s] = values[k]
    total = torch.zeros_like(means[0])
    for losses, mean in zip(step_losses, means):
        total += mean * losses.shape[1]
    return total / n


def _resamples(pack: Pack) -> torch.Tensor | None:
    """The replicas' resamples of the training set (P, m) (``source=data``), or None when they
    train on all of it. Every replica of a pack shares the config, so all or none resample, and
    all draw the same count."""
    indices = [replica.resample for replica in pack.replicas]
    if all(i is None for i in indices):
        return None
    if any(i is None for i in indices) or len({len(i) for i in indices}) != 1:
        raise ValueError("a pack mixes replicas with and without source=data resamples, or of "
                         "different sizes; train them in separate jobs")
    return torch.stack(indices).to(pack.config["device"])


def train_pack_epoch(
    pack: Pack, data: Dataset, after_step: Callable[[int], None] | None = None
) -> torch.Tensor:
    """One pass over the training set for every replica of the pack; returns their mean
    training losses (P,) on the device. No host synchronisation in the step loop.
    ``after_step(step)`` runs after every optimizer step (snapshots are taken there)."""
    config, model = pack.config, pack.model
    resamples = _resamples(pack)
    n = len(data.y_train) if resamples is None else resamples.shape[1]
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
    if resamples is not None:  # source=data: the order permutes positions within each resample
        orders = resamples.gather(1, orders)
    major = is_replica_major(model)  # activations (P, B, ...), else folded (B, P*C, ...)
    by_hand = None if pack.direct else DenseStep.of(model, precision, device)  # autograd's bits, faster
    step_losses = []
    for start, stop in bounds:
        size = stop - start
        perms = torch.stack([within_batch_permutation(size, g) for g in reducers]).to(device)
        index = orders[:, start:stop].gather(1, perms[reduction_of])  # (P, B)
        if not major:
            index = index.t()  # (B, P)
        x, y = data.x_train[index], data.y_train[index]  # (P, B, ...) or (B, P, ...)
        if augment:
            draws = [crop_flip_draws(size, g, 4) for g in augmenters]
            offsets = torch.stack([o for o, _ in draws]).to(device)[augment_of]  # (P, 2, B)
            flips = torch.stack([f for _, f in draws]).to(device)[augment_of]  # (P, B)
            if major:
                offsets, flips = offsets.transpose(0, 1).flatten(1), flips.flatten()
            else:
                offsets, flips = offsets.permute(1, 2, 0).flatten(1), flips.t().flatten()
            x = crop_flip(x.flatten(0, 1), offsets, flips).unflatten(0, index.shape)
        x = data.normalize(x)
        if not major:
            x = x.flatten(1, 2)  # (B, P*C, H, W) or (B, P*D)
        pack.lr = learning_rate(config["schedule"], config["optimizer"]["lr"], pack.step, len(bounds), config["epochs"])
        if by_hand is not None:
            losses = by_hand(x, y)  # (P, B), gradients set
        else:
            with pack.randomness(training=True):
                with autocast(precision, device):
                    logits = model(x)
                if not major:
                    logits = logits.unflatten(1, (packs, -1))  # (B, P, K)
                logits = logits.float()
                losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(index.shape)
                for param in pack.params:
                    param.grad = None
                losses.mean(1 if major else 0).sum().backward()
            losses = losses.detach() if major else losses.detach().t()  # (P, B)
        pack.optimizer_step()
        step_losses.append(losses)
        pack.step += 1
        if after_step is not None:
            after_step(pack.step)
    return _epoch_loss(step_losses, n, device)


@torch.no_grad()
def evaluate_pack(pack: Pack, data: Dataset) -> tuple[torch.Tensor, list[float], list[float]]:
    """All replicas in one batched pass: test logits (P, N, K) float32 on the device, and per
    replica accuracy (percent) and cross-entropy (nats), computed as ``F.cross_entropy`` on one replica's logits."""
    config, model, packs = pack.config, pack.model, pack.size
    model.eval()
    major = is_replica_major(model)
    chunks = []
    for start, stop in batch_bounds(len(data.y_test), train.EVAL_BATCH):
        x = data.normalize(data.x_test[start:stop])
        if major:  # (P, B, ...): every replica reads the same block
            x = x.unsqueeze(0).expand(packs, *x.shape)
        else:
            x = x.unsqueeze(1).expand(x.shape[0], packs, *x.shape[1:]).flatten(1, 2)
        with pack.randomness(training=False), autocast(config["precision"], config["device"]):
            out = model(x)
        chunks.append(out.float() if major else out.float().unflatten(1, (packs, -1)).transpose(0, 1))
    logits = torch.cat(chunks, dim=1).contiguous()  # (P, N, K)
    accuracy = (logits.argmax(dim=2) == data.y_test).float().mean(dim=1) * 100.0
    cross_entropy = torch.stack([F.cross_entropy(logits[p], data.y_test) for p in range(packs)])
    scores = torch.stack([accuracy, cross_entropy]).tolist()  # one host synchronisation
    return logits, scores[0], scores[1]


# ------------------------------------------------------------------------------ the image family


def fills_pack(config: dict, conv_mode: str) -> bool:
    """Whether a pack with fewer members than ``pack`` (the last pack of a sweep, or the rest of
    one whose other replicas are finished) is filled up with spare copies of a member.

    Where a replica's arithmetic may depend on how many replicas share a kernel (grouped
    convolutions, batched GEMMs on CUDA), every replica of a configuration must be computed by
    kernels of the same shape, or a ``source=none`` control would differ between packs and a
    resumed pack would not repeat itself. The CPU's split convolutions and per-replica GEMMs are
    the solo computation whatever P is, and need no spares.
    """
    explicit = config["pack"] != "auto" and config["pack"] > 1
    return explicit and (conv_mode == "grouped" or config["device"] == "cuda")


def new_replica(config: dict, data: Dataset) -> train.Replica:
    """A freshly initialised image replica: generators, model (from the init generator), optimizer."""
    device = config["device"]
    plan = SeedPlan.for_run(config["base_seed"], config["source"]["vary"], config["replicate"])
    generators = plan.generators(device, before_onset=config["onset_epoch"] > 0)
    model = build_model(
        OmegaConf.create(config["model"]), data.input_shape, data.num_classes, generators["init"]
    ).to(device)
    set_dropout_generator(model, generators["dropout"])
    indices = None
    if plan.varies("data"):  # only then: a run that keeps its data draws nothing more
        indices = resample(len(data.y_train), config["data_resample"], generators["data"],
                           config["data_order"]).to(device)
    return train.Replica(plan=plan, model=model, generators=generators, resample=indices,
                         make_optimizer=lambda: build_optimizer(config["optimizer"], model.parameters()))


class ImageGroup:
    """The image step and evaluation of ``nondet.train``'s loop, over a ``Pack``."""

    def __init__(self, replicas: list[train.Replica], config: dict, data: Dataset, conv_mode: str) -> None:
        self.pack = Pack(replicas, config, conv_mode)
        self.data = data

    @property
    def epoch(self) -> int:
        return self.pack.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.pack.epoch = value

    @property
    def step(self) -> int:
        return self.pack.step

    @property
    def lr(self) -> float:
        return self.pack.lr

    def train_epoch(self, after_step: Callable[[int], None] | None) -> torch.Tensor:
        return train_pack_epoch(self.pack, self.data, after_step)

    def evaluate(self) -> list[train.Evaluation]:
        logits, accuracy, cross_entropy = evaluate_pack(self.pack, self.data)
        labels = self.data.y_test
        return [train.Evaluation(accuracy[p], cross_entropy[p], logits=logits[p], labels=labels)
                for p in range(len(accuracy))]

    def end_of_epoch(self, report: bool) -> list[train.Evaluation] | None:
        return self.evaluate() if report else None

    def train_mode(self) -> None:
        self.pack.model.train()

    def write_back(self, with_optimizer: bool = True) -> None:
        self.pack.write_back(with_optimizer)


# (configuration, pack size, threads, evaluation batch) -> why a pack of your model is not used
_CUSTOM_REASONS: dict[tuple, str | None] = {}


class ImageFamily:
    """Image classifiers: a pack of P replicas (P = 1 for a solo run) through one step loop."""

    def __init__(self, conv_mode: str | None = None) -> None:
        self.conv_mode = conv_mode

    def new_replica(self, config: dict, data: Dataset) -> train.Replica:
        return new_replica(config, data)

    def steps_per_epoch(self, config: dict, data: Dataset) -> int:
        n = len(data.y_train)
        if "data" in config["source"]["vary"]:
            n = resample_size(n, config["data_resample"])
        return len(batch_bounds(n, config["batch_size"]))

    def apart(self, config: dict, data: Dataset, size: int | None = None) -> str | None:
        """Why this job's replicas (``size`` of them; default the job's share of the sweep,
        ``pack_step``) train one at a time, or None when they train as one pack."""
        if config["pack"] == 1:
            return "pack=1"
        if config["pack"] == "auto" and config["device"] != "cpu":
            return ("pack=auto fuses replicas on the CPU only, where a pack is bitwise the solo "
                    "computation (set pack=P to fuse them on a GPU)")
        if usermodel.is_custom(config["model"]):
            from nondet.job import pack_step

            size = pack_step(config["pack"], config["replicates"]) if size is None else size
            return self._custom_reason(config, data, size) if size > 1 else None
        return sequential_reason(config, data)

    def _custom_reason(self, config: dict, data: Dataset, size: int) -> str | None:
        """Your own model packs where torch.func trains ``size`` of its replicas as they train
        alone (``nondet.funcpack.pack_reason``), tried once per configuration, pack size and
        thread count in this process, on one step of every batch shape the job will see: the
        full and the short last training batch, the full and the last evaluation chunk (the
        CPU's batched kernels round by shape, batch count, alignment and thread count)."""
        key = (records.config_hash({**config, "replicate": 0}), size, torch.get_num_threads(), train.EVAL_BATCH)
        if key not in _CUSTOM_REASONS:  # once per launch, not once per job
            replicas = [new_replica({**config, "replicate": r}, data) for r in range(size)]
            n = len(data.y_train)
            if "data" in config["source"]["vary"]:
                n = resample_size(n, config["data_resample"])
            sizes = [stop - start for start, stop in batch_bounds(n, config["batch_size"])]
            tests = [stop - start for start, stop in batch_bounds(len(data.y_test), train.EVAL_BATCH)]
            x, y = data.normalize(data.x_train[:sizes[0]]), data.y_train[:sizes[0]]
            shared = all(torch.equal(replicas[0].generators["dropout"].get_state(), r.generators["dropout"].get_state())
                         for r in replicas[1:])
            with autocast(config["precision"], config["device"]):
                _CUSTOM_REASONS[key] = funcpack.pack_reason(
                    [r.model for r in replicas], x, y, shared, sizes=sizes,
                    x_test=data.normalize(data.x_test[:tests[0]]), test_sizes=tests,
                )
        return _CUSTOM_REASONS[key]

    def _mode(self, config: dict) -> str:
        return self.conv_mode or default_conv_mode(config["device"])

    def env(self, config: dict, replicates: list[int]) -> dict:
        return {"pack": {"size": config["pack"], "members": replicates, "mode": "fused",
                         "conv_mode": self._mode(config)}}

    def with_spares(self, replicas: list[train.Replica], config: dict, data: Dataset) -> list[train.Replica]:
        """``replicas`` and, where ``fills_pack``, spare copies of the first up to ``pack``."""
        if not fills_pack(config, self._mode(config)):
            return replicas
        spares = []
        for _ in range(config["pack"] - len(replicas)):
            spare = new_replica({**config, "replicate": replicas[0].plan.replicate}, data)
            spare.load_state_dict(replicas[0].state_dict())
            spares.append(spare)
        return replicas + spares

    def group(self, replicas: list[train.Replica], config: dict, data: Dataset) -> ImageGroup:
        return ImageGroup(replicas, config, data, self._mode(config))

    def weights(self, replica: train.Replica) -> dict:
        return {k: v.detach().cpu() for k, v in replica.model.state_dict().items()}


def train_epoch(replica: train.Replica, config: dict, data: Dataset) -> torch.Tensor:
    """One epoch of one replica, a pack of one (``benchmarks/throughput.py`` times it); returns
    its mean training loss on the device."""
    group = Pack([replica], config, default_conv_mode(config["device"]))
    loss = train_pack_epoch(group, data)
    group.write_back()
    return loss[0]
