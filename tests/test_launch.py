"""The real command line: `python launch.py -m ...` in a subprocess, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SMALL = ["replicates=2", "dataset=synthetic", "epochs=2", "dataset.train_size=256", "dataset.test_size=128",
         "model.width=16", "device=cpu"]


def launch(*args, cwd=REPO):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "launch.py", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def run_dirs(root):
    return sorted(p.parent for p in root.rglob("result.json"))


def test_sweep_trains_every_run_and_prints_the_summary(tmp_path):
    out = launch("-m", "source=init,shuffle,bitflip", f"output_root={tmp_path}", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(run_dirs(tmp_path / "default")) == 6
    text = out.stdout
    assert "6 runs trained now, 0 finished earlier" in text
    for source in ("init", "shuffle", "bitflip"):
        assert f"| {source} |" in text
    assert "All 6 runs" in text
    # One progress line per run, the last with the full count, and the report's command.
    assert len(re.findall(r"^\[\d/6\] \w+ r000[01] done .*% \(.* s\) — (ETA \d+ s|done)$", text, re.M)) == 6
    assert re.search(r"^\[6/6\] bitflip r0001 done .* — done$", text, re.M)
    assert f"HTML report: python -m analysis {tmp_path / 'default'} --report" in text

    # Relaunching finds every run finished, says so, and trains nothing.
    again = launch("-m", "source=init,shuffle,bitflip", f"output_root={tmp_path}", *SMALL)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 runs trained now, 6 finished earlier" in again.stdout
    assert again.stderr.count("finished already, skipped") + again.stdout.count(
        "finished already, skipped") == 6

    # Raising `replicates` trains only the new runs.
    more = launch("-m", "source=init", f"output_root={tmp_path}", *SMALL[1:], "replicates=3")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "1 runs trained now" in more.stdout


def test_a_failed_run_is_reported_and_the_sweep_exits_nonzero(tmp_path):
    # npz data with a label range the model cannot handle is a configuration error caught
    # before training; a failure during training needs a run that breaks mid-way: a
    # corrupt checkpoint planted in one run directory.
    first = launch("source=init", "replicate=1", f"output_root={tmp_path}", *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    (directory,) = run_dirs(tmp_path)
    for name in ("result.json", "logits.npy"):
        (directory / name).unlink()
    (directory / "checkpoint.pt").write_bytes(b"garbage")
    out = launch("-m", "source=init", f"output_root={tmp_path}", *SMALL)
    assert out.returncode != 0
    assert (directory / "error.txt").exists()
    assert len(run_dirs(tmp_path)) == 1  # replicate 0 trained; replicate 1 failed
    assert "1 failed" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.widht=3"], "widht"),
        # Hydra refuses it before nondet's checks run; launch.py says it as they would.
        (["epoch=3"], "Error in the configuration: epoch is not a configuration key (a typo? did you mean epochs?)"),
        # The mistake itself, in one line, not an interpolation error from the sweeper.
        (["-m", "pack=0"], "pack=0 is out of range: pack must be auto or an integer >= 1"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, args, message):
    own_dataset = [arg for arg in args if arg.startswith("dataset=")]  # wins over SMALL's (the last)
    out = launch(*args, f"output_root={tmp_path}", *SMALL, *own_dataset)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


def test_inert_sources_are_refused_only_when_nothing_else_varies():
    from types import SimpleNamespace

    from conftest import compose_config
    from nondet.job import check_sources_vary_something, inert_sources

    features, images = SimpleNamespace(is_image=False), SimpleNamespace(is_image=True)
    everything = compose_config(["source=all"])
    assert set(inert_sources(everything, features)) == {"augment", "dropout"}
    check_sources_vary_something(everything, features)  # init, shuffle, ... still vary
    augment = compose_config(["source=augment", "dataset.augment=true"])
    assert inert_sources(augment, features) == {"augment": "the data are not images (crop and flip need images)"}
    assert inert_sources(augment, images) == {}
    assert inert_sources(compose_config(["source=dropout", "model.dropout=0.1"]), features) == {}
    with pytest.raises(ValueError, match="cannot change anything here"):
        check_sources_vary_something(compose_config(["source=dropout"]), features)


def test_the_openmp_wait_policy_changes_no_bit(tmp_path):
    """OMP_WAIT_POLICY=PASSIVE, the advice for machines shared with other CPU-bound work
    (docs/benchmarks.md, "Threads on shared cores"), only changes how idle threads wait: the same
    threads split the same work, so a 2-thread sweep gives the same bits under either policy."""
    logits = {}
    for policy in ("ACTIVE", "PASSIVE"):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        root = tmp_path / policy
        out = subprocess.run([sys.executable, "launch.py", "-m", "source=init", "threads=2", "pack=2",
                              f"output_root={root}", *SMALL], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        logits[policy] = [(d / "logits.npy").read_bytes() for d in run_dirs(root / "default")]
    assert len(logits["PASSIVE"]) == 2 and logits["PASSIVE"] == logits["ACTIVE"]
