"""The paper's figures as PNG and PDF, drawn with matplotlib's Agg canvas (no display needed).

    python -m analysis SWEEP_DIR --figures DIR [--cka]

- ``variability.{png,pdf}``: per group, the SD of test accuracy and of cross-entropy over runs,
  with the bootstrap SD of the SD as error bars (Table 1 as bars).
- ``cka.{png,pdf}``: mean linear CKA between pairs of runs at each layer, one bar per group
  (Figure 1); only when CKA was computed.
- ``cross_entropy_spread.{png,pdf}``: at each evaluated epoch, the width of the middle 95% of
  the runs' test cross-entropy and its SD, log-scale y (Figure 3), from ``metrics.jsonl``.
- ``onset.{png,pdf}`` (Figure 2), ``instability.{png,pdf}`` (Figure 3, with the first 10 epochs)
  and ``prediction_difference.{png,pdf}`` (Snapp & Shamir) when the sweep has their structure:
  see ``analysis/paper.py``.
- ``test_set_noise.{png,pdf}`` and ``best_of_k.{png,pdf}``: see ``analysis/stats_figures.py``.

Figures are built on ``matplotlib.figure.Figure`` directly, so no global pyplot state or
backend is touched (safe inside a notebook or the end-of-sweep callback).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from analysis.load import Group, Sweep

# Inside ``collected()``, figures are handed over as (stem, figure) instead of written to files.
_COLLECTED: ContextVar[list | None] = ContextVar("collected_figures", default=None)


@contextmanager
def collected() -> Iterator[list]:
    """``with collected() as figures: write_figures(...)``: the (stem, Figure) pairs, no files
    (the HTML report, ``analysis/report.py``, embeds them)."""
    figures: list = []
    token = _COLLECTED.set(figures)
    try:
        yield figures
    finally:
        _COLLECTED.reset(token)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    figures = _COLLECTED.get()
    if figures is not None:
        figures.append((stem, fig))
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def _labels(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    labels = []
    for _, row in frame.iterrows():
        parts = [str(row[k]) if k == "source.name" else f"{k}={row[k]}" for k in keys]
        labels.append(", ".join(parts))
    return labels


def variability_bars(frame: pd.DataFrame, keys: list[str], out_dir: Path) -> list[Path]:
    """Bars of accuracy SD and cross-entropy SD per group, error bars = bootstrap SD of the SD."""
    from matplotlib.figure import Figure

    labels = _labels(frame, keys)
    if len(labels) > 12:  # many groups: the two panels one above the other, each the page's width
        fig = Figure(figsize=(max(6.0, 0.4 * len(labels) + 2), 8.0), layout="constrained")
        axes = fig.subplots(2, 1)
    else:
        fig = Figure(figsize=(max(6.0, 0.6 * len(labels) + 3), 4.0), layout="constrained")
        axes = fig.subplots(1, 2)
    x = np.arange(len(labels))
    for ax, column, title in (
        (axes[0], "accuracy", "Accuracy SD (%)"),
        (axes[1], "cross_entropy", "Cross-entropy SD (nats)"),
    ):
        sds = frame[f"{column}_sd"].to_numpy(dtype=float)
        errors = np.nan_to_num(frame[f"{column}_sd_sd"].to_numpy(dtype=float))
        ax.bar(x, np.nan_to_num(sds), yerr=errors, capsize=3, color="tab:blue")
        ax.set_xticks(x, labels, rotation=45, ha="right")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    fig.suptitle("Run-to-run variability (error bars: bootstrap SD of the SD)")
    return _save(fig, out_dir, "variability")


def cka_bars(cka: pd.DataFrame, keys: list[str], out_dir: Path) -> list[Path]:
    """Figure 1: mean CKA over pairs at each layer (forward order), one bar per group."""
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(cka["layer"]))
    groups = list(cka.groupby(keys, sort=False, dropna=False))
    fig = Figure(figsize=(max(6.0, 1.2 * len(layers) + 2), 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    for g, (_, rows) in enumerate(groups):
        by_layer = rows.set_index("layer").reindex(layers)
        label = _labels(rows.iloc[:1], keys)[0]
        ax.bar(
            np.arange(len(layers)) + (g - (len(groups) - 1) / 2) * width,
            by_layer["cka_mean"].to_numpy(dtype=float),
            width,
            yerr=np.nan_to_num(by_layer["cka_sd"].to_numpy(dtype=float)),
            capsize=2,
            label=label,
        )
    low = np.nanmin(cka["cka_mean"] - cka["cka_sd"].fillna(0))
    ax.set_ylim(max(-0.05, min(0.95, low - 0.05)), 1.01)
    ax.set_xticks(np.arange(len(layers)), layers)
    ax.set_ylabel(f"linear CKA ({cka['estimator'].iloc[0]})")
    ax.set_title("Representation similarity between pairs of runs (error bars: SD over pairs)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out_dir, "cka")


def cross_entropy_by_epoch(group: Group) -> tuple[np.ndarray, np.ndarray]:
    """(epochs (E,), test cross-entropy (R, E)) over the epochs every run of the group evaluated."""
    per_run = [{row["epoch"]: row["test_cross_entropy"] for row in run.metrics if "epoch" in row} for run in group.runs]
    epochs = sorted(set.intersection(*(set(m) for m in per_run))) if per_run else []
    values = np.array([[m[e] for e in epochs] for m in per_run], dtype=float).reshape(len(per_run), len(epochs))
    return np.array(epochs), values


def cross_entropy_spread(sweep: Sweep, out_dir: Path) -> list[Path]:
    """Figure 3: per epoch, the 2.5-97.5 percentile width and the SD of test cross-entropy."""
    from matplotlib.figure import Figure

    keys = sweep.display_keys
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    many = len(sweep.groups) > 10  # past ten colours, line styles tell groups apart
    if many:
        from cycler import cycler
        from matplotlib import colormaps

        for ax in (left, right):
            ax.set_prop_cycle(cycler(linestyle=["-", "--", ":"]) * cycler(color=colormaps["tab10"].colors))
    drawn = 0
    for group in sweep.groups:
        epochs, values = cross_entropy_by_epoch(group)
        if len(group.runs) < 2 or not len(epochs):
            continue
        low, high = np.percentile(values, [2.5, 97.5], axis=0)
        label = group.label(keys)
        # Log axes drop zeros (bitwise-identical runs); say so in the legend rather than vanish.
        spread, sd = high - low, values.std(axis=0, ddof=1)
        suffix = " (all 0)" if not np.any(sd > 0) else ""
        left.plot(epochs, np.where(spread > 0, spread, np.nan), marker=".", label=label + suffix)
        right.plot(epochs, np.where(sd > 0, sd, np.nan), marker=".", label=label + suffix)
        drawn += 1
    if not drawn:
        return []
    for ax, title in ((left, "Width of the middle 95% of runs"), (right, "SD over runs")):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if drawn <= 6:
            ax.legend(fontsize="small")
    if drawn > 6:  # one legend beside the axes instead of two that hide the lines
        fig.set_size_inches(12.0, max(4.0, 0.22 * drawn))
        fig.legend(*left.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    left.set_ylabel("test cross-entropy (nats)")
    return _save(fig, out_dir, "cross_entropy_spread")


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
    from analysis.paper import paper_figures  # Figures 2, 3 and PD, by the sweep's structure

    paths += paper_figures(sweep, frame, out_dir)
    from analysis.stats_figures import write_stats_figures  # test-set noise, best of k

    paths += write_stats_figures(sweep, frame, out_dir)
    return paths
