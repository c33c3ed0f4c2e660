"""The QRNN language model of Summers & Dinneen (2021, Sec. 3.3), in plain PyTorch.

    python launch.py -m +experiment=table2 scale=smoke      # model=qrnn on dataset=synthetic_text

A quasi-recurrent neural network (Bradbury et al., 2017) as AWD-LSTM's ``model.py`` builds it
with ``--model QRNN`` (Merity et al., 2018), re-implemented without the CUDA-only ``torchqrnn``
kernel:

- Tied input and output embeddings (``embedding_dim`` = E): logits = out @ E^T + decoder bias.
- ``depth`` QRNN layers: layer l maps its input to ``width`` units (the last layer to E, so the
  output can meet the tied embedding). Per layer, one linear map of [x_t, x_{t-1}] (the first
  layer, window 2; x_{-1} is the last input of the previous window, zeros at the start of an
  epoch or evaluation) or of x_t (the other layers) to the candidate, forget and output gates,
  in that order: z = tanh(.), f = sigmoid(.), o = sigmoid(.); fo-pooling
  c_t = f_t * z_t + (1 - f_t) * c_{t-1}; output h_t = o_t * c_t. The state carried across BPTT
  windows (and detached there) is c at the last step and the first layer's last input.
- fo-pooling, :class:`ForgetMult`, runs in a fixed summation order, step by step: with
  ``fz = f * z`` and ``keep = 1 - f`` computed for all steps at once (elementwise, so exactly
  the per-step values), c_t = fz_t + (keep_t * c_{t-1}), the product rounded before the sum
  (no fused multiply-add). Its backward is written out (g_t = dL/dc_t + keep_{t+1} * g_{t+1};
  dz = g * f; df = g * (z - c_{t-1}); dc_{-1} = keep_0 * g_0), again in a fixed order, so the
  QRNN is deterministic on CPU and GPU and equals a naive step-by-step loop bit for bit.

Regularisation (AWD-LSTM), every mask from the ``dropout`` source's generator (all four are
:class:`~nondet.models.dropout.SeededDropout` subclasses, so ``set_dropout_generator`` reaches
them), inverted scaling 1 / (1 - p), nothing drawn in eval mode or when p = 0:

- embedding dropout (``embedding_dropout``, dropoute): whole rows of the embedding matrix, one
  (V, 1) mask per batch, before the lookup (the tied decoder uses the undropped matrix);
- variational (locked) dropout: one (1, B, H) mask per batch shared by every time step, on the
  embeddings (``input_dropout``, dropouti), between layers (``hidden_dropout``, dropouth) and
  on the last layer's output (``dropout``, the output dropout);
- weight drop (``weight_dropout``, wdrop): DropConnect on each layer's gate weight matrix, one
  mask per batch (AWD-LSTM wraps the QRNN's ``linear`` in ``WeightDrop(..., ['weight'])``).

Masks are drawn in forward order: embedding rows, input, then per layer its weight mask and
(between layers) its hidden mask, then the output mask. Activation and temporal activation
regularisation act on what :meth:`QRNNLanguageModel.forward` returns (``nondet/lm.py``).

Initialisation, from the ``init`` generator only (:meth:`QRNNLanguageModel.init_parameters`),
in this order: the embedding U(-0.1, 0.1) (AWD-LSTM's ``init_weights``, initrange 0.1; it is
also the tied decoder weight); each layer's gate ``nn.Linear`` as nondet initialises every
Linear, PyTorch's default (weight kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)), bias
U(+-1/sqrt(fan_in))), which is what ``torchqrnn``'s ``nn.Linear`` gets; the decoder bias 0.

The bit-flip source moves one weight of the first QRNN layer's gate matrix
(``layers.0.linear.weight``, the first ``nn.Linear``: see ``first_layer_weight``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .dropout import SeededDropout
from .init import init_parameters

EMBEDDING_INIT_RANGE = 0.1  # AWD-LSTM's init_weights


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 (autocast) up to float32 for the recurrence and the softmax; float64 stays."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --------------------------------------------------------------------------- fo-pooling


class ForgetMult(torch.autograd.Function):
    """c_t = f_t * z_t + (1 - f_t) * c_{t-1} over t = 0 .. T-1, in a fixed order.

    ``f``, ``z``: (T, B, N); ``c0``: (B, N) (c_{-1}). Returns c: (T, B, N).
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, z: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        fz = f * z
        keep = 1.0 - f
        c = torch.empty_like(fz)
        carried = torch.empty_like(c0)
        previous = c0
        for t in range(fz.shape[0]):
            torch.mul(keep[t], previous, out=carried)
            torch.add(fz[t], carried, out=c[t])
            previous = c[t]
        ctx.save_for_backward(f, z, c0, c)
        return c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_c: torch.Tensor):
        f, z, c0, c = ctx.saved_tensors
        keep = 1.0 - f
        grad_c = grad_c.contiguous()
        total = torch.empty_like(grad_c)  # dL/dc_t through every path
        carried = torch.empty_like(c0)
        steps = f.shape[0]
        total[steps - 1] = grad_c[steps - 1]
        for t in range(steps - 2, -1, -1):
            torch.mul(keep[t + 1], total[t + 1], out=carried)
            torch.add(grad_c[t], carried, out=total[t])
        previous = torch.cat([c0.unsqueeze(0), c[:-1]])
        grad_f = total * (z - previous)
        grad_z = total * f
        grad_c0 = keep[0] * total[0]
        return grad_f, grad_z, grad_c0


def fo_pool(f: torch.Tensor, z: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """fo-pooling of (T, B, N) gates from the state ``c0`` (B, N): :class:`ForgetMult`."""
    return ForgetMult.apply(f, z, c0)


# --------------------------------------------------------------------------- seeded masks


class _MaskDropout(SeededDropout):
    """A SeededDropout whose mask has a shape of its own (a row, a time-shared or a weight mask)."""

    def _mask(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        g = self.generator
        if g is None:
            raise RuntimeError(
                f"{type(self).__name__}(p={self.p}) is in training mode but has no generator: call "
                "nondet.models.set_dropout_generator(model, generator) before training "
                "(dropout never falls back to the global RNG)"
            )
        mask = torch.empty(shape, dtype=torch.float32, device=g.device)
        mask.bernoulli_(1.0 - self.p, generator=g)
        mask.mul_(1.0 / (1.0 - self.p))
        return mask.to(device=like.device, dtype=like.dtype)

    def active(self) -> bool:
        return self.training and self.p > 0.0


class LockedDropout(_MaskDropout):
    """Variational dropout of a (T, B, H) sequence: one (1, B, H) mask for every time step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active():
            return x
        return x * self._mask((1, x.shape[1], x.shape[2]), x)


class EmbeddingDropout(_MaskDropout):
    """Drops whole rows (words) of an embedding matrix (V, E): a (V, 1) mask."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active():
            return weight
        return weight * self._mask((weight.shape[0], 1), weight)


class WeightDropout(_MaskDropout):
    """DropConnect on a weight matrix: an elementwise mask of the weight's shape."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active():
            return weight
        return weight * self._mask(tuple(weight.shape), weight)


# --------------------------------------------------------------------------- the model


class QRNNState(NamedTuple):
    """What one BPTT window hands the next: per-layer c at the last step, first layer's last input."""

    hidden: tuple[torch.Tensor, ...]
    previous_input: torch.Tensor

    def detach(self) -> "QRNNState":
        return QRNNState(tuple(h.detach() for h in self.hidden), self.previous_input.detach())


class QRNNLayer(nn.Module):
    """One QRNN-fo layer with a convolution window of 1 or 2 and weight-dropped gate weights."""

    def __init__(self, input_size: int, hidden_size: int, window: int, weight_dropout: float) -> None:
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"QRNN window must be 1 or 2, got {window}")
        self.input_size, self.hidden_size, self.window = input_size, hidden_size, window
        self.linear = nn.Linear(window * input_size, 3 * hidden_size)
        self.weight_drop = WeightDropout(weight_dropout)

    def forward(
        self, x: torch.Tensor, c0: torch.Tensor, previous_input: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, I); c0: (B, N); previous_input: (B, I) for window 2. Returns h (T, B, N), c (T, B, N)."""
        if self.window == 2:
            shifted = torch.cat([previous_input.unsqueeze(0), x[:-1]])
            x = torch.cat([x, shifted], dim=2)
        gates = _at_least_float32(F.linear(x, self.weight_drop(self.linear.weight), self.linear.bias))
        z, f, o = gates.chunk(3, dim=2)
        c = fo_pool(torch.sigmoid(f), torch.tanh(z), c0.to(gates.dtype))
        return torch.sigmoid(o) * c, c


class QRNNOutput(NamedTuple):
    logits: torch.Tensor  # (T, B, V), float32 (float64 for a float64 model)
    state: QRNNState
    last_raw: torch.Tensor  # the last layer's output before output dropout (TAR)
    last_dropped: torch.Tensor  # ... after output dropout (AR)


class QRNNLanguageModel(nn.Module):
    """Tied-embedding QRNN language model with AWD-LSTM's regularisation (module docstring)."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        layers: int,
        output_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        input_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size, self.embedding_dim = vocab_size, embedding_dim
        # Registration order is forward order: the first nn.Linear is the first QRNN layer's.
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.embedding_dropout = EmbeddingDropout(embedding_dropout)
        self.input_dropout = LockedDropout(input_dropout)
        sizes = [embedding_dim] + [hidden_size] * (layers - 1) + [embedding_dim]
        self.layers = nn.ModuleList(
            QRNNLayer(sizes[l], sizes[l + 1], 2 if l == 0 else 1, weight_dropout) for l in range(layers)
        )
        self.hidden_dropout = LockedDropout(hidden_dropout)
        self.output_dropout = LockedDropout(output_dropout)
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))

    @torch.no_grad()
    def init_parameters(self, generator: torch.Generator) -> None:
        """Every parameter from ``generator``, in the order of the module docstring."""
        scratch = torch.empty(self.embedding.weight.shape, dtype=torch.float32, device=generator.device)
        scratch.uniform_(-EMBEDDING_INIT_RANGE, EMBEDDING_INIT_RANGE, generator=generator)
        self.embedding.weight.copy_(scratch)
        for layer in self.layers:
            init_parameters(layer.linear, generator)
        self.decoder_bias.zero_()

    def initial_state(self, batch_size: int) -> QRNNState:
        """Zeros: the state at the start of an epoch or an evaluation."""
        like = {"device": self.embedding.weight.device, "dtype": self.embedding.weight.dtype}
        hidden = tuple(torch.zeros(batch_size, layer.hidden_size, **like) for layer in self.layers)
        return QRNNState(hidden, torch.zeros(batch_size, self.embedding_dim, **like))

    def forward(self, tokens: torch.Tensor, state: QRNNState) -> QRNNOutput:
        """tokens: (T, B) word ids; state from :meth:`initial_state` or the previous window."""
        weight = self.embedding_dropout(self.embedding.weight)
        x = self.input_dropout(F.embedding(tokens, weight))
        hidden = []
        last = len(self.layers) - 1
        for l, layer in enumerate(self.layers):
            previous = state.previous_input if layer.window == 2 else None
            if l == 0:
                next_input = x[-1]
            h, c = layer(x, state.hidden[l], previous)
            hidden.append(c[-1])
            x = self.hidden_dropout(h) if l < last else h
        raw = x
        dropped = self.output_dropout(raw)
        logits = _at_least_float32(F.linear(dropped, self.embedding.weight, self.decoder_bias))
        return QRNNOutput(logits, QRNNState(tuple(hidden), next_input), raw, dropped)


def build_qrnn(cfg, vocab_size: int, init_generator: torch.Generator) -> QRNNLanguageModel:
    """``model=qrnn`` for a vocabulary of ``vocab_size``, initialised from ``init_generator``.

    ``cfg`` is a ModelConfig (or a DictConfig with its keys): ``embedding_dim``, ``width``
    (hidden units), ``depth`` (layers), ``dropout`` (output), ``hidden_dropout``,
    ``input_dropout``, ``embedding_dropout``, ``weight_dropout``. On the CPU, training mode.
    """
    if vocab_size < 2:
        raise ValueError(f"a language model needs a vocabulary of at least 2 words, got {vocab_size}")
    for key in ("embedding_dim", "width", "depth"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"model.{key}={getattr(cfg, key)} must be positive")
    rates = ("dropout", "hidden_dropout", "input_dropout", "embedding_dropout", "weight_dropout")
    for key in rates:
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ValueError(f"model.{key} must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.activation != "relu":
        raise ValueError(
            f"model.activation={cfg.activation!r} does not apply to qrnn: its gates are fixed "
            "(tanh candidate, sigmoid forget and output gates); leave the default"
        )
    with torch.random.fork_rng(devices=[]):  # constructors draw from the global RNG
        model = QRNNLanguageModel(
            vocab_size, cfg.embedding_dim, cfg.width, cfg.depth, cfg.dropout,
            cfg.hidden_dropout, cfg.input_dropout, cfg.embedding_dropout, cfg.weight_dropout,
        )
    model.init_parameters(init_generator)
    return model
