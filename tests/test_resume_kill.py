"""Bitwise-exact resume after a hard kill: `python launch.py ...` killed with SIGKILL after its first
checkpoint, then the same command again, ends with the same logits and weights, bit for bit, as the
same run never interrupted.

About 20-30 s on 2 CPU cores: the uninterrupted run trains beside the killed-and-relaunched one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow

# The MLP on synthetic data, one thread (bitwise-reproducible, and both runs fit on 2 cores), 20
# epochs: ~0.3 s an epoch, so there is time to kill the run between its first checkpoint and its end.
RUN = ["dataset=synthetic", "replicates=1", "epochs=20", "threads=1", "device=cpu", "checkpoint_every=1"]


def start(output_root: Path) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "launch.py", *RUN, f"output_root={output_root}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: the kill reaches everything it started
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def only_run_dir(output_root: Path) -> Path:
    (directory,) = {p.parent for p in output_root.rglob("config.yaml") if ".hydra" not in p.parts}
    return directory


def assert_same_run(a: Path, b: Path) -> None:
    """Logits, weights, metrics (but the wall-clock seconds) and result identical, bit for bit."""
    logits_a, logits_b = np.load(a / "logits.npy"), np.load(b / "logits.npy")
    assert logits_a.dtype == logits_b.dtype == np.float32
    assert logits_a.tobytes() == logits_b.tobytes(), "logits.npy differ"
    weights_a, weights_b = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert weights_a[name].dtype == weights_b[name].dtype, name
        assert torch.equal(weights_a[name], weights_b[name]), f"weights.pt differ in {name}"

    def without_seconds(directory: Path) -> tuple[list, dict]:
        metrics = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
        for row in metrics:
            row.pop("seconds")
        result = json.loads((directory / "result.json").read_text())
        result.pop("train_seconds")
        return metrics, result

    assert without_seconds(a) == without_seconds(b)


def test_sigkill_after_a_checkpoint_then_relaunch_is_bitwise_exact(tmp_path):
    killed_root, reference_root = tmp_path / "killed", tmp_path / "uninterrupted"
    reference = start(reference_root)
    proc = start(killed_root)
    try:
        deadline = time.monotonic() + 120
        while not list(killed_root.rglob("checkpoint.pt")):
            if proc.poll() is not None:
                out = proc.stdout.read()[-3000:]
                raise AssertionError(f"the run ended before its first checkpoint:\n{out}")
            assert time.monotonic() < deadline, "no checkpoint.pt after 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    directory = only_run_dir(killed_root)
    assert not (directory / "result.json").exists(), "the run finished before the kill: make it longer"
    assert (directory / "checkpoint.pt").exists()

    finish(start(killed_root))  # the same command again
    finish(reference)

    env = json.loads((directory / "env.json").read_text())
    assert 1 <= env["resumed_from_epoch"] < 20
    assert not (directory / "checkpoint.pt").exists()
    reference_dir = only_run_dir(reference_root)
    assert json.loads((reference_dir / "env.json").read_text())["resumed_from_epoch"] is None
    # output_root is not part of a run's identity: the two directories differ only by root.
    assert directory.relative_to(killed_root) == reference_dir.relative_to(reference_root)
    assert_same_run(directory, reference_dir)
