"""Figures of analysis/stats.py: test-set noise versus training noise, and best-of-k curves.

    python -m analysis SWEEP_DIR --figures DIR     # writes test_set_noise.* and best_of_k.*

Each ``*_figure`` function takes plain data (a summary frame, per-example error rates, the
best-of-k table) and returns ``(matplotlib.figure.Figure, caption)``, the caption one line, so a
report can embed the figure without a sweep on disk; ``write_stats_figures`` saves both as PNG
and PDF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import stats
from analysis.render import save_figure


# One line each: what to read from the figure (the HTML report shows them under the figures).
CAPTIONS = {
    "test_set_noise": "Per-example error rates, and the observed accuracy SD next to what finite-test-set "
    "noise alone predicts (Jordan 2024) and the distribution-wise SD: where the observed bar barely "
    "exceeds the prediction, most of the spread is the test set's, not training's.",
    "best_of_k": "Expected best test accuracy of k runs (shaded: ± SD): how much reporting the best of "
    "k seeds inflates a result.",
}


def test_set_noise_figure(labels: list[str], error_rates: list[np.ndarray], frame: pd.DataFrame):
    """Left: histogram of the per-example error rate (fraction of runs wrong on each test example),
    one line per group. Right: observed accuracy SD per group next to the SD finite-test-set noise
    alone predicts (``accuracy_sd_test_set``) and the distribution-wise SD."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(9.0, 0.7 * len(labels) + 6), 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    bins = np.linspace(0.0, 1.0, 21)
    for label, rates in zip(labels, error_rates):
        left.hist(rates, bins=bins, histtype="step", label=label)
    left.set_yscale("log")
    left.set_xlabel("fraction of runs that misclassify the example")
    left.set_ylabel("test examples")
    left.set_title("Per-example error rate")
    left.legend(fontsize="small")
    x = np.arange(len(labels))
    width = 0.27
    for offset, column, name in (
        (-width, "accuracy_sd", "observed"),
        (0.0, "accuracy_sd_test_set", "predicted: test-set noise"),
        (width, "accuracy_sd_distribution", "distribution-wise"),
    ):
        right.bar(x + offset, np.nan_to_num(frame[column].to_numpy(dtype=float)), width, label=name)
    right.set_xticks(x, labels, rotation=45, ha="right")
    right.set_ylabel("accuracy SD (%)")
    right.set_title("Observed vs independent-errors SD")
    right.legend(fontsize="small")
    return fig, CAPTIONS["test_set_noise"]


def best_of_k_figure(table: pd.DataFrame, keys: list[str]):
    """Expected best test accuracy of k runs (k = 1..R) per group, shaded +- its SD."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    groups = table.groupby(keys, sort=False, dropna=False) if keys else [("all runs", table)]
    for name, rows in groups:
        label = ", ".join(str(v) for v in (name if isinstance(name, tuple) else (name,)))
        ax.plot(rows["k"], rows["expected_best"], label=label)
        ax.fill_between(rows["k"], rows["expected_best"] - rows["expected_best_sd"],
                        rows["expected_best"] + rows["expected_best_sd"], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("k (runs, best reported)")
    ax.set_ylabel("expected best test accuracy (%)")
    ax.set_title("Expected best of k runs (Dodge et al. 2020)")
    ax.legend(fontsize="small")
    return fig, CAPTIONS["best_of_k"]


def write_stats_figures(sweep, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``test_set_noise.{png,pdf}`` and ``best_of_k.{png,pdf}`` for groups with two runs or more."""
    keep = [len(g.runs) >= 2 for g in sweep.groups]
    if not any(keep):
        return []
    groups = [g for g, k in zip(sweep.groups, keep) if k]
    keys = sweep.display_keys
    labels = [g.label(keys) for g in groups]
    rates = [1.0 - g.correct.mean(axis=0) for g in groups]
    paths = save_figure(test_set_noise_figure(labels, rates, frame[keep].reset_index(drop=True))[0], out_dir, "test_set_noise")
    table = stats.best_of_k_table(sweep)
    table = table[table["k"].notna()]
    paths += save_figure(best_of_k_figure(table, [k for k in keys if k in table.columns])[0], out_dir, "best_of_k")
    return paths
