"""Hydra callbacks: the summary table when a multirun ends.

Configured in conf/config.yaml (``hydra.callbacks.summary``); runs in the launching process
after every job of the sweep has returned, whatever the launcher.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nondet.records import RESULT_FILE


def runs_finished_since(sweep_dir: Path, since: float) -> tuple[int, int]:
    """(runs finished at or after ``since``, runs finished before) below ``sweep_dir``."""
    times = [p.stat().st_mtime for p in Path(sweep_dir).rglob(RESULT_FILE)]
    new = sum(t >= since for t in times)
    return new, len(times) - new


class SummaryCallback(Callback):
    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import analysis

        sweep_dir = Path(config.hydra.sweep.dir)
        trained, before = runs_finished_since(sweep_dir, self.started)
        print(f"\nSweep {sweep_dir}: {trained} runs trained now, {before} finished earlier "
              "(skipped).\n", flush=True)
        print(analysis.summarize(sweep_dir), flush=True)
        status = analysis.sweep_status(sweep_dir)
        if not status.ok:
            # Finished runs stay where they are; a relaunch retries only the failed ones.
            print(f"\n{status}: relaunch the same command to retry the failed runs.",
                  flush=True)
            sys.exit(1)
