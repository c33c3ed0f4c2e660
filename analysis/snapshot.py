"""Table 5: snapshot ensembles against vanilla ensembles of N independent runs (the paper's Sec. 5).

    python launch.py -m +experiment=table5            # cosine runs (the pool) and snapshot runs
    python -m analysis outputs/table5                 # prints this table below the run table

A snapshot run (``schedule=snapshot``, M cycles) saves ``snapshots/k/logits.npy`` at the end of
cycle k = 1..M, and its own ``logits.npy`` is the M-snapshot ensemble stored as log mean softmax
(``nondet/snapshot.py``). For every group of snapshot runs, the vanilla pool is the group whose
configuration differs only in the schedule (``schedule.*`` keys). The rows:

- ``vanilla N=n`` (n = 1..5): ensembles of n distinct runs of the pool, averaging their softmax
  probabilities. Each ensemble is a distinct n-subset of the pool, drawn without replacement from
  ``np.random.default_rng(seed)``; there are as many ensembles as runs in the pool, or every
  n-subset when there are fewer (n = 1 is the pool itself). Ensembles drawn from one pool share
  members (two 5-run ensembles from a pool of 100 share 0.25 runs on average; from a pool of 6,
  four), which lowers their spread: a pool several times larger than 5 makes the rows comparable
  with the snapshot row, whose runs are independent.
- ``snapshot M=m``: the ensemble of the last m snapshots of every run, m = 1..M, from
  ``snapshots/``; m = 1 is the final model of the cyclic schedule alone, m = M must equal
  ``logits.npy`` (a note says when it does not).
- ``snapshot (logits.npy)`` when ``snapshots/`` is absent: the runs' own logits, which are the
  ensemble if they are log-probabilities (every row's logsumexp is 0) and only the final model
  otherwise (a run trained before the engine saved snapshots); the row says which.

Every row gets the columns of ``analysis.metrics.group_metrics`` computed over its ensembles
(``n_runs`` = how many ensembles). All rows are computed from log-probabilities, so the Spearman
column of ``vanilla N=1`` ranks log-softmax values, not raw logits as Table 1 does (a per-example
shift, so it differs slightly from the run table's).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from analysis.load import Group, Sweep
from analysis.metrics import group_metrics
from analysis.render import markdown_table, with_error
from nondet.records import LOGITS_FILE, SNAPSHOT_DIR
MAX_MEMBERS = 5

# (column, header, decimals)
TABLE5_COLUMNS = (
    ("accuracy_mean", "Accuracy (%)", 2),
    ("accuracy_sd", "Accuracy SD (%)", 2),
    ("cross_entropy_mean", "Cross-entropy", 4),
    ("cross_entropy_sd", "Cross-entropy SD", 4),
    ("disagreement", "Pairwise disagreement (%)", 2),
    ("spearman", "Pairwise Spearman ρ", 4),
    ("ensemble_delta_accuracy", "Ensemble Δ accuracy (%)", 2),
    ("ensemble_delta_cross_entropy", "Ensemble Δ cross-entropy", 4),
)


def is_snapshot(group: Group) -> bool:
    return group.params.get("schedule.name") == "snapshot"


def _without_schedule(group: Group) -> tuple:
    return tuple((k, v) for k, v in group.key if not k.startswith("schedule."))


def snapshot_pairs(sweep: Sweep) -> list[tuple[Group, Group | None]]:
    """(snapshot group, its vanilla pool or None) for every snapshot group of the sweep."""
    pools = {_without_schedule(g): g for g in sweep.groups if not is_snapshot(g)}
    return [(g, pools.get(_without_schedule(g))) for g in sweep.groups if is_snapshot(g)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def ensemble_log_probabilities(log_probs: np.ndarray, members: np.ndarray) -> np.ndarray:
    """log of the mean softmax probabilities of each ensemble.

    ``log_probs`` (R, N, C): log-softmax of R runs; ``members`` (E, n): run indices of each of E
    ensembles. Returns (E, N, C) float64, accumulated member by member with ``logaddexp`` (no
    (E, n, N, C) array, no underflow of tiny probabilities).
    """
    members = np.asarray(members)
    total = log_probs[members[:, 0]]
    for j in range(1, members.shape[1]):
        total = np.logaddexp(total, log_probs[members[:, j]])
    return total - math.log(members.shape[1])


def ensemble_draws(pool: int, members: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(E, members) distinct sorted subsets of range(pool): every subset when there are at most
    ``count`` of them, else ``count`` distinct ones drawn without replacement by ``rng``."""
    if not 1 <= members <= pool:
        raise ValueError(f"cannot draw ensembles of {members} from a pool of {pool} runs")
    if math.comb(pool, members) <= count:
        return np.array(list(itertools.combinations(range(pool), members)), dtype=np.int64)
    seen: set[tuple[int, ...]] = set()
    draws = []
    while len(draws) < count:
        subset = tuple(sorted(int(i) for i in rng.choice(pool, size=members, replace=False)))
        if subset not in seen:
            seen.add(subset)
            draws.append(subset)
    return np.array(draws, dtype=np.int64)


def read_snapshots(group: Group) -> np.ndarray | None:
    """(R, M, N, C) float32 snapshot logits of every run, or None when a run has none.

    Raises ValueError when runs hold different numbers of snapshots or shapes."""
    per_run = []
    for run in group.runs:
        directory = run.path / SNAPSHOT_DIR
        cycles = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []
        if not cycles:
            return None
        if cycles != list(range(1, len(cycles) + 1)):
            raise ValueError(f"{directory}: snapshots {cycles} are not 1..M")
        per_run.append(np.stack([np.load(directory / str(k) / LOGITS_FILE) for k in cycles]))
    shapes = {a.shape for a in per_run}
    if len(shapes) != 1:
        raise ValueError(f"snapshot runs of one group hold different snapshots: shapes {sorted(shapes)}")
    return np.stack(per_run).astype(np.float32)


def is_log_probability(logits: np.ndarray, tolerance: float = 1e-4) -> bool:
    """Whether every row of every run is a log-probability vector (logsumexp 0)."""
    x = np.asarray(logits, dtype=np.float64)
    peak = x.max(axis=-1, keepdims=True)
    lse = peak[..., 0] + np.log(np.exp(x - peak).sum(axis=-1))
    return bool(np.all(np.abs(lse) < tolerance))


def _row(label: str, kind: str, members: int, pool: int, log_probs: np.ndarray, labels, n_boot, seed) -> dict:
    row = {"ensemble": label, "kind": kind, "members": members, "pool": pool}
    row.update(group_metrics(log_probs, labels, n_boot=n_boot, seed=seed))
    return row


def table5_frame(
    sweep: Sweep,
    max_members: int = MAX_MEMBERS,
    draw_seed: int = 0,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """Table 5 rows for every snapshot group of the sweep, and notes. Columns: ``group`` (the
    snapshot group's label), ``ensemble``, ``kind`` (vanilla / snapshot), ``members``, ``pool``
    (runs the ensembles are built from), then ``analysis.metrics.COLUMNS``."""
    keys = [k for k in sweep.display_keys if not k.startswith("schedule.")]
    rows, notes = [], []
    for snap, pool in snapshot_pairs(sweep):
        label = snap.label(keys)
        labels = snap.labels
        start = len(rows)
        if pool is None:
            notes.append(f"{label}: no vanilla pool (a group differing only in the schedule) in this sweep")
        elif not np.array_equal(pool.labels, labels):
            notes.append(f"{label}: the vanilla pool was evaluated on another test set; left out")
        else:
            pool_log_probs = log_softmax(pool.logits)
            rng = np.random.default_rng(draw_seed)
            runs = len(pool.runs)
            for n in range(1, min(max_members, runs) + 1):
                draws = ensemble_draws(runs, n, runs, rng)
                ensembles = ensemble_log_probabilities(pool_log_probs, draws)
                rows.append(_row(f"vanilla N={n}", "vanilla", n, runs, ensembles, labels, n_boot, seed))
            if runs < max_members:
                notes.append(f"{label}: the pool holds {runs} runs, so vanilla ensembles stop at N={runs}")
        try:
            snapshots = read_snapshots(snap)
        except ValueError as e:
            notes.append(f"{label}: {e}")
            snapshots = None
        runs = len(snap.runs)
        if snapshots is not None:
            cycles = snapshots.shape[1]
            snapshot_log_probs = log_softmax(snapshots)  # (R, M, N, C)
            for m in range(1, cycles + 1):
                last = np.arange(cycles - m, cycles)
                ensemble = ensemble_log_probabilities(
                    snapshot_log_probs.reshape(-1, *snapshot_log_probs.shape[2:]),
                    (np.arange(runs)[:, None] * cycles + last[None, :]),
                )
                rows.append(_row(f"snapshot M={m} (last {m} of {cycles})" if m < cycles else f"snapshot M={m}",
                                 "snapshot", m, runs, ensemble, labels, n_boot, seed))
            stored = log_softmax(snap.logits)
            gap = float(np.max(np.abs(stored - ensemble))) if stored.shape == ensemble.shape else math.inf
            if gap > 1e-4:
                notes.append(
                    f"{label}: logits.npy differs from the ensemble of its {cycles} snapshots by up "
                    f"to {gap:.2g} (log-probability): the runs' ensemble is not the snapshots' mean"
                )
        else:
            if is_log_probability(snap.logits):
                what = "snapshot (logits.npy: the ensemble)"
            else:
                what = "snapshot schedule, final model only"
                notes.append(
                    f"{label}: no snapshots/ and logits.npy holds raw logits: these runs predate "
                    "snapshot saving, so the snapshot row is the final model of the cyclic schedule, "
                    "not an ensemble"
                )
            members = int(snap.params.get("schedule.cycles") or 0)
            rows.append(_row(what, "snapshot", members, runs, log_softmax(snap.logits), labels, n_boot, seed))
        for row in rows[start:]:
            row["group"] = label
    columns = ["group", "ensemble", "kind", "members", "pool"]
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame[columns + [c for c in frame.columns if c not in columns]]
    return frame, notes


def table5_markdown(frame: pd.DataFrame, notes: list[str], n_boot: int = 1000) -> str:
    """The Table 5 section of ``python -m analysis``."""
    lines = [
        "Table 5: snapshot ensembles against vanilla ensembles of N runs drawn without "
        "replacement from the pool (softmax probabilities averaged; SD ± bootstrap SD of the SD "
        f"over {n_boot} resamples of the ensembles; pairwise columns over pairs of ensembles; "
        "Spearman ρ ranks log-probabilities, so vanilla N=1 differs slightly from the run table's, "
        "which ranks the raw logits).",
    ]
    header = ["Ensemble", "Ensembles", "Pool", *(h for _, h, _ in TABLE5_COLUMNS)]
    for group, rows in frame.groupby("group", sort=False):
        table = []
        for _, row in rows.iterrows():
            cells = [str(row["ensemble"]), str(int(row["n_runs"])), str(int(row["pool"]))]
            for column, _, decimals in TABLE5_COLUMNS:
                error = f"{column}_sd" if column.endswith("_sd") and f"{column}_sd" in row else None
                cells.append(with_error(row[column], None if error is None else row[error], decimals))
            table.append(cells)
        lines += ["", f"Group: {group}", "", markdown_table(header, table)]
    lines += [f"- note: {n}" for n in notes]
    return "\n".join(lines) + "\n"
