"""The end-of-sweep summary speaks for the runs this command launched: their failures set the
exit status, with the advice that mends them; an earlier launch's failures are a note. A full
disk or an unwritable sweep directory ends in one line, not a traceback, and keeps finished runs."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import numpy as np
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from analysis import load
from fake_runs import fake_config, random_logits, write_group
from nondet import records
from nondet.callbacks import SummaryCallback
from nondet.job import run_job


def launch(sweep_dir, *configs) -> int:
    """One command: the summary callback around the jobs of ``configs``; its exit status."""
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    summary = SummaryCallback()
    try:
        summary.on_multirun_start(sweep)
        for config in configs:
            outcome = run_job(OmegaConf.create(config))
            summary.on_job_end(sweep, JobReturn(status=JobStatus.COMPLETED, _return_value=outcome))
        summary.on_multirun_end(sweep)
    except SystemExit as e:
        return e.code
    return 0


def corrupt_checkpoint(config):
    directory = records.run_dir(config)
    directory.mkdir(parents=True)
    (directory / records.CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    return directory


def test_an_earlier_launchs_failure_is_a_note_not_this_commands_failure(make_config, capsys):
    earlier = make_config("source=shuffle", "epochs=1", "replicates=1")
    corrupt_checkpoint(earlier)
    sweep_dir = records.run_dir(earlier).parent.parent
    assert launch(sweep_dir, earlier) == 1  # that launch failed
    capsys.readouterr()
    assert launch(sweep_dir, make_config("source=init", "epochs=1", "replicates=1")) == 0
    out = capsys.readouterr().out
    assert "1 runs trained now, 0 finished earlier (skipped), 0 failed" in out
    assert "Note: 1 failed or corrupt runs below" in out and "not this command's" in out


def test_a_corrupt_checkpoint_gets_the_advice_that_mends_it(make_config, capsys):
    config = make_config("source=init", "epochs=1", "replicates=1")
    directory = corrupt_checkpoint(config)
    assert launch(directory.parent.parent, config) == 1
    out = capsys.readouterr().out
    advice = out[out.index("Of the runs this command launched"):]
    assert "relaunch the same command to retry" not in advice
    assert f"cannot read the checkpoint {directory / records.CHECKPOINT_FILE}" in advice
    assert "delete it to restart this run from scratch" in advice


def test_a_full_disk_is_one_line_and_keeps_finished_runs(make_config, monkeypatch, capsys):
    done, then = (make_config("source=init", "epochs=1", "replicates=2", f"replicate={r}") for r in (0, 1))
    finished = records.run_dir(done)
    sweep_dir = finished.parent.parent
    assert launch(sweep_dir, done) == 0
    result = (finished / records.RESULT_FILE).read_bytes()
    capsys.readouterr()

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(records, "_atomic_write_bytes", disk_full)  # error.txt cannot be written either
    assert launch(sweep_dir, done, then) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert "0 runs trained now, 1 finished earlier (skipped), 1 failed" in out.out
    assert f"{records.run_dir(then)}: the disk is full: free space, then relaunch" in out.out
    assert (finished / records.RESULT_FILE).read_bytes() == result


def test_an_unwritable_sweep_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert launch(tmp_path / "file" / "sweep") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"Cannot launch into {tmp_path / 'file' / 'sweep'}: ")
    assert "Nothing was trained or changed" in err[0]
    (tmp_path / "sweep" / "multirun.yaml").mkdir(parents=True)  # Hydra's record cannot be rewritten
    assert launch(tmp_path / "sweep") == 1
    assert capsys.readouterr().err.startswith(f"Cannot launch into {tmp_path / 'sweep'}: Is a directory.")


def test_an_unwritable_run_directory_fails_its_run_in_one_line(make_config, monkeypatch, caplog):
    config = make_config("source=init", "epochs=1", "replicates=1")
    directory = records.run_dir(config)

    def read_only(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(records, "_atomic_write_bytes", read_only)
    outcome = run_job(OmegaConf.create(config))  # no exception: the sweep goes on
    assert outcome["failed"] == [str(directory)]
    assert outcome["fixes"][str(directory)] == (
        f"cannot write {directory / records.CONFIG_FILE} (Permission denied): make it writable, then relaunch")
    assert "Traceback" not in caplog.text


def test_hydras_job_log_and_record_give_way_to_an_unwritable_run_directory(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from nondet import joblog

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra = compose("config", return_hydra_config=True).hydra
    assert hydra.job_logging.handlers.file["class"] == "nondet.joblog.RunLogFile"
    assert OmegaConf.to_yaml(hydra).count("${nondet.hydra_files:.hydra}") == 1
    # Hydra's own job logging choices replace nondet's whole (a file handler merged into one
    # without a file broke the logging set-up of every job).
    import hydra as hydra_package

    for choice in ("stdout", "disabled", "none", "default"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            other = compose("config", overrides=[f"hydra/job_logging={choice}"], return_hydra_config=True).hydra
        own = OmegaConf.load(Path(hydra_package.__file__).parent / "conf" / "hydra" / "job_logging" / f"{choice}.yaml")
        assert OmegaConf.to_container(other.job_logging) == OmegaConf.to_container(own), choice

    (tmp_path / "launch.log").mkdir()  # cannot be opened as a file, as in a read-only directory
    handler = joblog.RunLogFile(str(tmp_path / "launch.log"))
    handler.handle(logging.makeLogRecord({"msg": "epoch 1"}))  # dropped, no logging error
    (tmp_path / ".hydra").write_text("")  # nor can .hydra/ be made
    root = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    assert joblog.hydra_files(".hydra", _root_=root) is None
    assert joblog.hydra_files("record", _root_=root) == "record"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"nondet: cannot write {tmp_path / 'launch.log'} (Is a directory); this job logs to the console only",
        f"nondet: cannot write Hydra's record of this job in {tmp_path / '.hydra'} (File exists); "
        "the job goes on without it",
    ]


@pytest.mark.slow
def test_relaunching_into_read_only_run_directories_keeps_the_sweep_going(make_config, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, TINY

    config = make_config("source=init", "epochs=1", "replicates=1")
    run_job(OmegaConf.create(config))  # finished earlier
    finished = records.run_dir(config)
    (finished / "launch.log").mkdir()  # root ignores file modes: unwritable by other means
    command = [sys.executable, "launch.py", "-m", "source=init", *TINY, "epochs=1", "replicates=2",
               f"output_root={config['output_root']}"]
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "Traceback" not in again.stderr
    assert f"nondet: cannot write {finished / 'launch.log'} (Is a directory)" in again.stderr
    assert "1 runs trained now, 1 finished earlier (skipped), 0 failed" in again.stdout


def test_the_summary_reads_each_run_once(tmp_path, monkeypatch, capsys):
    """The table, the counts and the advice come from one scan of the sweep: each run's
    config.yaml and logits are read, and checked against its result.json, once."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 30)
    config = fake_config(**{"source.name": "init", "source.vary": ["init"]}, output_root=str(tmp_path))
    paths = write_group(config, random_logits(rng, 4, 30, 3), labels)
    records.write_json(paths[2] / records.RESULT_FILE, {"test_accuracy": 101.0})  # corrupt: contradicts
    (paths[3] / records.RESULT_FILE).unlink()
    records.write_text(paths[3] / records.ERROR_FILE, "RuntimeError: boom")  # failed
    reads = []
    read_array, read_config = records.read_array, load._read_config
    monkeypatch.setattr(records, "read_array", lambda path, *a: reads.append(path) or read_array(path, *a))
    monkeypatch.setattr(load, "_read_config", lambda path: reads.append(path) or read_config(path))

    assert launch(paths[0].parent.parent) == 1  # no job outcomes: every failed or corrupt run counts
    out = capsys.readouterr().out
    assert "2 finished, 1 failed, 1 corrupt, 0 unfinished: relaunch the same command" in out
    assert "0 runs trained now, 2 finished earlier (skipped), 1 failed, 1 corrupt (skipped, listed below)" in out
    assert "- corrupt: " in out and "result.json says test_accuracy 101.0000" in out
    logits = [path.parent for path in reads if path.name == records.LOGITS_FILE]
    configs = [path.parent for path in reads if path.name == records.CONFIG_FILE]
    assert sorted(logits) == sorted(paths[:3])  # the failed run's logits are never read
    assert sorted(configs) == sorted(paths)


def test_a_relaunch_over_a_corrupt_run_counts_it_as_corrupt_not_finished(tmp_path, capsys):
    """The jobs skip a run whose result.json is there; the counts line says it is corrupt."""
    rng = np.random.default_rng(0)
    config = fake_config(**{"source.name": "init", "source.vary": ["init"]}, output_root=str(tmp_path))
    paths = write_group(config, random_logits(rng, 2, 30, 3), rng.integers(0, 3, 30))
    records.write_json(paths[1] / records.RESULT_FILE, {"test_accuracy": 101.0})  # contradicts its logits
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(paths[0].parent.parent)}}})
    summary = SummaryCallback()
    summary.on_multirun_start(sweep)
    outcome = {"finished": [], "skipped": [str(p) for p in paths], "failed": [], "busy": [], "fixes": {}}
    summary.on_job_end(sweep, JobReturn(status=JobStatus.COMPLETED, _return_value=outcome))
    with pytest.raises(SystemExit):
        summary.on_multirun_end(sweep)
    out = capsys.readouterr().out
    assert "0 runs trained now, 1 finished earlier (skipped), 0 failed, 1 corrupt (skipped, listed below)." in out
    assert "1 are corrupt: delete their directories" in out
