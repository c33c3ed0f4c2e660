"""One self-contained HTML page for a sweep: the table and its notes, every figure the sweep's
structure calls for, the configuration and the environment.

    python -m analysis SWEEP_DIR --report report.html [--cka] [--bootstrap B] [--seed S]

The page needs no network and no server: figures are PNGs embedded as base64 ``data:`` URIs,
the style sheet is inline and there is no script. Figures come from ``FIGURES``, a list of
functions run in order; each takes the ``ReportInputs`` and returns a ``(matplotlib Figure,
caption)`` pair, a list of them, or None when the sweep has nothing to draw. A new figure is one
line here, for example ``FIGURES.append(lambda r: stats.some_figure(r.sweep))``. A figure
function that raises does not sink the page: its error is shown where the figure would be.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from analysis import lm, stats_figures
from analysis.load import PROBLEM_STATUSES, Sweep, diverged, flatten, inert_member_notes, variation_notes
from analysis.render import PM, collected, format_value, label_inches, row_label
from analysis.tables import MARKDOWN_COLUMNS, status_lines, table_cells, table_notes
from nondet import records


@dataclass
class ReportInputs:
    """What a figure function may draw from."""

    sweep: Sweep
    frame: pd.DataFrame  # analysis.tables.summary_frame: one row per group
    cka: pd.DataFrame | None = None  # analysis.cka.sweep_cka, with --cka
    n_boot: int = 1000
    seed: int = 0
    # The (stem, Figure) pairs ``write_figures`` already drew for ``--figures DIR``, embedded as
    # they are; None: ``sweep_figures`` draws them.
    drawn: list[tuple[str, Any]] | None = None
    # The command-line options that shaped the page (``cli_options``), for the command in its
    # header; None: those the inputs show (bootstrap, seed, CKA's probe and estimator).
    options: list[str] | None = None


# The figures of ``write_figures`` (analysis/figures.py, analysis/paper.py,
# analysis/stats_figures.py), by file stem: what to read from each.
CAPTIONS = {
    "variability": "Run-to-run spread of each group: SD over runs of test accuracy and of test "
    "cross-entropy. Error bars are the bootstrap SD of the SD, a rough guide to its uncertainty "
    "that runs short with few runs (about a fifth too small at 4-8 runs for normal noise); "
    "whether bars overlap is not a test of two groups' spreads. A group without a bar says why in "
    "its place: diverged (all its runs), n/a (1 run: no SD), or 0 (a spread of exactly 0). A "
    "hatched bar, labelled with how many of its runs diverged, counts chance-level runs: it is not "
    "training's spread.",
    "cka": "Mean linear CKA between pairs of runs at each layer (error bars: SD over pairs). "
    "Lower bars: the runs learned less similar representations at that layer.",
    "cross_entropy_spread": "How far apart the runs' test cross-entropy is at each epoch, for "
    "every group (width of the middle 95%, left; SD, right; log scale). Where the lines rise, runs "
    "diverge; a flat line means the spread was set early. Not a figure of the paper: its Figure 3 "
    "is the bit-flip case, drawn separately when the sweep has it.",
    "onset": "Figure 2: spread of the final models against the epoch from which the source "
    "varies. A curve that stays high for late onsets means even late nondeterminism gives the "
    "full spread.",
    "instability": "Figure 3: spread of test cross-entropy over training under a one-ULP bit flip "
    "(bottom: the first epochs). A tiny perturbation that grows to the spread of the other "
    "sources means training is unstable.",
    "prediction_difference": "Prediction difference (mean |p_i - p_j|) against activation, "
    "shuffle window and model size. Lower is more reproducible; smooth activations are expected "
    "below ReLU.",
}
CAPTIONS.update(stats_figures.CAPTIONS)  # test-set noise, best of k


def sweep_figures(inputs: ReportInputs) -> list[tuple[Any, str]]:
    """Variability bars, cross-entropy spread, CKA and the paper's figures, as the sweep's
    structure allows (the figures ``--figures DIR`` writes; those it drew, when it ran). A
    caption adds what the sweep's diverged runs change in its figure (``figure_notes``)."""
    from analysis.figures import figure_notes

    figures = inputs.drawn
    if figures is None:
        from analysis.figures import write_figures

        with collected() as figures:
            write_figures(inputs.sweep, inputs.frame, Path("."), inputs.cka)
    notes = figure_notes(inputs.sweep)
    return [(fig, " ".join(filter(None, (CAPTIONS.get(stem, f"{stem}."), notes.get(stem)))))
            for stem, fig in figures]


# What the file stems of ``write_figures`` are called where the page says one is absent.
FIGURE_NAMES = {"variability": "Run-to-run variability", "cross_entropy_spread": "Cross-entropy spread over epochs",
                "test_set_noise": "Test-set noise", "best_of_k": "Best of k runs", "onset": "Figure 2 (onset)",
                "instability": "Figure 3 (instability)", "prediction_difference": "Prediction difference"}


def absent_figures_html(inputs: ReportInputs) -> str:
    """One line per figure the sweep's runs leave empty (``figure_gaps``), so its absence is
    read as what it is, not missed."""
    from analysis.figures import figure_gaps

    gaps = figure_gaps(inputs.sweep, inputs.frame)
    return "".join(f'<p class="absent">No {esc(FIGURE_NAMES.get(stem, stem))} figure '
                   f"(<code>{esc(stem)}.png</code>): {esc(why)}.</p>" for stem, why in gaps.items())


def cka_heatmap(inputs: ReportInputs) -> tuple[Any, str] | None:
    """With ``--cka``: mean CKA as a groups x layers heat map, which stays legible where the bars
    of many groups crowd."""
    import numpy as np
    from matplotlib.figure import Figure

    cka = inputs.cka
    if cka is None or not len(cka):
        return None
    keys = [k for k in inputs.sweep.display_keys if k in cka.columns]
    layers = list(dict.fromkeys(cka["layer"]))
    groups = list(cka.groupby(keys, sort=False, dropna=False))
    values = np.full((len(groups), len(layers)), np.nan)
    for i, (_, rows) in enumerate(groups):
        for row in rows.itertuples():
            values[i, layers.index(row.layer)] = row.cka_mean
    labels = [row_label([rows.iloc[0][k] for k in keys], keys) for _, rows in groups]
    fig = Figure(figsize=(max(5.0, 0.9 * len(layers) + 2.5) + label_inches(labels), max(2.5, 0.32 * len(groups) + 1.2)),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmax=1.0)
    slanted = len(layers) > 8
    ax.set_xticks(range(len(layers)), layers, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(range(len(groups)), labels)
    if values.size <= 400:  # the numbers themselves, while they fit in their cells
        middle = np.nanmean(values)
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if v < middle else "black")
    fig.colorbar(image, ax=ax, label=f"mean linear CKA ({cka['estimator'].iloc[0]})")
    return fig, ("Mean CKA between pairs of runs, per group (rows) and layer (columns). Darker "
                 "cells: representations that differ more from run to run; compare a row's "
                 "layers to see where the runs part ways.")


FIGURES: list[Callable[[ReportInputs], Any]] = [sweep_figures, cka_heatmap]


# --- pieces of the page -------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_data_uri(fig, dpi: int = 100) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _captioned(result: Any) -> list[tuple[Any, str]]:
    if result is None:
        return []
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        return [result]
    return list(result)


def figures_html(inputs: ReportInputs, functions: Iterable[Callable] | None = None) -> list[str]:
    """One ``<figure>`` per figure the functions return; a function that fails is named."""
    from matplotlib.figure import Figure

    blocks = []
    for function in FIGURES if functions is None else functions:
        name = getattr(function, "__qualname__", repr(function))
        try:
            pairs = _captioned(function(inputs))
            for fig, caption in pairs:
                if not isinstance(fig, Figure):
                    raise TypeError(f"returned {type(fig).__name__}, not a matplotlib Figure")
            images = [(png_data_uri(fig), caption) for fig, caption in pairs]
        except Exception as e:  # the rest of the page still stands; this figure is named
            message = f"Figure {name} could not be drawn: {type(e).__name__}: {e}"
            print(f"warning: {message}", file=sys.stderr)
            blocks.append(f'<p class="error">{esc(message)}</p>')
            continue
        for uri, caption in images:
            blocks.append(f'<figure><img src="{uri}" alt="{esc(caption)}">'
                          f"<figcaption>{esc(caption)}</figcaption></figure>")
    return blocks


def table_html(header: list[str], rows: list[list[Any]], numeric_from: int, cls: str = "") -> str:
    """A table with a sticky header; columns from ``numeric_from`` on are right-aligned."""
    def cells(row, tag):
        return "".join(
            f'<{tag}{" class=num" if i >= numeric_from else ""}>{esc(c)}</{tag}>' for i, c in enumerate(row)
        )

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{cells(header, "th")}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_html(text: str) -> str:
    """The markdown the analyses print (headings, pipe tables, lists, paragraphs) as HTML."""
    out, para, items, table = [], [], [], []

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            rows = [r for r in rows if not all(re.fullmatch(r":?-{3,}:?", c) for c in r)]
            out.append(table_html(rows[0], rows[1:], 1))
        para.clear(), items.clear(), table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if not table:
                flush()
            table.append(stripped)
            continue
        if table or not stripped:
            flush()
        if not stripped:
            continue
        heading = re.match(r"(#{1,4})\s+(.*)", stripped)
        if heading:
            flush()
            out.append(f"<h4>{_inline(heading.group(2))}</h4>")
        elif stripped.startswith(("- ", "* ")):
            if para:
                flush()
            items.append(stripped[2:])
        elif items and line.startswith("  "):  # a list item's continuation line
            items[-1] += " " + stripped
        else:
            para.append(stripped)
    flush()
    return "\n".join(out)


NOTE_KINDS = PROBLEM_STATUSES + ("note",)  # how analysis.tables.status_lines starts its items


def notes_html(sweep: Sweep) -> str:
    """``status_lines``: which runs are in the table, which were left out and why, and notes;
    long lists fold away behind their counts."""
    lines = status_lines(sweep)
    head, items = [l for l in lines if not l.startswith("- ")], [l[2:] for l in lines if l.startswith("- ")]
    parts = [f"<p>{esc(' '.join(head))}</p>"]
    if items:
        kinds = [i.split(":", 1)[0] if i.split(":", 1)[0] in NOTE_KINDS else "" for i in items]
        lis = "".join(f'<li class="{k}">{esc(i)}</li>' for k, i in zip(kinds, items))
        summary = ", ".join(f"{n} {k}" for k, n in Counter(k for k in kinds if k).items())
        parts.append(f'<details{" open" if len(items) <= 20 else ""}><summary>Notes ({esc(summary)})'
                     f'</summary><ul class="notes">{lis}</ul></details>')
    return "\n".join(parts)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def runs_html(sweep: Sweep) -> str:
    """Every run, finished or not, one row each, folded (hundreds of rows read as a list)."""
    keys = sweep.display_keys
    rows = []
    for group in sweep.groups:
        label = group.label(keys)
        for run in group.runs:
            r = run.result
            rows.append([label, run.replicate, "diverged" if diverged(run) else "done", _number(r.get("test_accuracy"), 2),
                         _number(r.get("test_cross_entropy"), 4), _number(r.get("train_seconds"), 1),
                         _rel(run.path, sweep.root)])
    for p in sweep.problems:
        rows.append(["", "" if p.replicate is None else p.replicate, p.status, "", "", "",
                     f"{_rel(p.path, sweep.root)}: {p.reason}"])
    header = ["Group", "Replicate", "Status", "Accuracy (%)", "Cross-entropy", "Train s", "Directory"]
    return (f"<details><summary>All {len(rows)} runs</summary>"
            f"{table_html(header, rows, 3, 'runs')}</details>")


def _number(value: Any, decimals: int) -> str:
    return f"{value:.{decimals}f}" if isinstance(value, (int, float)) else ""


def _distinct(values: list[Any], limit: int = 6) -> str:
    """``a (90 runs), b (10 runs)``: the values over runs, the most common first."""
    counts = Counter(format_value(v) if isinstance(v, tuple) else str(v) for v in values)
    shown = [f"{v} ({n} run{'s' * (n != 1)})" if len(counts) > 1 else v for v, n in counts.most_common(limit)]
    more = f", … and {len(counts) - limit} more" if len(counts) > limit else ""
    return ", ".join(shown) + more


def config_html(sweep: Sweep) -> str:
    """The configuration keys shared by every finished run, and the values of those that vary."""
    flats = [flatten(run.config) for g in sweep.groups for run in g.runs]
    if not flats:
        return "<p>No finished run to read a configuration from.</p>"
    keys = list(dict.fromkeys(k for f in flats for k in f))
    missing = object()
    varying, shared = [], []
    for k in keys:
        values = [f.get(k, missing) for f in flats]
        row = [k, _distinct(["(unset)" if v is missing else v for v in values])]
        (shared if len({repr(v) for v in values}) == 1 else varying).append(row)
    parts = []
    if varying:
        parts.append("<p>Keys that vary between runs (replicate, and the keys that make the rows "
                     "of the table):</p>" + table_html(["Key", "Values"], varying, 99, "kv"))
    parts.append(f"<details><summary>{len(shared)} keys shared by every run</summary>"
                 f"{table_html(['Key', 'Value'], shared, 99, 'kv')}</details>")
    return "\n".join(parts)


def environment_html(sweep: Sweep) -> str:
    """env.json over the finished runs: each field's values with how many runs had them (as the
    sweep read it: no file is read again)."""
    envs = [run.env for g in sweep.groups for run in g.runs]
    if not envs:
        return "<p>No finished run.</p>"
    unreadable = sum(not e for e in envs)
    keys = list(dict.fromkeys(k for e in envs for k in e))
    rows = [[k, _distinct([json.dumps(e.get(k)) if isinstance(e.get(k), dict) else e.get(k)
                           for e in envs if e])] for k in keys]
    note = f"<p class=error>{unreadable} runs have no readable {records.ENV_FILE}.</p>" if unreadable else ""
    return note + table_html(["Field", "Values over runs"], rows, 99, "kv")


# The table's columns, in words (docs/statistics.md and analysis/metrics.py give the formulas).
GLOSSARY = {
    "n_runs": "finished runs in the row (replicates of one configuration).",
    "accuracy_mean": "mean test accuracy over the row's runs (of next-token predictions, for language models).",
    "accuracy_sd": "SD over runs (ddof=1) of test accuracy: how much the next run may differ. "
    "± its bootstrap SD: the SD of that SD over resamples of the runs, a rough guide to its "
    "uncertainty that runs short with few runs.",
    "cross_entropy_mean": "mean test cross-entropy over runs (nats per test example; per token for "
    "language models).",
    "ppl_mean": "mean test perplexity over runs: exp(cross-entropy per test token).",
    "ppl_sd": "SD over runs of test perplexity, ± its bootstrap SD as for accuracy.",
    "ensemble_delta_ppl": "perplexity of two runs' ensemble (their probabilities of the target "
    "averaged) minus the mean of their two perplexities, over pairs: negative when ensembling helps.",
    "cross_entropy_sd": "SD over runs of test cross-entropy, ± its bootstrap SD as for accuracy.",
    "disagreement": "percent of test examples on which two runs' predicted classes (argmax) differ, "
    "averaged over all pairs of runs.",
    "spearman": "Spearman rank correlation between two runs' test logits (all examples × classes, "
    "flattened), averaged over pairs: 1 when the runs rank every logit alike.",
    "ensemble_delta_accuracy": "accuracy of two runs' ensemble (their softmax probabilities "
    "averaged) minus the mean of their two accuracies, over pairs: what ensembling gains.",
    "ensemble_delta_cross_entropy": "the same for cross-entropy: negative when ensembling helps.",
    "prediction_difference": "PD (Snapp & Shamir): mean |p_i − p_j| between two runs' softmax "
    "probabilities, over examples and classes and pairs.",
    "relative_prediction_difference": "each |p_i − p_j| divided by the pair's mean probability "
    "(p_i + p_j)/2, averaged; in [0, 2]; with more than two classes it sits high and compares "
    "only with itself.",
    "accuracy_sd_test_set": "the accuracy SD that finite-test-set noise alone predicts (runs "
    "that differ only in which borderline examples they miss; Jordan 2024). The share sentence "
    "under the table is its square over the accuracy SD's square, capped at 100%: the "
    "prediction can exceed the observed SD (few runs, or errors negatively correlated across "
    "examples), and a capped 100% means at least all of it.",
    "accuracy_sd_distribution": "the SD over runs of accuracy on the whole data distribution (an "
    "infinite test set): the recipe's own spread, with the test set's noise taken out.",
    "seed_selection_gain": "what picking the best quarter of runs on one half of the test set "
    "gains on the other half (n/a below 4 runs): near 0, lucky seeds are not better models.",
    "class_accuracy_sd_max": "per class, the SD over runs of the accuracy on that class's test "
    "examples; the largest over classes.",
    "class_accuracy_sd_mean": "the same per-class SDs, averaged over classes.",
}


def glossary_html(frame: pd.DataFrame) -> str:
    """What each column of the table means, folded under it (its headers, in its order)."""
    shown = [(header, GLOSSARY[column]) for column, header, _, _ in lm.markdown_columns(frame, MARKDOWN_COLUMNS)
             if column in GLOSSARY]
    if not shown:
        return ""
    items = "".join(f"<dt>{esc(header)}</dt><dd>{esc(text)}</dd>" for header, text in shown)
    return (f'<details class="glossary"><summary>What the columns mean</summary><dl>{items}</dl>'
            '<p class="small">Formulas and sources: <code>docs/statistics.md</code> and '
            "<code>analysis/metrics.py</code> in the nondet repository.</p></details>")


# What a reader must know before the table, by kind: (badge, sentence); diverged runs have their
# own badge, a count of runs. Each has its note, with the cause and the fix, below the table.
WARNINGS = {
    "diverged": (None,
                 "Runs diverged: their metrics are NaN or chance-level (the argmax of NaN logits)"),
    "inert": ("varied nothing", "A varied source varied nothing: the row's spread is not that source's"),
    "control": ("control not identical", "The source=none control is not bitwise identical: every "
                "other row's spread includes that nondeterminism"),
}


def warnings_of(sweep: Sweep) -> dict[str, list[str]]:
    """{kind of ``WARNINGS``: [group labels]}, the kinds the sweep has: rows with diverged runs,
    sources that varied nothing (``analysis.load``'s notes on them), a control whose runs differ."""
    from analysis.stats_figures import diverged_counts

    keys = sweep.display_keys
    found: dict[str, list[str]] = {kind: [] for kind in WARNINGS}
    for group, d in zip(sweep.groups, diverged_counts(sweep)):
        label = group.label(keys)
        if d:
            found["diverged"].append(f"{label} ({d} of {len(group.runs)} runs)")
        vary = (group.config.get("source") or {}).get("vary")
        if variation_notes(group, label, False):  # the control differs, or the source varied nothing
            found["inert" if vary else "control"].append(label)
        elif inert_member_notes(group, label):
            found["inert"].append(label)
    return {kind: labels for kind, labels in found.items() if labels}


def read_first_html(warnings: dict[str, list[str]]) -> str:
    """The warnings as a short list at the top of the page."""
    if not warnings:
        return ""
    items = "".join(f"<li><strong>{esc(WARNINGS[kind][1])}</strong>: {esc('; '.join(labels))}.</li>"
                    for kind, labels in warnings.items())
    return (f'<div class="readfirst"><strong>Read first</strong> (the notes under the table say why '
            f'and what to do):<ul>{items}</ul></div>')


STYLE = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dee7; --band:#f4f6fa; --accent:#2f5d9e; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 1.5rem 2rem 4rem; max-width: 1400px; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; } h2 { font-size: 1.25rem; margin: 2.2rem 0 .6rem;
     padding-bottom: .25rem; border-bottom: 2px solid var(--line); } h4 { margin: 1.2rem 0 .4rem; }
.meta { color: var(--muted); margin: 0 0 1rem; } code { font-size: .92em; }
.counts span { display: inline-block; margin: 0 .4rem .4rem 0; padding: .15rem .6rem;
               border-radius: 1rem; background: var(--band); border: 1px solid var(--line); }
.counts .bad { background: #fdecec; border-color: #f2b8b8; }
.readfirst { background: #fdecec; border: 1px solid #f2b8b8; border-radius: 6px; padding: .5rem 1rem;
             margin: 0 0 1rem; max-width: 70rem; } .readfirst ul { margin: .3rem 0 0; }
.glossary dt { font-weight: 600; margin-top: .4rem; } .glossary dd { margin: 0 0 0 1.5rem; max-width: 70rem; }
.absent { color: var(--muted); font-style: italic; }
.scroll { overflow: auto; max-height: 75vh; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; font-size: .88rem; width: max-content; min-width: 100%; }
th, td { padding: .3rem .65rem; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
thead th { position: sticky; top: 0; background: #e9edf4; z-index: 1; }
tbody tr:nth-child(even) { background: var(--band); } tbody tr:hover { background: #e6eefb; }
td:first-child { position: sticky; left: 0; background: inherit; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv td { font-family: ui-monospace, monospace; font-size: .82rem; }
table.kv td:first-child { font-weight: 400; white-space: nowrap; }
table.kv td:last-child { max-width: 70rem; overflow-wrap: anywhere; }
table.runs td:last-child { font-family: ui-monospace, monospace; font-size: .8rem; }
.small { color: var(--muted); font-size: .88rem; max-width: 70rem; }
details { margin: .6rem 0; } summary { cursor: pointer; color: var(--accent); font-weight: 600; }
ul.notes { max-height: 24rem; overflow: auto; font-size: .9rem; }
li.failed, li.corrupt, li.broken, .error { color: #a11d1d; } li.unfinished, li.unreadable { color: #8a5a00; }
figure { margin: 1.2rem 0 2rem; } figure img { display: block; max-width: 100%; height: auto;
         border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: .92rem; margin-top: .4rem; max-width: 70rem; }
nav a { margin-right: 1rem; color: var(--accent); }
"""


def render(
    inputs: ReportInputs, sections: Iterable[str] = (), figure_functions=None, out: Path | None = None
) -> str:
    """The whole page. ``sections``: further markdown (``analysis.paper``'s) after the table;
    ``out``: where the page goes (named in its header)."""
    sweep, frame = inputs.sweep, inputs.frame
    keys = sweep.display_keys
    counts = Counter(p.status for p in sweep.problems)
    warnings = warnings_of(sweep)
    n_diverged = sum(map(diverged, (run for g in sweep.groups for run in g.runs)))
    # A diverged run is in the table (an outcome of the recipe) but not a run that finished well.
    badges = [f"<span>{sweep.n_finished - n_diverged} finished</span>", f"<span>{len(sweep.groups)} groups</span>"]
    badges += [f'<span class="bad">{n_diverged} diverged</span>'] if n_diverged else []
    for status in PROBLEM_STATUSES:
        badges += [f'<span class="bad">{counts[status]} {status}</span>'] if counts[status] else []
    badges += [f'<span class="bad">{len(labels)} {WARNINGS[kind][0]}</span>'
               for kind, labels in warnings.items() if WARNINGS[kind][0]]
    if len(frame):
        header, rows = table_cells(frame, keys, PM)
        paragraphs, notes = table_notes(sweep, frame, inputs.n_boot, inputs.seed)
        table = table_html(header, rows, len(keys), "summary") + glossary_html(frame) + "".join(
            f'<p class="small">{esc(p)}</p>' for p in paragraphs)
        if notes:
            table += '<ul class="notes">' + "".join(f'<li class="note">note: {esc(n)}</li>' for n in notes) + "</ul>"
    else:
        table = f"<p>No finished runs below {esc(sweep.root)}.</p>"
    extra = "".join(f"<section>{markdown_html(s)}</section>" for s in sections)
    if inputs.cka is not None and len(inputs.cka):
        from analysis.tables import cka_markdown

        extra += f"<section>{markdown_html(cka_markdown(inputs.cka, keys))}</section>"
    figures = figures_html(inputs, figure_functions) if len(frame) else []
    title = f"Sweep {sweep.root.resolve().name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="meta"><code>{esc(sweep.root.resolve())}</code> · written {esc(time.strftime('%Y-%m-%d %H:%M %Z'))} by
<code>{esc(report_command(sweep.root, out, report_options(inputs)))}</code></p>
<p class="counts">{''.join(badges)}</p>
{read_first_html(warnings)}
<nav><a href="#table">Table</a><a href="#figures">Figures ({len(figures)})</a>
<a href="#config">Configuration</a><a href="#environment">Environment</a></nav>
<h2 id="table">Summary</h2>
{table}
{notes_html(sweep)}
{extra}
{runs_html(sweep)}
<h2 id="figures">Figures</h2>
{''.join(figures) or ('' if len(frame) else '<p>No figure: the sweep has no finished run.</p>')}
{absent_figures_html(inputs) if len(frame) else ''}
<h2 id="config">Configuration</h2>
{config_html(sweep)}
<h2 id="environment">Environment</h2>
{environment_html(sweep)}
</body></html>
"""


def report_command(sweep_dir: Path, out: Path | None = None, options: Iterable[str] = ()) -> str:
    """The command that writes a sweep's report (the end-of-sweep summary prints it), with the
    ``options`` that shaped it (``report_options``), so running it again gives the same page."""
    out = Path(sweep_dir) / "report.html" if out is None else out
    return " ".join(["python -m analysis", shlex.quote(str(sweep_dir)), "--report", shlex.quote(str(out)),
                     *map(shlex.quote, map(str, options))])


# The options of ``python -m analysis`` that change what the page says, by argparse dest.
SHAPING_OPTIONS = ("bootstrap", "seed", "cka", "cka_probe", "cka_runs", "cka_estimator", "cka_batch")


def _flags(values: dict[str, Any]) -> list[str]:
    """``{dest: value}`` as command-line options, those at their default left out."""
    from analysis.__main__ import parser

    defaults = parser()
    options = []
    for dest, value in values.items():
        if value is not None and value != defaults.get_default(dest):
            flag = "--" + dest.replace("_", "-")
            options += [flag] if value is True else [flag, str(value)]
    return options


def cli_options(args) -> list[str]:
    """The options of a ``python -m analysis`` command line (its parsed ``args``) that shaped the
    report: ``ReportInputs(..., options=cli_options(args))``."""
    return _flags({dest: getattr(args, dest, None) for dest in SHAPING_OPTIONS
                   if args.cka or not dest.startswith("cka_")})


def report_options(inputs: ReportInputs) -> list[str]:
    """``inputs.options`` as the command line gave them, or else those the inputs show: the
    bootstrap's resamples and seed, and ``--cka`` with the probe and estimator its table records."""
    if inputs.options is not None:
        return list(inputs.options)
    values = {"bootstrap": inputs.n_boot, "seed": inputs.seed}
    if inputs.cka is not None and len(inputs.cka):
        values.update(cka=True, cka_probe=int(inputs.cka["probe_size"].iloc[0]),
                      cka_estimator=str(inputs.cka["estimator"].iloc[0]))
    return _flags(values)


def write_report(inputs: ReportInputs, path: Path, sections: Iterable[str] = ()) -> Path:
    """Write the page to ``path`` (atomically) and return it."""
    path = Path(path)
    records.write_text(path, render(inputs, sections, out=path))
    mask = os.umask(0)  # readable as any file the user writes (the temporary file was private)
    os.umask(mask)
    path.chmod(0o666 & ~mask)
    return path
