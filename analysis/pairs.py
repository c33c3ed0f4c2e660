"""Pairwise columns for many runs: linear in R where an identity exists, sampled pairs where none does.

    python -m analysis SWEEP_DIR                                   # groups of more than EXACT_MAX_RUNS runs
    python benchmarks/aggregate.py --runs 4000 --memmap /tmp/x.npy # times every column

Up to ``EXACT_MAX_RUNS`` runs a group's pairwise columns average over all R(R-1)/2 pairs
(``analysis.metrics``), unchanged. Above it, the cost of all pairs (R^2 N C) is avoided:

- ``spearman``: each run's standardised rank vector z_r (unit norm) is computed once, block by
  block of runs; the mean of z_i . z_j over pairs i < j is (|sum_r z_r|^2 - sum_r |z_r|^2) /
  (R (R - 1)), exact, O(R N C log(N C)).
- ``prediction_difference``: per example and class, sum over pairs i < j of |p_i - p_j| =
  sum_k (2k - R + 1) p_(k) with p_(0) <= ... <= p_(R-1) sorted over runs (Gini's mean difference),
  exact, O(R log R N C), example block by example block.
- ``ensemble_delta_accuracy``, ``ensemble_delta_cross_entropy``, ``relative_prediction_difference``
  have no such identity (the argmax of a sum, the log of a mean, a ratio): they are the mean over
  ``SAMPLED_PAIRS`` pairs drawn uniformly with replacement from all distinct pairs (seeded; an
  unbiased estimate of the all-pairs mean), reported with its standard error SD / sqrt(pairs).
- ``disagreement`` is O(R N C) at any R (``analysis.metrics.disagreement``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from analysis.metrics import log_cosh, average_ranks, probabilities, relative_classes

# Up to this many runs every pair is used, as before; the paper's largest rows have 100 runs.
EXACT_MAX_RUNS = 100
# Pairs sampled above EXACT_MAX_RUNS: the SE of the ensemble gain is then ~1/45 of its SD over pairs.
SAMPLED_PAIRS = 2000
# Runs ranked at once (Spearman): 64 runs x 100,000 logits hold ~100 MB of ranks and indices.
RUN_BLOCK = 64
# Array elements (examples x classes x runs) held at once by the PD identity.
ELEMENT_BLOCK = 2**23
# Pairs evaluated at once by the sampled metrics.
PAIR_BLOCK = 16

SAMPLED_COLUMNS = ("ensemble_delta_accuracy", "ensemble_delta_cross_entropy", "relative_prediction_difference")


def blockwise(fn, starts) -> list:
    """``[fn(s) for s in starts]`` on a thread per CPU: the sorts and ufuncs inside release the GIL,
    so the blocks run in parallel without copying the (memory-mapped) logits to other processes."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(fn, starts))


def spearman_mean(logits: np.ndarray) -> float:
    """Mean over pairs of Spearman's rho between the flattened N*C logits, in O(R) rankings."""
    runs = len(logits)
    if runs < 2:
        return math.nan
    size = int(np.prod(logits.shape[1:]))

    def block(start: int) -> tuple[np.ndarray, float]:
        ranks = average_ranks(np.asarray(logits[start : start + RUN_BLOCK]).reshape(-1, size))
        ranks -= ranks.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(ranks, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):  # a constant run: NaN, as in scipy
            z = ranks / norms[:, None]
        return z.sum(axis=0), float(np.einsum("ij,ij->", z, z))

    parts = blockwise(block, range(0, runs, RUN_BLOCK))
    total = np.sum([p[0] for p in parts], axis=0)
    squares = sum(p[1] for p in parts)
    return float((total @ total - squares) / (runs * (runs - 1)))


def prediction_difference_mean(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over pairs, examples and classes of |p_i - p_j|, from sorted probabilities."""
    runs, n, classes = logits.shape
    if runs < 2:
        return math.nan
    weights = 2.0 * np.arange(runs) - runs + 1.0
    step = max(1, ELEMENT_BLOCK // (runs * classes))

    def block(start: int) -> float:
        probs = probabilities(np.asarray(logits[:, start : start + step]), labels[start : start + step])[0]
        ordered = np.sort(probs.reshape(runs, -1).T, axis=1)  # (examples x classes, R)
        return float((ordered @ weights).sum())

    return sum(blockwise(block, range(0, n, step))) / (runs * (runs - 1) // 2 * n * classes)


def sample_pairs(runs: int, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs (i, j), i != j, uniform over the R(R-1)/2 unordered pairs, with replacement."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, runs, count)
    j = rng.integers(0, runs - 1, count)
    return i, j + (j >= i)  # j uniform over the other R - 1 runs


def pair_values(logits: np.ndarray, labels: np.ndarray, i: np.ndarray, j: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair (i[k], j[k]): the ``SAMPLED_COLUMNS`` with ``analysis.metrics``' definitions."""
    n, classes = logits.shape[1:]
    out = {c: np.empty(len(i)) for c in SAMPLED_COLUMNS}

    def block(start: int) -> None:
        a, b = i[start : start + PAIR_BLOCK], j[start : start + PAIR_BLOCK]
        pa, la = probabilities(np.asarray(logits[a]), labels)
        pb, lb = probabilities(np.asarray(logits[b]), labels)
        total = pa + pb
        ensemble = np.argmax(total, axis=-1) == labels
        single = (np.argmax(pa, axis=-1) == labels).astype(float) + (np.argmax(pb, axis=-1) == labels)
        done = slice(start, start + len(a))
        out["ensemble_delta_accuracy"][done] = 100.0 * (ensemble.mean(axis=1) - single.mean(axis=1) / 2)
        out["ensemble_delta_cross_entropy"][done] = -log_cosh(np.abs(la - lb) / 2).mean(axis=1)
        diff = np.abs(pa - pb)
        if classes == 2:
            diff, total = diff[..., 1:], total[..., 1:]
        ratio = np.divide(diff, total, out=np.zeros_like(diff), where=total > 0)
        out["relative_prediction_difference"][done] = 2.0 * ratio.sum(axis=(1, 2)) / (n * relative_classes(classes))

    blockwise(block, range(0, len(i), PAIR_BLOCK))
    return out


def many_run_metrics(logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[dict[str, float], str]:
    """The pairwise columns of a group above ``EXACT_MAX_RUNS`` runs, and a note giving the
    sampled columns' standard errors."""
    runs = len(logits)
    i, j = sample_pairs(runs, SAMPLED_PAIRS, seed)
    values = pair_values(logits, labels, i, j)
    row = {c: float(v.mean()) + 0.0 for c, v in values.items()}
    row["spearman"] = spearman_mean(logits)
    row["prediction_difference"] = prediction_difference_mean(logits, labels)
    errors = ", ".join(f"{c} ± {v.std(ddof=1) / math.sqrt(len(v)):.2g}" for c, v in values.items())
    note = (
        f"{runs} runs (> {EXACT_MAX_RUNS}): ensemble columns and relative PD are means over "
        f"{SAMPLED_PAIRS} random pairs of runs (seed {seed}), SE: {errors}; Spearman and PD use "
        "all pairs through exact identities"
    )
    return row, note
