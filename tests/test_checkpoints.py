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



def killed_runs(make_config, monkeypatch, *overrides):
    """Replicates 0 and 1 of one group (2 epochs), each killed in epoch 2 with the checkpoint of epoch 1:
    (their configs, their directories)."""
    from conftest import kill_after_epoch

    configs = [make_config("source=init", "replicates=2", f"replicate={r}", *overrides) for r in (0, 1)]
    undo = kill_after_epoch(monkeypatch, 2)
    for config in configs:
        assert run(config)["failed"]
    undo()
    directories = [records.run_dir(c) for c in configs]
    assert all((d / records.CHECKPOINT_FILE).exists() for d in directories)
    return configs, directories


def test_a_checkpoint_copied_from_another_replicate_is_refused(make_config, monkeypatch):
    configs, (first, second) = killed_runs(make_config, monkeypatch)
    (second / records.CHECKPOINT_FILE).write_bytes((first / records.CHECKPOINT_FILE).read_bytes())
    outcome = run(configs[1])
    assert outcome["failed"] == [str(second)] and not (second / records.RESULT_FILE).exists()
    fix = outcome["fixes"][str(second)]
    assert "\n" not in fix and str(second / records.CHECKPOINT_FILE) in fix
    assert "replicate 0 there, 1 here" in fix and "the seeds of init differ" in fix
    assert "delete it to train this run from scratch" in fix
    (second / records.CHECKPOINT_FILE).unlink()  # as the message says: trained from scratch
    assert run(configs[1])["finished"] == [str(second)]
    assert run(configs[0])["finished"] == [str(first)]  # its own checkpoint resumes
    assert (first / records.LOGITS_FILE).read_bytes() != (second / records.LOGITS_FILE).read_bytes()


def test_a_checkpoint_of_another_configuration_is_refused(make_config, monkeypatch):
    configs, (first, _) = killed_runs(make_config, monkeypatch)
    other = make_config("source=init", "replicates=2", "replicate=0", "optimizer.lr=0.05")
    target = records.run_dir(other)
    target.mkdir(parents=True)
    (target / records.CHECKPOINT_FILE).write_bytes((first / records.CHECKPOINT_FILE).read_bytes())
    outcome = run(other)
    assert outcome["failed"] == [str(target)]
    assert "config hash" in outcome["fixes"][str(target)]


def test_a_checkpoint_without_the_run_record_still_resumes(make_config, monkeypatch):
    """A checkpoint of an earlier nondet holds no identity: it resumes as before."""
    from nondet import train

    configs, (first, _) = killed_runs(make_config, monkeypatch)
    state = torch.load(first / records.CHECKPOINT_FILE, weights_only=True)
    assert state[train.RUN_KEY]["replicate"] == 0
    del state[train.RUN_KEY]
    torch.save(state, first / records.CHECKPOINT_FILE)
    assert run(configs[0])["finished"] == [str(first)]
