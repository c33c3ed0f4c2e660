"""Launch checks of a multirun's shape: the replicate sweep fits every job, nondet's keys are never
deleted, and runs that jobs with overlapping replicates meet are counted once."""

from __future__ import annotations

from hydra import compose
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf
import pytest

from conftest import CONF, TINY
from nondet import records
from nondet.callbacks import CheckCallback, SummaryCallback, check_command_line
from nondet.config import ConfigError
from nondet.job import run_job
from nondet.progress import ProgressCallback, planned_runs
from test_refusals import hydra_config, hydra_state  # noqa: F401  (the fixture)


def refusal(cfg) -> str:
    with pytest.raises(SystemExit) as exit_:
        CheckCallback().on_multirun_start(cfg)
    text = str(exit_.value.code)
    assert "\n" not in text and text.startswith("Error in the configuration: "), text
    return text


@pytest.mark.parametrize("sweep, key", [
    (["replicates=2,18"], "replicates=2,18"),
    (["replicates=4", "pack=1,2"], "pack=1,2"),
    (["replicates=2,3", "pack=1"], "replicates=2,3"),
])
def test_a_sweep_over_what_the_replicate_sweep_is_built_from_is_refused(tmp_path, hydra_state, sweep, key):
    """The replicate range is resolved once, from the launch's one value: ``replicates=2,18``
    trained r0000-r0015 only, ``pack=1,2`` half the replicates, ``replicates=2,3`` a failing job."""
    cfg, _ = hydra_config(tmp_path, RunMode.MULTIRUN, "source=init", *sweep)
    assert refusal(cfg).endswith(f"{key}: one value per launch (the replicate sweep is built from it); "
                                 f"launch once per value")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize("sweep, said", [
    (["+experiment=table1,table3", "scale=smoke"],
     "+experiment=table1,table3: one value per launch (a preset brings its own sweep of sources, which a sweep "
     "over presets drops)"),
    (["sweep_name=a,b"], "sweep_name=a,b: one value per launch (the summary reads one sweep directory)"),
])
def test_a_sweep_over_presets_or_sweep_directories_is_refused(tmp_path, hydra_state, sweep, said):
    """``-m +experiment=table1,table3`` trained only source=none (the presets' own source sweeps
    dropped) and ``sweep_name=a,b`` wrote two sweeps whose summary read a third, empty one: exit 0."""
    fixed = [*TINY, f"output_root={tmp_path}"]
    cfg = compose("config", overrides=[*fixed, *(o.split(",")[0] for o in sweep)], return_hydra_config=True)
    cfg.hydra.mode, cfg.hydra.overrides.task = RunMode.MULTIRUN, [*fixed, *sweep]
    assert refusal(cfg).endswith(f"{said}; launch once per value")
    assert not list(tmp_path.rglob(records.RESULT_FILE))


def test_a_job_the_replicate_sweep_does_not_fit_is_refused_before_any_trains(tmp_path, hydra_state):
    cfg, _ = hydra_config(tmp_path, RunMode.MULTIRUN, "source=init", "replicates=4", "replicate=0,5")
    assert refusal(cfg).endswith("replicate=5 is outside range(0, replicates=4): give replicate values below "
                                 "replicates, or leave replicate out to sweep them all")
    # A swept preset's scale sets another `replicates` than the one the sweep was built from.
    fixed = [*TINY, "+experiment=fig1", f"output_root={tmp_path}"]
    cfg = compose("config", overrides=fixed, return_hydra_config=True)
    cfg.hydra.mode, cfg.hydra.overrides.task = RunMode.MULTIRUN, [*fixed, "scale=paper,smoke"]
    assert "scale=smoke sets replicates=3, pack=1, but the replicate sweep is built from the launch's " \
           "replicates=25, pack=1: launch once per value of scale" in refusal(cfg)
    assert not list(tmp_path.rglob(records.RESULT_FILE))


@pytest.mark.parametrize("deleted", ["~base_seed", "~epochs", "~dataset", "~model", "~model.width",
                                     "~source=init", "~user", "~lm", "~lm.bptt", "~schema"])
def test_deleting_a_key_of_nondet_is_refused_in_one_line(deleted):
    key = deleted[1:].split("=")[0] + (".KEY" if deleted in ("~user", "~lm") else "")
    with pytest.raises(SystemExit) as exit_:
        check_command_line(["-m", deleted, "source=init"], CONF)
    assert exit_.value.code == (f"Error in the configuration: {deleted.split('=')[0]}: nondet needs every key of "
                                f"its config; set a value instead ({key}=...)")


def test_deleting_a_key_of_your_own_is_left_alone(tmp_path, hydra_state):
    from nondet.callbacks import check_no_deleted_keys

    check_no_deleted_keys(["~user.hidden", "~model.channels", "~dataset.my_option"])
    # The composed command is checked as well (a script of yours with a config of its own).
    cfg, _ = hydra_config(tmp_path, RunMode.RUN, "source=init")
    cfg.hydra.overrides.task.append("~eval_every")
    with pytest.raises(SystemExit, match="^Error in the configuration: ~eval_every: nondet needs every key"):
        CheckCallback().on_run_start(cfg)
    with pytest.raises(ConfigError):
        check_no_deleted_keys(["~optimizer"])


def test_a_typo_in_your_own_primary_config_names_the_key_it_meant(tmp_path):
    (tmp_path / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nepoch: 3\n")
    with pytest.raises(SystemExit) as exit_:
        check_command_line(["--config-dir", str(tmp_path), "--config-name", "mine"], CONF)
    assert str(exit_.value.code).startswith(f"Error in the configuration: {tmp_path / 'mine.yaml'}: epoch is not a "
                                            f"configuration key (a typo? did you mean epochs?)")
    # a script of yours (nondet.api.main(config_path, config_name)): its config, named in the code
    with pytest.raises(SystemExit) as exit_:
        check_command_line(["-m", "source=init"], CONF, tmp_path, "mine")
    assert str(exit_.value.code).startswith(f"Error in the configuration: {tmp_path / 'mine.yaml'}: epoch is not a ")
    (tmp_path / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nepochs: 3\n")
    check_command_line(["--config-dir", str(tmp_path), "--config-name", "mine"], CONF)
    check_command_line(["-m", "source=init"], CONF, tmp_path, "mine")


def test_runs_that_jobs_with_overlapping_replicates_meet_are_counted_once(tmp_path, hydra_state, capsys):
    """``-m replicates=4 replicate=0,2`` (4 replicas a job): the first job trains r0000-r0003,
    the second finds r0002 and r0003 finished; all 4 were trained by this command."""
    overrides = ("source=init", "replicates=4", "pack=auto", "replicate=0,2")
    cfg, _ = hydra_config(tmp_path, RunMode.MULTIRUN, *overrides)
    assert planned_runs([*overrides], 4, "auto") == 4
    summary, progress = SummaryCallback(), ProgressCallback()
    summary.on_multirun_start(cfg)
    progress.on_multirun_start(cfg)
    for replicate in (0, 2):
        job, task = hydra_config(tmp_path, RunMode.RUN, *overrides[:-1], f"replicate={replicate}")
        job_return = JobReturn(status=JobStatus.COMPLETED, _return_value=run_job(task))
        summary.on_job_end(cfg, job_return)
        progress.on_job_end(job, job_return)
    summary.on_multirun_end(cfg)
    out = capsys.readouterr().out
    assert f"Sweep {tmp_path / 'default'}: 4 runs trained now, 0 finished earlier (skipped), 0 failed" in out
    assert "[4/4] init r0003 done" in out and "/6]" not in out


def test_a_filesystem_root_as_the_run_directory_is_named_as_given(tmp_path, hydra_state):
    cfg, _ = hydra_config(tmp_path, RunMode.RUN, "source=init")
    cfg.hydra.run.dir = "/"
    with pytest.raises(SystemExit) as exit_:
        CheckCallback().on_run_start(cfg)
    assert str(exit_.value.code).startswith("Error in the configuration: hydra.run.dir=/: a filesystem root")
    assert "(hydra.run.dir=/sweeps/default, say)" in str(exit_.value.code)


def test_a_single_replica_run_is_found_again_by_its_relaunch(tmp_path, hydra_state):
    """A single run of one replica (``pack=1 replicate=0``, device=auto) is its own ``hydra.run.dir``;
    its relaunch (to skip it, or resume it after a kill) must not read that as a directory inside a run."""
    from nondet.job import job_config

    cfg, task = hydra_config(tmp_path, RunMode.RUN, "source=init", "device=auto", "pack=1", "replicate=0")
    run = records.run_dir(job_config(task))
    run.mkdir(parents=True)
    (run / records.CONFIG_FILE).write_text("replicate: 0\n")
    (run / records.SEEDS_FILE).write_text("{}")
    OmegaConf.update(cfg, "hydra.run.dir", str(run))
    CheckCallback().on_run_start(cfg)  # no refusal
