"""Checkpoints are read as plain data: one that carries a pickled object is refused as corrupt,
without running it (a checkpoint planted in a shared or copied sweep directory cannot execute
code on the next relaunch), and a real checkpoint still resumes."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from nondet import onset, records
from nondet.job import run_job
from test_lm import lm_config


class Planted:
    """Unpickling this creates ``marker``: proof that the pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "step": 8, "model": Planted(marker)}, path)


def run(config):
    return run_job(OmegaConf.create(config))


def refused(outcome, directory, marker):
    """The run failed as corrupt, naming the checkpoint and the fix; the pickle never ran."""
    assert outcome["failed"] == [str(directory)] and not outcome["finished"]
    last = (directory / records.ERROR_FILE).read_text().strip().splitlines()[-1]
    assert "CorruptRunError" in last and "refused without running it" in last
    assert "delete it to restart this run from scratch" in last
    assert not marker.exists()


def test_a_checkpoint_carrying_a_pickled_object_is_refused_without_running_it(make_config, tmp_path):
    marker = tmp_path / "ran"
    config = make_config("source=init", "epochs=1")
    directory = records.run_dir(config)
    plant(directory / records.CHECKPOINT_FILE, marker)
    refused(run(config), directory, marker)
    # deleting it, as the message says, trains the run from scratch
    (directory / records.CHECKPOINT_FILE).unlink()
    assert run(config)["finished"] == [str(directory)]


def test_a_language_model_checkpoint_carrying_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "ran"
    config = lm_config(tmp_path / "out", "source=init", "epochs=1")
    directory = records.run_dir(config)
    plant(directory / records.CHECKPOINT_FILE, marker)
    refused(run(config), directory, marker)


def test_a_planted_onset_prefix_is_refused_without_running_it(make_config, tmp_path):
    marker = tmp_path / "ran"
    config = make_config("source=shuffle", "epochs=2", "onset_epoch=1")
    plant(onset.prefix_checkpoint(config, 1), marker)
    directory = records.run_dir(config)
    refused(run(config), directory, marker)

