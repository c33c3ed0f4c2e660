"""MNIST-1D (nondet/mnist1d.py) and its CNN (``model=cnn1d``): the loader gives the package's own
arrays bit for bit, leaves every global RNG as it found it, caches by the generation arguments;
a packed cnn1d replica is bitwise the solo one on the CPU; the preset runs through the analysis.

    python -m pytest tests/test_mnist1d.py -x -q
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from nondet import mnist1d as m1d
from nondet import records
from nondet.config import DatasetConfig
from nondet.data import load_dataset
from nondet.job import run_job
from nondet.models import build_model

# 400 signals (320 train / 80 test): generated in a fraction of a second.
SMALL = {"num_samples": 400}


def dataset_config(root, **keys) -> DatasetConfig:
    return OmegaConf.structured(DatasetConfig(**{"name": "mnist1d", "root": str(root), "data_seed": 42, **SMALL, **keys}))


def package_arrays(**args):
    """The arrays of mnist1d's own make_dataset(get_dataset_args()), with ``args`` changed."""
    from mnist1d.data import get_dataset_args, make_dataset

    defaults = get_dataset_args()
    for key, value in {**SMALL, **args}.items():
        setattr(defaults, key, value)
    return make_dataset(defaults)


def test_loader_gives_the_packages_arrays_bitwise_and_caches_them(tmp_path, monkeypatch):
    expected = package_arrays(iid_noise_scale=0.05)
    data = load_dataset(dataset_config(tmp_path, iid_noise_scale=0.05))
    assert data.x_train.shape == (320, 1, 40) and data.x_test.shape == (80, 1, 40)
    assert data.num_classes == 10 and data.x_train.dtype == torch.float32
    for ours, theirs in ((data.x_train, expected["x"]), (data.x_test, expected["x_test"])):
        assert torch.equal(ours[:, 0].view(torch.int32), torch.from_numpy(theirs.astype(np.float32)).view(torch.int32))
    assert torch.equal(data.y_train, torch.from_numpy(expected["y"]))
    assert torch.equal(data.y_test, torch.from_numpy(expected["y_test"]))

    # The cache holds the package's float64 arrays exactly, keyed by the arguments: a second load
    # reads it (no generation), other arguments get another file.
    (cached,) = (tmp_path / "mnist1d").glob("mnist1d-*.npz")
    with np.load(cached) as archive:
        assert np.array_equal(archive["x_train"].view(np.uint64), expected["x"].view(np.uint64))
    monkeypatch.setattr(m1d, "generate", lambda args: pytest.fail("regenerated despite the cache"))
    again = load_dataset(dataset_config(tmp_path, iid_noise_scale=0.05))
    assert torch.equal(again.x_train, data.x_train)
    other = dataset_config(tmp_path)
    assert m1d.cache_path(other, m1d.generation_args(other)) != cached


def test_loading_leaves_every_global_rng_untouched(tmp_path):
    random.seed(1234)
    np.random.seed(5678)
    torch.manual_seed(91011)
    before = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    load_dataset(dataset_config(tmp_path, data_seed=7))  # generated: the package reseeds both
    after = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    assert before[0] == after[0]
    assert all(np.array_equal(a, b) for a, b in zip(before[1], after[1]))
    assert torch.equal(before[2], after[2])


def test_bad_generation_arguments_are_one_line_errors(tmp_path):
    for keys, message in (({"train_split": 1.0}, "dataset.train_split"), ({"num_samples": 5}, "dataset.num_samples"),
                          ({"padding": [5, 1]}, "dataset.padding")):
        with pytest.raises(ValueError, match=message):
            load_dataset(dataset_config(tmp_path, **keys))


def test_cnn1d_is_the_papers_network():
    model = build_model(OmegaConf.create({"name": "cnn1d", "width": 25, "activation": "relu", "smelu_beta": 1.0,
                                          "dropout": 0.0}), (1, 40), 10, torch.Generator().manual_seed(0))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 25, (5,), (2,), (1,)), (25, 25, (3,), (2,), (1,)), (25, 25, (3,), (2,), (1,))]
    assert model.fc.in_features == 125 and model(torch.zeros(3, 1, 40)).shape == (3, 10)
    assert list(model.representation_layers()) == ["conv1", "conv2", "conv3", "logits"]
    with pytest.raises(ValueError, match="1-D signals"):
        build_model(OmegaConf.create({"name": "cnn1d", "width": 4, "activation": "relu", "smelu_beta": 1.0,
                                      "dropout": 0.0}), (32,), 10, torch.Generator())


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("width", [[], ["model.width=5"]])  # 5: replicas' slices off 16-byte boundaries
def test_a_packed_cnn1d_replica_is_bitwise_the_solo_replica(make_config, tmp_path, one_thread, width):
    dirs = {}
    for packs in (1, 3):
        config = make_config("source=all", "model=cnn1d", "model.dropout=0.2", "dataset=mnist1d", *width,
                             "dataset.num_samples=400", f"dataset.root={tmp_path}", "optimizer=adam",
                             "optimizer.lr=0.01", f"pack={packs}", "replicates=3",
                             f"output_root={tmp_path / f'pack{packs}'}")
        for start in range(0, 3, packs):
            run_job(OmegaConf.create({**config, "replicate": start}))
        dirs[packs] = [records.run_dir(config, r) for r in range(3)]
    env = records.read_json(dirs[3][0] / records.ENV_FILE)
    assert env["pack"]["mode"] == "fused"  # trained as a pack, not one after another
    logits = {p: [np.load(d / records.LOGITS_FILE).view(np.uint32) for d in dirs[p]] for p in dirs}
    for a, b, da, db in zip(logits[1], logits[3], dirs[1], dirs[3]):
        assert np.array_equal(a, b)
        wa, wb = torch.load(da / records.WEIGHTS_FILE), torch.load(db / records.WEIGHTS_FILE)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not np.array_equal(logits[3][0], logits[3][1])  # source=all: the replicas do vary


def test_preset_runs_at_smoke_size_through_the_analysis(tmp_path, capsys):
    from test_presets import analyse, job_config, sweep_jobs

    extra = (f"output_root={tmp_path}", f"dataset.root={tmp_path / 'data'}")
    jobs, config = sweep_jobs("mnist1d", "smoke", *extra)
    assert config["dataset"]["name"] == "mnist1d" and config["optimizer"]["name"] == "adam"
    for job in jobs:
        assert not run_job(OmegaConf.create(job_config("mnist1d", "smoke", job)))["failed"]
    text = analyse(capsys, tmp_path / "mnist1d")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "mnist1d" not in line]
    for model in ("linear", "mlp", "cnn1d"):
        for source in ("init", "shuffle", "reduction", "bitflip", "all"):
            assert any(f" {source} " in row and f" {model} " in row for row in rows), (source, model)
    assert "Sec. 4.2 check" in text  # the linear model's bit flip against the deeper models'
