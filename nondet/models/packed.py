"""Packed layers: P replicas of a layer as one module, so a model's own ``forward`` runs unchanged
with its layers swapped (``pack_model``). Every tensor keeps the solo name with shape
``(P, *solo shape)``, so a replica's state is a slice. Used by the image step (nondet/pack.py).

Two layouts of the activations:

- **folded** (convolutional models): the replica axis folded into the channel (or feature) axis,
  ``(B, P*C, H, W)`` or ``(B, P*F)``, so convolutions, batch norm and pooling see one batch.
- **replica-major** (``linear`` and ``mlp``, whose layers are linear, elementwise, dropout and a
  flatten): ``(P, B, F)``, each replica's activations one contiguous block, so every GEMM of the
  pack reads and writes its operands in place, with no transposed copy between layers (about a
  fifth of a step of the default MLP, docs/benchmarks.md).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nondet.models.dropout import SeededDropout
from nondet.models.activations import SmeLU
from nondet.models.cnn1d import CNN1D
from nondet.models.layers import GlobalAvgPool
from nondet.models.resnet import BasicBlock, ResNet
from nondet.models.shallow import MLP, Conv1Net, LinearClassifier

# Modules that act on each channel (or element) alone, so the folded replica axis passes through.
_PER_CHANNEL = (
    nn.Sequential, nn.Identity, nn.AvgPool2d, GlobalAvgPool,
    nn.ReLU, nn.GELU, nn.SiLU, nn.Softplus, nn.Tanh, nn.LeakyReLU, SmeLU,
    BasicBlock, ResNet, MLP, LinearClassifier, Conv1Net, CNN1D,
)


# Modules that act on each element alone, whatever the layout.
_ELEMENTWISE = (nn.Identity, nn.ReLU, nn.GELU, nn.SiLU, nn.Softplus, nn.Tanh, nn.LeakyReLU, SmeLU)


class NotPackableError(TypeError):
    pass


def is_replica_major(model: nn.Module) -> bool:
    """Whether a pack of ``model`` keeps the replica axis first, ``(P, B, ...)``: a packed model
    made by ``pack_model`` for a model whose layers are all linear, elementwise, dropout or a
    flatten (``linear``, ``mlp``)."""
    return getattr(model, "replica_major", False)


def _dense_only(template: nn.Module) -> bool:
    """Whether ``template`` is one of nondet's dense models built only of linear layers,
    elementwise activations, dropout and flattens (whose ``forward`` composes its children and
    nothing else), so its pack can run replica-major."""
    leaves = (nn.Linear, SeededDropout, nn.Flatten, nn.Sequential, *_ELEMENTWISE)
    return isinstance(template, (LinearClassifier, MLP)) and all(
        isinstance(m, leaves) for m in template.modules() if m is not template
    )



def _gemm_split(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(bias[p] +) a[p] @ b[p] as a (P, M, N) view of a contiguous (M, P, N) tensor, one GEMM per
    replica: into that non-contiguous view ``baddbmm_`` takes its per-batch path, one ``addmm``
    per replica, in the shape, strides and transposition of the solo layer's call."""
    packs, rows, cols = a.shape[0], a.shape[1], b.shape[2]
    if bias is None:
        out = a.new_empty(rows, packs, cols)
    else:
        out = bias.unsqueeze(0).expand(rows, packs, cols).contiguous()
    view, beta = out.transpose(0, 1), 0 if bias is None else 1
    if view.device.type == "cpu" and view.is_contiguous():
        for p in range(packs):  # P == 1 or M == 1: no per-batch path to rely on
            view[p].addmm_(a[p], b[p], beta=beta)
    else:
        view.baddbmm_(a, b, beta=beta)
    return view


def _gemm_batched(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(bias[p] +) a[p] @ b[p] as one contiguous (P, M, N) tensor: one batched GEMM."""
    packs, rows, cols = a.shape[0], a.shape[1], b.shape[2]
    if bias is None:
        return torch.bmm(a, b)
    out = bias.unsqueeze(1).expand(packs, rows, cols).contiguous()
    return out.baddbmm_(a, b)


def _gemm_solo(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(bias[p] +) a[p] @ b[p] as one contiguous (P, M, N) tensor, each replica's product the
    very call its layer makes alone: operands copied into fresh tensors (a solo layer's tensors
    are its own allocations, and MKL's result depends on where an operand starts: measured, an
    operand or a result 4, 8 or 12 bytes off a 16-byte boundary rounds differently), the
    product a fresh tensor (``torch.mm``, or ``torch.addmm`` with the bias)."""
    outs = []
    for p in range(a.shape[0]):
        x, y = a[p].clone(), b[p].clone()
        outs.append(torch.mm(x, y) if bias is None else torch.addmm(bias[p], x, y))
    return torch.stack(outs)


GEMM_WAYS = ("batched", "split", "solo")  # fastest first
# (layouts and alignments of a and b, bias or not, dtype, threads) -> the fastest exact way
_GEMM_WAY: dict[tuple, str] = {}


def _random_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random values in a tensor of ``t``'s shape and strides that starts at the same offset
    from a 64-byte boundary as ``t``, so its replicas' slices are aligned as ``t``'s are."""
    span = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
    size = t.element_size()
    buffer = torch.empty(span + 64 // size, dtype=t.dtype, device=t.device)
    shift = (t.data_ptr() - buffer.data_ptr()) % 64 // size
    out = buffer.as_strided(t.shape, t.stride(), shift)
    return out.copy_(torch.randn(t.shape, generator=generator))


def _gemm_key(a: torch.Tensor, b: torch.Tensor, bias: bool) -> tuple:
    return (tuple(a.shape), a.stride(), a.data_ptr() % 64, tuple(b.shape), b.stride(), b.data_ptr() % 64,
            bias, a.dtype, torch.get_num_threads())


def gemm_way(a: torch.Tensor, b: torch.Tensor, bias: bool) -> str:
    """The fastest of ``GEMM_WAYS`` that computes, bit for bit, what each replica's layer
    computes alone (``_gemm_solo``), for operands laid out and aligned as ``a`` and ``b``, on
    this machine with this many threads.

    A batched GEMM is several times faster for a pack's small products, but MKL picks its kernels
    by shape, layout, alignment, batch count and thread count: some batched kernels (measured: the
    output layer's weight gradient of the default MLP, with 2 threads) round differently from the
    single GEMM that a replica alone calls, and so does a single GEMM on a replica's slice that
    starts off a 16-byte boundary (a layer 5, 6 or 7 wide: docs/benchmarks.md). So each layout is
    tried once per process, on two random draws laid out and aligned as the real operands: equal
    products mean the same kernel (another summation order changes some bits of almost any
    random product). On CUDA, where nothing is promised bitwise: always batched.
    """
    if a.device.type != "cpu":
        return "batched"
    key = _gemm_key(a, b, bias)
    way = _GEMM_WAY.get(key)
    if way is None:
        generator = torch.Generator().manual_seed(0)
        exact = {"batched": True, "split": True}
        for _ in range(2):
            x, y = _random_like(a, generator), _random_like(b, generator)
            c = torch.randn((a.shape[0], b.shape[2]), generator=generator).to(a.dtype) if bias else None
            solo = _gemm_solo(x, y, c)
            exact["batched"] &= torch.equal(_gemm_batched(x, y, c), solo)
            exact["split"] &= torch.equal(_gemm_split(x, y, c), solo)
        way = next((w for w in GEMM_WAYS[:2] if exact[w]), "solo")
        _GEMM_WAY[key] = way
    return way


def packed_gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, batch_major: bool) -> torch.Tensor:
    """(bias[p] +) a[p] @ b[p] for every replica p, on the CPU bitwise the GEMM each replica
    makes alone (``gemm_way``); a contiguous (M, P, N) tensor if ``batch_major``, else (P, M, N)."""
    way = gemm_way(a, b, bias is not None)
    if way == "split":
        out = _gemm_split(a, b, bias)
        return out.transpose(0, 1) if batch_major else out.contiguous()
    out = _gemm_batched(a, b, bias) if way == "batched" else _gemm_solo(a, b, bias)
    return out.transpose(0, 1).contiguous() if batch_major else out


class _PackedLinearFunction(torch.autograd.Function):
    """y[p] = x[p] @ w[p].T + b[p] for w (P, O, I), b (P, O); x and y folded, (B, P, I) ->
    (B, P, O), or replica-major, (P, B, I) -> (P, B, O).

    The backward mirrors the autograd of ``F.linear`` = ``addmm(b, x, w.t())`` GEMM for GEMM:
    grad_x = grad @ w and grad_w = grad.t() @ x (torch's ``mm_mat2_backward`` for a transposed
    mat2), grad_b = the sum of grad over the batch, reduced per replica over a (P, B, O) tensor
    as solo reduces a (B, O) one.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, replica_major):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.replica_major = bias is not None, replica_major
        if replica_major:
            return packed_gemm(x, weight.transpose(1, 2), bias, batch_major=False)
        return packed_gemm(x.transpose(0, 1), weight.transpose(1, 2), bias, batch_major=True)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.replica_major:  # grad (P, B, O)
            if ctx.needs_input_grad[0]:
                grad_x = packed_gemm(grad, weight, None, batch_major=False)
            if ctx.needs_input_grad[1]:
                grad_w = packed_gemm(grad.transpose(1, 2), x, None, batch_major=False)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.sum(1)
            return grad_x, grad_w, grad_b, None
        if ctx.needs_input_grad[0]:  # grad (B, P, O)
            grad_x = packed_gemm(grad.transpose(0, 1), weight, None, batch_major=True)
        if ctx.needs_input_grad[1]:
            grad_w = packed_gemm(grad.permute(1, 2, 0), x.transpose(0, 1), None, batch_major=False)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.transpose(0, 1).contiguous().sum(1)
        return grad_x, grad_w, grad_b, None


class PackedLinear(nn.Module):
    """P ``nn.Linear`` layers: (B, P*I) -> (B, P*O) folded, or (P, B, I) -> (P, B, O)
    replica-major; weight (P, O, I), bias (P, O)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, replica_major: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.replica_major = replica_major

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packs, outputs, inputs = self.weight.shape
        if not self.replica_major:
            x = x.reshape(x.shape[0], packs, inputs)
        weight, bias = self.weight, self.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # autocast does not reach inside an autograd.Function: cast here, as autocast would.
            dtype = torch.get_autocast_dtype(device_type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            with torch.autocast(device_type, enabled=False):
                out = _PackedLinearFunction.apply(x.contiguous(), weight, bias, self.replica_major)
        else:
            out = _PackedLinearFunction.apply(x.contiguous(), weight, bias, self.replica_major)
        return out if self.replica_major else out.reshape(out.shape[0], packs * outputs)


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
    ``generators[p]``; replicas that share a generator object share the one draw. The masks
    are joined along the feature axis (folded) or stacked first (replica-major)."""

    def __init__(self, rate: float, generators: list[torch.Generator], replica_major: bool = False) -> None:
        super().__init__()
        self.p = float(rate)
        self.generators = generators
        self.replica_major = replica_major

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask_for(x)
        return x if mask is None else x * mask

    def mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """The masks of the replicas for ``x``, stacked or joined as ``x`` is laid out, drawn
        from their generators; None where the layer passes ``x`` through (evaluation, rate 0)."""
        if not self.training or self.p == 0.0:
            return None
        packs = len(self.generators)
        if self.replica_major:
            shape = tuple(x.shape[1:])
        else:
            shape = (x.shape[0], x.shape[1] // packs, *x.shape[2:])
        drawn: dict[int, torch.Tensor] = {}
        for generator in self.generators:
            if id(generator) not in drawn:
                drawn[id(generator)] = dropout_mask(shape, self.p, generator)
        masks = [drawn[id(g)] for g in self.generators]
        mask = torch.stack(masks) if self.replica_major else torch.cat(masks, dim=1)
        return mask.to(device=x.device, dtype=x.dtype)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).clone()


def _pack_children(module: nn.Module, sources: list[nn.Module], dropout_generators, conv_mode,
                   replica_major: bool) -> None:
    for name, child in list(module.named_children()):
        originals = [getattr(source, name) for source in sources]
        if isinstance(child, nn.Linear):
            packed = PackedLinear(
                _stack([m.weight for m in originals]),
                None if child.bias is None else _stack([m.bias for m in originals]),
                replica_major,
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
            packed = PackedDropout(child.p, dropout_generators, replica_major)
        elif isinstance(child, nn.Flatten):
            if child.start_dim != 1 or child.end_dim != -1:
                raise NotPackableError(f"{name}: Flatten({child.start_dim}, {child.end_dim})")
            if not replica_major:
                continue
            packed = nn.Flatten(2, -1)  # (P, B, ...) -> (P, B, F)
        elif isinstance(child, _PER_CHANNEL):
            if any(True for _ in child.parameters(recurse=False)) or any(True for _ in child.buffers(recurse=False)):
                raise NotPackableError(f"{name}: {type(child).__name__} holds its own tensors")
            _pack_children(child, originals, dropout_generators, conv_mode, replica_major)
            continue
        else:
            raise NotPackableError(f"{name}: no packed form of {type(child).__name__}")
        setattr(module, name, packed)


def pack_model(models: list[nn.Module], dropout_generators: list[torch.Generator], conv_mode: str) -> nn.Module:
    """One module computing all ``models`` (same architecture), replica-major where every layer
    allows it (``is_replica_major``), folded elsewhere; its ``state_dict`` has the solo names
    with every tensor stacked to (P, *solo shape)."""
    template = models[0]
    memo = {id(m.generator): None for m in template.modules() if isinstance(m, SeededDropout)}
    packed = copy.deepcopy(template, memo)
    if not isinstance(packed, _PER_CHANNEL):
        raise NotPackableError(f"no packed form of {type(packed).__name__}")
    replica_major = _dense_only(template)
    _pack_children(packed, models, dropout_generators, conv_mode, replica_major)
    packed.replica_major = replica_major
    solo, stacked = template.state_dict(), packed.state_dict()
    if list(solo) != list(stacked) or any(
        stacked[k].shape != (len(models), *solo[k].shape) for k in solo
    ):
        raise NotPackableError("the packed model does not mirror the solo model's state")
    return packed.to(next(template.parameters()).device)
