"""Prediction difference against activation, shuffle window and model size (Snapp & Shamir 2021).

    python launch.py -m +experiment=shamir
    python -m analysis outputs/shamir --figures figs/shamir   # prediction_difference.{png,pdf}

When the groups of a sweep differ in ``model.activation`` or ``shuffle_window`` (or
``model.width`` / ``model.depth``), this module tabulates the prediction difference (PD: mean
|p_i - p_j| over test examples, classes and pairs of runs; ``analysis.metrics``) per source,
draws it against each of those keys, and checks Snapp & Shamir's qualitative findings:

- smooth activations (every activation but ``relu`` and ``leaky_relu``) give a lower PD than
  ReLU, compared setting by setting (same source, window, width, depth);
- a larger shuffle window gives a higher PD (a window of 1 keeps the stored order; ``null`` is a
  full shuffle, the largest);
- a larger model (width, depth) gives a higher PD.

Each finding is reported as the number of comparisons that agree with it, not as a verdict on a
single number: with a handful of runs per group the PDs are noisy. Averages over keys that are
not on a panel's axis are said so in the panel's title.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import Sweep
from analysis.render import (
    bar_styles,
    figure_legend,
    format_number,
    group_styles,
    legend_beside,
    legend_width_inches,
    markdown_table,
    save_figure,
)
from analysis.stats_figures import say_left_out

ACTIVATION = "model.activation"
WINDOW = "shuffle_window"
SIZE_KEYS = ("model.width", "model.depth")
AXES = (ACTIVATION, WINDOW) + SIZE_KEYS
NON_SMOOTH = ("relu", "leaky_relu")
SOURCE = "source.name"


def has_pd_structure(sweep: Sweep) -> bool:
    """Whether activation or shuffle window differ between the sweep's groups."""
    keys = sweep.display_keys
    return ACTIVATION in keys or WINDOW in keys


def _window_value(w) -> float:
    """A shuffle window as a number for ordering: null (a full shuffle) is the largest."""
    if w is None or (isinstance(w, float) and math.isnan(w)):
        return math.inf
    return float(w)


def _window_label(w) -> str:
    return "full" if math.isinf(_window_value(w)) else str(int(w))


def _prepared(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The frame with a sortable window column; the axes that vary in this sweep."""
    frame = frame.copy()
    if WINDOW in frame:
        frame["_window"] = [_window_value(w) for w in frame[WINDOW]]
    axes = [k for k in AXES if k in keys]
    return frame, axes


def _others(keys: list[str], *exclude: str) -> list[str]:
    return [k for k in keys if k not in exclude and k != SOURCE]


def pd_markdown(frame: pd.DataFrame, keys: list[str]) -> str:
    """PD (relative PD) per source: rows = the other settings, columns = shuffle windows."""
    frame, axes = _prepared(frame, keys)
    out = ["Prediction difference (Snapp & Shamir): PD (relative PD) per source; pairs of runs "
           "that differ only in the source's seed."]
    row_keys = _others(keys, WINDOW)
    windows = sorted(set(frame["_window"])) if WINDOW in frame else [None]
    for source, rows in frame.groupby(SOURCE, sort=False):
        header = [k for k in row_keys] or ["setting"]
        columns = [f"window {_window_label(w)}" for w in windows] if WINDOW in frame else ["PD"]
        table = []
        groups = rows.groupby(row_keys, sort=False, dropna=False) if row_keys else [((), rows)]
        for values, cells_rows in groups:
            values = values if isinstance(values, tuple) else (values,)
            cells = [str(v) for v in values] or ["all"]
            for w in windows:
                match = cells_rows if w is None else cells_rows[cells_rows["_window"] == w]
                if not len(match):
                    cells.append("n/a")
                    continue
                r = match.iloc[0]
                cells.append(f"{format_number(r['prediction_difference'], 4)} "
                             f"({format_number(r['relative_prediction_difference'], 3)})")
            table.append(cells)
        out += ["", f"Source: {source}", "", markdown_table(header + columns, table, text_columns=len(header))]
    out += ["", *findings_lines(frame, keys)]
    return "\n".join(out) + "\n"


def _level(axis: str, value) -> str:
    return _window_label(value) if axis == WINDOW else str(value)


def _measurable(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose PD measures something: some test prediction differs between their runs. Where
    none does (a stable model's bit flip: disagreement 0), the PD is float rounding of the
    probabilities (about 1e-8), and comparing two such rows is comparing rounding."""
    return frame["disagreement"].to_numpy(dtype=float) > 0


def _compare_counts(frame: pd.DataFrame, keys: list[str], axis: str, order) -> tuple[int, int, list[str], int]:
    """Over settings that differ only in ``axis``: how many (larger, smaller) pairs of ``axis``
    values have the larger PD at the larger value; returns (agree, total, examples of
    disagreement (all of them), pairs left out because a row's PD is rounding: ``_measurable``)."""
    fixed = [k for k in keys if k != axis]
    agree = total = rounding = 0
    against = []
    groups = frame.groupby(fixed, sort=False, dropna=False) if fixed else [((), frame)]
    for values, rows in groups:
        rows = rows.assign(_order=[order(v) for v in rows[axis]]).sort_values("_order")
        pd_values = rows["prediction_difference"].to_numpy(dtype=float)
        measurable = _measurable(rows)
        levels = rows[axis].tolist()
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                if np.isnan(pd_values[i]) or np.isnan(pd_values[j]):
                    continue
                if not (measurable[i] and measurable[j]):
                    rounding += 1
                    continue
                total += 1
                if pd_values[j] > pd_values[i]:
                    agree += 1
                else:
                    values = values if isinstance(values, tuple) else (values,)
                    against.append(", ".join(f"{k}={_level(k, v)}" for k, v in zip(fixed, values)) +
                                   f": {axis}={_level(axis, levels[i])} PD {pd_values[i]:.3g}, "
                                   f"{_level(axis, levels[j])} PD {pd_values[j]:.3g}")
    return agree, total, against, rounding


def findings_lines(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    """Snapp & Shamir's qualitative findings, as counts of agreeing comparisons."""
    frame, axes = _prepared(frame, keys)
    lines = ["Snapp & Shamir's findings in this sweep (comparisons that agree / all comparisons):"]
    if ACTIVATION in axes:
        fixed = [k for k in keys if k != ACTIVATION]
        agree = total = rounding = 0
        by_activation: dict[str, list[float]] = {}
        groups = frame.groupby(fixed, sort=False, dropna=False) if fixed else [((), frame)]
        for _, rows in groups:
            pd_of = dict(zip(rows[ACTIVATION], rows["prediction_difference"]))
            measurable = dict(zip(rows[ACTIVATION], _measurable(rows)))
            if "relu" not in pd_of:
                continue
            for activation, value in pd_of.items():
                if activation in NON_SMOOTH:
                    continue
                if not (measurable[activation] and measurable["relu"]):
                    rounding += 1
                    continue
                total += 1
                agree += int(value < pd_of["relu"])
                by_activation.setdefault(activation, []).append(value / pd_of["relu"] if pd_of["relu"] else np.nan)
        ratios = ", ".join(f"{a} {np.nanmean(v):.2f}x" for a, v in by_activation.items())
        lines.append(f"- smooth activations give a lower PD than ReLU: {agree} / {total}"
                     + (f" (mean PD relative to ReLU: {ratios})" if ratios else "") + _rounding_note(rounding))
    if WINDOW in axes:
        agree, total, against, rounding = _compare_counts(frame, keys, WINDOW, _window_value)
        lines.append(f"- a larger shuffle window gives a higher PD: {agree} / {total}" + _rounding_note(rounding))
        lines += _against_lines(against)
    for size in SIZE_KEYS:
        if size in axes:
            agree, total, against, rounding = _compare_counts(frame, keys, size, float)
            lines.append(f"- a larger {size} gives a higher PD: {agree} / {total}" + _rounding_note(rounding))
            lines += _against_lines(against)
    return lines


# The comparisons that disagree with a finding, listed at most: the rest are counted.
AGAINST_SHOWN = 3


def _against_lines(against: list[str]) -> list[str]:
    lines = [f"  - against: {a}" for a in against[:AGAINST_SHOWN]]
    if len(against) > AGAINST_SHOWN:
        lines.append(f"  - and {len(against) - AGAINST_SHOWN} more")
    return lines


def _rounding_note(rounding: int) -> str:
    return (f"; {rounding} comparisons left out, a row's runs making the same predictions "
            "(disagreement 0: its PD is float rounding)" if rounding else "")


def pd_figure(frame: pd.DataFrame, keys: list[str], out_dir: Path, left_out: list[str] = ()) -> list[Path]:
    """prediction_difference.{png,pdf}: PD against activation (bars per source) and against each
    other varying axis (one panel per source, one line per activation). ``frame``: the rows to
    draw; ``left_out``: labels of groups not drawn because runs diverged (``kept_groups``), named
    under the figure. No row: no file."""
    from matplotlib.figure import Figure

    if not len(frame):
        return []
    frame, axes = _prepared(frame, keys)
    sources = list(dict.fromkeys(frame[SOURCE]))
    line_axes = [a for a in axes if a != ACTIVATION]
    n_panels = (1 if ACTIVATION in axes else 0) + len(line_axes) * len(sources)
    if not n_panels:
        return []
    cols = min(4, n_panels)
    rows_n = math.ceil(n_panels / cols)
    fig = Figure(figsize=(4.0 * cols, 3.6 * rows_n), layout="constrained")
    panels = list(np.atleast_1d(fig.subplots(rows_n, cols)).ravel())
    for extra in panels[n_panels:]:
        fig.delaxes(extra)
    panel = iter(panels)
    activations = list(dict.fromkeys(frame[ACTIVATION])) if ACTIVATION in axes else []
    line_styles = dict(zip(activations, group_styles(len(activations))))
    if ACTIVATION in axes:
        ax = next(panel)
        fig.set_size_inches(fig.get_figwidth() + legend_width_inches([str(s) for s in sources]), fig.get_figheight())
        width = 0.8 / max(1, len(sources))
        for s, (source, style) in enumerate(zip(sources, bar_styles(len(sources)))):
            means = frame[frame[SOURCE] == source].groupby(ACTIVATION)["prediction_difference"].mean()
            ax.bar(np.arange(len(activations)) + (s - (len(sources) - 1) / 2) * width,
                   [means.get(a, np.nan) for a in activations], width, label=source, **style)
        ax.set_xticks(np.arange(len(activations)), activations)
        positive = frame["prediction_difference"][frame["prediction_difference"] > 0]
        if len(positive) and positive.max() > 100 * positive.min():  # bit flips next to seeds
            ax.set_yscale("log")
        averaged = [k for k in axes if k != ACTIVATION]
        ax.set_title("PD by activation" + (f"\n(mean over {', '.join(averaged)})" if averaged else ""), fontsize="medium")
        ax.set_ylabel("prediction difference")
        legend_beside(ax, title="source")
    for axis in line_axes:
        for source in sources:
            ax = next(panel)
            rows = frame[frame[SOURCE] == source]
            x_key = "_window" if axis == WINDOW else axis
            finite = rows[x_key][np.isfinite(rows[x_key].astype(float))]
            full_at = (finite.max() * 4 if len(finite) else 1.0) if axis == WINDOW else None
            series = rows.groupby(ACTIVATION) if ACTIVATION in axes else [("", rows)]
            for activation, lines in series:  # an activation's colour is the same on every panel
                means = lines.groupby(x_key)["prediction_difference"].mean().sort_index()
                x = means.index.to_numpy(dtype=float)
                if full_at is not None:
                    x = np.where(np.isinf(x), full_at, x)
                ax.plot(x, means.to_numpy(dtype=float), marker="o", label=str(activation) or None,
                        **line_styles.get(activation, {}))
            if axis == "model.width" and rows[axis].min() > 0 and rows[axis].max() >= 4 * rows[axis].min():
                ax.set_xscale("log", base=2)
            if axis == WINDOW:
                ax.set_xscale("log", base=2)
                ticks = sorted(set(np.where(np.isinf(rows["_window"]), full_at, rows["_window"])))
                ax.set_xticks(ticks, [("full" if t == full_at else str(int(t))) for t in ticks])
            averaged = [k for k in axes if k not in (axis, ACTIVATION)]
            ax.set_title(f"{source}: PD by {axis}" + (f"\n(mean over {', '.join(averaged)})" if averaged else ""), fontsize="medium")
            ax.set_xlabel(axis)
    fig.suptitle("Prediction difference between runs (Snapp & Shamir)")
    if ACTIVATION in axes and line_axes:  # one legend for the lines of every panel, beside them
        entries = {}
        for ax in panels[1:n_panels]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        figure_legend(fig, list(entries.values()), list(entries), title=ACTIVATION)
    say_left_out(fig, left_out)
    return save_figure(fig, out_dir, "prediction_difference")
