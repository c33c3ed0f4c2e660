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

from analysis.instability import NAMED_NOT_DRAWN, label_spread_axes, plot_spread, spread_by_epoch
from analysis.load import Sweep
from analysis.paper import paper_figures, paper_gaps, paper_notes
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
from analysis.stats_figures import diverged_counts, kept_groups, left_out_note, write_stats_figures


def _labels(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    return [row_label([row[k] for k in keys], keys) for _, row in frame.iterrows()]


def _bar_gap(n_runs: float, n_diverged: int, sd: float) -> str:
    """What stands where a group's bar is missing or zero, so an absent bar never reads as a
    spread of 0, and a bar that counts diverged runs never reads as training's spread: every run
    diverged, too few runs, a metric the diverged runs made NaN, some runs diverged, or a true 0
    (bitwise-identical runs, such as a ``source=none`` control)."""
    n_runs = int(n_runs)
    if n_diverged and n_diverged >= n_runs:
        return f"diverged (all {n_runs} runs)"
    if n_runs < 2:
        return f"n/a ({n_runs} run{'s' * (n_runs != 1)})"
    if np.isnan(sd):
        return f"n/a ({n_diverged} of {n_runs} runs diverged)" if n_diverged else "n/a"
    if n_diverged:  # a bar, but one that counts chance-level runs: hatched and labelled
        return f"{n_diverged} of {n_runs} runs diverged"
    return "0" if sd == 0 else ""


def _drawable(frame: pd.DataFrame, counts: list[int]) -> np.ndarray:
    """Rows with a bar to draw: two runs or more, not all diverged."""
    runs = frame["n_runs"].to_numpy(dtype=float)
    return (runs >= 2) & (runs > np.asarray(counts, dtype=float))


def variability_bars(frame: pd.DataFrame, keys: list[str], out_dir: Path, diverged_runs: list[int] | None = None) -> list[Path]:
    """Bars of accuracy SD and cross-entropy SD per group, error bars = bootstrap SD of the SD.
    ``diverged_runs`` (``diverged_counts``, per row): rows whose runs all diverged get no bar but
    the word "diverged", rows of one run "n/a (1 run)", a true zero "0"; a bar of a row where
    some runs diverged is hatched and labelled "k of n runs diverged". No row with a bar: no
    figure (``figure_gaps`` says why)."""
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    counts = [0] * len(frame) if diverged_runs is None else list(diverged_runs)
    drawable = _drawable(frame, counts)
    if not drawable.any():
        return []
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
        sds = np.where(drawable, frame[f"{column}_sd"].to_numpy(dtype=float), np.nan)
        errors = np.where(np.isfinite(sds), np.nan_to_num(frame[f"{column}_sd_sd"].to_numpy(dtype=float)), np.nan)
        bars = ax.barh(y, sds, xerr=errors, capsize=3, color="tab:blue")  # NaN: no bar, no error bar
        at_left = blended_transform_factory(ax.transAxes, ax.transData)
        for i, (n, d, value, error) in enumerate(zip(frame["n_runs"].to_numpy(dtype=float), counts, sds, errors)):
            gap = _bar_gap(n, d, value)
            if gap and d and np.isfinite(value):  # a bar with chance-level runs in it: hatched, labelled at its end
                bars[i].set(hatch="//", edgecolor="white")
                ax.annotate(gap, (value + error, i), xytext=(4, 0), textcoords="offset points",
                            va="center", fontsize=8, color="dimgray")
            elif gap:
                ax.text(0.01, i, gap, transform=at_left, va="center", fontsize=8, color="dimgray")
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


def _spreads(sweep: Sweep, counts: list[int]) -> list[tuple[str, pd.DataFrame, int, int]]:
    """(label, ``spread_by_epoch``, runs, diverged runs) of the groups with per-epoch metrics."""
    keys = sweep.display_keys
    spreads = [(g.label(keys), spread_by_epoch(g), len(g.runs), d) for g, d in zip(sweep.groups, counts)]
    return [s for s in spreads if len(s[1])]


def cross_entropy_spread(sweep: Sweep, out_dir: Path) -> list[Path]:
    """Every group's spread over training (not a figure of the paper; its Figure 3, the bit flip
    alone, is ``instability.png``): per epoch, the 2.5-97.5 percentile width and the SD of the
    runs' test cross-entropy. A group with diverged runs is not drawn (its spread runs to 1e23
    and NaN) but named in the legend; no group left to draw: no figure (``figure_gaps``)."""
    from matplotlib.figure import Figure

    spreads = _spreads(sweep, diverged_counts(sweep))
    if all(d for *_, d in spreads):
        return []
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    style_groups(left, right, n=len(spreads))  # past ten colours, line styles tell groups apart
    for label, spread, runs, d in spreads:
        plot_spread((left, right), spread, label, d, runs)
    label_spread_axes((left, right))
    shared_legend(fig, [left, right])  # beside the axes, never over the lines
    return save_figure(fig, out_dir, "cross_entropy_spread")


def write_figures(sweep: Sweep, frame: pd.DataFrame, out_dir: Path, cka: pd.DataFrame | None = None) -> list[Path]:
    """Every figure the sweep has data for; returns the files written."""
    out_dir = Path(out_dir)
    keys = sweep.display_keys
    paths = []
    if len(frame):
        paths += variability_bars(frame, keys, out_dir, diverged_counts(sweep))
    if cka is not None and len(cka):
        paths += cka_bars(cka, keys, out_dir)
    paths += cross_entropy_spread(sweep, out_dir)
    paths += paper_figures(sweep, frame, out_dir)  # Figures 2, 3 and PD, by the sweep's structure
    paths += write_stats_figures(sweep, frame, out_dir)
    return paths


def figure_gaps(sweep: Sweep, frame: pd.DataFrame) -> dict[str, str]:
    """{stem: why} for the figures of ``write_figures`` that the sweep's runs leave empty (every
    group diverged, or has one run), so a page can say why a figure is absent."""
    if not len(frame):
        return {}
    counts = diverged_counts(sweep)
    gaps = {}
    if not _drawable(frame, counts).any():
        gaps["variability"] = ("every group has one run or runs that all diverged, so no SD over runs to draw"
                               if any(counts) else "every group has one run, so no SD over runs to draw")
    spreads = _spreads(sweep, counts)
    if spreads and all(d for *_, d in spreads):
        gaps["cross_entropy_spread"] = "every group with per-epoch metrics has diverged runs (their spread is NaN or runs to 1e23)"
    if not any(kept_groups(sweep)[0]):
        why = ("no group has two runs or more none of which diverged" if any(counts)
               else "no group has two runs or more")
        gaps["test_set_noise"] = gaps["best_of_k"] = why
    return gaps | paper_gaps(sweep)


def figure_notes(sweep: Sweep) -> dict[str, str]:
    """{stem: sentence} to add to a figure's caption where the sweep's runs change what it shows:
    the groups left out, or named but not drawn, because runs diverged."""
    counts = diverged_counts(sweep)
    if not any(counts):
        return {}
    note = left_out_note(kept_groups(sweep)[1])
    return {"cross_entropy_spread": NAMED_NOT_DRAWN, "test_set_noise": note, "best_of_k": note} | paper_notes(sweep)
