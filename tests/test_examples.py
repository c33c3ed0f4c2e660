"""The examples of examples/ run at toy size: a custom CNN through model=custom on an npz of
images, a plain-PyTorch script through nondet.api, a config directory of your own through
hydra.searchpath. Each sweep goes through the analysis: `source=none` rows have disagreement 0
and identical logits, `init` and `shuffle` rows differ. Resume after a kill (a KeyboardInterrupt
in the middle of an epoch, in-process) is bitwise exact for the first two."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, REPO
from nondet import api, pack, records
from nondet.config import ConfigError
from nondet.job import run_job

sys.path.insert(0, str(REPO))  # examples/ is a package of the repository
from examples.custom_cnn.data import toy_images  # noqa: E402

TOY = ["replicates=2", "dataset=synthetic", "epochs=2", "threads=1", "device=cpu", "dataset.train_size=128",
       "dataset.test_size=64"]
CNN = ["model=custom", "model._target_=examples.custom_cnn.nets.SmallCNN", "+model.channels=4"]


def write_npz(path: Path) -> Path:
    x_train, y_train, x_test, y_test = toy_images(n_train=128, n_test=64)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def launch(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    out = subprocess.run([sys.executable, script, "-m", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout


def check_sweep(root: Path, sources=("none", "init", "shuffle")) -> None:
    """Through the analysis: none rows disagree nowhere, with identical logits; the others' differ."""
    from analysis.load import load_sweep
    from analysis.tables import summary_frame

    sweep = load_sweep(root)
    frame = summary_frame(sweep, n_boot=10).set_index("source.name")
    assert sorted(frame.index) == sorted(sources)
    assert frame.loc["none", "disagreement"] == 0 and frame.loc["none", "accuracy_sd"] == 0
    for group in sweep.groups:  # the varied sources: logits differ (how much is the model's affair)
        same = np.array_equal(group.logits[0].view(np.uint32), group.logits[1].view(np.uint32))
        assert same == (group.params["source.name"] == "none"), group.params["source.name"]


@pytest.mark.slow
def test_example_custom_cnn_on_an_npz(tmp_path):
    data = write_npz(tmp_path / "toy.npz")
    launch("launch.py", "source=none,init,shuffle", *TOY, *CNN, "dataset=npz", f"dataset.path={data}",
           f"output_root={tmp_path}")
    check_sweep(tmp_path / "default")


@pytest.mark.slow
def test_example_own_training_script(tmp_path):
    launch("examples/own_loop/train.py", "source=none,init,shuffle", *TOY, f"output_root={tmp_path}")
    check_sweep(tmp_path / "default")


@pytest.mark.slow
def test_example_config_directory_of_your_own(tmp_path):
    launch("launch.py", "source=none,init,shuffle", *TOY, "hydra.searchpath=[file://examples/user_conf]",
           "model=small_cnn", "dataset=toy_images", "model.channels=4", f"output_root={tmp_path}")
    check_sweep(tmp_path / "default")


def _killed_then_resumed(monkeypatch, owner, name, train, whole_root, broken_root):
    """Train once whole; once killed in the middle (the second call of ``owner.name`` raises
    KeyboardInterrupt, as a kill would leave it: the checkpoint of epoch 1, no error.txt) and
    relaunched. Returns the two run directories."""
    whole = train(whole_root)
    real, calls = getattr(owner, name), {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, dies)
    with pytest.raises(KeyboardInterrupt):
        train(broken_root)
    monkeypatch.setattr(owner, name, real)
    broken = train(broken_root)
    assert whole != broken
    return whole, broken


def assert_same_run(a: Path, b: Path) -> None:
    assert np.load(a / "logits.npy").tobytes() == np.load(b / "logits.npy").tobytes()
    wa, wb = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(records.read_metrics(a / "metrics.jsonl")) == strip(records.read_metrics(b / "metrics.jsonl"))
    assert '"resumed_from_epoch": 1' in (b / "env.json").read_text()


def test_example_custom_cnn_resumes_bitwise(tmp_path, monkeypatch, make_config):
    data = write_npz(tmp_path / "toy.npz")

    def train(root):
        config = make_config(*CNN, "source=all", "source.lowlevel_required=false", "replicate=1",
                             "epochs=3", "dataset=npz", f"dataset.path={data}", f"output_root={root}")
        run_job(OmegaConf.create(config))
        return records.run_dir(config)

    assert_same_run(*_killed_then_resumed(monkeypatch, pack, "train_pack_epoch", train,
                                          tmp_path / "whole", tmp_path / "broken"))


def test_example_own_training_script_resumes_bitwise(tmp_path, monkeypatch):
    from examples.own_loop import train as script

    def train(root):
        with initialize_config_dir(config_dir=str(REPO / "examples/own_loop/conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"hydra.searchpath=[file://{CONF}]", "dataset=synthetic", "source=all",
                                              "source.lowlevel_required=false", "replicate=1", "epochs=3", "checkpoint_every=1",
                                              "device=cpu", "dataset.train_size=128", f"output_root={root}"])
        outcome = script.train(cfg)
        (directory,) = outcome["finished"]
        return Path(directory)

    # killed in its second epoch, after the checkpoint of the first
    assert_same_run(*_killed_then_resumed(monkeypatch, api.Run, "record", train,
                                          tmp_path / "whole", tmp_path / "broken"))


def _linear_run(tmp_path: Path, first_epoch) -> api.Run:
    """The example's config, a linear model tracked by ``api.Run``, ``first_epoch()`` called in its
    first epoch (it raises, or leaves the block); returns the run, out of its block."""
    with initialize_config_dir(config_dir=str(REPO / "examples/own_loop/conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{CONF}]", "dataset=synthetic", "device=cpu",
                                          "dataset.train_size=64", f"output_root={tmp_path}"])
    with api.Run(cfg) as run:
        model = run.build(torch.nn.Linear, 32, 10)
        run.track(model, torch.optim.SGD(model.parameters(), lr=0.1))
        for _ in run.epochs():
            if first_epoch():
                break
    return run


def test_a_script_that_stops_early_fails_its_run_in_error_txt(tmp_path):
    """Leaving the block before the last epoch is the run's failure (error.txt), not a result."""
    run = _linear_run(tmp_path, lambda: True)
    (directory,) = run.outcome["failed"]
    assert "without run.record" in (Path(directory) / "error.txt").read_text()
    assert not (Path(directory) / "result.json").exists()


def test_a_script_that_raises_names_its_slurm_array_task_in_error_txt(tmp_path, monkeypatch):
    """An exception in your loop leaves the error.txt of a launcher's run: where it failed (host,
    SLURM job, array task) over the traceback, and the sweep goes on."""
    monkeypatch.setenv("SLURM_JOB_ID", "4321")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4320")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")

    def boom():
        raise RuntimeError("boom in your loop")

    run = _linear_run(tmp_path, boom)
    (directory,) = run.outcome["failed"]
    error = (Path(directory) / "error.txt").read_text().splitlines()
    assert re.fullmatch(r"# host \S+, SLURM job 4321 \(array task 4320_1\)", error[0]), error[0]
    assert "Traceback (most recent call last)" in error[1] and error[-1] == "RuntimeError: boom in your loop"
    assert not (Path(directory) / "result.json").exists()


def _recorded_run(config: dict) -> api.Run:
    """A run of a script of yours that trains nothing: a linear model's logits, every epoch."""
    with api.Run(OmegaConf.create(config)) as run:
        model = run.build(torch.nn.Linear, 32, 10)
        run.track(model, torch.optim.SGD(model.parameters(), lr=0.1))
        for _ in run.epochs():
            with torch.no_grad():
                run.record(model(run.data.x_test))
    return run


def test_a_script_never_shares_runs_with_launch_py_or_another_script(make_config, tmp_path):
    """Runs of nondet.api are not launch.py's (skipped as finished, pooled in its row), nor another
    script's; a relaunch of the same script skips its own."""
    from analysis.load import load_sweep

    config = make_config("source=init", "replicates=1", "epochs=1")
    (launched,) = run_job(OmegaConf.create(config))["finished"]
    mine = _recorded_run(config)
    (directory,) = mine.outcome["finished"]
    assert Path(directory) != Path(launched)
    assert OmegaConf.load(Path(directory) / "config.yaml").script == str(Path(__file__).resolve())
    assert _recorded_run(config).outcome["skipped"] == [directory]
    (other,) = _recorded_run({**config, "script": "other/train.py"}).outcome["finished"]
    assert other not in (directory, launched)
    sweep = load_sweep(tmp_path / "outputs" / "default")
    assert sorted(str(g.params.get("script")) for g in sweep.groups) == sorted(
        ["None", str(Path(__file__).resolve()), "other/train.py"])
    assert [len(g.runs) for g in sweep.groups] == [1, 1, 1]
    with pytest.raises(ConfigError, match="script=other/train.py names a training script"):
        run_job(OmegaConf.create({**config, "script": "other/train.py"}))


def test_a_script_names_itself_on_its_command_line():
    argv = api.script_arguments(["train.py", "-m", "source=init"], Path("/my project/a,b/train.py"))
    assert argv[:3] == ["train.py", "-m", "source=init"]
    assert "pack=1" in argv and "script='/my project/a,b/train.py'" in argv
    assert api.script_arguments(["train.py", "script=mine"], Path("/x.py")).count("script=mine") == 1


def test_a_run_made_outside_a_script_file_must_be_named(make_config):
    """A Run made in a notebook cell or ``python -c`` has no file to name its training code, and a
    cell's name changes every session: it asks for script=NAME rather than never finding its runs."""
    config = make_config("source=init", "replicates=1", "epochs=1")
    made = {}
    exec(compile("made['run'] = api.Run(OmegaConf.create(config))", "<string>", "exec"),
         {"api": api, "OmegaConf": OmegaConf, "config": config, "made": made})
    with pytest.raises(ConfigError, match="set script=NAME"):
        made["run"].__enter__()
    named = {**config, "script": "my-notebook"}
    (directory,) = _recorded_run(named).outcome["finished"]
    assert OmegaConf.load(Path(directory) / "config.yaml").script == "my-notebook"
