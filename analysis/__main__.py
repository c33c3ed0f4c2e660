"""``python -m analysis SWEEP_DIR``: the tables (and optionally figures and CKA) of a sweep.

    python -m analysis outputs/default
    python -m analysis outputs/table1 --csv table1.csv --latex table1.tex --figures figs/
    python -m analysis outputs/table1 --cka --cka-probe 1000 --cka-runs 25 --figures figs/
    python -m analysis outputs/table1 --report report.html    # one self-contained HTML page
    python -m analysis outputs/table1 --figures figs/ --report report.html  # each figure drawn once

Prints the markdown of ``analysis.summarize`` (plus the CKA table with ``--cka``), then what the
sweep's structure allows (``analysis/paper.py``: Table 5, Figure 2, Figure 3, the Sec. 4.2
check, prediction differences; ``--csv`` also writes ``<stem>_table5.csv``), and always
``<stem>_classes.csv`` (per-class accuracy mean and SD) and ``<stem>_best_of_k.csv``
(analysis/stats.py). Exit status:
0 when the table was written (missing or failed runs, and a group that mixes test sets, are
listed, not fatal), 1 when no finished run was found (then no file is written, so an earlier
analysis's files stay), 2 on bad arguments or an output that
cannot be written (a read-only file system: one line naming it).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from analysis import stats
from analysis.compare import MIN_RESAMPLES, _bounded, _Parser
from analysis.load import load_sweep
from analysis.paper import paper_analyses
from analysis.render import OutputError, writing
from analysis.tables import export_frame, export_notes, latex_table, report, summary_frame


def parser() -> argparse.ArgumentParser:
    p = _Parser(  # a value out of range is one line, exit status 2
        prog="python -m analysis",
        description="Aggregate the runs below SWEEP_DIR into the paper's tables and figures.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    p.add_argument(
        "--csv", type=Path, metavar="FILE",
        help="the table's raw numbers, one row per group: the shown configuration keys, then the "
        "columns of analysis.metrics.COLUMNS (analysis.lm.LM_COLUMNS) with n_diverged (runs whose test "
        "outputs are not finite) after n_runs, analysis.stats.STATS_COLUMNS, and last notes: the row's "
        "notes, then the whole sweep's (on every row), separated by ' | ', empty where there are none",
    )
    p.add_argument("--latex", type=Path, metavar="FILE",
                   help="the table as a booktabs tabular; rows with notes marked with a dagger, the notes after it")
    p.add_argument("--figures", type=Path, metavar="DIR", help="PNG and PDF figures")
    p.add_argument("--report", type=Path, metavar="FILE", help="one self-contained HTML page (analysis/report.py)")
    p.add_argument("--bootstrap", type=_bounded(int, MIN_RESAMPLES), default=1000, metavar="B",
                   help=f"resamples for *_sd_sd, >= {MIN_RESAMPLES} (1000)")
    p.add_argument("--seed", type=_bounded(int, 0), default=0, help="seed of the bootstrap, >= 0 (0)")
    cka = p.add_argument_group("representation similarity (needs weights.pt and the dataset)")
    cka.add_argument("--cka", action="store_true", help="linear CKA between pairs of runs per layer")
    # CKA centres over the probe: the standard estimator needs 2 examples, the debiased one 4.
    cka.add_argument("--cka-probe", type=_bounded(int, 2), default=1000, metavar="N",
                     help="test examples probed, >= 2 (>= 4 debiased) (1000)")
    cka.add_argument("--cka-runs", type=_bounded(int, 2), default=25, metavar="R",
                     help="runs per group, by replicate, >= 2: CKA compares pairs (25)")
    cka.add_argument("--cka-estimator", choices=("standard", "debiased"), default="standard")
    cka.add_argument("--cka-batch", type=_bounded(int, 2), metavar="B",
                     help="minibatch CKA with batches of B examples, >= 2 (>= 4 debiased)")
    cka.add_argument("--device", default="auto", help="device for CKA forward passes: auto, cpu, cuda")
    return p


def _unwritable(args) -> str | None:
    """The first output option whose folder cannot be made, as a one-line error; checked before
    the sweep is read, so a typo in a path costs no wait and no traceback."""
    for option in ("csv", "latex", "figures", "report"):
        path = getattr(args, option)
        if path is None:
            continue
        folder = path if option == "figures" else path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"error: --{option} {path}: cannot create {folder} ({e.strerror}); give a writable path"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed options; the debiased estimator's larger minimum refused like any other."""
    p = parser()
    args = p.parse_args(argv)
    if args.cka_estimator == "debiased":
        for option, value in (("--cka-probe", args.cka_probe), ("--cka-batch", args.cka_batch)):
            if value is not None and value < 4:
                p.error(f"argument {option}: {value} is out of range for --cka-estimator debiased; give one >= 4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = _unwritable(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.sweep_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frame = summary_frame(sweep, args.bootstrap, args.seed)
    cka = None
    if args.cka:
        from analysis.cka import sweep_cka

        cka = sweep_cka(
            sweep, args.cka_probe, args.cka_runs, args.cka_estimator, args.cka_batch, args.device
        )
    print(report(sweep, frame, args.bootstrap, args.seed, cka), end="")
    # Table 5, Figure 2's numbers, the Sec. 4.2 check, PD: what the sweep's structure allows.
    extra = paper_analyses(sweep, frame, args.bootstrap, args.seed)
    for section in extra.sections:
        print("\n" + section, end="")
    if not sweep.n_finished:  # an empty table would overwrite the files of an earlier analysis
        asked = [f"--{o} {getattr(args, o)}" for o in ("csv", "latex", "figures", "report") if getattr(args, o)]
        if asked:
            print(f"No finished run below {args.sweep_dir}: nothing written ({', '.join(asked)}: "
                  "any earlier files there are kept); analyse a sweep with finished runs", file=sys.stderr)
        return 1
    try:
        write_outputs(args, sweep, frame, cka, extra)
    except OutputError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


def write_outputs(args, sweep, frame, cka, extra) -> None:
    """The files the options ask for (``--csv``, ``--latex``, ``--figures``, ``--report``); one
    that cannot be written raises ``OutputError``."""
    if args.csv:
        extra.tables["classes"] = stats.class_table(sweep)  # group x class accuracy mean and SD
        extra.tables["best_of_k"] = stats.best_of_k_table(sweep)
        with writing("csv", args.csv):
            export_frame(sweep, frame).to_csv(args.csv, index=False)
            if cka is not None and len(cka):
                cka.to_csv(args.csv.with_name(args.csv.stem + "_cka" + args.csv.suffix), index=False)
            for name, table in extra.tables.items():
                table.to_csv(args.csv.with_name(f"{args.csv.stem}_{name}{args.csv.suffix}"), index=False)
    if args.latex:
        with writing("latex", args.latex):
            args.latex.write_text(latex_table(frame, sweep.display_keys, *export_notes(sweep, frame)))
    drawn = None  # with --report, the figures --figures drew: the page embeds them, not new ones
    if args.figures:
        from analysis.figures import figure_gaps, write_figures
        from analysis.render import collected

        with writing("figures", args.figures), collected(write=True) if args.report else nullcontext() as drawn:
            write_figures(sweep, frame, args.figures, cka)
        for stem, why in figure_gaps(sweep, frame).items():  # not drawn: a file of that name there is older
            print(f"No {stem}.png in {args.figures}: {why}", file=sys.stderr)
    if args.report:
        from analysis.report import ReportInputs, cli_options, write_report

        inputs = ReportInputs(sweep, frame, cka, args.bootstrap, args.seed, drawn, options=cli_options(args))
        with writing("report", args.report):
            written = write_report(inputs, args.report, extra.sections)
        print(f"Report: {written}", file=sys.stderr)

if __name__ == "__main__":
    sys.exit(main())
