"""The sweep's table: one row of metrics per group, as numbers and as markdown, LaTeX and CSV.

    python -m analysis SWEEP_DIR [--csv FILE --latex FILE]
    analysis.summarize(sweep_dir)        # the markdown the end-of-sweep callback prints

The markdown reads like the paper's Table 1: one row per configuration, labelled by
``source.name`` and the other configuration keys that differ between rows; SDs shown as
``SD ± SD-of-SD``; percentages with two decimals, nats with four (values too small for that many
decimals, such as the cross-entropy SD of a linear model under a bit flip, in scientific
notation rather than as a misleading 0). Below the table: how the errors were computed, and
which runs are missing, failed or unreadable, and why.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import lm, render, stats
from analysis.load import (
    BROKEN_ADVICE,
    PROBLEM_STATUSES,
    UNREADABLE_ADVICE,
    Sweep,
    key_frame,
    load_sweep,
    n_diverged,
)
from analysis.metrics import COLUMNS, group_metrics
from analysis.render import PM, column_header, format_number, with_error

# (column, header, decimals, column holding its SD-of-SD or None)
MARKDOWN_COLUMNS = (
    ("n_runs", "Runs", 0, None),
    ("accuracy_mean", "Accuracy (%)", 2, None),
    ("accuracy_sd", "Accuracy SD (%)", 2, "accuracy_sd_sd"),
    ("cross_entropy_mean", "Cross-entropy", 4, None),
    ("cross_entropy_sd", "Cross-entropy SD", 4, "cross_entropy_sd_sd"),
    ("disagreement", "Pairwise disagreement (%)", 2, None),
    ("spearman", "Pairwise Spearman ρ", 4, None),
    ("ensemble_delta_accuracy", "Ensemble Δ accuracy (%)", 2, None),
    ("ensemble_delta_cross_entropy", "Ensemble Δ cross-entropy", 4, None),
    ("prediction_difference", "PD", 4, None),
    ("relative_prediction_difference", "Relative PD", 4, None),
    ("accuracy_sd_test_set", "Test-set SD (%)", 2, None),
    ("accuracy_sd_distribution", "Distribution SD (%)", 2, None),
    ("seed_selection_gain", "Seed-selection gain (%)", 2, None),
    ("class_accuracy_sd_max", "Max class SD (%)", 2, None),
    ("class_accuracy_sd_mean", "Mean class SD (%)", 2, None),
)


def summary_frame(sweep: Sweep, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per group: the shown configuration keys, ``metrics.COLUMNS``, then
    ``stats.STATS_COLUMNS`` (their notes in ``frame.attrs["stats_notes"]``, and row by row in
    ``frame.attrs["row_stats_notes"]``)."""
    keys = sweep.display_keys
    rows, by_row = [], []
    for group in sweep.groups:
        row = group.cells(keys)
        row["language_model"] = group.is_language_model
        row_notes = []
        if group.is_language_model:  # Table 2's columns (analysis/lm.py)
            row.update(lm.group_lm_metrics(group, n_boot=n_boot, seed=seed))
        else:
            computed = group_metrics(group.logits, group.labels, n_boot=n_boot, seed=seed, predictions=group.predictions)
            if "pairs_note" in computed:  # many runs: sampled pairs (analysis/pairs.py)
                row_notes.append(f"{group.label(keys)}: {computed.pop('pairs_note')}")
            row.update(computed)
        extra, group_notes = stats.group_stats(group, seed)
        row.update(extra)
        row_notes += [f"{group.label(keys)}: {n}" for n in group_notes]
        by_row.append(row_notes)
        rows.append(row)
    columns = list(COLUMNS)
    if any(group.is_language_model for group in sweep.groups):
        columns += [c for c in lm.LM_COLUMNS if c not in COLUMNS] + ["language_model"]
    frame = key_frame(rows, keys + columns + list(stats.STATS_COLUMNS), keys)
    frame.attrs["stats_notes"] = [n for notes in by_row for n in notes]
    frame.attrs["row_stats_notes"] = by_row
    return frame


def table_cells(frame: pd.DataFrame, keys: list[str], pm: str = PM) -> tuple[list[str], list[list[str]]]:
    """The run table as text: (header, rows of cells), SDs as ``SD`` + ``pm`` + ``SD of the SD``
    (the markdown, LaTeX and HTML tables all show these cells)."""
    columns = lm.markdown_columns(frame, MARKDOWN_COLUMNS)
    header = [column_header(k) for k in keys] + [h for _, h, _, _ in columns]
    rows = []
    for _, row in frame.iterrows():
        cells = [render.format_value(row[k]) for k in keys]
        for column, _, decimals, error in columns:
            cells.append(with_error(row[column], None if error is None else row[error], decimals, pm))
        rows.append(cells)
    return header, rows


def markdown_table(frame: pd.DataFrame, keys: list[str]) -> str:
    return render.markdown_table(*table_cells(frame, keys), text_columns=len(keys))


_LATEX_ESCAPES = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


# Characters of the notes (and labels) that pdflatex's default encodings do not set.
_LATEX_SYMBOLS = {"ρ": r"$\rho$", "Δ": r"$\Delta$", "\N{PLUS-MINUS SIGN}": r"$\pm$", "≥": r"$\geq$",
                  "≤": r"$\leq$", "×": r"$\times$", "→": r"$\rightarrow$", "—": "---", "–": "--",
                  "…": r"\ldots{}", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX_SYMBOLS.get(c) or _LATEX_ESCAPES.get(c, c) for c in text)


# The mark of a row with notes, in the LaTeX table; its notes follow the tabular.
NOTE_MARK = r"$^\dagger$"


def latex_table(frame: pd.DataFrame, keys: list[str], row_notes: list[list[str]] | None = None,
                sweep_notes: list[str] = ()) -> str:
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``) with the markdown table's cells. A row
    with notes (``row_notes``, one list per row: ``export_notes``) has a dagger on its label;
    after the tabular, in a small font, each such row's notes, then those of the whole sweep, as
    paragraphs (``\\input`` the file in a ``table`` environment, not inside a box such as
    ``\\resizebox``)."""
    header, rows = table_cells(frame, keys, " \N{PLUS-MINUS SIGN} ")
    row_notes = row_notes or [[] for _ in rows]
    spec = "l" * len(keys) + "r" * (len(header) - len(keys))
    body = []
    for cells, notes in zip(rows, row_notes):
        cells = [_tex(c) for c in cells]
        if notes:
            cells[0] += NOTE_MARK
        body.append(" & ".join(cells) + r" \\")
    notes = [NOTE_MARK + " " + _tex(n) for ns in row_notes for n in ns] + [_tex(n) for n in sweep_notes]
    after = []
    if notes:
        after = [f"% Notes on the rows marked {NOTE_MARK} and on the whole sweep: keep them with the table.",
                 r"\par\smallskip", r"{\footnotesize", *[n + r"\par" for n in notes], "}"]
    return "\n".join(
        [
            "% Written by python -m analysis; needs \\usepackage{booktabs}.",
            f"\\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(_tex(h) for h in header) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            *after,
            "",
        ]
    )


def export_notes(sweep: Sweep, frame: pd.DataFrame) -> tuple[list[list[str]], list[str]]:
    """The notes the terminal prints below the table, for the files ``--csv`` and ``--latex``
    write: (each row's: its group's notes from ``load_sweep``, its statistics' and its runs left
    out; the whole sweep's: notes on several rows, such as data that changed between launches, on
    configurations left out of the table, and runs whose configuration could not be read)."""
    by_row = frame.attrs.get("row_stats_notes") or [[] for _ in sweep.groups]
    row_notes, said = [], set()
    for group, stats_notes in zip(sweep.groups, by_row):
        label = group.label(sweep.display_keys)
        left_out = {s: [p.path.name for p in group.problems if p.status == s] for s in PROBLEM_STATUSES}
        problems = [f"{label}: runs left out of the row: "
                    + "; ".join(f"{len(names)} {s} ({', '.join(names)})" for s, names in left_out.items() if names)
                    ] if group.problems else []
        row_notes.append(list(group.notes) + list(stats_notes) + problems)
        said.update(group.notes)
    whole = [n for n in sweep.notes if n not in said]
    unread = [p for p in sweep.problems if p.key is None]
    if unread:
        directories = "run directory below" if len(unread) == 1 else "run directories below"
        whole.append(f"{len(unread)} {directories} {sweep.root} left out with no readable configuration: "
                     + "; ".join(f"{p.status}: {p.path}" for p in unread))
    return row_notes, whole


# Between two notes in a cell of the CSV's ``notes`` column (notes themselves hold "; ").
NOTES_SEPARATOR = " | "


def export_frame(sweep: Sweep, frame: pd.DataFrame) -> pd.DataFrame:
    """The table ``--csv`` writes: ``frame`` with ``n_diverged`` (runs whose test outputs are not
    finite) after ``n_runs``, and last a ``notes`` column: the row's notes, then those of the
    whole sweep (which every row repeats, so no one reading the file alone misses them), joined
    by ``NOTES_SEPARATOR``; empty where nothing is noted."""
    row_notes, whole = export_notes(sweep, frame)
    out = frame.copy()
    out.insert(out.columns.get_loc("n_runs") + 1, "n_diverged", [n_diverged(g) for g in sweep.groups])
    out["notes"] = [NOTES_SEPARATOR.join(notes + whole) for notes in row_notes]
    return out


def cka_markdown(cka: pd.DataFrame, keys: list[str]) -> str:
    """Rows = groups, columns = layers (forward order): mean CKA over pairs ± SD over pairs."""
    layers = list(dict.fromkeys(cka["layer"]))
    estimator = cka["estimator"].iloc[0]
    rows = []
    for _, group in cka.groupby(keys, sort=False, dropna=False):
        by_layer = {r.layer: r for r in group.itertuples()}
        cells = [render.format_value(group.iloc[0][k]) for k in keys] + [str(int(group["n_runs"].iloc[0]))]
        for layer in layers:
            r = by_layer.get(layer)
            cells.append("n/a" if r is None else f"{format_number(r.cka_mean, 4)}{PM}{format_number(r.cka_sd, 4)}")
        rows.append(cells)
    header = [column_header(k) for k in keys] + ["Runs"] + layers
    return "\n".join(
        [
            f"Linear CKA ({estimator} HSIC) between pairs of runs, mean ± SD over pairs; "
            f"probe of {int(cka['probe_size'].iloc[0])} test examples.",
            "",
            render.markdown_table(header, rows, text_columns=len(keys)),
        ]
    )


def status_lines(sweep: Sweep) -> list[str]:
    """Which runs were found, which were left out and why, and other notes on the sweep."""

    def rel(path: Path) -> str:
        try:
            return str(path.relative_to(sweep.root)) or "."
        except ValueError:
            return str(path)

    found = sweep.n_finished + len(sweep.problems)
    if not found:
        lines = [f"No run directories (config.yaml) below {sweep.root}."]
    elif not sweep.problems:
        lines = [f"All {found} runs found below {sweep.root} are finished and readable."]
    else:
        counts = {s: sum(p.status == s for p in sweep.problems) for s in PROBLEM_STATUSES}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        lines = [
            f"{sweep.n_finished} of {found} runs found below {sweep.root} are in the table; "
            f"left out: {summary}:"
        ]
        lines += [f"- {p.status}: {rel(p.path)}: {p.reason}" for p in sweep.problems]
        if counts["corrupt"]:
            lines.append("- corrupt runs are kept as they are, never overwritten: delete a corrupt "
                         "run's directory and relaunch to train it again.")
        if counts["broken"]:
            lines.append(f"- broken runs: {BROKEN_ADVICE}.")
        if counts["unreadable"]:
            lines.append(f"- {UNREADABLE_ADVICE}.")
    lines += [f"- note: {n}" for n in sweep.notes]
    return lines


def table_notes(sweep: Sweep, frame: pd.DataFrame, n_boot: int, seed: int) -> tuple[list[str], list[str]]:
    """What is said below the table, in the markdown and in the HTML report alike: paragraphs
    (how the errors were computed, the language models' columns, the share of the accuracy
    variance that is test-set noise) and the statistics' notes."""
    images = "language_model" not in frame or not frame["language_model"].astype(bool).all()
    pd_columns = ("; PD = mean |p_i - p_j| over examples and classes, relative PD = mean "
                  "|p_i - p_j| / ((p_i + p_j) / 2) (for two classes: of the positive class's "
                  "probability)") if images else ""  # a language model's table has no PD columns
    paragraphs = [
        f"SD ± SD of the SD over {n_boot} bootstrap resamples of the runs (seed {seed}); SDs "
        "with ddof=1. Pairwise columns average over all pairs of runs in a row; ensembles "
        f"average the two models' softmax probabilities{pd_columns}.",
    ]
    if "ppl_mean" in frame:
        paragraphs.append(lm.LM_NOTE)
    share = stats.test_set_sentence(frame, [g.label(sweep.display_keys) for g in sweep.groups])
    if share:
        paragraphs.append(share)
    return paragraphs, list(frame.attrs.get("stats_notes", []))


def report(sweep: Sweep, frame: pd.DataFrame, n_boot: int, seed: int, cka: pd.DataFrame | None = None) -> str:
    """The full markdown of ``python -m analysis``: table, how errors were computed, run status."""
    keys = sweep.display_keys
    parts = []
    if len(frame):
        paragraphs, notes = table_notes(sweep, frame, n_boot, seed)
        parts.append(markdown_table(frame, keys))
        for paragraph in paragraphs:
            parts += ["", paragraph]
        parts += [f"- note: {n}" for n in notes]
    else:
        parts.append(f"No finished runs below {sweep.root}.")
    if cka is not None and len(cka):
        parts += ["", cka_markdown(cka, keys)]
    parts += [""] + status_lines(sweep)
    return "\n".join(parts) + "\n"


def summarize(sweep_dir: Path | Sweep, n_boot: int = 1000, seed: int = 0) -> str:
    """The markdown table of a sweep plus the list of missing / failed runs (or 'all N found').

    A group that mixes test sets is left out with a note. Given a ``Sweep`` (``load_sweep``'s),
    it reads nothing again: the end-of-sweep callback takes the run counts from the same scan.
    """
    sweep = sweep_dir if isinstance(sweep_dir, Sweep) else load_sweep(sweep_dir)
    if sweep.n_finished + len(sweep.problems) == 0:
        return f"No run directories (holding config.yaml) found below {sweep.root}.\n"
    return report(sweep, summary_frame(sweep, n_boot, seed), n_boot, seed)
