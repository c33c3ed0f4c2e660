"""What the command says when it cannot do what it was asked: a mistake in the configuration is
one line before anything trains, for every job of a sweep; a single run's failures set the exit
status as a sweep's do; a failure that a relaunch cannot mend does not advise one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import CONF, tiny_for
from nondet import records
from nondet.callbacks import CheckCallback, SummaryCallback
from nondet.config import ConfigError, check_config
from nondet.job import check_job, failure_fix, job_config, run_job


def hydra_config(tmp_path, mode: RunMode, *overrides: str):
    """Hydra's full config of a command ``launch.py [-m] OVERRIDES`` (sweeps as the command line
    records them), and its task config; call inside ``initialize_config_dir``."""
    fixed = [*tiny_for(overrides), "epochs=1", "replicates=1", f"output_root={tmp_path}"]
    cfg = compose("config", overrides=[*fixed, *(o for o in overrides if "," not in o)],
                  return_hydra_config=True)
    cfg.hydra.mode = mode
    cfg.hydra.overrides.task = [*fixed, *overrides]
    task = OmegaConf.create(OmegaConf.to_container(cfg))
    del task["hydra"]
    return cfg, task


@pytest.fixture
def hydra_state():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    HydraConfig.instance().cfg = None


def test_a_single_run_whose_runs_fail_exits_1_with_the_summary(tmp_path, hydra_state, capsys):
    cfg, task = hydra_config(tmp_path, RunMode.RUN, "source=init")
    HydraConfig.instance().set_config(cfg)
    directory = records.run_dir(job_config(task))
    directory.mkdir(parents=True)
    (directory / records.CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    summary = SummaryCallback()
    summary.on_run_start(cfg)
    job_return = JobReturn(status=JobStatus.COMPLETED, _return_value=run_job(task))
    summary.on_job_end(cfg, job_return)
    with pytest.raises(SystemExit) as exit_:
        summary.on_run_end(cfg, job_return=job_return)
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert f"Sweep {directory.parent.parent}: 0 runs trained now, 0 finished earlier (skipped), 1 failed" in out
    assert f"cannot read the checkpoint {directory / records.CHECKPOINT_FILE}" in out


def test_every_job_of_a_sweep_is_checked_before_any_trains(tmp_path, hydra_state):
    cfg, _ = hydra_config(tmp_path, RunMode.MULTIRUN, "source=init,dropout")
    with pytest.raises(SystemExit) as exit_:
        CheckCallback().on_multirun_start(cfg)
    text = str(exit_.value.code)
    assert "\n" not in text and text.startswith("Error in the configuration: source=dropout varies")
    assert "model.dropout is 0 (set model.dropout=0.1, say)" in text
    assert not list(tmp_path.rglob(records.RESULT_FILE))


def test_a_sweep_over_a_setting_that_turns_a_source_off_is_checked_as_a_curve(tmp_path, hydra_state):
    """``-m source=shuffle shuffle_window=1,16`` (as ``+experiment=shamir`` sweeps it) means its
    window 1 on purpose, the end of a curve: the per-job checks at launch leave the window to the
    launch's own judgement, which refuses only a window fixed for the whole launch."""
    cfg, _ = hydra_config(tmp_path, RunMode.MULTIRUN, "source=shuffle", "shuffle_window=1,16")
    CheckCallback().on_multirun_start(cfg)
    cfg, _ = hydra_config(tmp_path, RunMode.MULTIRUN, "source=shuffle", "shuffle_window=1", "model.width=8,16")
    with pytest.raises(SystemExit) as exit_:
        CheckCallback().on_multirun_start(cfg)
    assert "shuffle_window=1 keeps the stored order" in str(exit_.value.code)


def test_tf32_off_cuda_is_refused_in_one_line(tmp_path, hydra_state):
    """TF32 is an NVIDIA format: on the CPU a tf32 row would be fp32 (or oneDNN's reduced
    precision) under a tf32 label. Refused when the command starts, and by the job itself."""
    cfg, _ = hydra_config(tmp_path, RunMode.MULTIRUN, "precision=tf32,fp32", "device=cpu")
    with pytest.raises(SystemExit) as exit_:
        CheckCallback().on_multirun_start(cfg)
    assert str(exit_.value.code).startswith("Error in the configuration: precision=tf32 needs a CUDA device")
    _, task = hydra_config(tmp_path, RunMode.RUN, "precision=tf32", "device=cpu")
    with pytest.raises(ConfigError, match="precision=fp32 or precision=bf16 on the CPU"):
        run_job(task)
    assert not list(tmp_path.rglob(records.CONFIG_FILE))


def test_a_refusal_mid_sweep_keeps_the_summary_of_what_finished(tmp_path, hydra_state, capsys):
    cfg, task = hydra_config(tmp_path, RunMode.MULTIRUN, "source=init")
    summary = SummaryCallback()
    summary.on_multirun_start(cfg)
    summary.on_job_end(cfg, JobReturn(status=JobStatus.COMPLETED, _return_value=run_job(task)))
    refused = JobReturn(status=JobStatus.FAILED, _return_value=ConfigError("source=dropout varies nothing"))
    with pytest.raises(SystemExit) as exit_:
        summary.on_job_end(cfg, refused)
    assert exit_.value.code == "Error in the configuration: source=dropout varies nothing"
    assert f"Sweep {tmp_path / 'default'}: 1 runs trained now" in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["onset_epoch=1", "source=init"], "onset_epoch=1 >= epochs=1, so no epoch varies"),
        (["source=augment", "dataset.augment=true"], "the data are not images"),
        (["dataset=npz"], "dataset=npz needs dataset.path="),
        (["source=lowlevel"], "Use source=reduction, its seedable stand-in"),
        (["source=shuffle_lowlevel"], "or source=shuffle to vary the rest without lowlevel"),
        (["source=shuffle_augment_lowlevel"], "source.name=shuffle_augment source.vary=[shuffle,augment]"),
        (["model=qrnn"], "model=qrnn is a language model"),
        (["model=cnn1d"], "model 'cnn1d' needs 1-D signals"),
        (["source=bitflip", "bitflip.param=foo"], "bitflip.param=foo is not a parameter of MLP"),
    ],
)
def test_a_jobs_refusals_are_made_without_training(tmp_path, hydra_state, overrides, message):
    _, task = hydra_config(tmp_path, RunMode.RUN, *overrides)
    with pytest.raises((ValueError, RuntimeError), match=re.escape(message)):
        check_job(task, local=True)
    assert not tmp_path.exists() or not list(tmp_path.rglob(records.RESULT_FILE))


def test_an_unknown_activation_is_refused_and_a_model_that_cannot_build_is_not_retried(make_config):
    with pytest.raises(ConfigError, match="model.activation=foo is out of range: model.activation must "
                                         "be one of relu, smelu"):
        check_config(make_config("model.activation=foo"))
    fix = failure_fix(ConfigError("model 'cnn1d' needs 1-D signals (C, L)\nmore"))
    assert fix == "model 'cnn1d' needs 1-D signals (C, L): mend the configuration, then relaunch"


class Broken(torch.nn.Module):
    """A model of yours whose own code fails while it is built."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        raise RuntimeError("weights file /nowhere.pt not found")


def test_a_model_of_yours_that_fails_to_build_is_named_with_where(tmp_path, hydra_state):
    """Checked at launch like nondet's models, in one line, which says where in your code."""
    _, task = hydra_config(tmp_path, RunMode.RUN, "model=custom", f"model._target_={__name__}.Broken")
    with pytest.raises(ConfigError) as error:
        check_job(task, local=True)
    text = str(error.value)
    assert "raised RuntimeError: weights file /nowhere.pt not found" in text
    assert f"{__file__}:" in text and "in __init__" in text and "\n" not in text


def test_a_top_level_typo_names_the_key_it_resembles():
    from nondet.callbacks import check_command_line

    with pytest.raises(SystemExit) as exit_:
        check_command_line(["-m", "epoch=3,4", "source=init"], CONF)
    text = str(exit_.value.code)
    assert text.startswith("Error in the configuration: epoch is not a configuration key (a typo? did you "
                           "mean epochs?); the top-level keys are: base_seed, batch_size") and "\n" not in text
    check_command_line(["-m", "+experiment=table1", "source=init", "hydra.sweep.dir=x", "+user.x=1",
                        "hydra/launcher=basic", "model.widht=3"], CONF)  # Hydra's, or check_or_exit's
    # A config of your own may bring groups of its own (myexp=b): Hydra composes them, or says why.
    for own in (["--config-dir", "/somewhere"], ["--config-name", "mine"], ["hydra.searchpath=[file:///x]"]):
        check_command_line(["-m", *own, "myexp=b"], CONF)
    with pytest.raises(SystemExit) as exit_:  # Hydra's own refusal is a traceback
        check_command_line(["-m", "+experiment=table1", "scale=smoke", "--cfg", "job"], CONF)
    assert str(exit_.value.code).startswith("Error: --cfg job shows the configuration of one job")
    check_command_line(["+experiment=table1", "scale=smoke", "--cfg", "job", "--resolve"], CONF)


def test_jobs_on_a_clusters_nodes_get_the_checks_their_configuration_alone_allows(tmp_path, hydra_state):
    _, dropout = hydra_config(tmp_path, RunMode.RUN, "source=dropout")
    with pytest.raises(ValueError, match=re.escape("model.dropout is 0")):
        check_job(dropout, local=False)
    _, augment = hydra_config(tmp_path, RunMode.RUN, "source=augment", "dataset.augment=true")
    check_job(augment, local=False)  # whether the data are images is the node's to say


@pytest.mark.parametrize("preset", ["table1", "table2", "mnist1d", "shamir"])
def test_the_presets_jobs_pass_the_checks_on_a_cpu(tmp_path, hydra_state, preset):
    from nondet.callbacks import check_or_exit, sweep_jobs

    overrides = [f"+experiment={preset}", "scale=smoke", f"output_root={tmp_path}"]
    cfg = compose("config", overrides=overrides, return_hydra_config=True)
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.overrides.task = overrides
    jobs = sweep_jobs(cfg)
    assert len(jobs) > 1
    check_or_exit(cfg, jobs)


def composed_job(*overrides: str):
    """The job config of ``launch.py OVERRIDES`` as its checks see it (command line recorded)."""
    cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    cfg.hydra.overrides.task = list(overrides)
    return cfg


def test_a_group_chosen_on_the_command_line_is_not_silently_replaced_by_a_preset(hydra_state):
    """A preset names its own model and dataset after the groups are composed: ``model=qrnn``
    under table1 would have trained a ResNet with the QRNN's options, ``dataset=ptb`` under table2
    at smoke scale synthetic text. Refused in one line naming the fix; the fix passes."""
    from nondet.callbacks import check_chosen_groups

    for overrides, key, named in (
        (["+experiment=table1", "scale=smoke", "model=qrnn"], "model=qrnn", "model.name=resnet6"),
        (["+experiment=table2", "scale=smoke", "dataset=ptb"], "dataset=ptb", "dataset.name=synthetic_text"),
        (["+experiment=table1", "model=resnet10"], "model=resnet10", "model.name=resnet14"),
    ):
        with pytest.raises(ValueError) as error:
            check_chosen_groups(composed_job(*overrides))
        text = str(error.value)
        assert text.startswith(f"{key}: +experiment=") and named in text and "\n" not in text
        group, chosen = key.split("=")
        assert f"also set {group}.name={chosen}" in text
    for overrides in (
        ["+experiment=table2", "scale=smoke", "dataset=ptb", "dataset.name=ptb"],  # the fix
        ["+experiment=table1", "scale=smoke"],  # the preset's own choices
        ["+experiment=table8", "scale=smoke", "model=conv1"],  # a preset that names no model
        ["model=qrnn", "dataset=synthetic_text"],
    ):
        check_chosen_groups(composed_job(*overrides))


def test_a_malformed_data_file_stops_the_launch_in_one_line(tmp_path, hydra_state):
    """torchvision's AssertionError became a Hydra warning, and the jobs launched anyway."""
    from test_data import write_mnist

    write_mnist(str(tmp_path / "data"), n_train=12, n_test=6)
    labels = tmp_path / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(b"garbage\n")
    cfg, _ = hydra_config(tmp_path, RunMode.MULTIRUN, "source=init", "dataset=mnist", f"dataset.root={tmp_path / 'data'}")
    with pytest.raises(SystemExit) as exit_:
        CheckCallback().on_multirun_start(cfg)
    text = str(exit_.value.code)
    assert "\n" not in text and text.startswith(f"Error in the configuration: {labels}: its header is not")
    assert not (tmp_path / "default").exists()


@pytest.mark.parametrize("mode", [RunMode.MULTIRUN, RunMode.RUN])
def test_an_unexpected_error_of_the_checks_stops_the_launch_in_one_line(tmp_path, hydra_state, monkeypatch, mode):
    """Hydra turns a callback's exception into a warning and launches the jobs anyway."""
    from nondet import job

    def broken(*args, **kwargs):
        assert 1 <= 0

    monkeypatch.setattr(job, "check_job", broken)
    cfg, _ = hydra_config(tmp_path, mode, "source=init")
    check = CheckCallback()
    with pytest.raises(SystemExit) as exit_:
        check.on_multirun_start(cfg) if mode == RunMode.MULTIRUN else check.on_run_start(cfg)
    text = str(exit_.value.code)
    assert "\n" not in text and text.startswith("Error: checking the command before launching it raised "
                                                "AssertionError: assert 1 <= 0 (at ")
    assert "in broken); nothing was launched" in text
    from nondet import callbacks

    monkeypatch.setattr(callbacks, "filesystem_now", broken)  # the summary's start, whichever mode
    summary = SummaryCallback()
    with pytest.raises(SystemExit) as exit_:
        summary.on_multirun_start(cfg) if mode == RunMode.MULTIRUN else summary.on_run_start(cfg)
    text = str(exit_.value.code)
    assert "\n" not in text and text.startswith("Error: preparing the ") and "nothing was launched" in text


def test_runs_of_a_job_in_its_own_directory_land_in_the_sweep_the_command_named(tmp_path, hydra_state, monkeypatch):
    """``hydra.job.chdir=true`` runs a job in its own output directory: a relative sweep
    directory is where the command was started, as Hydra takes it, not below the job's directory
    (a relaunch would not find those runs and would train them again)."""
    monkeypatch.chdir(tmp_path)
    cfg, task = hydra_config("outputs", RunMode.MULTIRUN, "source=init", "sweep_name=chd", "hydra.job.chdir=true")
    assert cfg.hydra.job.chdir and cfg.hydra.sweep.dir == "outputs/chd"
    HydraConfig.instance().set_config(cfg)
    sweep = tmp_path / "outputs" / "chd"
    outcome = {}
    for job_dir in ("job-a", "job-b"):  # the first trains, the relaunch's job finds the run done
        (sweep / job_dir).mkdir(parents=True)
        monkeypatch.chdir(sweep / job_dir)  # where Hydra runs the job
        outcome = {k: v for k, v in run_job(task).items() if v}
        monkeypatch.chdir(tmp_path)
        runs = [Path(p) for p in outcome.get("finished", []) + outcome.get("skipped", [])]
        assert len(runs) == 1 and runs[0].parent.parent == sweep and runs[0].name == "r0000"
        assert (runs[0] / records.RESULT_FILE).exists()
    assert list(outcome) == ["skipped"]
    assert not list((sweep / "job-a").rglob(records.RESULT_FILE))


def test_a_job_in_its_own_directory_finds_data_named_from_where_the_command_started(tmp_path, hydra_state, monkeypatch):
    """``hydra.job.chdir=true`` with a relative ``dataset.path``: the launch's checks find the file
    from where the command started; the job, in its own output directory, loads the same file (it
    failed there with "no such file" on every launcher), and config.yaml keeps the path as given."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("mine.npz", x_train=rng.standard_normal((64, 4)).astype(np.float32), y_train=rng.integers(0, 2, 64),
             x_test=rng.standard_normal((16, 4)).astype(np.float32), y_test=rng.integers(0, 2, 16))
    cfg, task = hydra_config("outputs", RunMode.MULTIRUN, "source=init", "dataset=npz", "dataset.path=mine.npz",
                             "hydra.job.chdir=true")
    HydraConfig.instance().set_config(cfg)
    job_dir = tmp_path / "outputs" / "job"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)  # where Hydra runs the job
    outcome = run_job(task)
    assert len(outcome["finished"]) == 1 and not outcome["failed"]
    assert "path: mine.npz" in (Path(outcome["finished"][0]) / records.CONFIG_FILE).read_text()


def test_a_filesystem_root_as_the_sweep_directory_is_refused_in_one_line(tmp_path, hydra_state):
    """``hydra.sweep.dir=/`` trained into / and the summary then failed with a TypeError."""
    cfg, task = hydra_config(tmp_path, RunMode.MULTIRUN, "source=init")
    cfg.hydra.sweep.dir = "/"
    with pytest.raises(SystemExit) as exit_:
        CheckCallback().on_multirun_start(cfg)
    assert str(exit_.value.code).startswith(
        "Error in the configuration: hydra.sweep.dir=/: a filesystem root cannot hold a sweep; give a directory below it")
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(ConfigError, match=r"^hydra.sweep.dir=/: a filesystem root"):
        run_job(task)


@pytest.mark.parametrize("mode", [RunMode.RUN, RunMode.MULTIRUN])
def test_runs_inside_a_run_directory_are_refused_in_one_line(tmp_path, hydra_state, mode):
    """``hydra.run.dir`` (or ``hydra.sweep.dir``) at or below a finished run's directory nested the
    new runs inside it, where the analysis, reading that directory as one run, never saw them."""
    run = tmp_path / "default" / "init-mlp-mnist1d-0123456789" / "r0000"
    run.mkdir(parents=True)
    (run / records.CONFIG_FILE).write_text("replicate: 0\n")
    (run / records.SEEDS_FILE).write_text("{}")
    cfg, _ = hydra_config(tmp_path, mode, "source=init")
    key = "hydra.run.dir" if mode == RunMode.RUN else "hydra.sweep.dir"
    OmegaConf.update(cfg, key, str(run / "again"))
    check = CheckCallback()
    with pytest.raises(SystemExit) as exit_:
        check.on_multirun_start(cfg) if mode == RunMode.MULTIRUN else check.on_run_start(cfg)
    assert str(exit_.value.code) == (
        f"Error in the configuration: {key}={run / 'again'}: inside the run directory {run}, where new runs "
        f"would hide (the analysis reads a run directory as one run); give a directory outside every run")
    assert not (run / "again").exists()
