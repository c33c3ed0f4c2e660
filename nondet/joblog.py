"""Hydra's own files in a run directory (``launch.log``, ``.hydra/``) when they cannot be written.

A run directory may be read-only (finished runs protected with ``chmod -R a-w``, a colleague's
sweep on shared storage) and a disk may be full. Hydra writes its job log and its record of the
job before nondet's code runs, and an error there would end the whole sweep with a chained
traceback. Here the job goes on without them, with one line saying so; the job itself then skips
its finished runs and reports the others as failed, with what to do (``nondet.job``).

conf/config.yaml selects both: ``hydra/job_logging: nondet`` (conf/hydra/job_logging/nondet.yaml,
Hydra's default with ``nondet.joblog.RunLogFile`` as the file handler) and
``hydra.output_subdir: ${nondet.hydra_files:.hydra}``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

_WARNED: set[str] = set()


def _say_once(key: str, text: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        print(f"nondet: {text}", file=sys.stderr, flush=True)


class RunLogFile(logging.FileHandler):
    """Hydra's job log file; when it cannot be opened or written, the job logs to the console
    only (one line says so) instead of failing."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None,
                 delay: bool = False, errors: Any = None) -> None:
        self.unwritable = False
        try:
            super().__init__(filename, mode, encoding, delay, errors)
        except OSError as e:
            logging.Handler.__init__(self)
            self.baseFilename, self.mode, self.encoding, self.errors = os.path.abspath(filename), mode, encoding, errors
            self.stream, self._builtin_open = None, open
            self._give_up(e)

    def _give_up(self, error: BaseException) -> None:
        self.unwritable = True
        reason = getattr(error, "strerror", None) or str(error)
        _say_once(self.baseFilename, f"cannot write {self.baseFilename} ({reason}); this job logs to the console only")

    def emit(self, record: logging.LogRecord) -> None:
        if not self.unwritable:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # a write failed: a full disk
        self._give_up(sys.exc_info()[1] or OSError("write failed"))


def hydra_files(name: str, *, _root_: Any) -> str | None:
    """``${nondet.hydra_files:.hydra}`` (hydra.output_subdir): the subdirectory of the job's output
    directory for Hydra's record of the job, or None (Hydra writes none) when it cannot be
    written there."""
    try:
        output_dir = _root_.hydra.runtime.output_dir
    except Exception:  # not known yet (the config is being composed, not run)
        return name
    if not output_dir:
        return name
    directory = Path(str(output_dir)) / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-") as probe:
            probe.write(b"\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        _say_once(str(directory), f"cannot write Hydra's record of this job in {directory} "
                                  f"({e.strerror or e}); the job goes on without it")
        return None
    return name
