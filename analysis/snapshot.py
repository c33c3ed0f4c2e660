"""Table 5: snapshot ensembles against vanilla ensembles of N independent runs (the paper's Sec. 5).

    python launch.py -m +experiment=table5            # cosine runs (the pool) and snapshot runs
    python -m analysis outputs/table5                 # prints this table below the run table

A snapshot run (``schedule=snapshot``, M cycles) saves ``snapshots/k/logits.npy`` at the end of
cycle k = 1..M, and its own ``logits.npy`` is the M-snapshot ensemble stored as log mean softmax
(``nondet/snapshot.py``). For every group of snapshot runs, the vanilla pool is the
``schedule=cosine`` group of the same configuration otherwise (the recipe the snapshot schedule
replaces, as in ``conf/experiment/table5.yaml``); where several cosine groups match (two warmups),
the one sharing the most of the snapshot group's other ``schedule.*`` settings. A snapshot group
without such a pool, or with several that fit equally well, gets a note and no vanilla rows: another
schedule (``constant``) is not the paper's comparison, and a pool picked among several is a guess.
Groups are labelled by the keys in which the snapshot groups differ (``schedule.cycles`` too). The
rows:

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

A run whose snapshots cannot be read (a file missing or truncated, another shape than its
``logits.npy``) is left out of the snapshot rows, with a note naming it and the file.

Every row gets the columns of ``analysis.metrics.group_metrics`` computed over its ensembles
(``n_runs`` = how many ensembles). All rows are computed from log-probabilities, so the Spearman
column of ``vanilla N=1`` ranks log-softmax values, not raw logits as Table 1 does (a per-example
shift, so it differs slightly from the run table's).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import Group, Run, Sweep, display_keys
from analysis.metrics import group_metrics
from analysis.render import markdown_table, with_error
from nondet import records
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


def _schedule_settings(group: Group) -> tuple:
    """The group's ``schedule.*`` keys but its name (warmup, cycles)."""
    return tuple((k, v) for k, v in group.key if k.startswith("schedule.") and k != "schedule.name")


@dataclass
class Pairing:
    """A snapshot group and its vanilla pool, or why it has none (``why``)."""

    snapshot: Group
    pool: Group | None
    why: str | None = None


def snapshot_pairs(sweep: Sweep) -> list[Pairing]:
    """Every snapshot group of the sweep with its vanilla pool: the ``schedule=cosine`` group of
    the same configuration otherwise; among several, the one sharing the most of its other
    ``schedule.*`` settings (warmup, cycles). None (and why) when no cosine group fits, or
    several fit equally well."""
    pairs = []
    for snap in (g for g in sweep.groups if is_snapshot(g)):
        rest = _without_schedule(snap)
        same = [g for g in sweep.groups if not is_snapshot(g) and _without_schedule(g) == rest]
        cosine = [g for g in same if g.params.get("schedule.name") == "cosine"]
        shared = [len(set(_schedule_settings(g)) & set(_schedule_settings(snap))) for g in cosine]
        best = [g for g, n in zip(cosine, shared) if n == max(shared, default=0)]
        if len(best) == 1:
            pairs.append(Pairing(snap, best[0]))
        elif best:
            keys = [k for k in display_keys([g.key for g in best]) if k != "source.name"]
            which = "; ".join(g.label(keys) for g in best)
            pairs.append(Pairing(snap, None, (
                f"{len(best)} schedule=cosine groups of the same configuration could be its vanilla pool "
                f"({which}), none closer to its schedule settings than the others: vanilla rows left out "
                "rather than guessed")))
        else:
            others = sorted({str(g.params.get("schedule.name")) for g in same})
            also = (f" (schedule={', '.join(others)} is not the snapshot recipe's cosine schedule)"
                    if others else "")
            pairs.append(Pairing(snap, None, (
                f"no vanilla pool (a schedule=cosine group of the same configuration otherwise) in this "
                f"sweep{also}: vanilla rows left out; launch it with schedule=cosine")))
    return pairs


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


def read_snapshots(group: Group, root: Path | None = None) -> tuple[np.ndarray | None, list[Run], list[str]]:
    """(R', M, N, C) float32 snapshot logits of the group's readable runs (None when no run has
    snapshots: runs trained before snapshots were saved), those runs, and why each other run is
    left out, naming its file (relative to ``root``).

    Every run must hold ``snapshots/1..M/logits.npy`` (M: the most any run of the group holds),
    each readable and shaped as the run's ``logits.npy``."""
    numbered = [_numbered(run.path / SNAPSHOT_DIR) for run in group.runs]
    count = max((max(n) for n in numbered if n), default=0)
    if count == 0:
        return None, [], []
    kept, arrays, left_out = [], [], []
    for run, numbers in zip(group.runs, numbered):
        where = run.path.relative_to(root) if root is not None and run.path.is_relative_to(root) else run.path
        try:
            per_cycle = [_read_snapshot(run, k, numbers) for k in range(1, count + 1)]
        except _Unreadable as e:
            left_out.append(f"{where}/{SNAPSHOT_DIR}/{e.k}/{LOGITS_FILE} ({e})")
            continue
        kept.append(run)
        arrays.append(np.stack(per_cycle))
    return (np.stack(arrays).astype(np.float32) if arrays else None), kept, left_out


class _Unreadable(Exception):
    def __init__(self, k: int, why: str):
        super().__init__(why)
        self.k = k


def _numbered(directory: Path) -> set[int]:
    return {int(p.name) for p in directory.iterdir() if p.name.isdigit()} if directory.is_dir() else set()


def _read_snapshot(run: Run, k: int, numbers: set[int]) -> np.ndarray:
    path = run.path / SNAPSHOT_DIR / str(k) / LOGITS_FILE
    if k not in numbers or not path.is_file():
        raise _Unreadable(k, "missing")
    try:
        array = records.read_array(path, 2, "f")
    except records.CorruptRunError as e:
        raise _Unreadable(k, str(e.__cause__ or e)) from None
    if array.shape != run.logits.shape:
        raise _Unreadable(k, f"shape {array.shape}, the run's {LOGITS_FILE} {run.logits.shape}")
    return array


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
    (runs the ensembles are built from), then ``analysis.metrics.COLUMNS``, and ``vanilla_pool``
    (the pool's label; None without one)."""
    pairs = snapshot_pairs(sweep)
    keys = display_keys([p.snapshot.key for p in pairs])
    rows, notes = [], []
    for pair in pairs:
        snap, pool = pair.snapshot, pair.pool
        label = snap.label(keys)
        labels = snap.labels
        start = len(rows)
        if pool is None:
            notes.append(f"{label}: {pair.why}")
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
        snapshots, kept, left_out = read_snapshots(snap, sweep.root)
        if left_out:
            shown = "; ".join(left_out[:3]) + (f"; and {len(left_out) - 3} more" if len(left_out) > 3 else "")
            notes.append(f"{label}: {len(left_out)} of {len(snap.runs)} snapshot runs left out of the snapshot "
                         f"rows, their snapshots unreadable: {shown}")
        runs = len(kept)
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
            stored = log_softmax(snap.with_runs(kept).logits)
            gap = float(np.max(np.abs(stored - ensemble))) if stored.shape == ensemble.shape else math.inf
            if gap > 1e-4:
                notes.append(
                    f"{label}: logits.npy differs from the ensemble of its {cycles} snapshots by up "
                    f"to {gap:.2g} (log-probability): the runs' ensemble is not the snapshots' mean"
                )
        elif not left_out:
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
            runs = len(snap.runs)
            rows.append(_row(what, "snapshot", members, runs, log_softmax(snap.logits), labels, n_boot, seed))
        for row in rows[start:]:
            row["group"] = label
            row["vanilla_pool"] = pool.label(sweep.display_keys) if pool is not None else None
    columns = ["group", "ensemble", "kind", "members", "pool"]
    frame = pd.DataFrame(rows)
    if len(frame):  # the pool's label last: the columns before it are as they were
        frame = frame[columns + [c for c in frame.columns if c not in columns + ["vanilla_pool"]] + ["vanilla_pool"]]
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
        pool = rows["vanilla_pool"].iloc[0]
        title = f"Group: {group}" if pool is None else f"Group: {group} (vanilla pool: {pool})"
        lines += ["", title, "", markdown_table(header, table)]
    lines += [f"- note: {n}" for n in notes]
    return "\n".join(lines) + "\n"
