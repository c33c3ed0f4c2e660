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
from analysis.load import n_diverged  # the test of the sweep's divergence notes
from analysis.render import (
    bars_inches,
    beside_inches,
    group_barh,
    group_styles,
    label_inches,
    legend_beside,
    legend_width_inches,
    row_label,
    save_figure,
    style_groups,
)


# One line each: what to read from the figure (the HTML report shows them under the figures).
CAPTIONS = {
    "test_set_noise": "Per-example error rates, and the observed accuracy SD next to what finite-test-set "
    "noise alone predicts (Jordan 2024) and the distribution-wise SD: where the observed bar barely "
    "exceeds the prediction, most of the spread is the test set's, not training's.",
    "best_of_k": "Expected best test accuracy of k runs (shaded: ± SD): how much reporting the best of "
    "k seeds inflates a result.",
}


def diverged_counts(sweep) -> list[int]:
    """Per group (the rows of ``summary_frame``), how many of its runs diverged."""
    return [n_diverged(group) for group in sweep.groups]


def left_out_note(left_out: list[str]) -> str:
    """The sentence that names the groups a figure leaves out because their runs diverged."""
    if not left_out:
        return ""
    return f"Left out, runs diverged (chance-level argmax of NaN logits): {'; '.join(left_out)}."


def say_left_out(fig, left_out: list[str]) -> None:
    """``left_out_note`` under the figure, wrapped to its width (the layout makes room)."""
    import textwrap

    if left_out:
        width = int(fig.get_size_inches()[0] * 13)
        fig.supxlabel(textwrap.fill(left_out_note(left_out), width), fontsize=9, color="dimgray")


def _caption(stem: str, left_out: list[str]) -> str:
    return " ".join(filter(None, (CAPTIONS[stem], left_out_note(left_out))))


def test_set_noise_figure(labels: list[str], error_rates: list[np.ndarray], frame: pd.DataFrame,
                          left_out: list[str] = ()):
    """Left: histogram of the per-example error rate (fraction of runs wrong on each test example),
    one line per group. Right: observed accuracy SD per group next to the SD finite-test-set noise
    alone predicts (``accuracy_sd_test_set``) and the distribution-wise SD. ``left_out``: labels
    of groups not drawn because runs diverged, named under the figure and in its caption."""
    from matplotlib.figure import Figure

    # The histogram on top with its legend beside it; below, the SDs as horizontal bars, each
    # group's label on its own row: the figure grows with the number of groups and the labels.
    hist_height = max(3.0, beside_inches(len(labels)))
    bars_height = bars_inches(len(labels), per_group=0.4)
    series = ("observed", "predicted: test-set noise", "distribution-wise")
    width = 5.0 + max(legend_width_inches(labels), label_inches(labels) + legend_width_inches(series))
    fig = Figure(figsize=(width, hist_height + bars_height), layout="constrained")
    # Two subfigures, so the bars' long labels and the histogram's legend each take their own
    # margin rather than both narrowing one shared column.
    top, bottom = fig.subfigures(2, 1, height_ratios=[hist_height, bars_height])
    left, right = top.subplots(), bottom.subplots()
    style_groups(left, n=len(labels))
    bins = np.linspace(0.0, 1.0, 21)
    # Steps from a floor below one example, not from 0: on a log axis a step down to 0 is clipped
    # to a point far below the axes, which the renderer draws as stray ticks, not always alike.
    floor = 0.5
    for label, rates in zip(labels, error_rates):
        counts, _ = np.histogram(rates, bins=bins)  # a line: it takes the groups' colours and styles
        left.step(np.r_[bins[0], bins], np.r_[floor, np.maximum(counts, floor), floor], where="post", label=label)
    left.set_yscale("log")
    left.set_ylim(bottom=0.8)
    left.set_xlabel("fraction of runs that misclassify the example")
    left.set_ylabel("test examples")
    left.set_title("Per-example error rate")
    legend_beside(left)
    y = np.arange(len(labels))
    height = 0.27
    for offset, column, name in zip((-height, 0.0, height),
                                    ("accuracy_sd", "accuracy_sd_test_set", "accuracy_sd_distribution"), series):
        right.barh(y + offset, np.nan_to_num(frame[column].to_numpy(dtype=float)), height, label=name)
    group_barh(right, labels)
    right.set_xlabel("accuracy SD (%)")
    right.set_title("Observed vs independent-errors SD")
    legend_beside(right)
    say_left_out(fig, left_out)
    return fig, _caption("test_set_noise", left_out)


def best_of_k_figure(table: pd.DataFrame, keys: list[str], left_out: list[str] = ()):
    """Expected best test accuracy of k runs (k = 1..R) per group, shaded +- its SD;
    ``left_out`` as for ``test_set_noise_figure``."""
    from matplotlib.figure import Figure

    groups = list(table.groupby(keys, sort=False, dropna=False)) if keys else [((), table)]
    labels = [row_label(name if isinstance(name, tuple) else (name,), keys) or "all runs" for name, _ in groups]
    fig = Figure(figsize=(6.5 + legend_width_inches(labels), max(4.0, beside_inches(len(labels)))),
                 layout="constrained")
    ax = fig.subplots()
    for (_, rows), label, style in zip(groups, labels, group_styles(len(groups))):
        ax.plot(rows["k"], rows["expected_best"], label=label, **style)
        ax.fill_between(rows["k"], rows["expected_best"] - rows["expected_best_sd"],
                        rows["expected_best"] + rows["expected_best_sd"], alpha=0.2, color=style["color"])
    ax.set_xscale("log")
    ax.set_xlabel("k (runs, best reported)")
    ax.set_ylabel("expected best test accuracy (%)")
    ax.set_title("Expected best of k runs (Dodge et al. 2020)")
    legend_beside(ax)
    say_left_out(fig, left_out)
    return fig, _caption("best_of_k", left_out)


def kept_groups(sweep) -> tuple[list[bool], list[str]]:
    """Which groups the two figures draw (per group: two runs or more, none diverged), and the
    labels of those left out because runs diverged: a diverged run's accuracy is the argmax of
    NaN logits, a chance-level number that would pass for a result."""
    keys = sweep.display_keys
    counts = diverged_counts(sweep)
    keep = [len(g.runs) >= 2 and not d for g, d in zip(sweep.groups, counts)]
    left_out = [f"{g.label(keys)} ({d} of {len(g.runs)} runs)" for g, d in zip(sweep.groups, counts) if d]
    return keep, left_out


def write_stats_figures(sweep, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``test_set_noise.{png,pdf}`` and ``best_of_k.{png,pdf}`` for groups with two runs or more
    none of which diverged (``kept_groups``); the others are named on the figures."""
    keep, left_out = kept_groups(sweep)
    if not any(keep):
        return []
    groups = [g for g, k in zip(sweep.groups, keep) if k]
    keys = sweep.display_keys
    labels = [g.label(keys) for g in groups]
    rates = [1.0 - g.correct.mean(axis=0) for g in groups]
    figure = test_set_noise_figure(labels, rates, frame[keep].reset_index(drop=True), left_out)[0]
    paths = save_figure(figure, out_dir, "test_set_noise")
    table = stats.best_of_k_table(sweep)  # k = 1..R for each group, in the sweep's order
    table = table[np.repeat(keep, [len(g.runs) for g in sweep.groups])]
    table = table[table["k"].notna()]
    paths += save_figure(best_of_k_figure(table, [k for k in keys if k in table.columns], left_out)[0], out_dir, "best_of_k")
    return paths
