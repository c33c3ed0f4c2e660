"""Configurations that would give a silently wrong or lost result are refused, named or placed
where the user asked: data changed under a sweep, unknown keys, values out of range, sources the
onset makes inert, Hydra's output options, channel-last images, run identity across versions.

    python -m pytest tests/test_trust_config.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import CONF, REPO, compose_config
from nondet import config as schema
from nondet import records
from nondet.callbacks import check_or_exit
from nondet.config import ConfigError, DatasetConfig, check_config
from nondet.data import load_dataset
from nondet.job import check_sources_vary_something, job_run_dirs, run_job

SMALL = ["dataset=synthetic", "epochs=1", "model.width=8", "device=cpu", "pack=1", "dataset.train_size=128", "dataset.test_size=64"]


def npz_file(path: Path, seed: int, x=None, y_train=None) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 48) if y_train is None else y_train
    x = rng.normal(size=(48, 6)) if x is None else x
    np.savez(path, x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    return path


def train(config: dict) -> dict:
    outcome = {"finished": [], "skipped": []}
    for replicate in range(config["replicates"]):
        done = run_job(OmegaConf.create({**config, "replicate": replicate}))
        for k in outcome:
            outcome[k] += done[k]
    return outcome


# --- the data's content is part of a run's identity -------------------------------------------


def test_an_npz_file_rewritten_in_place_starts_a_new_group(make_config, tmp_path):
    from analysis.load import load_sweep

    data = npz_file(tmp_path / "d.npz", seed=0)
    overrides = [*SMALL[:-2], "dataset=npz", f"dataset.path={data}"]  # the file's own sizes
    first = train(make_config(*overrides, "replicates=2"))
    assert len(first["finished"]) == 2
    env = json.loads((Path(first["finished"][0]) / "env.json").read_text())
    assert env["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()

    # Same keys, shapes and labels, different x; more replicates: nothing is pooled or skipped.
    labels = np.load(data)["y_train"]
    npz_file(data, seed=1, y_train=labels)
    second = train(make_config(*overrides, "replicates=3"))
    assert second["skipped"] == [] and len(second["finished"]) == 3
    assert {Path(d).parent for d in first["finished"]}.isdisjoint(
        {Path(d).parent for d in second["finished"]})

    sweep = load_sweep(tmp_path / "outputs")
    assert sorted(len(g.runs) for g in sweep.groups) == [2, 3]
    assert any("had different contents" in note for note in sweep.notes), sweep.notes


# --- unknown keys and ranges: one line, before anything trains ---------------------------------


def test_a_key_the_schema_does_not_know_is_refused_with_the_valid_keys(make_config, tmp_path):
    config = make_config("+model.widht=3")
    with pytest.raises(ConfigError, match=r"model\.widht is not a configuration key.*width"):
        check_config(config)
    with pytest.raises(ConfigError, match="widht"):
        run_job(OmegaConf.create(config))
    assert not (tmp_path / "outputs").exists()  # nothing trained


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochs=-1", "epochs=-1 is out of range: epochs must be an integer >= 1"),
        ("replicates=0", "replicates must be an integer >= 1"),
        ("replicates=-1", "replicates must be an integer >= 1"),
        ("eval_every=0", "eval_every must be an integer >= 1"),
        ("checkpoint_every=0", "checkpoint_every must be auto or an integer >= 1"),
        ("pack=0", "pack must be auto or an integer >= 1"),
        ("scale=tiny", "scale must be one of paper, smoke"),
        ("threads=0", "threads must be null or an integer >= 1"),
        ("lock_wait_seconds=-1", "lock_wait_seconds must be an integer >= 0"),
        ("batch_size=0", "batch_size must be an integer >= 1"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\)"),
        ("onset_epoch=5", "onset_epoch must be in 0 .. epochs=2"),
    ],
)
def test_values_out_of_range_are_refused_when_composed(override, message):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["epochs=2", override], return_hydra_config=True)
    with pytest.raises(SystemExit) as exit_:  # what the check callback does for the command
        check_or_exit(cfg)
    text = str(exit_.value.code)
    assert "\n" not in text and text.startswith("Error in the configuration: ")
    assert pytest.importorskip("re").search(message, text), text


@pytest.mark.parametrize("sweep", ["replicates=4,0", "epochs=2,-1", "eval_every=range(0,2)"])
def test_a_value_out_of_range_in_a_sweep_is_refused_before_the_sweep_starts(sweep):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    cfg.hydra.overrides.task = [sweep]  # as `python launch.py -m SWEEP` records it
    with pytest.raises(SystemExit, match="out of range"):
        check_or_exit(cfg)


def test_every_preset_passes_the_checks():
    for preset in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        check_config(compose_config([f"+experiment={preset}", "scale=smoke"], tiny=False))


# --- sources that the onset makes inert ------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, why",
    [
        (["source=init", "onset_epoch=1"], "initialised before onset_epoch=1"),
        (["source=shuffle", "onset_epoch=2"], "onset_epoch=2 >= epochs=2"),
        (["source=bitflip", "onset_epoch=2"], "onset_epoch=2 >= epochs=2"),
    ],
)
def test_a_source_that_starts_after_it_could_act_is_refused(overrides, why):
    config = compose_config(overrides)  # epochs=2
    with pytest.raises(ValueError, match=why):
        check_sources_vary_something(config, SimpleNamespace(is_image=False))


def test_the_onset_leaves_other_sources_of_a_combination_varying():
    features = SimpleNamespace(is_image=False)
    check_sources_vary_something(compose_config(["source=all", "onset_epoch=1"]), features)
    check_sources_vary_something(compose_config(["source=shuffle", "onset_epoch=1"]), features)
    check_sources_vary_something(compose_config(["source=none", "onset_epoch=2"]), features)


# --- settings that turn the varied source off --------------------------------------------------


def launch_check(fixed, task):
    """check_or_exit as the command runs it: ``fixed`` composed, ``task`` as `-m` records it
    (sweeps included); inside Hydra's context, where the check composes swept sources."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["epochs=2", *fixed], return_hydra_config=True)
        cfg.hydra.overrides.task = list(task)
        check_or_exit(cfg)


@pytest.mark.parametrize("fixed, task, why", [
    (["source=shuffle", "shuffle_window=1"], [], "shuffle: shuffle_window=1 keeps the stored order (set shuffle_window=null"),
    (["source=reduction", "batch_size=1"], [], "reduction: batch_size=1 leaves no order inside a batch"),
    (["shuffle_window=1"], ["source=init,shuffle", "shuffle_window=1"], "source=shuffle varies ['shuffle']"),
    (["source=shuffle_reduction", "shuffle_window=1", "batch_size=1"], [], "source=shuffle_reduction varies"),
])
def test_a_fixed_setting_that_turns_the_varied_source_off_is_refused_at_launch(fixed, task, why):
    with pytest.raises(SystemExit) as exit_:
        launch_check(fixed, task or fixed)
    text = str(exit_.value.code)
    assert "\n" not in text and text.startswith("Error in the configuration: ") and why in text, text
    # A job outside a sweep refuses it too; a job of a sweep leaves it to the launch.
    if not task:
        config = compose_config(fixed)
        with pytest.raises(ValueError, match="cannot change anything here"):
            check_sources_vary_something(config, SimpleNamespace(is_image=False))
        check_sources_vary_something(config, SimpleNamespace(is_image=False), ("shuffle_window", "batch_size"))


@pytest.mark.parametrize("fixed, task", [
    (["source=shuffle"], ["source=shuffle", "shuffle_window=1,16"]),  # a sweep over the window: a curve
    (["source=all", "shuffle_window=1", "batch_size=1"], []),  # init, dropout, bitflip still vary
    (["source=shuffle_reduction", "shuffle_window=1"], []),  # reduction still varies
    (["source=init", "batch_size=1", "shuffle_window=1"], []),
    (["+experiment=shamir"], ["+experiment=shamir"]),  # sweeps source=shuffle x shuffle_window=1,...
])
def test_the_launch_check_leaves_sources_that_vary_alone(fixed, task):
    launch_check(fixed, task or fixed)


# --- Hydra's output options decide where runs go ---------------------------------------------


@pytest.fixture
def hydra_job(tmp_path):
    """A job's task config and Hydra state, as Hydra sets them up for ``run_job``."""
    def make(mode: RunMode, *overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*SMALL, "source=init",
                                               f"output_root={tmp_path / 'default'}", *overrides],
                          return_hydra_config=True)
        cfg.hydra.mode = mode
        HydraConfig.instance().set_config(cfg)
        task = OmegaConf.create(OmegaConf.to_container(cfg))
        del task["hydra"]
        return cfg, task

    yield make
    HydraConfig.instance().cfg = None


def test_runs_go_below_hydra_sweep_dir_and_run_dir(hydra_job, tmp_path):
    sweep = tmp_path / "chosen-sweep"
    cfg, task = hydra_job(RunMode.MULTIRUN, f"hydra.sweep.dir={sweep}")
    (directory,) = run_job(task)["finished"]
    assert Path(directory).parent.parent == sweep
    assert job_run_dirs(cfg) == [Path(directory)]  # what the SLURM launcher skips by

    single = tmp_path / "chosen-run"
    cfg, task = hydra_job(RunMode.RUN, f"hydra.run.dir={single}")
    (directory,) = run_job(task)["finished"]
    assert Path(directory).parent.parent == single
    assert not (tmp_path / "default").exists()
    # The default run directory is the run's own: its runs go to output_root/sweep_name.
    cfg, task = hydra_job(RunMode.RUN, "replicate=1")
    (directory,) = run_job(task)["finished"]
    assert Path(directory) == tmp_path / "default" / "default" / Path(directory).parent.name / "r0001"


@pytest.mark.slow
def test_the_command_line_honours_hydra_sweep_dir_and_refuses_in_one_line(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    args = [sys.executable, "launch.py", "-m", "source=init", "replicates=2", *SMALL,
            f"output_root={tmp_path / 'default'}"]
    out = subprocess.run([*args, f"hydra.sweep.dir={tmp_path / 'x'}"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"Sweep {tmp_path / 'x'}: 2 runs trained now" in out.stdout
    assert len(list((tmp_path / "x").rglob("result.json"))) == 2
    assert not (tmp_path / "default").exists()
    bad = subprocess.run([*args, "pack=0"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0
    assert (bad.stdout + bad.stderr).strip() == (
        "Error in the configuration: pack=0 is out of range: pack must be auto or an integer >= 1")


# --- images in the wrong layout, a single class ------------------------------------------------


def test_channel_last_images_are_moved_to_channels_first(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    path = npz_file(tmp_path / "hwc.npz", 0, x=x, y_train=np.arange(12) % 2)
    data = load_dataset(DatasetConfig(name="npz", path=str(path)))
    assert data.input_shape == (3, 8, 8)
    assert torch.equal(data.x_train, torch.from_numpy(x).permute(0, 3, 1, 2))


def test_a_training_set_with_one_class_is_refused(tmp_path):
    path = npz_file(tmp_path / "one.npz", 0, y_train=np.zeros(48, dtype=np.int64))
    with pytest.raises(ValueError, match="single class"):
        load_dataset(DatasetConfig(name="npz", path=str(path)))


# --- run identity across versions ------------------------------------------------------------


@dataclass
class UpgradedOptimizer(schema.OptimizerConfig):
    grad_clip: float = 0.0


@dataclass
class UpgradedSchema(schema.NondetConfig):
    optimizer: UpgradedOptimizer = field(default_factory=UpgradedOptimizer)


@pytest.fixture
def upgraded_schema(monkeypatch):
    """The schema of a later version: ``optimizer.grad_clip`` added, default 0.0 (off)."""
    monkeypatch.setattr(schema, "NondetConfig", UpgradedSchema)
    schema.register_configs()
    yield
    monkeypatch.undo()
    schema.register_configs()


def test_a_key_added_at_its_default_keeps_finished_runs_and_their_rows(make_config, tmp_path,
                                                                        request):
    from analysis.load import group_key

    old = make_config("source=init", *SMALL, "replicates=1")
    (finished,) = train(old)["finished"]
    request.getfixturevalue("upgraded_schema")
    new = make_config("source=init", *SMALL, "replicates=1")
    assert new["optimizer"]["grad_clip"] == 0.0 and "grad_clip" not in old["optimizer"]
    assert records.run_dir(new) == records.run_dir(old)
    assert train(new) == {"finished": [], "skipped": [finished]}  # a relaunch trains nothing
    assert group_key(new) == group_key(old)  # one table row
    # A value the old version could not have run is a different configuration.
    clipped = make_config("source=init", *SMALL, "optimizer.grad_clip=1.0")
    assert records.group_dirname(clipped) != records.group_dirname(old)
    assert group_key(clipped) != group_key(old)
