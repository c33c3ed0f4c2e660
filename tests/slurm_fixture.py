"""The local single-node SLURM (scripts/slurm_local.sh) as a pytest fixture, plus small job helpers.

Test modules import what they use (`from slurm_fixture import slurm_cluster, sbatch, wait_job`); the
`slurm_cluster` fixture is session-scoped.

The SLURM tests are opt-in (``slurm_opt_in``): they run only under ``CI=true`` or
``NONDET_TEST_SLURM=1``, because they submit jobs to whatever SLURM answers (on a cluster's login
node, the real cluster) and may install and start one. Opted in, the fixture uses a running
cluster as it is; otherwise it runs `scripts/slurm_local.sh start` (which installs Slurm and munge
with apt-get when missing, so it needs root) and stops the cluster again at the end of the
session. When the cluster cannot be started the test is skipped with the reason, except under
CI=true, where that is a failure: CI must run them.

    NONDET_TEST_SLURM=1 python -m pytest -m slurm
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"

# Job states after which a job will not run again (a requeued job goes back to PENDING).
FINAL_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}


@dataclass(frozen=True)
class SlurmCluster:
    node: str
    partition: str
    started_here: bool


OPT_IN = "NONDET_TEST_SLURM"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}


def _in_ci() -> bool:
    return _truthy(os.environ.get("CI"))


def slurm_opt_in(environ=os.environ) -> str | None:
    """None when the SLURM tests may run here (CI=true or NONDET_TEST_SLURM=1), else why not."""
    if _truthy(environ.get("CI")) or _truthy(environ.get(OPT_IN)):
        return None
    return (f"SLURM tests are opt-in: they submit jobs to the SLURM that answers and may install "
            f"one; run them with {OPT_IN}=1 python -m pytest -m slurm")


def _run_script(command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _start_cluster() -> tuple[bool, str]:
    """(started_here, reason): reason is empty when the cluster is usable."""
    if not sys.platform.startswith("linux"):
        return False, f"the local SLURM needs Linux (this is {sys.platform})"
    if shutil.which("bash") is None or not SCRIPT.exists():
        return False, f"cannot run {SCRIPT}"
    try:
        if _run_script("status", timeout=60).returncode == 0:
            return False, ""
    except subprocess.TimeoutExpired:
        pass
    if os.geteuid() != 0:
        return False, (
            "the local SLURM is not running and starting it needs root "
            f"(run: sudo {SCRIPT.relative_to(REPO)} start)"
        )
    try:
        # Installing the packages on a fresh machine takes seconds; allow for a slow mirror.
        start = _run_script("start", timeout=900)
    except subprocess.TimeoutExpired:
        return False, f"{SCRIPT.name} start did not finish within 900 s"
    if start.returncode != 0:
        return False, f"{SCRIPT.name} start failed (exit {start.returncode}):\n{_tail(start.stdout)}"
    return True, ""


def _default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    for name in out.split():
        if name.endswith("*"):
            return name[:-1]
    return out.split()[0]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A usable single-node SLURM; skips (fails under CI=true) when there is none and none can start."""
    not_asked = slurm_opt_in()
    if not_asked:
        pytest.skip(not_asked)
    started_here, reason = _start_cluster()
    if reason:
        if _in_ci():
            pytest.fail(f"CI=true but the local SLURM is unusable: {reason}", pytrace=False)
        pytest.skip(reason)
    node = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True)
    yield SlurmCluster(node=node.stdout.split()[0], partition=_default_partition(), started_here=started_here)
    if started_here:
        _run_script("stop", timeout=120)


# ------------------------------------------------------------------ job helpers


def sbatch(script: str, *args: str, cwd: Path | None = None) -> str:
    """Submit a batch script (text); return the job id."""
    proc = subprocess.run(
        ["sbatch", "--parsable", *args],
        input=script,
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )
    assert proc.returncode == 0, f"sbatch failed: {proc.stderr.strip()}"
    return proc.stdout.strip().split(";")[0]


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (empty once the job record is purged, MinJobAge after the end)."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))


def job_state(job_id: str) -> str:
    state = job_info(job_id).get("JobState", "")
    if state:
        return state
    # Purged from slurmctld: ask the completion log (sacct, through slurm_local.sh's wrapper).
    proc = subprocess.run(
        ["sacct", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, check=False
    )
    lines = proc.stdout.split()
    return lines[-1].split()[0] if proc.returncode == 0 and lines else "UNKNOWN"


def wait_job(job_id: str, timeout: float, states=FINAL_STATES) -> str:
    """Poll until the job reaches one of `states`; return that state."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {state or 'unknown'} after {timeout:.0f} s:\n{job_info(job_id)}")


def slurm_time(value: str) -> float:
    """A Slurm timestamp (local time, e.g. 2026-01-31T12:00:05) as a POSIX time."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()
