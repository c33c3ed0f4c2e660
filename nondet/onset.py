"""The shared prefix of an onset sweep (the paper's Fig. 2).

With ``onset_epoch=k`` every source keeps the base seed for epochs < k, so the first k epochs of
every replicate — of every source, and of every onset ≥ k — are the same computation: the base
trajectory. It is trained once. The first job that needs the state after epoch k trains it (from
the latest prefix checkpoint before k, if any) and saves ``<sweep>/.prefix/<hash>/epoch_<k>.pt``;
the others wait for that file and fork from it. A replica forked this way ends bitwise identical
to one trained from scratch with the same onset, because the checkpoint holds everything the
computation depends on. Under ``schedule=snapshot`` the snapshots taken before epoch k are the
prefix's too: its trainer saves them in ``<hash>/snapshots/`` before the checkpoint, and every fork
copies them (``nondet.train.check_snapshots``).

Jobs on different hosts coordinate through the shared file system: a lock file
(``nondet/lock.py``) created with O_EXCL, refreshed while its holder trains, and taken over when
its holder died.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Mapping

from nondet.lock import Lock, held  # noqa: F401  (onset.Lock, onset.held: the prefix's lock)
from nondet.records import identity

log = logging.getLogger("nondet")

PREFIX_DIR = ".prefix"
# Keys that do not change the base trajectory: which sources vary, the replicate, the onset.
_NOT_IN_PREFIX = ("source", "replicate", "onset_epoch", "pack")


def prefix_hash(config: Mapping) -> str:
    base = {k: v for k, v in identity(config).items() if k not in _NOT_IN_PREFIX}
    text = json.dumps(base, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def prefix_dir(config: Mapping) -> Path:
    return Path(config["output_root"]) / config["sweep_name"] / PREFIX_DIR / prefix_hash(config)


def prefix_checkpoint(config: Mapping, epoch: int) -> Path:
    return prefix_dir(config) / f"epoch_{epoch:05d}.pt"


def latest_prefix_checkpoint(config: Mapping, before_or_at: int) -> tuple[int, Path] | None:
    """The prefix checkpoint with the largest epoch <= ``before_or_at``, if any."""
    directory = prefix_dir(config)
    found = []
    for path in directory.glob("epoch_*.pt"):
        epoch = int(path.stem.split("_")[1])
        if epoch <= before_or_at:
            found.append((epoch, path))
    return max(found) if found else None


# While a job waits for the shared prefix, a log line this often (seconds).
WAIT_LOG_SECONDS = 300.0


def wait_for(path: Path, lock: Lock, timeout_seconds: float | None = None) -> bool:
    """Wait until ``path`` exists (True) or the lock can be taken (False: train it yourself).

    Bounded without a limit of its own: the holder refreshes the lock after every epoch, and a
    lock left unrefreshed for ``lock.stale_seconds`` (a holder that died or hangs) is taken over.
    Says whom it waits for when it starts and every ``WAIT_LOG_SECONDS``."""
    began = last_log = time.monotonic()
    logged = False
    while not path.exists():
        if lock.try_acquire():
            return False
        now = time.monotonic()
        if not logged or now - last_log >= WAIT_LOG_SECONDS:
            log.info("waiting for the shared prefix %s, which %s is training (%.0f s so far; a lock "
                     "not refreshed for %.0f s is taken over)", path.name, _holder_text(lock.holder()),
                     now - began, lock.stale_seconds)
            logged, last_log = True, now
        if timeout_seconds is not None and now - began > timeout_seconds:
            raise TimeoutError(f"waited {timeout_seconds:.0f}s for {path} (lock {lock.path})")
        time.sleep(lock.poll_seconds)
    return True


def _holder_text(holder: dict | None) -> str:
    if not holder:
        return "another job"
    where = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    job = holder.get("slurm_job")
    return f"{where} (SLURM job {job})" if job else where
