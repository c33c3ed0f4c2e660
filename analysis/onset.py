"""Figure 2: variability of converged models against the epoch nondeterminism starts.

    python launch.py -m +experiment=fig2
    python -m analysis outputs/fig2 --figures figs/fig2      # onset.{png,pdf} and the table below

A sweep over ``onset_epoch`` (at least two values) trains, per source and onset k, runs that
share every seed for the first k epochs and vary the source from epoch k on. The figure plots,
for every source (one line each; other keys that differ between groups are part of the line's
label), the accuracy SD and the cross-entropy SD of the final models against k, with the
bootstrap SD of the SD as error bars. The numbers are the run table's (``summary_frame``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import Sweep
from analysis.render import figure_legend, format_number, markdown_table, row_label, save_figure, style_groups
from analysis.stats_figures import say_left_out

ONSET = "onset_epoch"


def has_onsets(sweep: Sweep) -> bool:
    """Whether the sweep's groups hold at least two onset epochs (the structure of Figure 2)."""
    return len({g.params.get(ONSET) for g in sweep.groups}) >= 2


def onset_lines(frame: pd.DataFrame, keys: list[str]) -> dict[str, pd.DataFrame]:
    """{line label: its rows sorted by onset epoch} from the run table ``frame``."""
    others = [k for k in keys if k != ONSET]
    lines: dict[str, pd.DataFrame] = {}
    if not others:
        return {"all runs": frame.sort_values(ONSET)}
    for values, rows in frame.groupby(others, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        lines[row_label(values, others)] = rows.sort_values(ONSET)
    return lines


def onset_markdown(frame: pd.DataFrame, keys: list[str]) -> str:
    """Accuracy SD / cross-entropy SD per line (columns) and onset epoch (rows)."""
    lines = onset_lines(frame, keys)
    onsets = sorted({int(v) for v in frame[ONSET]})
    rows = []
    for onset in onsets:
        cells = [str(onset)]
        for group in lines.values():
            match = group[group[ONSET] == onset]
            if not len(match):
                cells.append("n/a")
                continue
            r = match.iloc[0]
            cells.append(f"{format_number(r['accuracy_sd'], 2)} / {format_number(r['cross_entropy_sd'], 4)}")
        rows.append(cells)
    return "\n".join(
        [
            "Figure 2: accuracy SD (%) / cross-entropy SD of the final models against the onset epoch.",
            "",
            markdown_table(["Onset epoch", *lines], rows, text_columns=0),
        ]
    ) + "\n"


def onset_figure(frame: pd.DataFrame, keys: list[str], out_dir: Path, left_out: list[str] = ()) -> list[Path]:
    """onset.{png,pdf}: accuracy SD and cross-entropy SD against the onset epoch, per source.
    ``frame``: the rows to draw; ``left_out``: labels of groups not drawn because runs diverged
    (``kept_groups``), named under the figure. No row: no file."""
    from matplotlib.figure import Figure

    if not len(frame):
        return []

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    lines = onset_lines(frame, keys)
    style_groups(*axes, n=len(lines))
    for label, rows in lines.items():
        x = rows[ONSET].to_numpy(dtype=float)
        for ax, column in zip(axes, ("accuracy", "cross_entropy")):
            ax.errorbar(
                x,
                rows[f"{column}_sd"].to_numpy(dtype=float),
                yerr=np.nan_to_num(rows[f"{column}_sd_sd"].to_numpy(dtype=float)),
                marker="o",
                capsize=3,
                label=label,
            )
    for ax, title in zip(axes, ("Accuracy SD (%)", "Cross-entropy SD (nats)")):
        ax.set_xlabel("onset epoch (nondeterminism starts)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    fig.suptitle("Onset of nondeterminism (error bars: bootstrap SD of the SD)")
    figure_legend(fig, *axes[0].get_legend_handles_labels())
    say_left_out(fig, left_out)
    return save_figure(fig, out_dir, "onset")
