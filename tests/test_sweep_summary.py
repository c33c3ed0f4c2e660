"""The end-of-sweep summary speaks for the runs this command launched: their failures set the
exit status, with the advice that mends them; an earlier launch's failures are a note. A full
disk or an unwritable sweep directory ends in one line, not a traceback, and keeps finished runs."""

from __future__ import annotations

import errno

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

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
