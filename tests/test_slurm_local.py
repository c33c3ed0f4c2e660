"""The local single-node SLURM of scripts/slurm_local.sh: jobs run, time limits and the early warning
signal work, a running job can be requeued, and submitit can submit to it and read results and states.

About 100 s in all, most of it the time-limit test: Slurm's smallest limit is one minute and it
checks limits every 30 s, so that job ends 60-90 s after it starts. It is submitted first (module
fixture) and checked last, so the other tests (~20 s) run beside it on the node's second CPU.
Deselect them all with `-m "not slurm"`.
"""

from __future__ import annotations

import operator
import subprocess
import sys
import textwrap
import time

import pytest

# slurm_cluster is a fixture: imported so that pytest finds it in this module.
try:
    from slurm_fixture import job_info, job_state, sbatch, slurm_cluster, slurm_time, wait_job  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.slurm_fixture import job_info, job_state, sbatch, slurm_cluster, slurm_time, wait_job  # noqa: F401

pytestmark = pytest.mark.slurm

USR1_HANDLER = """
import os, signal, sys, time
marker = sys.argv[1]

def on_usr1(signum, frame):
    with open(marker, "w") as f:
        f.write(f"{time.time()} {os.environ.get('SLURM_JOB_ID')}\\n")

signal.signal(signal.SIGUSR1, on_usr1)
open(marker + ".started", "w").write(f"{time.time()}\\n")
while True:  # keep running: Slurm must kill the job at its limit
    time.sleep(1)
"""


@pytest.fixture(scope="module")
def usr1_job(slurm_cluster, tmp_path_factory):
    """A job with a one-minute limit and USR1 asked for 10 s before it, started before the other tests.

    Slurm sends the warning at the first of its 30-second checks that finds at most N + 30 s left.
    With N = 30 and a 60 s limit that can be the very first check, right after the job starts and
    possibly before the handler is installed; N = 10 puts the signal 20-50 s into the job.
    """
    folder = tmp_path_factory.mktemp("usr1")
    (folder / "handler.py").write_text(USR1_HANDLER)
    marker = folder / "usr1"
    # Like submitit: the signal goes to the job steps (srun), not to the batch shell.
    script = f"""#!/bin/bash
#SBATCH --time=1 --signal=USR1@10 --job-name=nondet-usr1 --output={folder}/out.txt
srun {sys.executable} -u {folder / "handler.py"} {marker}
"""
    job_id = sbatch(script)
    yield job_id, marker
    subprocess.run(["scancel", job_id], check=False)


@pytest.fixture(scope="module", autouse=True)
def _submit_usr1_job_first(usr1_job):
    pass


def test_sbatch_job_completes(slurm_cluster, tmp_path):
    out = tmp_path / "out.txt"
    job_id = sbatch(
        '#!/bin/bash\necho "job_id=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION"\nhostname\n',
        f"--output={out}",
        "--time=2",
    )
    assert wait_job(job_id, timeout=120) == "COMPLETED"
    lines = out.read_text().split("\n")
    assert lines[0] == f"job_id={job_id} partition={slurm_cluster.partition}"
    assert job_info(job_id)["ExitCode"] == "0:0"


def test_requeue_running_job(slurm_cluster, tmp_path):
    log = tmp_path / "runs.txt"
    # First run waits to be requeued; the second run (SLURM_RESTART_COUNT=1) finishes at once.
    script = f"""#!/bin/bash
echo "run ${{SLURM_RESTART_COUNT:-0}}" >> {log}
if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 300; fi
"""
    job_id = sbatch(script, "--output=/dev/null", "--time=10")
    wait_job(job_id, timeout=120, states={"RUNNING"})
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    # A requeued job waits AuthInfo=cred_expire (10 s here) before it may start again.
    assert wait_job(job_id, timeout=150) == "COMPLETED"
    assert log.read_text().split("\n")[:2] == ["run 0", "run 1"]
    assert job_info(job_id)["Restarts"] == "1"


def test_submitit_result(slurm_cluster, tmp_path):
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition=slurm_cluster.partition, cpus_per_task=1)
    job = executor.submit(operator.mul, 6, 7)  # a stdlib function: nothing to import in the job
    assert job.result() == 42
    assert job.paths.stdout.exists()
    # submitit polls `sacct -j ID`; without an accounting database slurm_local.sh's wrapper
    # answers from the completion log, so the state is known (UNKNOWN otherwise).
    deadline = time.monotonic() + 30
    while job.watcher.get_state(job.job_id, mode="force") != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(1)
    assert job.state == "COMPLETED"


def test_submitit_array_sees_cancelled_task(slurm_cluster, tmp_path):
    """A job array (what Hydra's submitit launcher submits) with one task killed before it wrote its
    result: submitit must see that task as done, which needs sacct to answer for array tasks."""
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition=slurm_cluster.partition, cpus_per_task=1)
    quick, slow = executor.map_array(time.sleep, [0, 300])
    assert slow.job_id.endswith("_1")
    wait_job(slow.job_id, timeout=120, states={"RUNNING"})
    slow.cancel()
    assert quick.result() is None
    deadline = time.monotonic() + 60
    while not slow.done(force_check=True):
        assert time.monotonic() < deadline, f"submitit still sees {slow.state} (sacct: {_sacct(slow.job_id)})"
        time.sleep(1)
    assert slow.state.startswith("CANCELLED")
    assert quick.watcher.get_state(quick.job_id, mode="force") == "COMPLETED"
    slow._results_timeout_s = 1  # submitit waits 15 s for a late result file before it raises
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="CANCELLED"):
        slow.result()


def _sacct(job_id: str) -> str:
    proc = subprocess.run(["sacct", "-P", "-j", job_id.split("_")[0]], capture_output=True, text=True, check=False)
    return (proc.stdout + proc.stderr).strip()


def test_time_limit_and_usr1_warning(slurm_cluster, usr1_job):
    """--time=1 --signal=USR1@10: USR1 reaches the step before the limit, then Slurm kills the job.

    Slurm checks limits every 30 s, so the signal arrives up to 30 s earlier than asked and the kill
    up to ~30 s after the limit.
    """
    job_id, marker = usr1_job
    assert wait_job(job_id, timeout=180) == "TIMEOUT"
    info = job_info(job_id)
    start, end = slurm_time(info["StartTime"]), slurm_time(info["EndTime"])
    assert marker.exists(), f"USR1 never arrived: {textwrap.shorten(str(info), 400)}"
    usr1_at, usr1_job_id = marker.read_text().split()
    assert usr1_job_id == job_id
    assert start - 1 <= float(usr1_at) <= start + 61, f"USR1 {float(usr1_at) - start:.0f} s after the start"
    assert float(usr1_at) < end
    assert 60 <= end - start <= 120, f"killed {end - start:.0f} s after the start (limit 60 s)"
    assert job_state(job_id) == "TIMEOUT"
