"""``source=data``: each replicate trains on its own resample of the training set.

The tests recover, from what the model is fed, which training examples it saw and in which
order, and compare that with the control and with the replicate's resample. Exact comparisons.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from nondet import lm, pack, records
from nondet.config import ConfigError, check_config
from nondet.data import load_dataset
from nondet.job import run_job
from nondet.pack import ImageFamily, new_replica, train_epoch
from nondet.seeds import SEEDABLE, derive_seed
from nondet.train import start_of_epoch
from test_pack import bits, metrics, same_weights, solo_and_packed, weights

N = 256  # the tiny config's training set


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seen(config):
    """One epoch of one replica: its initial weights, the indices of the training examples fed
    to it in order (feature data enter the model as stored), its replica and the data."""
    data = load_dataset(OmegaConf.create(config["dataset"]), "cpu")
    replica = new_replica(config, data)
    start_of_epoch(replica, config)
    initial = {k: v.clone() for k, v in replica.model.state_dict().items()}
    batches = []
    replica.model.register_forward_pre_hook(lambda m, args: batches.append(args[0].clone()))
    train_epoch(replica, config, data)
    x = torch.cat(batches)
    match = (x[:, None, :] == data.x_train[None, :, :]).all(-1)
    assert (match.sum(1) == 1).all()  # every row fed is one stored example
    return initial, match.float().argmax(1), replica, data


def test_a_bootstrap_changes_the_examples_seen_and_nothing_else(make_config):
    w_none, order, control, data = seen(make_config("source=none"))
    assert control.resample is None and sorted(order.tolist()) == list(range(N))
    resamples = []
    for replicate in (0, 1):
        w, indices, replica, _ = seen(make_config("source=data", f"replicate={replicate}"))
        assert all(torch.equal(w[k], w_none[k]) for k in w_none)  # the same initial weights
        resample = replica.resample
        assert len(resample) == N and 0 <= resample.min() and resample.max() < N
        assert len(resample.unique()) < N  # drawn with replacement: duplicates
        # the control's order of positions, within this replicate's resample
        assert torch.equal(indices, resample[order])
        resamples.append(resample)
    assert not torch.equal(resamples[0], resamples[1])  # each replicate its own resample
    # the same replicate draws the same resample (a resumed run redraws it)
    again = new_replica(make_config("source=data", "replicate=1"), data).resample
    assert torch.equal(again, resamples[1])


def test_a_fraction_subsamples_without_replacement(make_config):
    config = make_config("source=data", "data_resample=0.8", "replicate=2")
    _, indices, replica, data = seen(config)
    resample = replica.resample
    assert len(resample) == int(0.8 * N) == 204 and len(resample.unique()) == 204
    assert sorted(indices.tolist()) == sorted(resample.tolist())  # each example of it once
    assert ImageFamily().steps_per_epoch(config, data) == -(-204 // config["batch_size"])


def test_the_test_set_and_the_seeds_of_the_other_sources_stay(make_config, tmp_path):
    config = make_config("source=init_data", "replicates=2", f"output_root={tmp_path}")
    for replicate in (0, 1):
        run_job(OmegaConf.create({**config, "replicate": replicate}))
    dirs = [records.run_dir(config, r) for r in (0, 1)]
    labels = [np.load(d / "labels.npy") for d in dirs]
    assert np.array_equal(labels[0], labels[1])
    for replicate, directory in enumerate(dirs):
        seeds = json.loads((directory / "seeds.json").read_text())
        assert seeds["vary"] == ["init", "data"]
        assert seeds["seeds"]["data"] == derive_seed(0, "data", replicate)
        assert seeds["seeds"]["shuffle"] == 0


def test_source_none_has_no_data_generator_and_the_same_identity(make_config):
    replica = new_replica(make_config("source=none"), load_dataset(
        OmegaConf.create(make_config()["dataset"]), "cpu"))
    assert tuple(replica.generators) == SEEDABLE and tuple(replica.plan.seeds) == SEEDABLE
    assert replica.resample is None and "resample" not in replica.state_dict()
    # the identity of a run the synthetic default of 12 epochs wrote: unchanged, so it is found again
    old_default = compose_config(["dataset=synthetic", "epochs=12"], tiny=False)
    assert records.group_dirname(old_default) == "none-mlp-synthetic-83ffc5f5e8"


def test_a_whole_fraction_names_the_run_of_its_float():
    """data_resample=1 and data_resample=1.0 are one run (one directory, one config.yaml), the
    directory a float fraction always had: sweeps finished with 0.8 or 1.0 (which kept their
    resamples in the order drawn) are found again with data_order=drawn."""
    spelled = {v: compose_config(["source=data", f"data_resample={v}", "dataset=synthetic", "epochs=12",
                                  "data_order=drawn"], tiny=False) for v in ("1", "1.0", "0.5")}
    assert spelled["1"]["data_resample"] == 1.0 and isinstance(spelled["1"]["data_resample"], float)
    assert records.group_dirname(spelled["1"]) == records.group_dirname(spelled["1.0"]) == "data-mlp-synthetic-ad0e5c9096"
    assert records.group_dirname(spelled["0.5"]) == "data-mlp-synthetic-daa356352d"


def test_a_resample_keeps_stored_order_so_that_only_its_examples_differ(make_config):
    """A replicate's resample in stored order: with the shuffle fixed, the epoch visits the same
    positions in every replicate, so varying the data changes which examples are seen, not also
    their order (``data_order=drawn``, the order of the draw, did both: a fraction of 1 then
    showed spread). The draw itself is the same; only its order differs."""
    data = load_dataset(OmegaConf.create(make_config()["dataset"]), "cpu")
    for how in ("data_resample=0.5", "data_resample=bootstrap"):
        kept = new_replica(make_config("source=data", how, "replicate=1"), data).resample
        drawn = new_replica(make_config("source=data", how, "replicate=1", "data_order=drawn"), data).resample
        assert torch.equal(kept, drawn.sort().values) and not torch.equal(kept, drawn)
    whole = [new_replica(make_config("source=data", "data_resample=1", f"replicate={r}"), data).resample
             for r in (0, 1)]
    assert torch.equal(whole[0], torch.arange(N)) and torch.equal(whole[1], whole[0])


def test_sorted_resamples_are_new_runs_and_drawn_ones_keep_their_directories():
    base = ["dataset=synthetic", "epochs=12"]
    data = {order: compose_config(["source=data", *base, f"data_order={order}"], tiny=False)
            for order in ("sorted", "drawn")}
    assert records.group_dirname(data["drawn"]) == "data-mlp-synthetic-f4aea1a4b8"  # as recorded before
    assert records.group_dirname(data["sorted"]) != records.group_dirname(data["drawn"])
    # where nothing is resampled the order is nobody's business: one directory either way
    for source in ("none", "init"):
        names = {records.group_dirname(compose_config([f"source={source}", *base, f"data_order={o}"], tiny=False))
                 for o in ("sorted", "drawn")}
        assert len(names) == 1


def test_a_whole_training_set_in_stored_order_varies_nothing(make_config):
    from nondet.job import inert_by_setting

    assert "data_resample=1 keeps every training example" in inert_by_setting(
        make_config("source=data", "data_resample=1"))["data"]
    assert "data_order=drawn" in inert_by_setting(make_config("source=data", "data_resample=1"))["data"]
    for swept in ("data_resample", "data_order"):  # a sweep over either: the end of a curve
        assert inert_by_setting(make_config("source=data", "data_resample=1"), studied=(swept,)) == {}
    assert inert_by_setting(make_config("source=data", "data_resample=1", "data_order=drawn")) == {}
    assert inert_by_setting(make_config("source=data", "data_resample=0.5")) == {}


def test_resume_with_source_data_is_bitwise_exact(make_config, tmp_path, monkeypatch):
    overrides = ("source=data", "data_resample=0.75", "pack=2", "replicates=2", "epochs=3",
                 "checkpoint_every=1")
    whole = make_config(*overrides, f"output_root={tmp_path / 'whole'}")
    run_job(OmegaConf.create(whole))
    broken = make_config(*overrides, f"output_root={tmp_path / 'broken'}")
    real_epoch = pack.train_pack_epoch

    def dies_in_epoch_three(group, data, *args):
        if group.epoch == 2:
            raise KeyboardInterrupt  # a kill: the checkpoints of epoch 2 are left
        return real_epoch(group, data, *args)

    monkeypatch.setattr(pack, "train_pack_epoch", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run_job(OmegaConf.create(broken))
    monkeypatch.setattr(pack, "train_pack_epoch", real_epoch)
    assert len(run_job(OmegaConf.create(broken))["finished"]) == 2
    for replicate in (0, 1):
        a, b = records.run_dir(whole, replicate), records.run_dir(broken, replicate)
        assert json.loads((b / "env.json").read_text())["resumed_from_epoch"] == 2
        assert np.array_equal(bits(a), bits(b)) and metrics(a) == metrics(b)
        assert same_weights(weights(a), weights(b))
    assert not np.array_equal(bits(records.run_dir(whole, 0)), bits(records.run_dir(whole, 1)))


def test_a_packed_replica_with_source_data_is_bitwise_the_solo_one(make_config, tmp_path):
    solo, packed = solo_and_packed(make_config, tmp_path, "source=init_data", "model.dropout=0.2",
                                   replicates=2)
    for a, b in zip(solo, packed):
        assert np.array_equal(bits(a), bits(b)) and metrics(a) == metrics(b)
        assert same_weights(weights(a), weights(b))


def test_data_is_refused_where_it_cannot_mean_anything():
    with pytest.raises(ConfigError, match="onset_epoch=0"):
        check_config(compose_config(["source=data", "onset_epoch=1"]))
    for bad in ("0", "1.5", "boot"):
        with pytest.raises(ConfigError, match="data_resample"):
            check_config(compose_config([f"data_resample={bad}"]))
    text = compose_config(["source=data", "model=qrnn", "dataset=synthetic_text"])
    with pytest.raises(ValueError, match="leave data out of source.vary"):
        lm.check_config(text)


def test_data_resample_is_named_where_unused_and_refused_where_empty(make_config, caplog):
    from nondet.job import check_sources_vary_something

    data = load_dataset(OmegaConf.create(make_config()["dataset"]), "cpu")
    check_sources_vary_something(make_config("source=init", "data_resample=0.5"), data)
    assert "data_resample=0.5 has no effect" in caplog.text
    with pytest.raises(ValueError, match="data_resample=0.001 keeps no example of the 256"):
        check_sources_vary_something(make_config("source=data", "data_resample=0.001"), data)


def test_a_training_script_of_ones_own_refuses_source_data(tmp_path):
    from hydra import compose, initialize_config_dir

    from conftest import CONF, TINY
    from nondet import api

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "source=data", f"output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="leave data out of source.vary"):
        with api.Run(cfg):
            pass
