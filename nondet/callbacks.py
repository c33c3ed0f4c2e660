"""Hydra callbacks: what a multirun did, and the summary table, when it ends.

Configured in conf/config.yaml (``hydra.callbacks.summary``); runs in the launching process
after every job of the sweep has returned, whatever the launcher (basic, submitit_local,
submitit_slurm). Relaunching a sweep prints, for example:

    Sweep outputs/default: 22 runs trained now, 8 finished earlier (skipped), 0 failed; of the 22
    trained now, 21 from scratch and 1 resumed from a checkpoint.

(one line). "Now" means: result.json written since the launch began (its time taken from the file
system, so a cluster's clock skew does not matter); "resumed" reads env.json's
``resumed_from_epoch``. Failed runs (error.txt, no result.json) make the command exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nondet.records import CONFIG_FILE, ENV_FILE, ERROR_FILE, RESULT_FILE


@dataclass
class SweepCounts:
    """The runs below a sweep directory, split by what the latest launch did with them."""

    scratch: int = 0  # finished by this launch, trained from epoch 0
    resumed: int = 0  # finished by this launch, resumed from checkpoint.pt
    skipped: int = 0  # finished before this launch
    failed: int = 0  # error.txt and no result.json (whenever it failed)

    @property
    def trained(self) -> int:
        return self.scratch + self.resumed

    def __str__(self) -> str:
        text = (f"{self.trained} runs trained now, {self.skipped} finished earlier (skipped), "
                f"{self.failed} failed")
        if self.trained:
            text += (f"; of the {self.trained} trained now, {self.scratch} from scratch and "
                     f"{self.resumed} resumed from a checkpoint")
        return text


def filesystem_now(directory: Path) -> float:
    """The current time as the file system holding ``directory`` sees it: the mtime of a file
    written now. Compared with the mtimes of files that jobs on other nodes wrote, this is immune
    to clock skew between the launching machine and the nodes (a shared file system stamps both)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".launch-", suffix=".tmp") as f:
            return os.fstat(f.fileno()).st_mtime
    except OSError:
        return time.time()


def sweep_counts(sweep_dir: Path, since: float) -> SweepCounts:
    """Count the runs below ``sweep_dir``: finished at or after ``since`` (from scratch or
    resumed, per env.json's ``resumed_from_epoch``), finished before it, and failed."""
    counts = SweepCounts()
    for result in Path(sweep_dir).rglob(RESULT_FILE):
        if result.stat().st_mtime < since:
            counts.skipped += 1
            continue
        try:
            resumed = json.loads((result.parent / ENV_FILE).read_text()).get("resumed_from_epoch")
        except (OSError, ValueError):
            resumed = None
        if resumed is not None:
            counts.resumed += 1
        else:
            counts.scratch += 1
    counts.failed = len(failed_runs(sweep_dir))
    return counts


def failed_runs(sweep_dir: Path) -> list[Path]:
    """Run directories below ``sweep_dir`` with error.txt and no result.json."""
    errors = Path(sweep_dir).rglob(ERROR_FILE)
    return sorted(e.parent for e in errors if not (e.parent / RESULT_FILE).exists())


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


class SummaryCallback(Callback):
    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = filesystem_now(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import analysis

        sweep_dir = Path(config.hydra.sweep.dir)
        print(f"\nSweep {sweep_dir}: {sweep_counts(sweep_dir, self.started)}.\n", flush=True)
        try:
            print(analysis.summarize(sweep_dir), flush=True)
            from analysis.report import report_command

            print(f"HTML report: {report_command(sweep_dir)}", flush=True)
        except analysis.MixedTestSetError as e:
            # Every run is kept; the table needs runs of one group to share a test set.
            print(f"No table: {e}", flush=True)
            sys.exit(1)
        # analysis finds runs by their config.yaml; a run can fail before writing it (a corrupt
        # checkpoint, a model that cannot be built), so those are listed here.
        early = [d for d in failed_runs(sweep_dir) if not (d / CONFIG_FILE).exists()]
        for directory in early:
            print(f"- failed before writing {CONFIG_FILE}: {directory}: "
                  f"{last_line(directory / ERROR_FILE)}", flush=True)
        status = analysis.sweep_status(sweep_dir)
        if not status.ok or early:
            # Finished runs stay where they are; a relaunch retries only the failed ones.
            more = f" (and {len(early)} failed before writing {CONFIG_FILE})" if early else ""
            advice = status.advice or "relaunch the same command to retry the failed runs"
            print(f"\n{status}{more}: {advice}.", flush=True)
            sys.exit(1)
