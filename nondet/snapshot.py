"""Snapshot ensembles (Huang et al. 2017; the paper's Sec. 5, Table 5).

With ``schedule=snapshot`` the learning rate follows M cosine cycles of ceil(T / M) steps. At the
end of cycle k the run saves that snapshot's test logits as ``snapshots/k/logits.npy``; the run's
own ``logits.npy`` is the snapshot ensemble: the log of the mean of the snapshots' softmax
probabilities, so argmax and cross-entropy of ``logits.npy`` are the ensemble's, unchanged.
A schedule whose cycles fit fewer than M snapshots into training is refused before it trains
(``check_snapshot_count``).

    python launch.py -m source=init schedule=snapshot schedule.cycles=5
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from nondet.config import ConfigError
from nondet.optim import cycle_length
from nondet import records
from nondet.records import LOGITS_FILE, SNAPSHOT_DIR


def snapshot_steps(schedule: Mapping, total_steps: int) -> list[int]:
    """The optimizer steps (counted from 1) after which a snapshot is taken: the end of every
    cycle, the last one cut short at the end of training. Empty for other schedules."""
    if schedule["name"] != "snapshot" or total_steps == 0:
        return []
    cycle = cycle_length(schedule, total_steps)
    return sorted({min(k * cycle, total_steps) for k in range(1, math.ceil(total_steps / cycle) + 1)})


def check_snapshot_count(schedule: Mapping, steps_per_epoch: int, epochs: int) -> None:
    """Refuse ``schedule=snapshot`` where its cycles of ceil(T / M) steps fit fewer than M into
    the T steps of training (T = 6, M = 4: cycles of 2 steps, 3 snapshots): the run would be an
    ensemble of fewer members, under fewer restarts, than its ``schedule.cycles`` says, and every
    comparison labelled with it (snapshot against vanilla ensembles of M runs) would be wrong."""
    total = steps_per_epoch * epochs
    cycles = schedule["cycles"] if schedule["name"] == "snapshot" else 0
    count = len(snapshot_steps(schedule, total))
    if cycles < 2 or count == cycles:
        return
    fits = [m for m in range(1, cycles) if len(snapshot_steps({**schedule, "cycles": m}, total)) == m]
    # Every M fits in T > M (M - 1) steps, so a few more epochs always do.
    more = next(e for e in range(epochs + 1, epochs + cycles * cycles + 2)
                if len(snapshot_steps(schedule, e * steps_per_epoch)) == cycles)
    length = cycle_length(schedule, total)
    listed = f" (counts that fit: {', '.join(map(str, fits))})" if 1 < len(fits) <= 10 else ""
    raise ConfigError(
        f"schedule.cycles={cycles} takes only {count} snapshots in {total} steps ({steps_per_epoch} per epoch x "
        f"epochs={epochs}; cycles of ceil({total}/{cycles}) = {length} step{'s' if length > 1 else ''}): set "
        f"schedule.cycles={fits[-1]}{listed}, or epochs={more}")


def snapshot_path(directory: Path, k: int) -> Path:
    return Path(directory) / SNAPSHOT_DIR / str(k) / LOGITS_FILE


def taken_by(schedule: Mapping, steps_per_epoch: int, epochs: int, epoch: int) -> list[int]:
    """The numbers k (1-based) of the snapshots a run of ``epochs`` takes in its first ``epoch``
    epochs: those a checkpoint of that epoch (or an onset sweep's shared prefix) comes after."""
    steps = snapshot_steps(schedule, steps_per_epoch * epochs)
    return [k for k, step in enumerate(steps, 1) if step <= steps_per_epoch * epoch]


def missing(numbers: list[int], directory: Path) -> list[int]:
    """The snapshots among ``numbers`` that ``directory`` lacks."""
    return [k for k in numbers if not snapshot_path(directory, k).is_file()]


def copy_missing(numbers: list[int], source: Path, target: Path) -> None:
    """Copy the snapshots ``numbers`` that ``target`` lacks from ``source`` (where it has them),
    byte for byte: the shared prefix of an onset sweep took them once for every fork."""
    for k in missing(numbers, target):
        if snapshot_path(source, k).is_file():
            records.copy_file(snapshot_path(source, k), snapshot_path(target, k))


def ensemble_log_probabilities(logits: list[torch.Tensor]) -> torch.Tensor:
    """log(mean_k softmax(logits_k)), computed stably in float64, returned as float32."""
    stacked = torch.stack([l.double() for l in logits])
    log_probs = torch.log_softmax(stacked, dim=-1)
    return (torch.logsumexp(log_probs, dim=0) - math.log(len(logits))).float()


def load_snapshots(directory: Path, count: int) -> list[np.ndarray]:
    return [np.load(snapshot_path(directory, k)) for k in range(1, count + 1)]
