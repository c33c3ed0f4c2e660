"""Instability: Figure 3 (a bit flip over the course of training) and the claim of Sec. 4.2.

    python -m analysis outputs/fig3 --figures figs/fig3       # instability.{png,pdf}
    python -m analysis outputs/table8                         # Table 8, then the Sec. 4.2 check
    python -m analysis.instability outputs/table8             # the check alone; exit 0 if it holds

Figure 3: for every group of bit-flip runs with per-epoch metrics (``metrics.jsonl``), the SD
over runs of the test cross-entropy at each evaluated epoch and the width of its middle 95%
(2.5th to 97.5th percentile), on a log scale; the top row over all epochs, the bottom row over
the first 10. Zeros (bitwise-identical runs) cannot be drawn on a log axis and are left out,
with "(0 at k epochs)" in the legend. ``metrics.jsonl`` records the cross-entropy in float32, so
an SD within ``ROUNDING_ULPS`` float32 ULPs of it (a stable model's) is the rounding of the
record; the printed table marks those cells.

Sec. 4.2 (and Table 8): a linear model is convex, and a one-ULP change to one weight leaves its
trajectory within rounding of the unperturbed one: the paper's linear bit-flip runs have accuracy
SD 0 (no test prediction changes) and cross-entropy SD ~3e-8, against 0.28 / 0.0055 with one
fully-connected hidden layer and 0.14 / 0.0024 with one convolutional hidden layer. The check
needs bit-flip groups of a linear model and of at least one deeper model that share every other
key; it holds when (1) no test prediction of any linear bit-flip run differs from another's
(accuracy SD 0 follows), and (2) every deeper model's cross-entropy SD is at least
``MIN_RATIO`` (100, two orders of magnitude) times the linear one's.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import Group, Sweep, load_sweep, n_diverged, short_metrics
from analysis.metrics import cross_entropy, percent_correct, sd
from analysis.render import format_number, markdown_table, save_figure, shared_legend, style_groups

MIN_RATIO = 100.0
ZOOM_EPOCHS = 10
LINEAR = "linear"


def is_bitflip(group: Group) -> bool:
    return group.params.get("source.name") == "bitflip"


def per_epoch(group: Group, metric: str = "test_cross_entropy") -> tuple[np.ndarray, np.ndarray]:
    """(epochs (E,), values (R', E)) of ``metric`` over the epochs every run of the group evaluated,
    leaving out the runs whose metrics.jsonl was cut short (``short_metrics``, named in a note):
    their lost epochs would drop out for every run."""
    short = {id(run) for run in short_metrics(group)}
    runs = [run for run in group.runs if id(run) not in short]
    per_run = [{row["epoch"]: row[metric] for row in run.metrics if "epoch" in row and metric in row} for run in runs]
    epochs = sorted(set.intersection(*(set(m) for m in per_run))) if per_run else []
    values = np.array([[m[e] for e in epochs] for m in per_run], dtype=float).reshape(len(per_run), len(epochs))
    return np.array(epochs, dtype=int), values


def spread_by_epoch(group: Group) -> pd.DataFrame:
    """Per evaluated epoch: SD (ddof=1) and middle-95% width of the test cross-entropy over runs."""
    epochs, values = per_epoch(group)
    if len(values) < 2 or not len(epochs):
        return pd.DataFrame(columns=["epoch", "cross_entropy_sd", "cross_entropy_range95"])
    low, high = np.percentile(values, [2.5, 97.5], axis=0)
    sds = np.array([sd(values[:, j]) for j in range(values.shape[1])])
    return pd.DataFrame({"epoch": epochs, "cross_entropy_sd": sds, "cross_entropy_range95": high - low})


# The caption's sentence for a figure of ``plot_spread`` lines where groups had diverged runs.
NAMED_NOT_DRAWN = "Groups with diverged runs are named in the legend, not drawn."


def plot_spread(axes, spread: pd.DataFrame, label: str, diverged: int = 0, runs: int = 0) -> None:
    """One group's ``spread_by_epoch`` as a line on each of two axes: the middle-95% width, the
    SD. A log axis cannot show zeros (bitwise-identical runs): they are left out and counted in
    the legend. A group with ``diverged`` runs (of ``runs``) is not drawn (its spread runs to
    1e23 and NaN) but named in the legend, an empty line in its own style."""
    if diverged:
        for ax in axes:
            ax.plot([], [], marker=".", label=f"{label} ({diverged} of {runs} runs diverged: not drawn)")
        return
    for ax, column in zip(axes, ("cross_entropy_range95", "cross_entropy_sd")):
        values = spread[column].to_numpy(dtype=float)
        zeros = int(np.sum(values == 0))
        suffix = f" (0 at {zeros} epochs)" if zeros else ""
        ax.plot(spread["epoch"], np.where(values > 0, values, np.nan), marker=".", label=label + suffix)


def label_spread_axes(axes, when: str = "") -> None:
    """Log scale, titles and axis labels of the two axes ``plot_spread`` draws on."""
    for ax, title in zip(axes, ("Width of the middle 95% of runs", "SD over runs")):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title + when)
    axes[0].set_ylabel("test cross-entropy (nats)")


def figure3_groups(sweep: Sweep) -> list[Group]:
    """Bit-flip groups with at least two runs and two epochs in their per-epoch metrics, when they hold at least
    two models (Figure 3 compares models; any sweep's spread over epochs is
    ``cross_entropy_spread.png``)."""
    groups = [g for g in sweep.groups if is_bitflip(g) and min(per_epoch(g)[1].shape) >= 2]
    return groups if len({_model(g) for g in groups}) >= 2 else []


def instability_figure(sweep: Sweep, out_dir: Path) -> list[Path]:
    """instability.{png,pdf}: Figure 3 for the bit-flip groups of the sweep (none: no file). A
    group with diverged runs is named in the legend, not drawn (``plot_spread``); none left to
    draw: no file (``paper.paper_gaps``)."""
    from matplotlib.figure import Figure

    groups = figure3_groups(sweep)
    counts = [n_diverged(g) for g in groups]
    if all(counts):
        return []
    keys = [k for k in sweep.display_keys if k != "source.name"] or ["source.name"]
    fig = Figure(figsize=(10.0, 7.0), layout="constrained")
    axes = fig.subplots(2, 2)
    style_groups(*axes.ravel(), n=len(groups))
    for group, diverged in zip(groups, counts):
        spread = spread_by_epoch(group)
        for row, limit in ((0, None), (1, ZOOM_EPOCHS)):
            shown = spread if limit is None else spread[spread["epoch"] <= limit]
            plot_spread(axes[row], shown, group.label(keys), diverged, len(group.runs))
    for row, when in ((0, "all epochs"), (1, f"first {ZOOM_EPOCHS} epochs")):
        label_spread_axes(axes[row], f", {when}")
    fig.suptitle("A one-ULP bit flip during training: spread of test cross-entropy over runs")
    shared_legend(fig, axes)  # beside the panels, never over the lines
    return save_figure(fig, out_dir, "instability")


def instability_markdown(sweep: Sweep, epochs: tuple[int, ...] = (1, 2, 3, 5, 10)) -> str:
    """Cross-entropy SD of each bit-flip group at a few epochs and at the end (Figure 3 as numbers)."""
    groups = figure3_groups(sweep)
    keys = [k for k in sweep.display_keys if k != "source.name"] or ["source.name"]
    spreads = {g.label(keys): spread_by_epoch(g) for g in groups}
    last = max(int(s["epoch"].max()) for s in spreads.values())
    shown = sorted({e for e in epochs if e < last} | {last})
    rows, rounding = [], False
    for group, (label, spread) in zip(groups, spreads.items()):
        by_epoch = dict(zip(spread["epoch"], spread["cross_entropy_sd"]))
        ulps = dict(zip(*float32_ulps(group)))
        cells = [label]
        for e in shown:
            value = by_epoch.get(e, np.nan)
            below = 0 < value <= ROUNDING_ULPS * ulps.get(e, 0.0)
            rounding |= below
            cells.append(format_number(value, 4) + (" †" if below else ""))
        rows.append(cells)
    table = markdown_table(["Group", *(str(e) for e in shown)], rows)
    text = "Figure 3: SD over bit-flip runs of the test cross-entropy at epoch:\n\n" + table + "\n"
    if rounding:
        text += (f"\n† within {ROUNDING_ULPS} float32 ULPs of the cross-entropy: metrics.jsonl records it "
                 "in float32, so such an SD is the rounding of the record, not a measured spread (the run "
                 "table's cross-entropy SD, from the logits, is the measure at the last epoch).\n")
    return text


# An SD of values that differ by one or two float32 ULPs is about 0.6-1.2 ULPs: a per-epoch SD up
# to this many ULPs of the recorded value cannot be told from the rounding of the record.
ROUNDING_ULPS = 2


def float32_ulps(group: Group) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, one float32 ULP of the group's largest recorded test cross-entropy at each)."""
    epochs, values = per_epoch(group)
    if not values.size:
        return epochs, np.zeros(0)
    return epochs, np.spacing(np.abs(values).max(axis=0).astype(np.float32)).astype(float)


# --- the claim of Sec. 4.2 ------------------------------------------------------------------


@dataclass
class InstabilityCheck:
    """The outcome of the Sec. 4.2 check for one linear bit-flip group."""

    label: str
    runs: int
    changed_examples: int  # test examples whose prediction differs between some runs
    test_examples: int
    accuracy_sd: float
    cross_entropy_sd: float
    deeper: dict[str, float] = field(default_factory=dict)  # deeper model -> cross-entropy SD

    @property
    def ratios(self) -> dict[str, float]:
        if self.cross_entropy_sd == 0:
            return {m: (np.inf if v > 0 else np.nan) for m, v in self.deeper.items()}
        return {m: v / self.cross_entropy_sd for m, v in self.deeper.items()}

    @property
    def predictions_unchanged(self) -> bool:
        return self.changed_examples == 0

    @property
    def deeper_much_larger(self) -> bool:
        return bool(self.deeper) and all(r >= MIN_RATIO for r in self.ratios.values())

    @property
    def holds(self) -> bool:
        return self.predictions_unchanged and self.deeper_much_larger


def _model(group: Group) -> str | None:
    return group.params.get("model.name")


def _context(group: Group) -> tuple:
    """Every key but the model's: groups that differ only in their model compare."""
    return tuple((k, v) for k, v in group.key if not k.startswith("model."))


def instability_checks(sweep: Sweep) -> list[InstabilityCheck]:
    """One check per linear bit-flip group with at least two runs and a deeper bit-flip group
    that shares every non-model key."""
    checks = []
    keys = [k for k in sweep.display_keys if not k.startswith("model.")]
    for group in sweep.groups:
        if not (is_bitflip(group) and _model(group) == LINEAR and len(group.runs) >= 2):
            continue
        deeper_groups = [
            g for g in sweep.groups
            if is_bitflip(g) and _model(g) not in (None, LINEAR) and _context(g) == _context(group) and len(g.runs) >= 2
        ]
        if not deeper_groups:
            continue
        logits, labels = group.logits, group.labels
        predictions = group.predictions
        changed = int(np.count_nonzero((predictions != predictions[0]).any(axis=0)))
        checks.append(
            InstabilityCheck(
                label=group.label(keys),
                runs=len(group.runs),
                changed_examples=changed,
                test_examples=len(labels),
                accuracy_sd=sd(percent_correct(group.correct)),
                cross_entropy_sd=sd(cross_entropy(logits, labels)),
                deeper={_model(g): sd(cross_entropy(g.logits, g.labels)) for g in deeper_groups},
            )
        )
    return checks


def checks_markdown(checks: list[InstabilityCheck]) -> str:
    lines = ["Sec. 4.2 check: instability comes with depth (paper: linear bit-flip runs have "
             "accuracy SD 0 and cross-entropy SD ~3e-8; one hidden layer ~1e4 times more)."]
    for c in checks:
        verdict = "HOLDS" if c.holds else "DOES NOT HOLD"
        lines += [
            "",
            f"- {c.label}, linear, {c.runs} bit-flip runs: {verdict}",
            f"  - test predictions that differ between runs: {c.changed_examples} of "
            f"{c.test_examples} ({'none' if c.predictions_unchanged else 'some'}); "
            f"accuracy SD {format_number(c.accuracy_sd, 4)}; cross-entropy SD {c.cross_entropy_sd:.2g}",
        ]
        for model, value in c.deeper.items():
            ratio = c.ratios[model]
            ok = ratio >= MIN_RATIO
            lines.append(
                f"  - {model}: cross-entropy SD {value:.2g}, {ratio:.3g} times the linear model's "
                f"({'>=' if ok else '<'} {MIN_RATIO:g})"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.instability",
        description="Check the claim of Sec. 4.2 on a sweep with linear and deeper bit-flip runs "
        "(exit 0: holds, 1: does not hold, 2: the sweep has no such runs).",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    args = p.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checks = instability_checks(sweep)
    if not checks:
        print(
            f"No linear bit-flip group with a deeper bit-flip group to compare below {args.sweep_dir} "
            "(python launch.py -m +experiment=table8 trains them).",
            file=sys.stderr,
        )
        return 2
    print(checks_markdown(checks), end="")
    return 0 if all(c.holds for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
