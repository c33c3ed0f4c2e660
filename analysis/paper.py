"""The paper's analyses beyond the run table, chosen by the structure of the sweep.

    python -m analysis SWEEP_DIR [--figures DIR] [--csv FILE]

``python -m analysis`` prints the run table of every sweep; below it, this module adds what the
sweep's groups make possible, so each of the paper's tables and figures is one command:

| the sweep has                                   | section / figure                       | module |
|---|---|---|
| a ``schedule=snapshot`` group (+ its cosine pool) | Table 5 (``--csv``: ``<stem>_table5.csv``) | snapshot.py |
| two or more ``onset_epoch`` values              | Figure 2 (``onset.{png,pdf}``)          | onset.py |
| bit-flip groups with per-epoch metrics          | Figure 3 (``instability.{png,pdf}``)    | instability.py |
| linear and deeper bit-flip groups               | the Sec. 4.2 check                      | instability.py |
| several activations or shuffle windows          | PD figure (``prediction_difference.{png,pdf}``) | shamir.py |

Language-model groups (analysis/lm.py) take no part in these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import instability, onset, shamir, snapshot
from analysis.load import Sweep


@dataclass
class PaperAnalyses:
    sections: list[str] = field(default_factory=list)  # markdown, printed after the run table
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> rows, for --csv


def _image_part(sweep: Sweep, frame: pd.DataFrame) -> tuple[Sweep, pd.DataFrame]:
    """The sweep and run-table rows without language-model groups (same order as the frame)."""
    keep = [not getattr(g, "is_language_model", False) for g in sweep.groups]
    if all(keep):
        return sweep, frame
    groups = [g for g, k in zip(sweep.groups, keep) if k]
    part = Sweep(sweep.root, groups, sweep.problems, sweep.notes)
    return part, frame[keep].reset_index(drop=True)


def paper_analyses(sweep: Sweep, frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> PaperAnalyses:
    """Every section the sweep's structure allows (see the module docstring)."""
    sweep, frame = _image_part(sweep, frame)
    out = PaperAnalyses()
    if not sweep.groups:
        return out
    keys = [k for k in sweep.display_keys if k in frame.columns]
    if any(snapshot.is_snapshot(g) for g in sweep.groups):
        table5, notes = snapshot.table5_frame(sweep, n_boot=n_boot, seed=seed)
        if len(table5) or notes:
            out.sections.append(snapshot.table5_markdown(table5, notes, n_boot))
            out.tables["table5"] = table5
    if onset.has_onsets(sweep):
        out.sections.append(onset.onset_markdown(frame, keys))
    if instability.figure3_groups(sweep):
        out.sections.append(instability.instability_markdown(sweep))
    checks = instability.instability_checks(sweep)
    if checks:
        out.sections.append(instability.checks_markdown(checks))
    if shamir.has_pd_structure(sweep):
        out.sections.append(shamir.pd_markdown(frame, keys))
    return out


def paper_figures(sweep: Sweep, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Figure 2, Figure 3 and the PD figure, when the sweep has their structure."""
    sweep, frame = _image_part(sweep, frame)
    if not sweep.groups:
        return []
    out_dir = Path(out_dir)
    keys = [k for k in sweep.display_keys if k in frame.columns]
    paths = []
    if onset.has_onsets(sweep):
        paths += onset.onset_figure(frame, keys, out_dir)
    paths += instability.instability_figure(sweep, out_dir)
    if shamir.has_pd_structure(sweep):
        paths += shamir.pd_figure(frame, keys, out_dir)
    return paths
