"""Sweeps through hydra-submitit-launcher: the cluster presets, `hydra/launcher=submitit_local`, and
on a real SLURM (scripts/slurm_local.sh, tests/slurm_fixture.py): every job of a sweep runs under
SLURM and records its job id, a relaunch with more replicates submits and trains only the new runs, a
crashing run is reported as failed (error.txt with the job id, non-zero exit), a job killed outside
Python is reported at the end of the sweep and resumed by a relaunch, and a job forced over its time
limit is requeued by submitit and resumes from its checkpoint, bitwise-exact.

About 2 minutes on 2 CPU cores, most of it the time-limit test, whose sweep is started before the
other tests (module fixture) and checked last: Slurm's shortest limit is one minute and it looks at
limits every 30 s, so its warning signal (USR2, `signal_delay_s` before the limit) reaches a job
20-50 s after the job starts (`--signal=USR2@10` arrives with at most 10 + 30 s left), then a requeued
job waits AuthInfo=cred_expire (10 s here) before it starts again.
Deselect the SLURM tests with `-m "not slurm"`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, REPO, compose_config
from nondet import records
from test_resume_kill import assert_same_run

# slurm_cluster is a fixture: imported so that pytest finds it in this module.
try:
    from slurm_fixture import slurm_cluster  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.slurm_fixture import slurm_cluster  # noqa: F401

# A run of a few seconds, most of which is starting Python; one thread, so two jobs share 2 cores.
# pack=1: one replica per job, so that each run is its own SLURM job (pack=auto would fuse them).
TINY = ["dataset=synthetic", "epochs=2", "dataset.train_size=256", "dataset.test_size=128", "model.width=16", "threads=1",
        "pack=1"]

# The time-limit run: the MLP on synthetic data, long enough to be stopped between its first checkpoint
# and its end (~0.3 s an epoch), short enough to finish in the job after the requeue.
LONG_EPOCHS = 12
TIME_LIMIT_RUN = ["dataset=synthetic", "replicates=1", "threads=1", "checkpoint_every=1"]
TIME_LIMIT_LAUNCHER = [
    "hydra.launcher.timeout_min=1",
    "hydra.launcher.signal_delay_s=10",  # USR2 20-50 s into the job: after Python has started
    "hydra.launcher.max_num_timeout=5",
]
TIME_LIMIT_TEST = "test_job_over_its_time_limit_is_requeued_and_resumes_bitwise_exact"


# ------------------------------------------------------------------ helpers


def start(output_root: Path, *args: str) -> subprocess.Popen:
    """`python launch.py ARGS output_root=...` in the background, in its own process group."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "launch.py", *args, f"output_root={output_root}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def wait(proc: subprocess.Popen, output_root: Path, timeout: float) -> str:
    """Its output once it ends; on a timeout, kill it and cancel its SLURM jobs."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc, output_root)
        out, _ = proc.communicate()
        raise AssertionError(f"launch.py still running after {timeout:.0f} s:\n{out[-4000:]}")
    return out


def stop(proc: subprocess.Popen, output_root: Path) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    cancel_jobs(output_root)


def cancel_jobs(output_root: Path) -> None:
    """scancel every job the launcher submitted below output_root (.submitit/<job>[_<task>])."""
    ids = {p.name.split("_")[0] for p in Path(output_root).glob("*/.submitit/*") if p.is_dir()}
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, check=False)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).rglob("result.json"))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def submissions(sweep_dir: Path) -> set[str]:
    """The SLURM jobs (or job arrays) submitted for a sweep: .submitit/<id> and <id>_<task>."""
    return {p.name.split("_")[0] for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()}


def summary_line(out: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith("Sweep ")]
    return line.split(": ", 1)[1]


def hydra_config(overrides, config_dir: Path):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


# ------------------------------------------------------------------ presets (no SLURM needed)


@pytest.fixture
def conf_copy(tmp_path, monkeypatch):
    """conf/ without anyone's personal conf/site/local.yaml, and no NONDET_SLURM_* settings."""
    copy = tmp_path / "conf"
    shutil.copytree(CONF, copy, ignore=shutil.ignore_patterns("local.yaml"))
    for name in ("PARTITION", "ACCOUNT", "QOS"):
        monkeypatch.delenv(f"NONDET_SLURM_{name}", raising=False)
    return copy


def test_gpu_preset_takes_partition_and_account_from_environment_site_file_or_command_line(
    conf_copy, monkeypatch
):
    launcher = hydra_config(["cluster=slurm"], conf_copy).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1
    for key in ("cpus_per_task", "mem_gb", "timeout_min", "array_parallelism", "max_num_timeout",
                "signal_delay_s"):
        assert launcher[key] > 0, key
    assert launcher.signal_delay_s < launcher.timeout_min * 60
    assert len(launcher.setup) >= 1
    assert launcher.partition is None and launcher.account is None and launcher.qos is None
    assert hydra_config(["cluster=slurm"], conf_copy).device == "cuda"

    monkeypatch.setenv("NONDET_SLURM_PARTITION", "gpu-env")
    monkeypatch.setenv("NONDET_SLURM_ACCOUNT", "project-env")
    monkeypatch.setenv("NONDET_SLURM_QOS", "normal")
    launcher = hydra_config(["cluster=slurm"], conf_copy).hydra.launcher
    assert (launcher.partition, launcher.account, launcher.qos) == ("gpu-env", "project-env", "normal")

    # The personal site file overrides the preset; the command line overrides both.
    (conf_copy / "site" / "local.yaml").write_text(
        "# @package _global_\noutput_root: /scratch/nondet\n"
        "hydra:\n  launcher:\n    partition: gpu-site\n    account: project-site\n"
        "    setup: [module load cuda]\n"
    )
    cfg = hydra_config(["cluster=slurm"], conf_copy)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.account, launcher.qos) == ("gpu-site", "project-site", "normal")
    assert list(launcher.setup) == ["module load cuda"]
    assert cfg.output_root == "/scratch/nondet" and cfg.hydra.sweep.dir == "/scratch/nondet/default"
    cfg = hydra_config(
        ["cluster=slurm", "hydra.launcher.partition=gpu-cli", "hydra.launcher.timeout_min=30", "device=cpu"],
        conf_copy,
    )
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu-cli", "project-site", 30)
    assert cfg.device == "cpu"


def test_local_presets_compose(conf_copy):
    local = hydra_config(["cluster=slurm_local"], conf_copy)
    assert local.hydra.launcher._target_.endswith("SlurmLauncher")
    assert local.hydra.launcher.partition == "debug" and local.device == "cpu"
    for launcher, target in (("submitit_local", "LocalLauncher"), ("basic", "BasicLauncher")):
        cfg = hydra_config([f"hydra/launcher={launcher}"], conf_copy)
        assert cfg.hydra.launcher._target_.endswith(target)
    # The sweep directory comes from the sweep name, not the time.
    assert hydra_config(["sweep_name=s1"], conf_copy).hydra.sweep.dir == "outputs/s1"


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    # One replica per job (pack=1), so that finished jobs can be told from unfinished ones.
    proc = start(tmp_path, "-m", "hydra/launcher=submitit_local", "source=init", "replicates=2",
                 "device=cpu", "pack=1", *TINY)
    out = wait(proc, tmp_path, timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert summary_line(out).startswith("2 runs trained now, 0 finished earlier (skipped), 0 failed")
    assert len(run_dirs(tmp_path)) == 2
    assert list((tmp_path / "default" / ".submitit").iterdir())

    # nondet's local launcher (hydra_plugins/nondet_launcher) submits no job whose runs are all finished.
    proc = start(tmp_path, "-m", "hydra/launcher=submitit_local", "source=init", "replicates=3",
                 "device=cpu", "pack=1", "hydra.launcher._target_=hydra_plugins.nondet_launcher.launcher.LocalLauncher", *TINY)
    out = wait(proc, tmp_path, timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert "2 of 3 jobs not submitted: every run of theirs is finished" in out
    assert summary_line(out).startswith("1 runs trained now, 2 finished earlier (skipped), 0 failed")
    # Its polling loop prints the run that ended, counting the two finished earlier.
    assert re.search(r"^\[3/3\] init r0002 done .*% \(.* s\) — 0 running, 0 pending, 0 failed — done$", out, re.M), out


# ------------------------------------------------------------------ on the local SLURM


@dataclass
class TimeLimitSweep:
    root: Path
    reference_root: Path
    sweep: subprocess.Popen
    reference: subprocess.Popen
    run_dir: Path  # the long run's directory
    held: threading.Thread | None = None
    first_job: dict | None = None  # env.json of the long run's first job
    hold_error: str | None = None


def hold_over_time_limit(t: TimeLimitSweep) -> None:
    """Hold the long run's job (SIGSTOP) from its first checkpoint until Slurm's time-limit warning
    comes, so the job is over its limit whatever the machine's speed. Slurm sends USR2 20-50 s
    into the job (at most 10 + 30 s before the limit) with a SIGCONT that lets the job go on, and
    kills it from 60 s on; submitit's USR2 handler requeues it first."""
    try:
        deadline = time.monotonic() + 180
        while not (t.run_dir / "checkpoint.pt").exists():
            if t.sweep.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the long run ended, or wrote no checkpoint in 180 s")
            time.sleep(0.02)
        t.first_job = read_json(t.run_dir / "env.json")
        pid = _training_process(t.root / "default", t.first_job["slurm"]["slurm_array_task_id"])
        os.kill(pid, signal.SIGSTOP)
        try:
            held = time.monotonic()
            while _process_state(pid) not in ("T", "") and time.monotonic() - held < 10:
                time.sleep(0.01)  # the stop takes effect a moment after the signal
            while _process_state(pid) == "T" and not _usr2_pending(pid):
                if time.monotonic() - held > 75:
                    raise RuntimeError("no USR2 from Slurm within 75 s")
                time.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    except Exception as e:  # reported by the test
        t.hold_error = f"{type(e).__name__}: {e}"


@pytest.fixture(scope="module")
def time_limit_sweep(slurm_cluster, tmp_path_factory):
    """Launched before the other tests: a sweep of two runs as one job array under a one-minute
    limit, the long run (LONG_EPOCHS) and a one-epoch run; beside it, the long run uninterrupted."""
    root = tmp_path_factory.mktemp("time_limit")
    reference_root = tmp_path_factory.mktemp("uninterrupted")
    args = [*TIME_LIMIT_RUN, "cluster=slurm_local"]
    long_run = compose_config([*args, f"epochs={LONG_EPOCHS}", f"output_root={root}"], tiny=False)
    run_dir = records.run_dir(long_run)
    sweep = start(root, "-m", *args, f"epochs={LONG_EPOCHS},1", *TIME_LIMIT_LAUNCHER)
    reference = start(reference_root, *TIME_LIMIT_RUN, f"epochs={LONG_EPOCHS}", "device=cpu")
    t = TimeLimitSweep(root, reference_root, sweep, reference, run_dir)
    t.held = threading.Thread(target=hold_over_time_limit, args=(t,), daemon=True)
    t.held.start()
    yield t
    stop(sweep, root)
    if reference.poll() is None:
        os.killpg(reference.pid, signal.SIGKILL)


@pytest.fixture(scope="module", autouse=True)
def _start_time_limit_sweep_first(request):
    # Only when that test is selected; a SLURM that cannot start skips (or, under CI, fails) the
    # SLURM tests themselves, through their own fixtures, never the others of this module.
    if any(item.name == TIME_LIMIT_TEST for item in request.session.items):
        try:
            request.getfixturevalue("time_limit_sweep")
        except (pytest.skip.Exception, pytest.fail.Exception):
            pass


@pytest.mark.slurm
def test_sweep_runs_every_job_under_slurm_and_a_relaunch_trains_only_new_runs(slurm_cluster, tmp_path):
    sweep = tmp_path / "default"
    proc = start(tmp_path, "-m", "cluster=slurm_local", "source=init,shuffle", "replicates=2", *TINY)
    out = wait(proc, tmp_path, timeout=300)
    cancel_jobs(tmp_path)
    assert proc.returncode == 0, out[-4000:]
    assert summary_line(out) == (
        "4 runs trained now, 0 finished earlier (skipped), 0 failed; "
        "of the 4 trained now, 4 from scratch and 0 resumed from a checkpoint."
    )
    dirs = run_dirs(sweep)
    assert len(dirs) == 4
    envs = [read_json(d / "env.json") for d in dirs]
    assert len({env["slurm_job_id"] for env in envs} - {None}) == 4  # one SLURM job per run
    (array_id,) = {env["slurm"]["slurm_array_job_id"] for env in envs}  # ... as one job array
    assert submissions(sweep) == {array_id}
    for env in envs:
        task = f"{array_id}_{env['slurm']['slurm_array_task_id']}"
        log = sweep / ".submitit" / task / f"{task}_0_log.out"
        assert "Job completed successfully" in log.read_text(), log

    # Raise `replicates` from 2 to 3: only the new init run trains; the others stay untouched.
    written = {d: (d / "result.json").stat().st_mtime_ns for d in dirs}
    proc = start(tmp_path, "-m", "cluster=slurm_local", "source=init", "replicates=3", *TINY)
    out = wait(proc, tmp_path, timeout=300)
    cancel_jobs(tmp_path)
    assert proc.returncode == 0, out[-4000:]
    # The counts are this command's runs (init's three), not the shuffle runs beside them.
    assert summary_line(out).startswith("1 runs trained now, 2 finished earlier (skipped), 0 failed")
    assert len(run_dirs(sweep)) == 5
    assert {d: (d / "result.json").stat().st_mtime_ns for d in dirs} == written
    # ... and only its job is submitted (hydra_plugins/nondet_launcher).
    assert "2 of 3 jobs not submitted: every run of theirs is finished" in out
    assert len(submissions(sweep)) == 2 and array_id in submissions(sweep)

    # Relaunched once more with nothing left to train, it submits nothing at all.
    proc = start(tmp_path, "-m", "cluster=slurm_local", "source=init", "replicates=3", *TINY)
    out = wait(proc, tmp_path, timeout=120)
    assert proc.returncode == 0, out[-4000:]
    assert "3 of 3 jobs not submitted" in out
    assert summary_line(out) == "0 runs trained now, 3 finished earlier (skipped), 0 failed."
    assert len(submissions(sweep)) == 2


@pytest.mark.slurm
def test_crashing_job_is_reported_failed_with_its_job_id(slurm_cluster, tmp_path):
    args = ["cluster=slurm_local", "source=init", "replicates=2", *TINY]
    # Replicate 1 raises inside its job: its directory holds a checkpoint that cannot be read.
    crashing = records.run_dir(
        compose_config([*args, "replicate=1", f"output_root={tmp_path}"], tiny=False)
    )
    crashing.mkdir(parents=True)
    (crashing / "checkpoint.pt").write_bytes(b"not a checkpoint")

    proc = start(tmp_path, "-m", *args)
    out = wait(proc, tmp_path, timeout=300)
    cancel_jobs(tmp_path)
    assert proc.returncode == 1, out[-4000:]
    assert summary_line(out).startswith("1 runs trained now, 0 finished earlier (skipped), 1 failed")
    # A corrupt checkpoint is not mended by a relaunch: the advice names the file to delete.
    assert str(crashing) in out and "delete it to restart this run from scratch" in out

    assert not (crashing / "result.json").exists()
    error = (crashing / "error.txt").read_text()
    header = re.fullmatch(r"# host (\S+), SLURM job (\d+) \(array task (\d+)_1\)", error.splitlines()[0])
    assert header, error.splitlines()[0]
    assert "Traceback (most recent call last)" in error and "CorruptRunError" in error
    array_id = header[3]
    assert (tmp_path / "default" / ".submitit" / f"{array_id}_1").is_dir()
    (finished,) = run_dirs(tmp_path)
    assert read_json(finished / "env.json")["slurm"]["slurm_array_job_id"] == array_id

    # Fix the cause and relaunch the same command: only the failed run trains, and succeeds.
    (crashing / "checkpoint.pt").unlink()
    proc = start(tmp_path, "-m", *args)
    out = wait(proc, tmp_path, timeout=300)
    cancel_jobs(tmp_path)
    assert proc.returncode == 0, out[-4000:]
    assert summary_line(out).startswith("1 runs trained now, 1 finished earlier (skipped), 0 failed")
    assert not (crashing / "error.txt").exists()


@pytest.mark.slurm
def test_job_killed_outside_python_is_reported_and_a_relaunch_resumes_it(slurm_cluster, tmp_path):
    """A job whose training process is SIGKILLed (as the kernel's OOM killer does) produces no
    result: the sweep still ends with its summary, the killed run gets error.txt saying what
    happened, the command exits 1, and a relaunch submits only that job, which resumes the run
    from its checkpoint."""
    args = ["cluster=slurm_local", "replicates=1", "threads=1", "checkpoint_every=1"]
    long_run = compose_config([*args, "epochs=40", f"output_root={tmp_path}"], tiny=False)
    run_dir = records.run_dir(long_run)
    proc = start(tmp_path, "-m", *args, "epochs=40,1")
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint in 180 s"
            time.sleep(0.02)
        task = read_json(run_dir / "env.json")["slurm"]["slurm_array_task_id"]
        os.kill(_training_process(tmp_path / "default", task), signal.SIGKILL)
        out = wait(proc, tmp_path, timeout=180)
    finally:
        stop(proc, tmp_path)
    assert proc.returncode == 1, out[-4000:]
    assert summary_line(out).startswith("1 runs trained now, 0 finished earlier (skipped), 1 failed")
    assert f"- failed: {run_dir.parent.name}/{run_dir.name}: The job was killed outside Python" in out
    assert "1 failed: relaunch the same command to retry them" in out
    error = (run_dir / "error.txt").read_text().splitlines()
    assert re.fullmatch(r"# SLURM job \d+_\d+ ended without a result \(state: FAILED\)", error[0]), error[0]
    assert "has not produced any output (state: FAILED)" in error[2]
    assert error[-1].startswith("The job was killed outside Python (state FAILED")
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()

    proc = start(tmp_path, "-m", *args, "epochs=40,1")
    out = wait(proc, tmp_path, timeout=300)
    cancel_jobs(tmp_path)
    assert proc.returncode == 0, out[-4000:]
    assert "1 of 2 jobs not submitted" in out
    assert summary_line(out) == (
        "1 runs trained now, 1 finished earlier (skipped), 0 failed; "
        "of the 1 trained now, 0 from scratch and 1 resumed from a checkpoint."
    )
    assert not (run_dir / "error.txt").exists()
    assert read_json(run_dir / "env.json")["resumed_from_epoch"] >= 1


@pytest.mark.slurm
def test_job_that_raises_a_configuration_error_ends_the_sweep_with_its_message(slurm_cluster, tmp_path):
    """A mistake reported by the job before it trains (here device=cuda on a node without a GPU)
    ends the launching command with the job's message, as under the basic launcher."""
    proc = start(tmp_path, "-m", "cluster=slurm_local", "device=cuda", "replicates=1", *TINY)
    out = wait(proc, tmp_path, timeout=180)
    cancel_jobs(tmp_path)
    assert proc.returncode == 1, out[-4000:]
    assert "device=cuda, but no CUDA GPU is visible to PyTorch" in out
    assert not run_dirs(tmp_path)


def _training_process(sweep_dir: Path, array_task: str) -> int:
    """The pid of the job's Python process (submitit's `_submit`) for one array task."""
    folder = str(sweep_dir / ".submitit")
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"submitit.core._submit" in argv[:4] and any(a.decode().startswith(folder) for a in argv)
                and f"SLURM_ARRAY_TASK_ID={array_task}".encode() in environ):
            return int(proc.name)
    raise AssertionError(f"no process of array task {array_task} below {folder}")


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it ended
        return ""


def _process_state(pid: int) -> str:
    """"T" while it is stopped, "" once it has ended."""
    state = [line.split()[1] for line in _status(pid).splitlines() if line.startswith("State:")]
    return state[0] if state else ""


def _usr2_pending(pid: int) -> bool:
    status = _status(pid)
    pending = [int(line.split()[1], 16) for line in status.splitlines()
               if line.startswith(("SigPnd", "ShdPnd"))]
    return any(mask & (1 << (signal.SIGUSR2 - 1)) for mask in pending)


@pytest.mark.slurm
def test_job_over_its_time_limit_is_requeued_and_resumes_bitwise_exact(time_limit_sweep):
    """The long run's job, held past its time-limit warning (hold_over_time_limit), is requeued by
    submitit's USR2 handler (Hydra's launcher resubmits the same job); started again, the job
    resumes the run from checkpoint.pt, and the run ends bitwise identical to an uninterrupted one."""
    t = time_limit_sweep
    out = wait(t.sweep, t.root, timeout=300)
    t.held.join(timeout=10)
    assert t.hold_error is None, t.hold_error
    reference_out = wait(t.reference, t.reference_root, timeout=120)
    assert t.reference.returncode == 0, reference_out[-4000:]
    assert t.sweep.returncode == 0, out[-4000:]
    assert summary_line(out) == (
        "2 runs trained now, 0 finished earlier (skipped), 0 failed; "
        "of the 2 trained now, 1 from scratch and 1 resumed from a checkpoint."
    )

    env = read_json(t.run_dir / "env.json")
    assert env["slurm_job_id"] == t.first_job["slurm_job_id"]  # the same job, requeued
    restarts = int(t.first_job["slurm"].get("slurm_restart_count", 0))
    assert int(env["slurm"]["slurm_restart_count"]) > restarts
    assert 1 <= env["resumed_from_epoch"] < LONG_EPOCHS
    task = f"{env['slurm']['slurm_array_job_id']}_{env['slurm']['slurm_array_task_id']}"
    log = (t.root / "default" / ".submitit" / task / f"{task}_0_log.out").read_text()
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log
    assert "Requeued job" in log and "Job completed successfully" in log
    assert_same_run(t.run_dir, t.reference_root / t.run_dir.relative_to(t.root))


def test_the_launcher_composes_each_jobs_config_once(monkeypatch, tmp_path):
    """Whether a job is finished, which runs the progress watch reads, and which runs a killed
    job leaves unfinished all come from the job's run directories: composed once per job."""
    from types import SimpleNamespace

    from hydra_plugins.nondet_launcher.launcher import LocalLauncher

    import nondet.job

    composed = []
    launcher = LocalLauncher.__new__(LocalLauncher)
    launcher.config = SimpleNamespace()
    launcher.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(
        load_sweep_config=lambda config, overrides: composed.append(tuple(overrides)) or overrides))
    monkeypatch.setattr(nondet.job, "job_run_dirs", lambda config, device=None: [tmp_path / "-".join(config)])
    for _ in range(3):
        assert launcher._run_dirs(["replicate=0"]) == [tmp_path / "replicate=0"]
        assert launcher._finished(["replicate=16"]) is None  # not finished: no result.json
    assert composed == [("replicate=0",), ("replicate=16",)]
