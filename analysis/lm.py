"""Language-model runs: their stored arrays and the paper's Table 2 / Table 4 columns.

    python -m analysis outputs/table2       # a sweep of LM runs prints these columns
    lm_group_metrics(target_logprobs, predictions, labels)     # (R, N), (R, N), (N,)

A language-model run (``nondet/lm.py``) stores no ``logits.npy`` (N x V is too large for a full
test set) but, per test token in text order, ``target_logprobs.npy`` (log p(target), float32
(N,)), ``predictions.npy`` (argmax, int64 (N,)) and ``labels.npy`` (the targets), plus the full
log-probabilities at a data-seeded subset of positions (``logprobs_subset.npy`` (K, V),
``subset_positions.npy`` (K,)). That is what the Table 2 metrics need:

- ``ppl_*``: perplexity exp(cross-entropy) per run; mean, SD (ddof=1) and SD of the SD
  (bootstrap over runs, ``analysis.metrics.bootstrap_sd_sd``); likewise ``cross_entropy_*``
  (nats per token) and ``accuracy_*`` (next-token accuracy, percent).
- ``disagreement``: percent of test tokens whose argmax predictions differ, averaged over all
  pairs of runs (``analysis.metrics.disagreement``, as for images).
- ``ensemble_delta_ppl`` / ``ensemble_delta_cross_entropy``: over all pairs, the metric of the
  two-model ensemble minus the mean of the two models' metrics; negative when ensembling helps
  (lower perplexity is better). The ensemble mixes probabilities, so its probability of the
  target is (p_i + p_j) / 2 of the two target probabilities: exact for perplexity and
  cross-entropy with only the target log-probabilities stored. Its per-token gain in
  log-likelihood is log cosh((log p_i - log p_j) / 2) (``analysis.metrics.log_cosh``), computed
  from log-probabilities.

Only numpy (and ``analysis.metrics`` for the SDs, disagreement and log cosh); no torch.
"""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from analysis.metrics import bootstrap_sd_sd, disagreement, log_cosh, sd
from nondet import records

LM_COLUMNS = (
    "n_runs",
    "ppl_mean",
    "ppl_sd",
    "ppl_sd_sd",
    "cross_entropy_mean",
    "cross_entropy_sd",
    "cross_entropy_sd_sd",
    "accuracy_mean",
    "accuracy_sd",
    "accuracy_sd_sd",
    "disagreement",
    "ensemble_delta_ppl",
    "ensemble_delta_cross_entropy",
)

# (column, header, decimals, column holding its SD-of-SD or None): the paper's Table 2.
LM_MARKDOWN_COLUMNS = (
    ("n_runs", "Runs", 0, None),
    ("ppl_mean", "PPL", 2, None),
    ("ppl_sd", "PPL SD", 3, "ppl_sd_sd"),
    ("cross_entropy_mean", "Cross-entropy", 4, None),
    ("cross_entropy_sd", "Cross-entropy SD", 4, "cross_entropy_sd_sd"),
    ("accuracy_mean", "Next-token accuracy (%)", 2, None),
    ("disagreement", "Pairwise disagreement (%)", 2, None),
    ("ensemble_delta_ppl", "Ensemble Δ PPL", 3, None),
    ("ensemble_delta_cross_entropy", "Ensemble Δ cross-entropy", 4, None),
)

# A note under the markdown table when it holds language models.
LM_NOTE = (
    "Language models: PPL = exp(cross-entropy per test token); disagreement over next-token "
    "argmax predictions; ensembles average the two models' probabilities of the target, so "
    "Δ PPL is negative when ensembling helps."
)

# Pairs x tokens of float64 scratch per block of the ensemble computation (32 MiB).
PAIR_BLOCK_ELEMENTS = 4 * 2**20


@dataclass
class LMArrays:
    """A language-model run's per-token test arrays (memory-mapped)."""

    target_logprobs: np.ndarray  # (N,) float
    predictions: np.ndarray  # (N,) integer
    subset_logprobs: Optional[np.ndarray] = None  # (K, V) float
    subset_positions: Optional[np.ndarray] = None  # (K,) integer


def is_lm_run(directory: Path) -> bool:
    """A language-model run directory: target log-probabilities and no logits."""
    directory = Path(directory)
    return (directory / records.TARGET_LOGPROBS_FILE).is_file() and not (
        directory / records.LOGITS_FILE
    ).exists()


def read_lm_arrays(directory: Path, n_labels: int) -> LMArrays:
    """The arrays of a finished LM run; ``CorruptRunError`` when one is unreadable or the
    lengths disagree with the ``n_labels`` test targets."""
    directory = Path(directory)
    target = records.read_array(directory / records.TARGET_LOGPROBS_FILE, 1, "f")
    predictions = records.read_array(directory / records.PREDICTIONS_FILE, 1, "iu")
    for name, array in (("target_logprobs.npy", target), ("predictions.npy", predictions)):
        if len(array) != n_labels:
            raise records.CorruptRunError(f"{name} has {len(array)} tokens but labels.npy has {n_labels}")
    subset = positions = None
    if (directory / records.LOGPROBS_SUBSET_FILE).exists():
        subset = records.read_array(directory / records.LOGPROBS_SUBSET_FILE, 2, "f")
        positions = records.read_array(directory / records.SUBSET_POSITIONS_FILE, 1, "iu")
        if len(subset) != len(positions):
            raise records.CorruptRunError(
                f"logprobs_subset.npy has {len(subset)} rows but subset_positions.npy has {len(positions)}"
            )
    return LMArrays(target, predictions, subset, positions)


# --- metrics -------------------------------------------------------------------------------


def cross_entropies(target_logprobs: np.ndarray) -> np.ndarray:
    """(R,) mean negative log-probability of the targets, nats per token (float64 sums)."""
    return -np.mean(np.asarray(target_logprobs, dtype=np.float64), axis=-1)


def ensemble_gains(target_logprobs: np.ndarray) -> np.ndarray:
    """(R, R): entry (i, j), i < j, is the mean over tokens of log((p_i + p_j) / 2) -
    (log p_i + log p_j) / 2, the two-model ensemble's gain in log-likelihood per token; the
    rest is 0. Blocks of (later runs x tokens) keep the scratch near ``PAIR_BLOCK_ELEMENTS``."""
    logp = np.asarray(target_logprobs, dtype=np.float64)
    runs, n = logp.shape
    gains = np.zeros((runs, runs))
    if n == 0:
        return gains
    tile = int(max(1, min(n, PAIR_BLOCK_ELEMENTS // max(1, runs - 1))))
    for start in range(0, n, tile):
        block = logp[:, start : start + tile]
        for i in range(runs - 1):
            half_gap = np.abs(block[i + 1 :] - block[i]) / 2.0
            gains[i, i + 1 :] += log_cosh(half_gap).sum(axis=1)
    return gains / n


# A diverged run's perplexity is inf (its cross-entropy past ~709 nats), and its SDs NaN: values
# the table shows and the divergence note names (analysis.load), not warnings.
@np.errstate(over="ignore", invalid="ignore")
def lm_group_metrics(
    target_logprobs: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Every column of ``LM_COLUMNS`` for one group: (R, N) target log-probabilities and
    predictions of R runs, (N,) labels."""
    target_logprobs = np.asarray(target_logprobs)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels, dtype=np.int64)
    if target_logprobs.ndim != 2 or target_logprobs.shape != predictions.shape or target_logprobs.shape[1] != len(labels):
        raise ValueError(
            f"expected target_logprobs and predictions (R, N) and labels (N,), got "
            f"{target_logprobs.shape}, {predictions.shape} and {labels.shape}"
        )
    runs = len(target_logprobs)
    ce = cross_entropies(target_logprobs)
    ppl = np.exp(ce)
    acc = 100.0 * np.mean(predictions == labels, axis=-1)
    ppl_sd_sd, ce_sd_sd, acc_sd_sd = bootstrap_sd_sd(np.stack([ppl, ce, acc]), n_boot, seed)
    mean = lambda v: float(v.mean()) if len(v) else float("nan")  # noqa: E731
    row = {
        "n_runs": runs,
        "ppl_mean": mean(ppl),
        "ppl_sd": sd(ppl),
        "ppl_sd_sd": float(ppl_sd_sd),
        "cross_entropy_mean": mean(ce),
        "cross_entropy_sd": sd(ce),
        "cross_entropy_sd_sd": float(ce_sd_sd),
        "accuracy_mean": mean(acc),
        "accuracy_sd": sd(acc),
        "accuracy_sd_sd": float(acc_sd_sd),
        "disagreement": disagreement(predictions),
        "ensemble_delta_ppl": float("nan"),
        "ensemble_delta_cross_entropy": float("nan"),
    }
    if runs >= 2:
        upper = np.triu_indices(runs, k=1)
        gain = ensemble_gains(target_logprobs)[upper]
        pair_ce = (ce[:, None] + ce[None, :])[upper] / 2.0
        pair_ppl = (ppl[:, None] + ppl[None, :])[upper] / 2.0
        # + 0.0: identical runs give 0, not -0.0
        row["ensemble_delta_cross_entropy"] = float(-gain.mean()) + 0.0
        row["ensemble_delta_ppl"] = float(np.mean(np.exp(pair_ce - gain) - pair_ppl)) + 0.0
    return {k: row[k] for k in LM_COLUMNS}


def group_lm_metrics(group, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """``lm_group_metrics`` of an ``analysis.load.Group`` of language-model runs."""
    target = np.stack([np.asarray(r.lm.target_logprobs, dtype=np.float32) for r in group.runs])
    return lm_group_metrics(target, group.predictions, group.labels, n_boot=n_boot, seed=seed)


def markdown_columns(frame, image_columns: tuple) -> tuple:
    """The table's columns for a summary frame: ``image_columns`` when no row is a language
    model, Table 2's when every row is, and the image columns plus the perplexity columns for a
    sweep that holds both. A row is a language model's by ``summary_frame``'s
    ``language_model`` column (a group whose runs all diverged has NaN perplexities, yet
    Table 2's columns)."""
    if "language_model" not in frame or not frame["language_model"].any():
        return image_columns
    if frame["language_model"].all():  # next-token accuracy has the test-set decomposition too
        decomposition = ("accuracy_sd_test_set", "accuracy_sd_distribution", "seed_selection_gain")
        return LM_MARKDOWN_COLUMNS + tuple(c for c in image_columns if c[0] in decomposition)
    shown = {c for c, _, _, _ in image_columns}
    return image_columns + tuple(c for c in LM_MARKDOWN_COLUMNS if c[0] not in shown)
