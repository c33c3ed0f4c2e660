"""The training step of a replica-major pack of nondet's dense models (``linear``, and ``mlp`` with
ReLU, GELU, SiLU, tanh, softplus or leaky ReLU) on the CPU in fp32, without autograd's engine.

In a pack of 16 default MLPs the kernels are about half of a step; the rest is autograd itself:
recording the graph in the forward, the engine, the Python ``backward`` of ``PackedLinear`` and its
gradient accumulation (docs/benchmarks.md, "The dense step by hand"). These models' backward is a
fixed chain, so ``DenseStep`` runs it directly: the ATen kernels autograd runs for them
(``_log_softmax``/``nll_loss_forward``, ``nll_loss_backward``, ``_log_softmax_backward_data``, the
activation's backward as torch's derivatives.yaml names it (``threshold_backward`` for ReLU, ...),
the dropout mask's product, ``packed_gemm``'s GEMMs), on operands of the
same shapes, strides and alignments, so the losses and gradients are bitwise autograd's
(tests/test_pack.py trains both ways and compares every tensor).

``nondet.pack.train_pack_epoch`` uses it where ``DenseStep.of`` returns one, and autograd
everywhere else (SmeLU, bf16, CUDA, convolutional and your own models).
"""

from __future__ import annotations

import torch
from torch import nn

from nondet.models.packed import PackedDropout, PackedLinear, is_replica_major, packed_gemm
from nondet.models.shallow import MLP, LinearClassifier

aten = torch.ops.aten


def _backward_of(act: nn.Module):
    """``backward(grad, input, output)`` of an activation module, the kernel autograd calls for
    it (torch's derivatives.yaml, without a graph of the backward); None for one not listed."""
    kind = type(act)
    if kind is nn.ReLU:
        return lambda grad, x, y: aten.threshold_backward(grad, y, 0)
    if kind is nn.GELU:
        return lambda grad, x, y: aten.gelu_backward(grad, x, approximate=act.approximate)
    if kind is nn.SiLU:
        return lambda grad, x, y: aten.silu_backward(grad, x)
    if kind is nn.Tanh:
        return lambda grad, x, y: aten.tanh_backward(grad, y)
    if kind is nn.Softplus:
        return lambda grad, x, y: aten.softplus_backward(grad, x, act.beta, act.threshold)
    if kind is nn.LeakyReLU and not act.inplace:
        return lambda grad, x, y: aten.leaky_relu_backward(grad, x, act.negative_slope, False)
    return None


class DenseStep:
    """Forward, cross-entropy and backward of a replica-major packed ``linear``/``mlp``:
    ``losses = step(x, y)`` with x (P, B, ...) normalised and y (P, B) returns the per-example
    losses (P, B) and leaves in every parameter's ``.grad`` the gradient of
    ``losses.mean(1).sum()``, as ``backward()`` would."""

    def __init__(self, model: nn.Module) -> None:
        hidden = list(model.hidden) if isinstance(model, MLP) else []
        self.hidden = [block.linear for block in hidden]
        self.activations = [(block.act, _backward_of(block.act)) for block in hidden]
        self.dropout: PackedDropout = model.dropout
        self.fc: PackedLinear = model.fc
        self.params = [p for layer in (*self.hidden, self.fc) for p in (layer.weight, layer.bias)]
        self._seeds: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def of(cls, model: nn.Module, precision: str, device: str) -> DenseStep | None:
        """A ``DenseStep`` for ``model`` where its backward is the chain above, else None."""
        if device != "cpu" or precision != "fp32" or not is_replica_major(model):
            return None
        if not isinstance(model, (MLP, LinearClassifier)) or not isinstance(model.dropout, PackedDropout):
            return None
        blocks = list(model.hidden) if isinstance(model, MLP) else []
        if any(_backward_of(block.act) is None for block in blocks):
            return None
        layers = [block.linear for block in blocks] + [model.fc]
        if any(not isinstance(layer, PackedLinear) or layer.bias is None for layer in layers):
            return None
        return cls(model)

    def _seed(self, packs: int, batch: int) -> torch.Tensor:
        """The gradient autograd hands ``nll_loss_backward`` for ``losses.mean(1).sum()``: the
        sum's ones, expanded and divided by B (``mean_backward``), flattened to (P*B,)."""
        key = (packs, batch)
        if key not in self._seeds:
            ones = torch.ones((), dtype=torch.float32).expand(packs)
            self._seeds[key] = (ones.unsqueeze(1).expand(packs, batch) / batch).reshape(-1)
        return self._seeds[key]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        packs, batch = y.shape
        h = x.flatten(2)
        inputs, activated = [], []  # per layer: its input; per activation: its input and output
        for layer, (act, _) in zip(self.hidden, self.activations):
            h = h.contiguous()
            inputs.append(h)
            pre = packed_gemm(h, layer.weight.transpose(1, 2), layer.bias, batch_major=False)
            h = act(pre)
            activated.append((pre, h))
        mask = self.dropout.mask_for(h)
        if mask is not None:
            h = h * mask
        h = h.contiguous()
        inputs.append(h)
        logits = packed_gemm(h, self.fc.weight.transpose(1, 2), self.fc.bias, batch_major=False)
        # F.cross_entropy(reduction="none") is log_softmax then nll_loss; mean(1).sum() seeds it.
        log_probs = torch._log_softmax(logits.flatten(0, 1), 1, False)
        target = y.flatten()
        losses, total_weight = aten.nll_loss_forward(log_probs, target, None, 0, -100)
        grad = aten.nll_loss_backward(
            self._seed(packs, batch), log_probs, target, None, 0, -100, total_weight
        )
        grad = torch._log_softmax_backward_data(grad, log_probs, 1, log_probs.dtype).view(logits.shape)
        layers = [*self.hidden, self.fc]
        for k in range(len(layers) - 1, -1, -1):  # PackedLinear's backward, replica-major
            layer = layers[k]
            grad_input = packed_gemm(grad, layer.weight, None, batch_major=False) if k > 0 else None
            layer.weight.grad = packed_gemm(grad.transpose(1, 2), inputs[k], None, batch_major=False)
            layer.bias.grad = grad.sum(1)
            if grad_input is not None:
                if k == len(layers) - 1 and mask is not None:
                    grad_input = grad_input * mask  # the dropout product's backward
                backward = self.activations[k - 1][1]
                grad = backward(grad_input, *activated[k - 1])
        return losses.view(packs, batch)
