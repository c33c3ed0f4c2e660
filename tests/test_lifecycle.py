"""The one run lifecycle against run directories written by the code before it
(tests/fixtures/main_c5cb29b, made by that code with the configurations below, on one thread:
the bits of a CPU run depend on the thread count): a sweep it
finished is found finished, its checkpoints resume and end bitwise where its uninterrupted runs
ended, and the runs it trained are trained again bit for bit. Also: the lifecycle's own refusals
(inert sources and snapshots of a language model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from nondet import records
from nondet.job import run_job
from test_lm import TINY_LM

FIXTURE = Path(__file__).parent / "fixtures" / "main_c5cb29b"


@pytest.fixture
def old_runs(tmp_path):
    root = tmp_path / "outputs"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("*_expected_*"))
    return root


def run(config: dict) -> dict:
    return run_job(OmegaConf.create(config))


def finished_config(root, replicate):
    return compose_config([f"output_root={root}", "sweep_name=finished", "source=init",
                           "replicates=2", f"replicate={replicate}", "threads=1"])


def test_a_sweep_finished_by_the_old_code_is_found_finished(old_runs):
    for replicate in (0, 1):
        outcome = run(finished_config(old_runs, replicate))
        assert outcome["finished"] == [] and outcome["failed"] == []
        assert len(outcome["skipped"]) >= 1


def test_the_default_pack_finds_the_old_code_s_sweep_finished(old_runs):
    config = compose_config([f"output_root={old_runs}", "sweep_name=finished", "source=init",
                             "replicates=2", "pack=auto", "threads=1"])
    outcome = run(config)  # one job: both replicates
    assert outcome["finished"] == [] and outcome["failed"] == [] and len(outcome["skipped"]) == 2


def test_pack_auto_packs_a_job_bitwise_as_one_replica_per_job(tmp_path):
    overrides = ["source=all", "model.dropout=0.1", "replicates=3", "epochs=2"]
    auto = compose_config([f"output_root={tmp_path / 'auto'}", *overrides, "pack=auto"])
    outcome = run(auto)
    assert len(outcome["finished"]) == 3
    for replicate in range(3):
        solo = compose_config([f"output_root={tmp_path / 'solo'}", *overrides, f"replicate={replicate}"])
        run(solo)
        packed, alone = records.run_dir(auto, replicate), records.run_dir(solo)
        assert packed.relative_to(tmp_path / "auto") == alone.relative_to(tmp_path / "solo")
        assert json.loads((packed / "env.json").read_text())["pack"]["members"] == [0, 1, 2]
        assert np.load(packed / "logits.npy").tobytes() == np.load(alone / "logits.npy").tobytes()


def test_the_old_code_s_runs_are_trained_again_bit_for_bit(old_runs, tmp_path):
    fresh = tmp_path / "fresh"
    for replicate in (0, 1):
        config = finished_config(fresh, replicate)
        run(config)
        new, old = records.run_dir(config), records.run_dir(finished_config(old_runs, replicate))
        assert new.name == old.name and new.parent.name == old.parent.name  # same directory
        assert np.load(new / "logits.npy").tobytes() == np.load(old / "logits.npy").tobytes()
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert strip(records.read_metrics(new / "metrics.jsonl")) == strip(records.read_metrics(old / "metrics.jsonl"))
        weights_new, weights_old = torch.load(new / "weights.pt"), torch.load(old / "weights.pt")
        assert all(torch.equal(weights_new[k], weights_old[k]) for k in weights_old)


def test_an_image_checkpoint_of_the_old_code_resumes_bitwise(old_runs):
    config = compose_config([f"output_root={old_runs}", "sweep_name=resume", "source=all",
                             "replicates=1", "model.dropout=0.1", "threads=1"])
    directory = records.run_dir(config)
    assert (directory / "checkpoint.pt").exists()
    outcome = run(config)
    assert outcome["finished"] == [str(directory)]
    assert json.loads((directory / "env.json").read_text())["resumed_from_epoch"] == 1
    expected = np.load(FIXTURE / "resume_expected_logits.npy")
    assert np.load(directory / "logits.npy").tobytes() == expected.tobytes()


def test_a_language_model_checkpoint_of_the_old_code_resumes_bitwise(old_runs):
    config = compose_config([f"output_root={old_runs}", "sweep_name=resume_lm", "source=all",
                             "replicates=1", "lm.nonmono=0", *TINY_LM], tiny=False)
    directory = records.run_dir(config)
    assert (directory / "checkpoint.pt").exists()
    outcome = run(config)
    assert outcome["finished"] == [str(directory)]
    expected = np.load(FIXTURE / "resume_lm_expected_target_logprobs.npy")
    assert np.load(directory / "target_logprobs.npy").tobytes() == expected.tobytes()


@pytest.mark.parametrize("source", ["shuffle", "reduction", "augment"])
def test_a_language_model_refuses_sources_with_nothing_to_vary(tmp_path, source):
    config = compose_config([f"output_root={tmp_path}", f"source={source}", *TINY_LM], tiny=False)
    with pytest.raises(ValueError, match=f"source={source}.*cannot change anything.*source=init, source=dropout"):
        run(config)
    assert not any(tmp_path.rglob("config.yaml"))


def test_a_language_model_refuses_snapshots(tmp_path):
    config = compose_config([f"output_root={tmp_path}", "source=init", *TINY_LM, "schedule=snapshot"], tiny=False)
    with pytest.raises(ValueError, match="schedule=snapshot with model=qrnn"):
        run(config)


def test_a_corrupt_language_model_checkpoint_leaves_config_yaml(tmp_path):
    config = compose_config([f"output_root={tmp_path}", "source=init", "replicates=1", *TINY_LM], tiny=False)
    directory = records.run_dir(config)
    directory.mkdir(parents=True)
    (directory / "checkpoint.pt").write_bytes(b"not a checkpoint")
    outcome = run(config)
    assert outcome["failed"] == [str(directory)]
    assert (directory / "config.yaml").exists() and (directory / "error.txt").exists()


@pytest.mark.parametrize("seconds, kept", [(60.0, False), (0.0, True)])
def test_checkpoint_every_auto_checkpoints_by_elapsed_time(tmp_path, monkeypatch, seconds, kept):
    from nondet import pack, train

    config = compose_config([f"output_root={tmp_path}", "source=init", "epochs=3", "checkpoint_every=auto"])
    monkeypatch.setattr(train, "CHECKPOINT_SECONDS", seconds)
    real_epoch = pack.train_pack_epoch

    def dies_in_epoch_three(group, data, *args):
        if group.epoch == 2:
            raise KeyboardInterrupt  # a kill
        return real_epoch(group, data, *args)

    monkeypatch.setattr(pack, "train_pack_epoch", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    assert (records.run_dir(config) / "checkpoint.pt").exists() == kept
