"""logger=tensorboard: each run's per-epoch metrics as event files in its run directory, read
back with TensorBoard's EventAccumulator; a resumed run holds every epoch once."""

from __future__ import annotations

import os

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import kill_after_epoch
from nondet import logger, records
from nondet.job import run_job

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:  # the optional extra
    EventAccumulator = None


@pytest.fixture(autouse=True)
def needs_tensorboard():
    if EventAccumulator is None:
        message = "tensorboard is not installed (pip install -e .[tensorboard])"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def scalars(directory, group):
    """{metric: [(step, value), ...]} of every event file in ``directory``, duplicates kept."""
    events = EventAccumulator(str(directory), purge_orphaned_data=False)
    events.Reload()
    tags = events.Tags()["scalars"]
    assert all(t.startswith(group + "/") for t in tags), tags
    return {t.split("/", 1)[1]: [(e.step, e.value) for e in events.Scalars(t)] for t in tags}


def expected(directory):
    rows = records.read_metrics(directory / records.METRICS_FILE)
    return {k: [(r["epoch"], np.float32(r[k])) for r in rows]
            for k in ("test_accuracy", "test_cross_entropy", "train_loss", "lr", "seconds")}


def test_event_files_hold_every_epoch_tagged_by_group_and_a_resume_does_not_repeat_steps(make_config, monkeypatch):
    config = make_config("source=init", "replicate=1", "epochs=4", "checkpoint_every=2", "logger=tensorboard")
    directory = records.run_dir(config)
    group = records.group_dirname(config)
    assert directory.parent.name == group and directory.name == "r0001"  # the run's name in TensorBoard

    # Killed after logging epoch 3, with the checkpoint of epoch 2: epoch 3 is trained again.
    undo = kill_after_epoch(monkeypatch, 3)
    assert run_job(OmegaConf.create(config))["failed"] == [str(directory)]
    logger.close()  # the process that was killed holds no writer
    assert [s for s, _ in scalars(directory, group)["test_accuracy"]] == [1, 2, 3]
    assert (directory / records.CHECKPOINT_FILE).exists()

    undo()
    assert run_job(OmegaConf.create(config))["finished"] == [str(directory)]
    assert scalars(directory, group) == expected(directory)  # epochs 1-4, once each
    assert not logger._writers  # closed at the last epoch


def test_off_by_default_and_unknown_loggers_are_refused(make_config):
    config = make_config("epochs=1")
    assert config["logger"] == "none"
    run_job(OmegaConf.create(config))
    assert not list(records.run_dir(config).glob(logger.EVENT_FILES))
    # Not part of a run's identity: turning it on finds the same run directory.
    assert records.run_dir(make_config("epochs=1", "logger=tensorboard")) == records.run_dir(config)
    with pytest.raises(ValueError, match="logger='wandb': use one of none, tensorboard"):
        run_job(OmegaConf.create(make_config("epochs=1", "logger=wandb")))
