"""The input pipeline as tensor operations, each driven by one source's generator.

- ``epoch_order``: the shuffle source — a full permutation per epoch, or a streaming shuffle
  buffer of ``shuffle_window`` examples (as a streaming input pipeline has it).
- ``within_batch_permutation``: the reduction source — reorders the examples inside a minibatch,
  which leaves the mathematics unchanged and changes only the floating-point summation order.
- ``resample``: the data source — the training examples a run sees, drawn once at its start:
  a bootstrap resample or a subsample of a fraction; each epoch's order then permutes positions
  within it.
- ``random_crop_flip``: the augment source — per-example random crop (zero padding) and
  horizontal flip, one gather for the whole batch.

No DataLoader and no workers: the dataset is a tensor resident on the training device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def epoch_order(
    n: int, generator: torch.Generator, window: int | None = None
) -> torch.Tensor:
    """The order in which the ``n`` training examples are visited in one epoch.

    ``window=None`` or ``window >= n``: a uniform random permutation. ``window=1``: stored order.
    Otherwise a streaming shuffle buffer: the buffer holds the next ``window`` examples; each
    step emits a uniformly chosen one and refills its slot with the next example in stored
    order; at the end the buffer is drained in random order. Every example appears exactly once.
    """
    device = generator.device
    if window is None or window >= n:
        return torch.randperm(n, generator=generator, device=device)
    if window < 1:
        raise ValueError(f"shuffle_window={window}: use a positive window, or null for a full shuffle")
    if window == 1:
        return torch.arange(n, device=device)
    # One uniform draw per emitted example, all from the shuffle generator.
    uniform = torch.rand(n, generator=generator, device=device, dtype=torch.float64).tolist()
    buffer = list(range(window))
    order = []
    for incoming in range(window, n):
        slot = int(uniform[incoming - window] * window)
        order.append(buffer[slot])
        buffer[slot] = incoming
    for k in range(window):
        slot = int(uniform[n - window + k] * len(buffer))
        buffer[slot], buffer[-1] = buffer[-1], buffer[slot]
        order.append(buffer.pop())
    return torch.tensor(order, dtype=torch.long, device=device)


def resample_size(n: int, how: str | float) -> int:
    """How many examples a resample of ``n`` holds: ``n`` for a bootstrap, ``floor(f n)`` for a
    fraction ``f`` (the same for every replicate, so a pack of them stays rectangular)."""
    size = n if how == "bootstrap" else math.floor(how * n)
    if size < 1:
        raise ValueError(f"data_resample={how} keeps no example of the {n} training examples: "
                         "use a larger fraction, or data_resample=bootstrap")
    return size


def resample(n: int, how: str | float, generator: torch.Generator, order: str) -> torch.Tensor:
    """The indices of the training examples one run trains on (``source=data``).

    ``how="bootstrap"``: ``n`` indices drawn uniformly with replacement (about 63% of the
    examples appear, some several times); a fraction ``f``: ``floor(f n)`` distinct indices, a
    uniform subsample without replacement. One draw from the data generator, on its device.
    ``order="sorted"`` keeps them in stored order, so that the epoch order (positions in the
    resample, permuted by the shuffle generator) differs between replicates only as much as their
    examples do: varying the data does not also reorder the epochs (a fraction of 1 then trains
    every replicate alike). ``"drawn"`` keeps the order of the draw.
    """
    size = resample_size(n, how)
    if how == "bootstrap":
        indices = torch.randint(0, n, (n,), generator=generator, device=generator.device)
    else:
        indices = torch.randperm(n, generator=generator, device=generator.device)[:size]
    if order not in ("sorted", "drawn"):
        raise ValueError(f"data_order={order!r}: use sorted or drawn")
    return indices.sort().values if order == "sorted" else indices


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each minibatch; the last one may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def within_batch_permutation(size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(size, generator=generator, device=generator.device)


def crop_flip_draws(batch: int, generator: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The augment source's draws for a batch: crop offsets (2, batch) in [0, 2 pad], flips (batch,)."""
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator, device=generator.device)
    flips = torch.randint(0, 2, (batch,), generator=generator, device=generator.device).bool()
    return offsets, flips


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Crop each zero-padded image at its offsets and flip it where ``flips``: one gather."""
    batch, channels, height, width = x.shape
    device = x.device
    offsets, flips = offsets.to(device), flips.to(device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[0, :, None] + torch.arange(height, device=device)
    cols = offsets[1, :, None] + torch.arange(width, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(batch, device=device)[:, None, None, None],
        torch.arange(channels, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel-shifted crop of the zero-padded image and a horizontal flip with
    probability 1/2, independently per example. ``x``: (B, C, H, W), any dtype; same out."""
    return crop_flip(x, *crop_flip_draws(x.shape[0], generator, pad), pad)
