"""Two launches of one sweep at once: a run that another live process is training is left to it
(its run directory is locked while it trains), a lock whose holder died is taken over, and the
end-of-sweep summary counts only what this command trained, after waiting for the rest."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from nondet import callbacks, lock, records
from nondet.callbacks import SummaryCallback
from nondet.job import run_job


def run(config):
    return run_job(OmegaConf.create(config))


def hold(directory, pid, host=None, age=0.0):
    """A run lock as another process would leave it."""
    path = directory / lock.RUN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "slurm_job": None}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_another_live_process_trains_is_left_to_it(make_config):
    config = make_config("source=init", "epochs=1")
    directory = records.run_dir(config)
    hold(directory, os.getppid())  # a live process of this host
    outcome = run(config)
    assert outcome["busy"] == [str(directory)] and not outcome["finished"]
    assert not (directory / records.CONFIG_FILE).exists()  # nothing written into its run
    assert (directory / lock.RUN_LOCK).exists()  # its lock left alone
    hold(directory, 1, host="another-host")  # on another host, refreshed just now
    assert run(config)["busy"] == [str(directory)]


def test_a_dead_holders_lock_is_taken_over_and_released_after_training(make_config):
    config = make_config("source=init", "epochs=1")
    directory = records.run_dir(config)
    hold(directory, dead_pid())  # a process of this host that is gone (killed)
    assert run(config)["finished"] == [str(directory)]
    assert not (directory / lock.RUN_LOCK).exists()
    assert not list(directory.glob(".training.lock*"))

    other = records.run_dir({**config, "replicate": 1})
    hold(other, 1, host="another-host", age=2 * lock.RUN_STALE_SECONDS)  # not refreshed: died
    assert run({**config, "replicate": 1})["finished"] == [str(other)]


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    path = tmp_path / "r0000" / lock.RUN_LOCK
    path.parent.mkdir()
    path.write_text(json.dumps({"host": "node-that-was-preempted", "pid": 77, "slurm_job": "4242"}))
    with lock.run_locks([path.parent]) as busy:
        assert not busy and json.loads(path.read_text())["pid"] == os.getpid()


def test_the_heartbeat_keeps_a_lock_fresh(tmp_path):
    directory = tmp_path / "r0000"
    with lock.run_locks([directory], heartbeat_seconds=0.05) as busy:
        assert not busy
        os.utime(directory / lock.RUN_LOCK, (0, 0))
        time.sleep(0.3)
        assert time.time() - (directory / lock.RUN_LOCK).stat().st_mtime < 5
    assert not (directory / lock.RUN_LOCK).exists()


def other_launch_finishes(make_config, monkeypatch, directory, locks) -> threading.Thread:
    """Launch A, holding ``locks``: once B's summary waits, it moves a finished r0000 (trained
    elsewhere beforehand) into ``directory``, result.json last, and only then releases its
    locks, as a live launch does."""
    waiting = threading.Event()

    def wait_until_free(*args, **kwargs):
        waiting.set()
        return lock.wait_until_free(*args, **{**kwargs, "poll_seconds": 0.05})

    monkeypatch.setattr(callbacks, "wait_until_free", wait_until_free)
    elsewhere = make_config("source=init", "epochs=1", "replicates=2", "replicate=0",
                            f"output_root={directory.parents[3] / 'elsewhere'}")
    run(elsewhere)
    trained = records.run_dir(elsewhere)

    def finish():
        waiting.wait(timeout=30)  # once B waits for it
        names = sorted(p.name for p in trained.iterdir() if p.name != records.RESULT_FILE)
        for name in names + [records.RESULT_FILE]:
            os.replace(trained / name, directory / name)
        for path in locks:
            path.unlink()

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_second_launch_counts_only_its_own_runs_and_waits_for_the_other(make_config, capsys, monkeypatch):
    """Launch B comes while launch A trains r0000: B trains r0001 only, waits for A's r0000, and
    says 1 trained now and 1 trained by the other launch (not 2 trained now)."""
    configs = [make_config("source=init", "epochs=1", "replicates=2", f"replicate={r}") for r in (0, 1)]
    first = records.run_dir(configs[0])
    lock_path = hold(first, os.getpid())  # launch A (alive) trains r0000
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(first.parent.parent)}}})
    summary = SummaryCallback()
    summary.on_multirun_start(sweep)
    for config in configs:
        outcome = run(config)
        summary.on_job_end(sweep, JobReturn(status=JobStatus.COMPLETED, _return_value=outcome))
    assert not (first / records.RESULT_FILE).exists()  # B did not train A's run

    a = other_launch_finishes(make_config, monkeypatch, first, [lock_path])
    summary.on_multirun_end(sweep)  # waits for r0000, then summarises; exits 0
    a.join()
    out = capsys.readouterr().out
    assert "Waiting for 1 runs another launch is training" in out
    assert "1 runs trained now, 0 finished earlier (skipped), 0 failed" in out
    assert "1 trained meanwhile by another launch of this sweep" in out
    assert "All 2 runs found" in out


def test_without_outcomes_the_summary_waits_for_the_runs_another_launch_holds(make_config, capsys, monkeypatch):
    """Under a launcher that reports no outcomes (a plain submitit launcher), launch B's jobs left
    both runs to launch A: B's summary finds them by A's locks, waits for them and counts them as
    trained by A; a run A then leaves unfinished makes B exit 1, not 0 with nothing trained."""
    configs = [make_config("source=init", "epochs=1", "replicates=2", f"replicate={r}") for r in (0, 1)]
    dirs = [records.run_dir(c) for c in configs]
    locks = [hold(d, os.getpid()) for d in dirs]  # launch A (alive) trains both
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(dirs[0].parent.parent)}}})
    summary = SummaryCallback()
    summary.on_multirun_start(sweep)
    assert [run(c)["busy"] for c in configs] == [[str(d)] for d in dirs]  # no outcome reaches B

    a = other_launch_finishes(make_config, monkeypatch, dirs[0], locks)  # r0001: killed before writing
    with pytest.raises(SystemExit) as ended:
        summary.on_multirun_end(sweep)
    a.join()
    out = capsys.readouterr().out
    assert "Waiting for 2 runs another launch is training" in out
    assert "0 runs trained now, 0 finished earlier (skipped), 0 failed; 1 trained meanwhile by another launch" in out
    assert "1 are not being trained by any process" in out and "relaunch the same command" in out
    assert ended.value.code == 1


def test_a_killed_jobs_locks_are_released_and_other_launches_runs_left_alone(tmp_path):
    from submitit.core.utils import UncompletedJobError

    from hydra_plugins.nondet_launcher.launcher import _SweepAware

    own, others, free = (tmp_path / name for name in ("own", "others", "free"))
    for directory, job in ((own, "555"), (others, "777")):
        directory.mkdir()
        (directory / lock.RUN_LOCK).write_text(json.dumps({"host": "node", "pid": 9, "slurm_job": job}))

    class Killed:
        job_id, state = "555", "OUT_OF_MEMORY"

        def results(self):
            raise UncompletedJobError("job 555 has not produced any output (state: OUT_OF_MEMORY)")

    class Launcher(_SweepAware):
        _EXECUTOR = "slurm"

        def _run_dirs(self, overrides):
            return [own, others, free]

    returned = Launcher()._collect(Killed(), ["source=init"])
    assert returned.return_value["failed"] == [str(own), str(free)]
    assert not (own / lock.RUN_LOCK).exists()  # a relaunch need not wait for the dead job
    assert (others / lock.RUN_LOCK).exists() and not (others / records.ERROR_FILE).exists()


def test_the_wait_for_a_hung_launch_is_bounded_and_says_what_to_do(make_config, capsys, monkeypatch):
    """Launch A hangs while training r0000, its lock kept fresh: B's summary says whose lock it
    waits for, prints progress lines, gives up after lock_wait_seconds with the runs and how to
    stop A, and exits 1. The key takes no part in a run's identity."""
    monkeypatch.setattr(callbacks, "wait_until_free", functools.partial(lock.wait_until_free, poll_seconds=0.05))
    monkeypatch.setattr(callbacks, "WAIT_REPORT_SECONDS", 0.3, raising=False)
    config = make_config("source=init", "epochs=1", "replicates=1")
    directory = records.run_dir(config)
    hold(directory, os.getpid(), host=socket.gethostname())  # launch A: alive, never finishes
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(directory.parent.parent)}}, "lock_wait_seconds": 1})
    summary = SummaryCallback()
    summary.on_multirun_start(sweep)
    summary.on_job_end(sweep, JobReturn(status=JobStatus.COMPLETED, _return_value=run(config)))
    ended = {}

    def summarise():
        try:
            summary.on_multirun_end(sweep)
        except SystemExit as e:
            ended["code"] = e.code

    b = threading.Thread(target=summarise, daemon=True)
    b.start()
    b.join(timeout=15)
    (directory / lock.RUN_LOCK).unlink()  # an unbounded wait ends here, after the assertion fails
    assert not b.is_alive(), "the summary still waits for a launch that never finishes"
    out = capsys.readouterr().out
    run_name = f"{directory.parent.name}/{directory.name}"
    assert (f"Waiting for 1 runs another launch is training (pid {os.getpid()} on {socket.gethostname()}): "
            f"{run_name}; for at most 1 s (lock_wait_seconds)") in out
    assert "Still waiting for 1 of 1 runs after" in out
    assert (f"Gave up after 1 s (lock_wait_seconds) waiting for 1 runs another launch is still training"
            in out and f"stop it (kill {os.getpid()} on {socket.gethostname()})" in out)
    assert "1 are still being trained by another launch" in out and ended["code"] == 1
    assert records.run_dir(make_config("source=init", "epochs=1", "replicates=1", "lock_wait_seconds=5")) == directory


def test_a_job_waiting_for_the_shared_prefix_says_whom_it_waits_for(tmp_path, caplog):
    """An onset sweep's jobs wait for the one training the shared prefix: a log line names it."""
    import logging
    import socket

    from nondet import onset

    lock = onset.Lock(tmp_path / "prefix.pt.lock", poll_seconds=0.01)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": "77"}  # alive: not stale
    lock.path.write_text(json.dumps(holder) + "\n")
    with caplog.at_level(logging.INFO, logger="nondet"), pytest.raises(TimeoutError):
        onset.wait_for(tmp_path / "prefix.pt", lock, timeout_seconds=0.05)
    assert f"waiting for the shared prefix prefix.pt, which pid {os.getpid()} on {holder['host']} (SLURM job 77) is training" in caplog.text
