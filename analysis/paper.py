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
from analysis.load import Sweep, n_diverged
from analysis.stats_figures import kept_groups, left_out_note


@dataclass
class PaperAnalyses:
    sections: list[str] = field(default_factory=list)  # markdown, printed after the run table
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> rows, for --csv


def _image_part(sweep: Sweep, frame: pd.DataFrame | None = None) -> tuple[Sweep, pd.DataFrame | None]:
    """The sweep and run-table rows (if given) without language-model groups (same order as the frame)."""
    keep = [not getattr(g, "is_language_model", False) for g in sweep.groups]
    if all(keep):
        return sweep, frame
    groups = [g for g, k in zip(sweep.groups, keep) if k]
    part = Sweep(sweep.root, groups, sweep.problems, sweep.notes)
    return part, None if frame is None else frame[keep].reset_index(drop=True)


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
    """Figure 2, Figure 3 and the PD figure, when the sweep has their structure. Groups with
    diverged runs (their numbers are NaN or chance level) are left out of Figure 2 and the PD
    figure and named under them (``kept_groups``), and named but not drawn in Figure 3's legend."""
    sweep, frame = _image_part(sweep, frame)
    if not sweep.groups:
        return []
    out_dir = Path(out_dir)
    keys = [k for k in sweep.display_keys if k in frame.columns]
    keep, left_out = kept_groups(sweep)
    kept = frame[keep].reset_index(drop=True)
    paths = []
    if onset.has_onsets(sweep):
        paths += onset.onset_figure(kept, keys, out_dir, left_out)
    paths += instability.instability_figure(sweep, out_dir)
    if shamir.has_pd_structure(sweep):
        paths += shamir.pd_figure(kept, keys, out_dir, left_out)
    return paths


def paper_notes(sweep: Sweep) -> dict[str, str]:
    """{stem: sentence} for the captions of ``paper_figures``: the groups left out, or named but
    not drawn, because runs diverged."""
    sweep, _ = _image_part(sweep)
    note = left_out_note(kept_groups(sweep)[1])
    if not note:
        return {}
    notes = {"onset": note, "prediction_difference": note}
    if any(n_diverged(g) for g in instability.figure3_groups(sweep)):
        notes["instability"] = instability.NAMED_NOT_DRAWN
    return notes


def paper_gaps(sweep: Sweep) -> dict[str, str]:
    """{stem: why} for the figures of ``paper_figures`` that the sweep has the structure of but
    whose runs leave them empty (every group diverged, or has one run)."""
    sweep, _ = _image_part(sweep)
    if not sweep.groups:
        return {}
    gaps = {}
    if not any(kept_groups(sweep)[0]):
        why = "no group has two runs or more none of which diverged"
        gaps.update({stem: why for stem, has in (("onset", onset.has_onsets(sweep)),
                                                 ("prediction_difference", shamir.has_pd_structure(sweep))) if has})
    groups = instability.figure3_groups(sweep)
    if groups and all(n_diverged(g) for g in groups):
        gaps["instability"] = "every bit-flip group has diverged runs (their spread is NaN or runs to 1e23)"
    return gaps
