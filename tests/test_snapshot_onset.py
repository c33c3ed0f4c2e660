"""Snapshot ensembles and the shared prefix of onset sweeps (the paper's Sec. 5 and Fig. 2)."""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from nondet import onset, pack, records, snapshot, train
from nondet.job import run_job
from nondet.optim import learning_rate


def run(config):
    return run_job(OmegaConf.create(config))


def test_snapshot_learning_rate_restarts_at_cycle_boundaries():
    schedule = {"name": "snapshot", "cycles": 4}
    steps_per_epoch, epochs = 10, 10  # T = 100, cycles of 25 steps
    lrs = [learning_rate(schedule, 0.4, step, steps_per_epoch, epochs) for step in range(100)]
    for start in (0, 25, 50, 75):
        assert lrs[start] == 0.4  # each cycle starts at the maximum ...
        assert lrs[start + 24] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 24 / 25)))
        assert all(a > b for a, b in zip(lrs[start:start + 25], lrs[start + 1:start + 25]))
    assert snapshot.snapshot_steps(schedule, 100) == [25, 50, 75, 100]
    # T not divisible by M: cycles of ceil(T/M) steps, the last one cut short at the end.
    assert snapshot.snapshot_steps({"name": "snapshot", "cycles": 3}, 100) == [34, 68, 100]
    assert snapshot.snapshot_steps({"name": "cosine", "cycles": 3}, 100) == []


@pytest.mark.parametrize("steps_per_epoch, epochs, cycles, fix", [
    (3, 2, 4, "set schedule.cycles=3 (counts that fit: 1, 2, 3), or epochs=4"),  # 3 snapshots
    (1, 6, 7, "set schedule.cycles=6 (counts that fit: 1, 2, 3, 6), or epochs=7"),  # 6 snapshots
])
def test_a_snapshot_schedule_with_fewer_snapshots_than_cycles_is_refused(steps_per_epoch, epochs, cycles, fix):
    schedule = {"name": "snapshot", "cycles": cycles}
    with pytest.raises(ValueError, match=f"^schedule.cycles={cycles} takes only .*{re.escape(fix)}$"):
        snapshot.check_snapshot_count(schedule, steps_per_epoch, epochs)
    count = int(fix.split("epochs=")[1])  # the epochs it names do give every snapshot
    assert len(snapshot.snapshot_steps(schedule, steps_per_epoch * count)) == cycles
    snapshot.check_snapshot_count(schedule, steps_per_epoch, count)
    snapshot.check_snapshot_count({"name": "snapshot", "cycles": int(fix.split("cycles=")[1][0])}, steps_per_epoch,
                                  epochs)


def test_a_job_refuses_a_snapshot_schedule_before_it_trains(make_config):
    """8 steps an epoch (256 examples, batches of 32): 7 cycles of 2 steps fit 4 in one epoch;
    in 2 or 3 epochs 6, in 4 epochs all 7."""
    from nondet.job import job_data

    config = make_config("schedule=snapshot", "schedule.cycles=7", "epochs=1", "source=init")
    with pytest.raises(ValueError, match=r"schedule.cycles=7 takes only 4 snapshots in 8 steps \(8 per epoch x "
                                         r"epochs=1; .*\): set schedule.cycles=4 .*, or epochs=4$"):
        job_data(config)
    assert not records.run_dir(config).exists()


def test_snapshot_run_saves_each_cycle_and_stores_the_ensemble(make_config):
    config = make_config("schedule=snapshot", "schedule.cycles=3", "epochs=3", "source=init")
    run(config)
    directory = records.run_dir(config)
    members = snapshot.load_snapshots(directory, 3)
    assert not (directory / "snapshots" / "4").exists()
    assert all(m.shape == members[0].shape and m.dtype == np.float32 for m in members)
    assert not np.array_equal(members[0], members[2])
    logits = np.load(directory / "logits.npy")
    probabilities = np.mean([torch.softmax(torch.from_numpy(m).double(), 1).numpy() for m in members], 0)
    assert np.allclose(np.exp(logits.astype(np.float64)), probabilities, atol=1e-6)
    final = records.read_metrics(directory / "metrics.jsonl")[-1]
    assert final["epoch"] == 3
    labels = np.load(directory / "labels.npy")
    result = records.read_json(directory / "result.json")
    assert result["test_accuracy"] == pytest.approx(100 * np.mean(logits.argmax(1) == labels))


def test_onset_forks_from_one_shared_prefix_and_equals_a_run_from_scratch(make_config, tmp_path, monkeypatch):
    prefix_trainings = []
    real = train.train_group

    def counting(members, data, stop, *args, **kwargs):
        if stop == members[0].config["onset_epoch"]:
            prefix_trainings.append(members[0].directory)
        return real(members, data, stop, *args, **kwargs)

    monkeypatch.setattr(train, "train_group", counting)
    for replicate in range(3):
        run(make_config("source=shuffle", "onset_epoch=2", "epochs=4", f"replicate={replicate}",
                        f"output_root={tmp_path / 'shared'}"))
    assert len(prefix_trainings) == 1
    assert onset.prefix_checkpoint(make_config("source=shuffle", "onset_epoch=2", "epochs=4",
                                               f"output_root={tmp_path / 'shared'}"), 2).exists()
    monkeypatch.setattr(train, "train_group", real)

    finals = []
    for replicate in range(3):
        forked = make_config("source=shuffle", "onset_epoch=2", "epochs=4", f"replicate={replicate}",
                             f"output_root={tmp_path / 'shared'}")
        alone = make_config("source=shuffle", "onset_epoch=2", "epochs=4", f"replicate={replicate}",
                            f"output_root={tmp_path / f'alone{replicate}'}")
        run(alone)
        a = np.load(records.run_dir(forked) / "logits.npy")
        b = np.load(records.run_dir(alone) / "logits.npy")
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
        wa = torch.load(records.run_dir(forked) / "weights.pt")
        wb = torch.load(records.run_dir(alone) / "weights.pt")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        finals.append(a)
    assert not np.array_equal(finals[0], finals[1])  # the sources do vary after the onset


def bits(directory, name="logits.npy"):
    return np.load(directory / name).view(np.uint32)


def test_forked_snapshot_runs_carry_the_prefix_snapshots_bitwise(make_config, tmp_path):
    """4 cycles of one epoch, onset at epoch 2: snapshots 1 and 2 are taken in the shared prefix,
    by the job that trains it; a fork gets them from the prefix, bitwise a run from scratch's."""
    common = ("source=shuffle", "schedule=snapshot", "schedule.cycles=4", "onset_epoch=2", "epochs=4")
    shared = [make_config(*common, f"replicate={r}", f"output_root={tmp_path / 'shared'}") for r in range(3)]
    for config in shared[:2]:
        assert run(config)["failed"] == []
    alone = make_config(*common, "replicate=1", f"output_root={tmp_path / 'alone'}")
    run(alone)
    forked, scratch = records.run_dir(shared[1]), records.run_dir(alone)
    for name in [f"snapshots/{k}/logits.npy" for k in range(1, 5)] + ["logits.npy"]:
        assert np.array_equal(bits(forked, name), bits(scratch, name)), name
    # A prefix shared without its snapshots (by an earlier nondet): the fork trains the prefix itself.
    prefix = onset.prefix_dir(shared[2]) / records.SNAPSHOT_DIR
    shutil.rmtree(prefix)
    assert run(shared[2])["failed"] == []
    for k in (1, 2):
        assert np.array_equal(bits(records.run_dir(shared[2]), f"snapshots/{k}/logits.npy"),
                              bits(scratch, f"snapshots/{k}/logits.npy"))
    assert sorted(p.name for p in prefix.iterdir()) == ["1", "2"]


def test_a_resumed_snapshot_run_without_an_earlier_snapshot_says_what_to_delete(make_config, monkeypatch):
    from conftest import kill_after_epoch

    config = make_config("source=init", "schedule=snapshot", "schedule.cycles=3", "epochs=3")
    undo = kill_after_epoch(monkeypatch, 2)  # the checkpoint of epoch 1 stays, with snapshot 1
    run(config)
    undo()
    directory = records.run_dir(config)
    (directory / "snapshots" / "1" / "logits.npy").unlink()
    outcome = run(config)
    assert outcome["failed"] == [str(directory)]
    assert outcome["fixes"][str(directory)] == (
        f"{directory}/snapshots/1/logits.npy is missing, a snapshot taken before epoch 1, where this run "
        f"resumes: delete {directory}/checkpoint.pt to train the run again from scratch")


def test_prefix_is_shared_across_sources_and_onsets(make_config):
    a = make_config("source=shuffle", "onset_epoch=2", "replicate=0")
    b = make_config("source=augment", "onset_epoch=5", "replicate=7")
    c = make_config("source=shuffle", "onset_epoch=2", "model.width=17")
    assert onset.prefix_hash(a) == onset.prefix_hash(b) != onset.prefix_hash(c)


def test_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    first, second = onset.Lock(path), onset.Lock(path, stale_seconds=3600)
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    import os
    os.utime(path, (0, 0))  # its holder died long ago
    third = onset.Lock(path, stale_seconds=60)
    assert not third.try_acquire()  # moves the stale lock away ...
    assert third.try_acquire()  # ... and takes it on the next try


def test_lowlevel_is_deterministic_until_the_onset_epoch(make_config, monkeypatch):
    from nondet.data import load_dataset

    config = make_config("source=lowlevel", "onset_epoch=2", "replicate=1")
    data = load_dataset(OmegaConf.create(config["dataset"]), "cpu")
    replica = pack.new_replica(config, data)
    calls = []
    monkeypatch.setattr(train, "configure_lowlevel", lambda device, free, required: calls.append(free))
    on_gpu = {**config, "device": "cuda"}  # the switch only matters on CUDA; record it there
    for epoch in range(4):
        replica.epoch = epoch
        train.start_of_epoch(replica, on_gpu)
    assert calls == [False, False, True, True]
