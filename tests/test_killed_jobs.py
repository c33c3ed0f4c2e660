"""A job killed outside Python: its runs' error.txt says what to do, and a run killed again for
memory is told to get more memory or need less, not to relaunch into the same kill."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
from submitit.core.utils import UncompletedJobError

from hydra_plugins.nondet_launcher.launcher import _SweepAware
from nondet import records
from nondet.callbacks import Launched, own_advice


def launcher(executor, directories):
    class Launcher(_SweepAware):
        _EXECUTOR = executor
        params = {"mem_gb": 32}

        def _run_dirs(self, overrides):
            return directories

    return Launcher()


def killed(job_id, state, returncode=None):
    class Job:
        def results(self):
            raise UncompletedJobError(f"job {job_id} has not produced any output (state: {state})")

    job = Job()
    job.job_id, job.state = job_id, state
    if returncode is not None:  # a submitit LocalJob's process
        job._process = SimpleNamespace(returncode=returncode)
    return job


def kill(launcher_, job):
    outcome = launcher_._collect(job, ["source=init"]).return_value
    return outcome, launcher_._run_dirs(None)[0].joinpath(records.ERROR_FILE).read_text().splitlines()


def test_a_run_killed_twice_for_memory_is_told_to_get_more_memory_not_to_relaunch(tmp_path):
    run = tmp_path / "r0000"
    run.mkdir()
    (run / records.CHECKPOINT_FILE).write_bytes(b"epoch 3")
    slurm = launcher("slurm", [run, tmp_path / "r0001"])  # a pack of two runs

    outcome, error = kill(slurm, killed("555", "OUT_OF_MEMORY"))
    assert outcome["failed"] == [str(run), str(tmp_path / "r0001")] and not outcome["fixes"]
    assert error[0] == "# SLURM job 555 ended without a result (state: OUT_OF_MEMORY)"
    assert error[-1].startswith("The job ran out of memory (state OUT_OF_MEMORY); relaunch the same command")

    outcome, error = kill(slurm, killed("556", "OUT_OF_MEMORY"))  # the relaunch, killed the same way
    fix = error[-1]
    assert fix.startswith("Killed for running out of memory 2 times (state OUT_OF_MEMORY): a relaunch as it "
                          "is meets the same kill; give the job more memory (hydra.launcher.mem_gb, now 32)")
    assert "pack, now 2 runs in this job" in fix and "a smaller batch_size" in fix
    assert [line.split(":")[0] for line in error if line.startswith("# kill")] == [
        "# kill 1 of this run", "# kill 2 of this run"]
    assert outcome["fixes"] == {str(run): fix, str(tmp_path / "r0001"): fix}
    advice = own_advice(Launched.of([outcome]), [])
    assert "2 failed in a way a relaunch alone cannot mend" in advice and f"- {run.resolve()}: {fix}" in advice
    assert "relaunch the same command to retry" not in advice


@pytest.mark.parametrize("kills, advice", [
    # a local job's process SIGKILLed twice: the OOM killer, most likely
    ([("local", "INTERRUPTED", -signal.SIGKILL, False)] * 2,
     "Killed 2 times by SIGKILL (state INTERRUPTED), before its next checkpoint each time: most likely out of "
     "memory"),
    # a state that does not say why, twice at the same checkpoint: memory, most likely, or not
    ([("slurm", "FAILED", None, False)] * 2,
     "Killed 2 times (state FAILED), before its next checkpoint each time: most likely out of memory"),
    # the same, but the relaunch got further: relaunching mends it
    ([("slurm", "FAILED", None, False), ("slurm", "FAILED", None, True)],
     "The job was killed outside Python (state FAILED"),
    # scancel twice: not memory
    ([("slurm", "CANCELLED by 1000", None, False)] * 2,
     "The job was killed outside Python (state CANCELLED by 1000: cancelled: scancel, by you or an administrator); "
     "relaunch"),
    # twice for memory, then by its time limit: this kill is no memory kill
    ([("slurm", "OUT_OF_MEMORY", None, False)] * 2 + [("slurm", "TIMEOUT", None, True)],
     "The job was killed outside Python (state TIMEOUT: its time limit, with no requeue left); relaunch"),
])
def test_a_repeated_kill_that_may_be_memory_gives_both_fixes(tmp_path, kills, advice):
    run = tmp_path / "r0000"
    run.mkdir()
    (run / records.CHECKPOINT_FILE).write_bytes(b"epoch 3")
    for number, (executor, state, returncode, progressed) in enumerate(kills):
        if progressed:  # a newer checkpoint than at the last kill
            os.utime(run / records.CHECKPOINT_FILE, ns=(1, (run / records.CHECKPOINT_FILE).stat().st_mtime_ns + 10**9))
        outcome, error = kill(launcher(executor, [run]), killed(str(700 + number), state, returncode))
    assert error[-1].startswith(advice), error[-1]
    assert bool(outcome["fixes"]) == ("most likely out of memory" in advice)
    if outcome["fixes"]:
        assert "If not: relaunch the same command." in error[-1] and "a smaller batch_size" in error[-1]


def auto_device_launcher(cls, tmp_path):
    """A launcher of class ``cls`` whose every job composes to one device=auto run (the real
    config) below ``tmp_path``, as ``launch.py -m hydra/launcher=...`` would compose it."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF, TINY

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "device=auto", "replicates=1", f"hydra.sweep.dir={tmp_path}"],
                      return_hydra_config=True)
    launcher_ = cls.__new__(cls)
    launcher_.config, launcher_.params = SimpleNamespace(), {"mem_gb": None}
    launcher_.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(load_sweep_config=lambda c, o: cfg))
    return launcher_, cfg


def test_a_local_job_with_device_auto_killed_outside_python_leaves_error_txt(tmp_path, monkeypatch):
    from hydra_plugins.nondet_launcher.launcher import LocalLauncher

    from nondet.job import job_run_dirs

    local, cfg = auto_device_launcher(LocalLauncher, tmp_path)
    (run,) = job_run_dirs(cfg, device="cpu")  # submitit's local jobs see no GPU unless given one
    outcome = local._collect(killed("4242", "INTERRUPTED", -signal.SIGKILL), ["source=init"]).return_value
    assert outcome["failed"] == [str(run)] and not outcome["lost"]
    assert "relaunch the same command to resume from the last checkpoint" in (run / records.ERROR_FILE).read_text()

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert local._node_device() == "cpu"
    local.params["gpus_per_node"] = 1
    assert local._node_device() == "cuda"


def test_a_slurm_job_with_device_auto_killed_outside_python_is_reported_in_one_line(tmp_path):
    import json

    from hydra_plugins.nondet_launcher.launcher import SlurmLauncher

    from nondet import lock
    from nondet.job import job_run_dirs

    slurm, cfg = auto_device_launcher(SlurmLauncher, tmp_path)
    assert slurm._run_dirs(["source=init"]) is None  # the node's device is unknown here
    # The job locked its run on a CPU node, then was killed: its runs are those it still locks.
    (run,) = job_run_dirs(cfg, device="cpu")
    run.mkdir(parents=True)
    (run / lock.RUN_LOCK).write_text(json.dumps({"host": "node7", "pid": 1, "slurm_job": "777"}))
    outcome = slurm._collect(killed("777", "OUT_OF_MEMORY"), ["source=init"]).return_value
    assert outcome["failed"] == [str(run)] and not outcome["lost"]
    assert (run / records.ERROR_FILE).read_text().splitlines()[-1].startswith("The job ran out of memory")
    assert not (run / lock.RUN_LOCK).exists()  # released: the relaunch resumes it

    # Killed before it locked anything: no directory to write to; the summary names the job.
    outcome = slurm._collect(killed("778", "CANCELLED by 1000"), ["source=init"]).return_value
    assert outcome["failed"] == [] and outcome["lost"] == ["slurm job 778 (source=init), state CANCELLED by 1000"]
    advice = own_advice(Launched.of([outcome]), []).splitlines()
    assert "those of 1 job killed outside Python before locking any" in advice[0]
    assert "relaunch the same command" in advice[0] and advice[1:] == [f"- killed: {outcome['lost'][0]}"]
