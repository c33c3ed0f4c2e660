"""Hydra callbacks: the summary table when a multirun ends.

Configured in conf/config.yaml (``hydra.callbacks.summary``); runs in the launching process
after every job of the sweep has returned, whatever the launcher.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SummaryCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import analysis

        sweep_dir = Path(config.hydra.sweep.dir)
        print(f"\nSweep {sweep_dir}\n", flush=True)
        print(analysis.summarize(sweep_dir), flush=True)
        if analysis.sweep_status(sweep_dir).failed:
            # Finished runs stay where they are; a relaunch retries only the failed ones.
            sys.exit(1)
