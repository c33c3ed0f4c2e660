"""Lock files that work across processes and hosts sharing a file system.

Two users of them: the shared prefix of an onset sweep (``nondet/onset.py``: one job trains it,
the others wait and fork) and every run directory while a process trains it (``run_locks``:
two launches of the same sweep at once never train the same run twice; the second skips it and
its summary waits for it, at most ``lock_wait_seconds``: ``nondet.callbacks.wait_for_other_launch``).

A lock is a file created with O_EXCL that names its holder (host, pid, SLURM job). It is free
again when its holder releases it, or when it is stale: its holder is a process of this host
that no longer exists, the holder is an earlier incarnation of this SLURM job (requeued after a
preemption or a time limit), or it has not been refreshed for ``stale_seconds`` (its holder, on
another host, died). Holders refresh it: the onset prefix once per epoch, a run lock from a
heartbeat thread.

    python launch.py -m source=init,shuffle &   # two launches of one sweep at once:
    python launch.py -m source=init,shuffle     # each run is trained once, by one of them
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

RUN_LOCK = ".training.lock"
# A run lock is refreshed every HEARTBEAT seconds while its run trains; one that has not been
# refreshed for RUN_STALE seconds (NFS caches attributes for up to a minute) belongs to a dead
# process on another host.
HEARTBEAT_SECONDS = 15.0
RUN_STALE_SECONDS = 180.0


def _me() -> dict:
    env = os.environ
    me = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": env.get("SLURM_JOB_ID")}
    if "SLURM_ARRAY_JOB_ID" in env:  # the id submitit knows the job by
        me["slurm_array_task"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
    return me


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class Lock:
    """A lock file; ``try_acquire`` never blocks."""

    def __init__(self, path: Path, stale_seconds: float = 600.0, poll_seconds: float = 1.0):
        self.path = Path(path)
        self.stale_seconds = stale_seconds
        self.poll_seconds = poll_seconds

    def try_acquire(self) -> bool:
        """True when this process now holds the lock. A stale lock is moved away (False: the
        next try takes it, unless another taker was faster)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over_if_stale()
            return False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(_me()) + "\n")
        except OSError:  # a full disk: leave no empty lock behind to block the next launch
            self.release()
            raise
        return True

    def holder(self) -> dict | None:
        """Who holds it (host, pid, slurm_job), {} when unreadable, None when it is free."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            found = json.loads(text)
        except ValueError:  # the "host pid" line of earlier versions, or half written
            parts = text.split()
            found = {"host": parts[0], "pid": int(parts[1])} if len(parts) == 2 and parts[1].isdigit() else {}
        return found if isinstance(found, dict) else {}

    def is_held(self) -> bool:
        """Held by a live process (this one included)."""
        return self.path.exists() and not self.is_stale()

    def is_stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if age > self.stale_seconds:
            return True
        holder, me = self.holder() or {}, _me()
        if holder.get("slurm_job") and holder.get("slurm_job") == me["slurm_job"] and holder.get("pid") != me["pid"]:
            return True  # this SLURM job's earlier incarnation: requeued, so it is gone
        if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int):
            return not _alive(holder["pid"])
        return False

    def _take_over_if_stale(self) -> None:
        try:
            before = self.path.stat()
        except FileNotFoundError:
            return
        if not self.is_stale():
            return
        # One taker wins the rename; a loser that renamed a lock taken meanwhile puts it back.
        aside = self.path.with_name(f"{self.path.name}.stale-{socket.gethostname()}-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if os.stat(aside).st_ino != before.st_ino:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()

    def refresh(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def held_by_job(self, job_id: str, local: bool = False) -> bool:
        """Whether the holder is the SLURM job (or array task) ``job_id``; with ``local``, the
        process ``job_id`` of this host (submitit's local jobs)."""
        holder = self.holder() or {}
        if local:
            return holder.get("host") == socket.gethostname() and str(holder.get("pid")) == str(job_id)
        return str(job_id) in {str(holder.get(k)) for k in ("slurm_job", "slurm_array_task") if holder.get(k)}

    def describe(self) -> str:
        holder = self.holder() or {}
        where = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        return where + (f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else "")


@contextlib.contextmanager
def held(lock: Lock) -> Iterator[Lock]:
    try:
        yield lock
    finally:
        lock.release()


def run_lock(directory: Path) -> Lock:
    """The lock a process holds on a run directory while it trains that run."""
    return Lock(Path(directory) / RUN_LOCK, stale_seconds=RUN_STALE_SECONDS, poll_seconds=2.0)


class _Heartbeat(threading.Thread):
    def __init__(self, locks: list[Lock], seconds: float):
        super().__init__(name="nondet-lock-heartbeat", daemon=True)
        self.locks, self.seconds, self.stop = locks, seconds, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.seconds):
            for lock in self.locks:
                lock.refresh()


@contextlib.contextmanager
def run_locks(directories: Sequence[Path], heartbeat_seconds: float = HEARTBEAT_SECONDS
              ) -> Iterator[dict[Path, str]]:
    """Lock the run directories a job is about to train; yields ``{directory: holder}`` for those
    another live process holds (skip them). The rest stay locked, refreshed by a heartbeat,
    until the block ends."""
    mine, busy = [], {}
    try:
        for directory in directories:
            lock = run_lock(directory)
            try:
                if lock.try_acquire() or lock.try_acquire():  # the second after a stale takeover
                    mine.append(lock)
                else:
                    busy[Path(directory)] = lock.describe()
            except OSError:
                pass  # an unwritable run directory: training it fails and says so, in one line
        beat = _Heartbeat(mine, heartbeat_seconds)
        beat.start()
        try:
            yield busy
        finally:
            beat.stop.set()
    finally:
        for lock in mine:
            lock.release()


def wait_until_free(directories: Sequence[Path], done, poll_seconds: float = 2.0,
                    limit_seconds: float | None = None, report=None, report_seconds: float = 60.0
                    ) -> list[Path]:
    """Wait until each directory is ``done(directory)`` or no live process holds its lock, for at
    most ``limit_seconds`` (None: no limit). Every ``report_seconds`` while it waits,
    ``report(waiting, waited_seconds)``. Returns the directories still held when it gave up
    (empty when it waited for all)."""
    waiting, start = list(directories), time.monotonic()
    reported = start
    while True:
        waiting = [d for d in waiting if not done(d) and run_lock(d).is_held()]
        now = time.monotonic()
        if not waiting or (limit_seconds is not None and now - start >= limit_seconds):
            return waiting
        if report is not None and now - reported >= report_seconds:
            report(waiting, now - start)
            reported = now
        pause = poll_seconds if limit_seconds is None else min(poll_seconds, start + limit_seconds - now)
        time.sleep(max(pause, 0.0))
