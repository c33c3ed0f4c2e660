"""Per-group metrics of Summers & Dinneen (2021) and Snapp & Shamir (2021), vectorised over runs.

    python -m analysis SWEEP_DIR          # one row of group_metrics per configuration
    python benchmarks/aggregate.py        # times group_metrics for R=100, N=10,000, C=10

Every function takes the stacked test logits of R runs, shape (R, N, C), and the shared labels
(N,). Pairwise metrics average over all R(R-1)/2 unordered pairs of runs without a Python loop
over pairs: disagreement from per-example class counts, Spearman from one matrix product of
standardised ranks, ensembles and prediction differences from batched array operations over
chunks of pairs. Above ``analysis.pairs.EXACT_MAX_RUNS`` runs, Spearman and PD come from exact
identities linear in R and the ensemble columns from sampled pairs (analysis/pairs.py). With
fewer than two runs every SD and pairwise metric is NaN.

Definitions (accuracy in percent, cross-entropy in nats, probabilities = softmax of the logits):

- ``*_sd``: standard deviation over runs, ddof=1. ``*_sd_sd``: the standard deviation (ddof=1) of
  that SD over ``n_boot`` bootstrap resamples of the runs (B=1000 and seed 0 by default; both
  metrics use the same resamples).
- ``disagreement``: percent of test examples on which the argmax predictions of a pair differ
  (of test tokens, for language models: ``analysis/lm.py`` uses the same function).
- ``spearman``: Spearman's rho between the flattened N*C logits of a pair (average ranks for
  ties, as ``scipy.stats.spearmanr``).
- ``ensemble_delta_*``: metric of the two-model ensemble (mean of the two softmax probability
  vectors) minus the mean of the two models' metrics. Delta cross-entropy is negative when
  ensembling helps.
- ``prediction_difference`` (PD, Snapp & Shamir): mean over examples and classes of
  |p_i - p_j|, the absolute difference of the two models' probabilities.
- ``relative_prediction_difference``: mean over examples of |p_i - p_j| / ((p_i + p_j) / 2), each
  difference divided by the mean probability the two models give. For two classes this is
  Shamir et al.'s binary relative PD, on the positive class's probability (class 1). For more
  classes it is taken per class and averaged over examples and classes (dividing the mean PD by
  the mean probability instead would give C * PD, since probabilities average to 1/C); rare
  classes' small probabilities weigh as much as the predicted class's there, so multiclass values
  sit high (about 0.9 for unrelated 10-class models) and compare only with each other. Lies in
  [0, 2].
"""

from __future__ import annotations

import numpy as np

COLUMNS = (
    "n_runs",
    "accuracy_mean",
    "accuracy_sd",
    "accuracy_sd_sd",
    "cross_entropy_mean",
    "cross_entropy_sd",
    "cross_entropy_sd_sd",
    "disagreement",
    "spearman",
    "ensemble_delta_accuracy",
    "ensemble_delta_cross_entropy",
    "prediction_difference",
    "relative_prediction_difference",
)

# Bytes of each float64 scratch buffer of ``ensemble_metrics``: small enough that a block's few
# passes run in cache, large enough that the Python loop over blocks costs nothing.
PAIR_TILE_BYTES = 4 * 2**20


def percent_correct(correct: np.ndarray) -> np.ndarray:
    """(R,) percent of True in each row of the (R, N) ``correct`` (``Group.correct``): accuracy."""
    return 100.0 * np.mean(correct, axis=-1)


def probabilities(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (R, N, C) and the log-probability of each label (R, N), float64.

    One exponentiation serves both; the probabilities are computed as ``scipy.special.softmax``
    computes them (max-shifted exponentials over their sum).
    """
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    totals = probs.sum(axis=-1, keepdims=True)
    label_logp = _at_labels(shifted, labels) - np.log(totals[..., 0])
    probs /= totals
    return probs, label_logp


def cross_entropy(logits: np.ndarray, labels: np.ndarray, block: int = 64) -> np.ndarray:
    """(R,) mean negative log-likelihood of the labels, in nats; ``block`` runs at a time, so
    thousands of memory-mapped runs never need a float64 copy of them all."""
    if logits.ndim < 3:
        return -probabilities(logits, labels)[1].mean(axis=-1)
    parts = pairs.blockwise(lambda s: -probabilities(logits[s : s + block], labels)[1].mean(axis=-1), range(0, len(logits), block))
    return np.concatenate(parts) if parts else np.zeros(0)


def _at_labels(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """values[..., n, labels[n]] for (..., N, C) values: (..., N)."""
    index = labels.reshape((1,) * (values.ndim - 2) + (-1, 1))
    return np.take_along_axis(values, index, axis=-1)[..., 0]


def _std(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """ddof=1 SD along ``axis``, of the values less the first one: the same number in exact
    arithmetic, but exactly 0 for identical runs (the ``none`` control), where the mean of
    equal floats can miss them by an ulp."""
    first = np.take(values, [0], axis=axis)
    return (values - first).std(axis=axis, ddof=1)


def sd(values: np.ndarray) -> float:
    """Sample standard deviation (ddof=1); NaN for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    return float(_std(values)) if len(values) > 1 else float("nan")


def bootstrap_sd_sd(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """SD over ``n_boot`` bootstrap resamples of the runs of the SD of each row of ``values``.

    ``values`` is (K, R): K metrics of R runs; returns (K,). The resamples are drawn once from
    ``np.random.default_rng(seed)`` and shared by the K metrics. NaN when R < 2.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    runs = values.shape[1]
    if runs < 2 or n_boot < 2:
        return np.full(values.shape[0], np.nan)
    resamples = np.random.default_rng(seed).integers(0, runs, size=(n_boot, runs))
    sds = _std(values[:, resamples])  # (K, n_boot)
    return _std(sds)


def _pair_mean(matrix: np.ndarray) -> float:
    """Mean of the strictly upper triangle of an (R, R) matrix; NaN when R < 2."""
    upper = matrix[np.triu_indices(len(matrix), k=1)]
    return float(upper.mean()) if upper.size else float("nan")


def disagreement(predictions: np.ndarray) -> float:
    """Mean over pairs of runs of the percent of examples (or tokens) whose predictions differ.

    ``predictions`` (R, N): each run's argmax class. Per example, with n_c runs predicting class
    c, sum_c n_c (n_c - 1) / 2 of the R(R-1)/2 pairs agree; the counts come from sorting each
    example's R predictions (O(R N log R), whatever the number of classes: a language model's
    vocabulary too), no pairs materialised.
    """
    runs, n = predictions.shape
    if runs < 2 or n == 0:
        return float("nan")
    ordered = np.sort(np.asarray(predictions), axis=0)  # (R, N)
    # Equal predictions are adjacent after sorting: a run of length c holds c(c-1)/2 pairs.
    # Sum over runs c(c-1)/2 = sum over rows k of (number of earlier rows equal to row k),
    # which for sorted columns is k - (start of k's block).
    new_block = np.ones(ordered.shape, dtype=bool)
    new_block[1:] = ordered[1:] != ordered[:-1]
    index = np.broadcast_to(np.arange(runs)[:, None], ordered.shape)
    block_start = np.maximum.accumulate(np.where(new_block, index, 0), axis=0)
    agreeing = int((index - block_start).sum())
    pairs = runs * (runs - 1) // 2
    return float(100.0 * (1.0 - agreeing / (pairs * n)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of each row of a (R, M) array, ties given their average rank.

    The same numbers as ``scipy.stats.rankdata(values, axis=1)`` (rows holding NaN are all NaN),
    from one argsort in the array's own dtype; tied runs of equal values are found in the
    sorted rows and averaged in one vectorised pass.
    """
    runs, m = values.shape
    order = np.argsort(values, axis=1)
    ordered = np.take_along_axis(values, order, axis=1)
    sorted_ranks = np.broadcast_to(np.arange(1.0, m + 1.0), (runs, m))
    tied = np.zeros((runs, m), dtype=bool)  # equal to its left neighbour in the sorted row
    np.equal(ordered[:, 1:], ordered[:, :-1], out=tied[:, 1:])
    if tied.any():
        # Only the (usually few) tied blocks change: a block is a position not tied to its left
        # followed by the positions tied to it; each member gets the block's mean 1-based rank.
        after = np.flatnonzero(tied)
        members = np.union1d(after - 1, after)  # column 0 is never tied, so no block spans rows
        block = np.cumsum(~tied.ravel()[members]) - 1
        position = members % m + 1.0
        mean_rank = np.bincount(block, weights=position) / np.bincount(block)
        sorted_ranks = sorted_ranks.copy()
        sorted_ranks.ravel()[members] = mean_rank[block]
    ranks = np.empty((runs, m))
    np.put_along_axis(ranks, order, sorted_ranks, axis=1)
    ranks[np.isnan(values).any(axis=1)] = np.nan
    return ranks


def spearman_matrix(logits: np.ndarray) -> np.ndarray:
    """(R, R) Spearman rho between the flattened logits of every pair of runs.

    Each run's N*C logits are ranked once (average ranks for ties); rho is Pearson's r of the
    ranks, so one matrix product of the standardised ranks gives every pair. A run whose logits
    are all equal has no defined correlation: its row and column are NaN, as in scipy.
    """
    ranks = average_ranks(np.asarray(logits).reshape(len(logits), -1))
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(ranks, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = ranks / norms[:, None]
    return z @ z.T


def spearman(logits: np.ndarray) -> float:
    """Mean over pairs of Spearman's rho between the flattened N*C logits."""
    return _pair_mean(spearman_matrix(logits))


def log_cosh(x: np.ndarray) -> np.ndarray:
    """log(cosh(x)) for x >= 0 without overflow: cosh(x) ~ e^x / 2 once e^-2x is below rounding."""
    return np.where(x < 20.0, np.log(np.cosh(np.minimum(x, 20.0))), x - np.log(2.0))


def relative_classes(classes: int) -> int:
    """How many classes relative PD averages over: the positive one for binary problems."""
    return 1 if classes == 2 else classes


def ensemble_metrics(logits: np.ndarray, labels: np.ndarray, correct: np.ndarray | None = None) -> dict[str, float]:
    """Two-model ensemble gains and prediction differences, averaged over all pairs.

    Returns ``ensemble_delta_accuracy``, ``ensemble_delta_cross_entropy``,
    ``prediction_difference`` and ``relative_prediction_difference``.

    How: the probabilities are laid out class-major, (R, C, N). The pairs are taken in blocks
    (run i, runs i+1..R-1, a tile of examples) of about ``PAIR_TILE_BYTES``: one batched array
    operation broadcasts run i against the slice of later runs, into preallocated buffers small
    enough to stay in cache across the few passes. The ensemble is right on an example when the
    label's summed probability reaches the maximum over classes (a reduction over contiguous
    class rows, much cheaper than argmax over a short last axis); where two classes share the
    maximum, argmax's first-index rule decides, exactly as ``argmax`` would. Every pair covers
    the same N*C entries, so the mean over pairs of a per-pair mean is the grand mean,
    accumulated as sums. ``correct``: the (R, N) argmax-equals-label matrix when the caller has
    it (``Group.correct``), else computed here.
    """
    runs, n, classes = logits.shape
    names = (
        "ensemble_delta_accuracy",
        "ensemble_delta_cross_entropy",
        "prediction_difference",
        "relative_prediction_difference",
    )
    if runs < 2:
        return dict.fromkeys(names, float("nan"))
    probs, label_logp = probabilities(logits, labels)
    label_probs = _at_labels(probs, labels)  # (R, N): the label's row of each ensemble sum
    # Both probabilities 0 (underflow) means no difference; only then is a guard needed.
    underflow = not np.all(probs > 0.0)
    probs = np.ascontiguousarray(probs.transpose(0, 2, 1))  # (R, C, N)
    tile = int(min(n, max(1, PAIR_TILE_BYTES // (8 * (runs - 1) * classes))))
    total_buf = np.empty((runs - 1, classes, tile))
    diff_buf = np.empty_like(total_buf)
    mask_buf = np.empty(total_buf.shape, dtype=bool)
    max_buf = np.empty((runs - 1, tile))
    ens_correct = 0
    ens_gain = pd_sum = rel_sum = 0.0
    for start in range(0, n, tile):
        stop = min(n, start + tile)
        width = stop - start
        y = labels[start:stop]
        for i in range(runs - 1):
            k = runs - 1 - i
            p_i, p_later = probs[i, :, start:stop], probs[i + 1 :, :, start:stop]
            total = np.add(p_i, p_later, out=total_buf[:k, :, :width])  # 2 x the ensemble
            best = np.max(total, axis=1, out=max_buf[:k, :width])
            at_max = np.equal(total, best[:, None, :], out=mask_buf[:k, :, :width])
            if np.count_nonzero(at_max) == k * width:  # one class at the maximum everywhere
                label_total = label_probs[i, start:stop] + label_probs[i + 1 :, start:stop]
                ens_correct += np.count_nonzero(label_total == best)
            else:
                ens_correct += np.count_nonzero(np.argmax(total, axis=1) == y)
            # log((p_i + p_j) / 2) - (log p_i + log p_j) / 2 = log cosh((log p_i - log p_j) / 2):
            # the ensemble's gain in log-likelihood, exactly 0 for identical runs, computed from
            # log-probabilities so tiny probabilities survive.
            half_gap = np.abs(label_logp[i, start:stop] - label_logp[i + 1 :, start:stop]) / 2
            ens_gain += log_cosh(half_gap).sum()
            diff = np.subtract(p_i, p_later, out=diff_buf[:k, :, :width])
            diff = np.abs(diff, out=diff)
            pd_sum += diff.sum()
            if classes == 2:  # the positive class only (see the module docstring)
                diff, total = diff[:, 1:], total[:, 1:]
            where = np.greater(total, 0.0, out=mask_buf[:k, : total.shape[1], :width]) if underflow else True
            rel_sum += np.divide(diff, total, out=diff, where=where).sum()
    pairs = runs * (runs - 1) // 2
    # Each run is in R - 1 pairs, so sum over pairs of (c_i + c_j) / 2 = (R - 1) / 2 * sum_i c_i;
    # in integer counts of correct examples the difference is exact.
    if correct is None:
        correct = np.argmax(logits, axis=-1) == labels
    single_correct = int(np.count_nonzero(correct))
    gained = 2 * ens_correct - (runs - 1) * single_correct  # twice the gain in correct answers
    return {
        "ensemble_delta_accuracy": float(100.0 * gained / (2 * pairs * n)),
        "ensemble_delta_cross_entropy": float(-ens_gain / (pairs * n)) + 0.0,  # + 0.0: no -0.0
        "prediction_difference": float(pd_sum / (pairs * n * classes)),
        # |p_i - p_j| / ((p_i + p_j) / 2) = 2 |p_i - p_j| / total
        "relative_prediction_difference": float(2.0 * rel_sum / (pairs * n * relative_classes(classes))),
    }


def group_metrics(
    logits: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0, predictions: np.ndarray | None = None
) -> dict[str, float]:
    """Every column of ``COLUMNS`` for one group of runs: logits (R, N, C), labels (N,).

    ``predictions``: the (R, N) argmax of the logits when the caller has it (``Group.predictions``,
    shared with analysis/stats.py), else computed here, once for every column that needs it.

    Above ``analysis.pairs.EXACT_MAX_RUNS`` runs the pairwise columns come from identities and
    sampled pairs, and ``pairs_note`` says which and gives their standard errors.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 3 or logits.shape[1] != len(labels):
        raise ValueError(f"expected logits (R, N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    predictions = np.argmax(logits, axis=-1) if predictions is None else np.asarray(predictions)
    correct = predictions == labels
    acc = percent_correct(correct)
    ce = cross_entropy(logits, labels)
    acc_sd_sd, ce_sd_sd = bootstrap_sd_sd(np.stack([acc, ce]), n_boot, seed)
    row = {
        "n_runs": len(logits),
        "accuracy_mean": float(acc.mean()) if len(acc) else float("nan"),
        "accuracy_sd": sd(acc),
        "accuracy_sd_sd": float(acc_sd_sd),
        "cross_entropy_mean": float(ce.mean()) if len(ce) else float("nan"),
        "cross_entropy_sd": sd(ce),
        "cross_entropy_sd_sd": float(ce_sd_sd),
        "disagreement": disagreement(predictions),
    }
    if len(logits) > pairs.EXACT_MAX_RUNS:  # identities and sampled pairs: analysis/pairs.py
        many, note = pairs.many_run_metrics(logits, labels, seed)
        row.update(many)
        return {k: row[k] for k in COLUMNS} | {"pairs_note": note}
    row["spearman"] = spearman(logits)
    row.update(ensemble_metrics(logits, labels, correct))
    return {k: row[k] for k in COLUMNS}


from analysis import pairs  # noqa: E402  (pairs builds on the functions above)
