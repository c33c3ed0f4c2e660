"""The paper's figures as PNG and PDF, drawn with matplotlib's Agg canvas (no display needed).

    python -m analysis SWEEP_DIR --figures DIR [--cka]

- ``variability.{png,pdf}``: per group, the SD of test accuracy and of cross-entropy over runs,
  with the bootstrap SD of the SD as error bars (Table 1 as bars).
- ``cka.{png,pdf}``: mean linear CKA between pairs of runs at each layer, one bar per group
  (Figure 1); only when CKA was computed.
- ``cross_entropy_spread.{png,pdf}``: for every group of any sweep, at each evaluated epoch, the
  width of the middle 95% of the runs' test cross-entropy and its SD, log-scale y, from
  ``metrics.jsonl``. The paper's Figure 3 is the bit-flip case of this, ``instability.png``.
- ``onset.{png,pdf}`` (Figure 2), ``instability.{png,pdf}`` (Figure 3, with the first 10 epochs)
  and ``prediction_difference.{png,pdf}`` (Snapp & Shamir) when the sweep has their structure:
  see ``analysis/paper.py``.
- ``test_set_noise.{png,pdf}`` and ``best_of_k.{png,pdf}``: see ``analysis/stats_figures.py``.

Every figure grows with the number of groups and the length of their labels (the helpers in
``analysis/render.py``): bars are horizontal, one row per group; legends sit beside the axes;
groups past ten take line styles (hatches for bars) as well as colours.

Figures are built on ``matplotlib.figure.Figure`` directly, so no global pyplot state or
backend is touched (safe inside a notebook or the end-of-sweep callback).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.instability import label_spread_axes, plot_spread, spread_by_epoch
from analysis.load import Sweep
from analysis.paper import paper_figures
from analysis.render import (
    bar_styles,
    bars_inches,
    beside_inches,
    group_barh,
    label_inches,
    legend_beside,
    legend_width_inches,
    row_label,
    save_figure,
    shared_legend,
    style_groups,
)
from analysis.stats_figures import write_stats_figures


def _labels(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    return [row_label([row[k] for k in keys], keys) for _, row in frame.iterrows()]


def variability_bars(frame: pd.DataFrame, keys: list[str], out_dir: Path) -> list[Path]:
    """Bars of accuracy SD and cross-entropy SD per group, error bars = bootstrap SD of the SD."""
    from matplotlib.figure import Figure

    labels = _labels(frame, keys)
    # Horizontal bars: each group's label on one row, however long, the figure as tall as the
    # groups need.
    fig = Figure(figsize=(7.0 + label_inches(labels), bars_inches(len(labels))), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(labels))
    for ax, column, title in (
        (axes[0], "accuracy", "Accuracy SD (%)"),
        (axes[1], "cross_entropy", "Cross-entropy SD (nats)"),
    ):
        sds = frame[f"{column}_sd"].to_numpy(dtype=float)
        errors = np.nan_to_num(frame[f"{column}_sd_sd"].to_numpy(dtype=float))
        ax.barh(y, np.nan_to_num(sds), xerr=errors, capsize=3, color="tab:blue")
        ax.set_title(title)
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
    group_barh(axes[0], labels)
    fig.suptitle("Run-to-run variability (error bars: bootstrap SD of the SD)")
    return save_figure(fig, out_dir, "variability")


def cka_bars(cka: pd.DataFrame, keys: list[str], out_dir: Path) -> list[Path]:
    """Figure 1: mean CKA over pairs at each layer (forward order), one bar per group."""
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(cka["layer"]))
    groups = list(cka.groupby(keys, sort=False, dropna=False))
    labels = [_labels(rows.iloc[:1], keys)[0] for _, rows in groups]
    width_in = max(6.0, 1.2 * len(layers) + 2) + legend_width_inches(labels)
    fig = Figure(figsize=(width_in, max(4.0, beside_inches(len(groups)))), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    for g, ((_, rows), label, style) in enumerate(zip(groups, labels, bar_styles(len(groups)))):
        by_layer = rows.set_index("layer").reindex(layers)
        ax.bar(
            np.arange(len(layers)) + (g - (len(groups) - 1) / 2) * width,
            by_layer["cka_mean"].to_numpy(dtype=float),
            width,
            yerr=np.nan_to_num(by_layer["cka_sd"].to_numpy(dtype=float)),
            capsize=2,
            label=label,
            **style,  # past ten colours, hatches tell groups apart
        )
    low = np.nanmin(cka["cka_mean"] - cka["cka_sd"].fillna(0))
    ax.set_ylim(max(-0.05, min(0.95, low - 0.05)), 1.01)
    ax.set_xticks(np.arange(len(layers)), layers)
    ax.set_ylabel(f"linear CKA ({cka['estimator'].iloc[0]})")
    ax.set_title("Representation similarity between pairs of runs (error bars: SD over pairs)")
    legend_beside(ax)
    return save_figure(fig, out_dir, "cka")


def cross_entropy_spread(sweep: Sweep, out_dir: Path) -> list[Path]:
    """Every group's spread over training (not a figure of the paper; its Figure 3, the bit flip
    alone, is ``instability.png``): per epoch, the 2.5-97.5 percentile width and the SD of the
    runs' test cross-entropy."""
    from matplotlib.figure import Figure

    keys = sweep.display_keys
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    style_groups(left, right, n=len(sweep.groups))  # past ten colours, line styles tell groups apart
    drawn = 0
    for group in sweep.groups:
        spread = spread_by_epoch(group)
        if not len(spread):
            continue
        plot_spread((left, right), spread, group.label(keys))
        drawn += 1
    if not drawn:
        return []
    label_spread_axes((left, right))
    shared_legend(fig, [left, right])  # beside the axes, never over the lines
    return save_figure(fig, out_dir, "cross_entropy_spread")


def write_figures(sweep: Sweep, frame: pd.DataFrame, out_dir: Path, cka: pd.DataFrame | None = None) -> list[Path]:
    """Every figure the sweep has data for; returns the files written."""
    out_dir = Path(out_dir)
    keys = sweep.display_keys
    paths = []
    if len(frame):
        paths += variability_bars(frame, keys, out_dir)
    if cka is not None and len(cka):
        paths += cka_bars(cka, keys, out_dir)
    paths += cross_entropy_spread(sweep, out_dir)
    paths += paper_figures(sweep, frame, out_dir)  # Figures 2, 3 and PD, by the sweep's structure
    paths += write_stats_figures(sweep, frame, out_dir)
    return paths
