"""Packs (``pack=P``): replicas trained together in one process, as one fused computation.

The promise (nondet/pack.py): on the CPU in fp32 a replica trained in a pack is bitwise the
replica trained alone (split convolutions; grouped ones differ by rounding and are checked for
consistency instead), every run directory holds the solo contract, and resume works per replica.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf

from conftest import REPO
from nondet import pack, records, train
from nondet.data import load_dataset
from nondet.job import run_job
from nondet.models import SeededDropout, packed
from nondet.models.dense import DenseStep
from nondet.pipeline import crop_flip, crop_flip_draws, random_crop_flip
from nondet.seeds import make_generator

CONTRACT = ["config.yaml", "env.json", "seeds.json", "metrics.jsonl", "logits.npy", "labels.npy",
            "weights.pt", "result.json"]
IMAGES = ["dataset.image_shape=[3,8,8]", "dataset.augment=true", "model.width=8"]
MODELS = {
    "linear": ["model=linear", "model.dropout=0.2"],
    "mlp": ["model=mlp", "model.dropout=0.2"],
    "mlp-images": ["model=mlp", "model.depth=2", *IMAGES, "model.dropout=0.2"],  # replica-major, augmented
    # Layers 5 to 7 wide: replicas' slices start off 16-byte boundaries, where MKL rounds differently.
    "mlp-odd": ["model=mlp", "model.width=6", "dataset.input_dim=5", "model.dropout=0.2"],
    "conv1-odd": ["model=conv1", "dataset.image_shape=[3,8,8]", "dataset.augment=true", "model.width=5"],
    "conv1": ["model=conv1", *IMAGES],
    "resnet6": ["model=resnet6", *IMAGES, "model.dropout=0.2"],
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP's oversubscription
    stalls (the comparisons are within a test, so the thread count is the same on both sides)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(config):
    return run_job(OmegaConf.create(config))


def solo_and_packed(make_config, tmp_path, *overrides, replicates=3):
    """The same replicas trained one per job (pack=1) and as one pack; their directories."""
    dirs = {}
    for packs in (1, replicates):
        root = f"output_root={tmp_path / f'pack{packs}'}"
        config = make_config(f"pack={packs}", f"replicates={replicates}", root, *overrides)
        for start in range(0, replicates, packs):
            run({**config, "replicate": start})
        dirs[packs] = [records.run_dir(config, r) for r in range(replicates)]
    return dirs[1], dirs[replicates]


def bits(directory):
    return np.load(directory / "logits.npy").view(np.uint32)


def weights(directory):
    return torch.load(directory / "weights.pt")


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metrics(directory):
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in records.read_metrics(directory / "metrics.jsonl")]


def result(directory):
    out = json.loads((directory / "result.json").read_text())
    out.pop("train_seconds")
    return out


# --- exactness -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_a_packed_replica_is_bitwise_the_solo_replica(make_config, tmp_path, model):
    solo, packed = solo_and_packed(make_config, tmp_path, "source=all", *MODELS[model])
    for a, b in zip(solo, packed):
        assert np.array_equal(bits(a), bits(b))
        assert same_weights(weights(a), weights(b))
        assert metrics(a) == metrics(b)
        assert result(a) == result(b)  # bitflip record included
        assert (a / "seeds.json").read_text() == (b / "seeds.json").read_text()
    assert not np.array_equal(bits(packed[0]), bits(packed[1]))  # source=all: they do vary


@pytest.mark.parametrize("model, major", [("linear", True), ("mlp", True), ("mlp-images", True),
                                          ("conv1", False), ("resnet6", False)])
def test_dense_packs_run_replica_major_and_convolutional_ones_folded(make_config, model, major):
    """Both layouts of the activations are what the bitwise test above exercises."""
    config = make_config("pack=2", "replicates=2", *MODELS[model])
    data = load_dataset(OmegaConf.create(config["dataset"]), "cpu")
    replicas = [pack.new_replica({**config, "replicate": r}, data) for r in range(2)]
    assert packed.is_replica_major(pack.Pack(replicas, config, "split").model) is major


@pytest.mark.parametrize("optimizer", ["optimizer=adam", "optimizer.nesterov=true", "precision=bf16"])
def test_optimizers_and_onset_are_bitwise_too(make_config, tmp_path, optimizer):
    solo, packed = solo_and_packed(
        make_config, tmp_path, "source=shuffle_reduction", optimizer, "onset_epoch=1", "epochs=3",
        "batch_size=30", "shuffle_window=16", "eval_every=2", replicates=2,
    )
    for a, b in zip(solo, packed):
        assert np.array_equal(bits(a), bits(b)) and metrics(a) == metrics(b)


def test_source_none_gives_identical_replicas_in_a_pack(make_config, tmp_path):
    config = make_config("source=none", "pack=3", "replicates=3", *MODELS["mlp"],
                         f"output_root={tmp_path}")
    assert len(run(config)["finished"]) == 3
    dirs = [records.run_dir(config, r) for r in range(3)]
    for directory in dirs[1:]:
        assert np.array_equal(bits(directory), bits(dirs[0]))
        assert same_weights(weights(directory), weights(dirs[0]))


def test_grouped_convolutions_are_consistent_and_close_to_solo(make_config, tmp_path, monkeypatch):
    """Grouped convolutions round differently from solo ones: not bitwise, but every replica
    of a configuration sees kernels of one shape (a short last pack is filled with spares), so
    a control is still bitwise constant across packs."""
    solo = make_config("source=none", "pack=1", "replicates=1", *MODELS["resnet6"],
                       f"output_root={tmp_path / 'solo'}")
    run(solo)
    monkeypatch.setattr(pack, "default_conv_mode", lambda device: "grouped")
    config = make_config("source=none", "pack=3", "replicates=4", *MODELS["resnet6"],
                         f"output_root={tmp_path / 'grouped'}")
    run(config)
    run({**config, "replicate": 3})  # the last pack: one replica and two spares
    dirs = [records.run_dir(config, r) for r in range(4)]
    for directory in dirs[1:]:
        assert np.array_equal(bits(directory), bits(dirs[0]))
    logits_solo = np.load(records.run_dir(solo) / "logits.npy")
    logits_grouped = np.load(dirs[0] / "logits.npy")
    assert np.allclose(logits_grouped, logits_solo, rtol=0, atol=1e-3)
    env = json.loads((dirs[3] / "env.json").read_text())
    assert env["pack"]["conv_mode"] == "grouped" and env["pack"]["members"] == [3]


# --- the run directory contract ------------------------------------------------------------


def test_a_packed_job_writes_the_solo_contract(make_config, tmp_path):
    config = make_config("source=bitflip", "pack=2", "replicates=3", "epochs=3",
                         f"output_root={tmp_path}")
    outcome = run(config)
    assert len(outcome["finished"]) == 2 and not outcome["failed"]
    assert len(run({**config, "replicate": 2})["finished"]) == 1  # a short last pack
    for replicate in range(3):
        directory = records.run_dir(config, replicate)
        for name in CONTRACT:
            assert (directory / name).is_file(), name
        assert not (directory / "checkpoint.pt").exists() and not list(directory.glob(".*.tmp"))
        saved = yaml.safe_load((directory / "config.yaml").read_text())
        assert saved["replicate"] == replicate and saved["pack"] == 2
        env = json.loads((directory / "env.json").read_text())
        assert env["pack"]["members"] == ([0, 1] if replicate < 2 else [2])
        rows = records.read_metrics(directory / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == [1, 2, 3] and all(r["seconds"] > 0 for r in rows)
        logits, labels = np.load(directory / "logits.npy"), np.load(directory / "labels.npy")
        assert logits.dtype == np.float32 and logits.shape == (128, 10) and labels.dtype == np.int64
        out = json.loads((directory / "result.json").read_text())
        assert out["test_accuracy"] == pytest.approx(100.0 * float((logits.argmax(1) == labels).mean()))
        assert out["replicate"] == replicate and out["bitflip"]["param"] in weights(directory)
    # on the CPU a packed replica is the solo one: the pack size does not move its directory
    solo = make_config("source=bitflip", "pack=1", "replicates=3", "epochs=3", f"output_root={tmp_path}")
    assert records.run_dir(solo, 0) == records.run_dir(config, 0)


def test_finished_replicas_of_a_pack_are_skipped(make_config, tmp_path):
    config = make_config("source=init", "pack=3", "replicates=3", f"output_root={tmp_path}")
    run(config)
    shutil.rmtree(records.run_dir(config, 1))
    outcome = run(config)
    assert outcome["finished"] == [str(records.run_dir(config, 1))] and len(outcome["skipped"]) == 2


def test_a_failing_pack_leaves_error_txt_in_every_member(make_config, tmp_path, monkeypatch):
    config = make_config("source=init", "pack=2", "replicates=2", f"output_root={tmp_path}")

    def boom(group, data, *args):
        raise RuntimeError("boom in the pack")

    monkeypatch.setattr(pack, "train_pack_epoch", boom)
    outcome = run(config)
    assert len(outcome["failed"]) == 2
    for replicate in range(2):
        assert "boom in the pack" in (records.run_dir(config, replicate) / "error.txt").read_text()


def test_unpackable_models_train_one_after_another(make_config, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pack, "sequential_reason", lambda config, data: "no packed form (test)")
    config = make_config("source=init", "pack=2", "replicates=2", f"output_root={tmp_path}")
    with caplog.at_level("INFO", logger="nondet"):
        assert len(run(config)["finished"]) == 2
    assert "one after another" in caplog.text


# --- resume --------------------------------------------------------------------------------


def test_resume_inside_a_pack_is_bitwise_exact(make_config, tmp_path, monkeypatch):
    overrides = ("source=all", "pack=3", "replicates=3", "epochs=4", *MODELS["mlp"])
    whole = make_config(*overrides, f"output_root={tmp_path / 'whole'}")
    run(whole)

    broken = make_config(*overrides, f"output_root={tmp_path / 'broken'}")
    real_epoch, calls = pack.train_pack_epoch, {"n": 0}

    def dies_in_epoch_three(group, data, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill: no error.txt, checkpoints of epoch 2 left behind
        return real_epoch(group, data, *args)

    monkeypatch.setattr(pack, "train_pack_epoch", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run(broken)
    monkeypatch.setattr(pack, "train_pack_epoch", real_epoch)
    dirs = [records.run_dir(broken, r) for r in range(3)]
    assert all((d / "checkpoint.pt").exists() and not records.is_done(d) for d in dirs)

    # Mixed states: r0 finished (copied from the whole run), r1 at its checkpoint of epoch 2,
    # r2 started over. r2 trains alone to epoch 2, then r1 and r2 go on together.
    shutil.rmtree(dirs[0])
    shutil.copytree(records.run_dir(whole, 0), dirs[0])
    shutil.rmtree(dirs[2])
    outcome = run(broken)
    assert outcome["skipped"] == [str(dirs[0])] and len(outcome["finished"]) == 2
    for replicate, directory in enumerate(dirs):
        reference = records.run_dir(whole, replicate)
        assert np.array_equal(bits(directory), bits(reference))
        assert same_weights(weights(directory), weights(reference))
        assert metrics(directory) == metrics(reference)
    assert json.loads((dirs[1] / "env.json").read_text())["resumed_from_epoch"] == 2
    assert json.loads((dirs[2] / "env.json").read_text())["resumed_from_epoch"] is None


def test_a_pack_checkpoint_is_a_solo_checkpoint(make_config, tmp_path, monkeypatch):
    """checkpoint.pt has the solo format: a pack of one resumes a replica a pack of two started."""
    overrides = ("source=all", "pack=2", "replicates=2", "epochs=3", *MODELS["mlp"])
    whole = make_config(*overrides, f"output_root={tmp_path / 'whole'}")
    run(whole)
    broken = make_config(*overrides, f"output_root={tmp_path / 'broken'}")
    real_epoch = pack.train_pack_epoch

    def dies_in_epoch_three(group, data, *args):
        if group.epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(group, data, *args)

    monkeypatch.setattr(pack, "train_pack_epoch", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run(broken)
    monkeypatch.setattr(pack, "train_pack_epoch", real_epoch)
    directory = records.run_dir(broken, 1)
    data = load_dataset(OmegaConf.create(broken["dataset"]), "cpu")
    solo = {**broken, "replicate": 1, "pack": 1}
    train.train_job([(solo, directory)], data, "deterministic", pack.ImageFamily(),
                    finished=lambda *a: None, failed=lambda d: pytest.fail(f"{d} failed"))
    assert np.array_equal(bits(directory), bits(records.run_dir(whole, 1)))
    assert metrics(directory) == metrics(records.run_dir(whole, 1))


# --- the pieces ----------------------------------------------------------------------------


def test_crop_flip_draws_match_the_solo_pipeline():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    a, b = make_generator(5), make_generator(5)
    expected = random_crop_flip(x, a)
    offsets, flips = crop_flip_draws(6, b, 4)
    assert torch.equal(crop_flip(x, offsets, flips), expected)
    assert torch.equal(a.get_state(), b.get_state())


def test_dropout_masks_match_seeded_dropout():
    layer = SeededDropout(0.3, make_generator(2)).train()
    x = torch.ones(4, 5)
    assert torch.equal(layer(x), x * packed.dropout_mask((4, 5), 0.3, make_generator(2)))


@pytest.mark.parametrize("batch", [1, 7, 16, 17, 32, 100, 513])
def test_training_loss_reduces_like_cross_entropy(batch):
    logits, labels = torch.randn(3, batch, 10) * 3, torch.randint(0, 10, (3, batch))
    solo = torch.stack([F.cross_entropy(logits[p], labels[p]) for p in range(3)])
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(3, batch)
    assert torch.equal(pack._nll_mean_cpu(losses), solo)


def test_the_step_loop_never_synchronises(make_config, monkeypatch):
    config = make_config("source=all", "pack=2", "replicates=2", "model.dropout=0.2")
    data = load_dataset(OmegaConf.create(config["dataset"]), "cpu")
    group = pack.Pack([pack.new_replica({**config, "replicate": r}, data) for r in range(2)], config, "split")
    calls = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k:
                            calls.append(_name) or _real(self, *a, **k))
    pack.train_pack_epoch(group, data)
    assert calls == []


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("overrides", [
    ["model.dropout=0.2", "model.depth=2", "dataset.train_size=100", "batch_size=24"],  # short last batch
    ["model=linear", "model.dropout=0.2"],
    ["model.width=6", "dataset.input_dim=5", "optimizer=adam"],  # slices off 16-byte boundaries
    *[[f"model.activation={name}", "model.depth=2"] for name in ("gelu", "silu", "tanh", "softplus", "leaky_relu")],
])
def test_the_dense_step_by_hand_is_autograds_step(make_config, monkeypatch, overrides, threads):
    """``DenseStep`` runs the kernels autograd runs, so an epoch of it leaves every weight,
    optimizer state and loss bitwise as the autograd step does."""
    torch.set_num_threads(threads)
    config = make_config("source=all", "pack=3", "replicates=3", *overrides)
    data = load_dataset(OmegaConf.create(config["dataset"]), "cpu")

    def epoch(by_hand):
        group = pack.Pack([pack.new_replica({**config, "replicate": r}, data) for r in range(3)], config, "split")
        assert DenseStep.of(group.model, "fp32", "cpu") is not None
        if not by_hand:
            monkeypatch.setattr(DenseStep, "of", classmethod(lambda cls, *args: None))
        losses = [pack.train_pack_epoch(group, data) for _ in range(2)]
        monkeypatch.undo()
        return losses, group.params, group.state

    (hand_losses, hand_params, hand_state), (losses, params, state) = epoch(True), epoch(False)
    assert all(torch.equal(a, b) for a, b in zip(hand_losses, losses))
    assert all(torch.equal(a, b) for a, b in zip(hand_params, params))
    for key in state:
        assert all(torch.equal(a, b) for a, b in zip(hand_state[key], state[key]))


@pytest.mark.parametrize("overrides, precision", [
    (["model.activation=smelu"], "fp32"), (["model=conv1", "dataset.image_shape=[3,8,8]"], "fp32"), ([], "bf16"),
])
def test_other_models_and_precisions_take_autograds_step(make_config, overrides, precision):
    config = make_config("pack=2", "replicates=2", *overrides)
    data = load_dataset(OmegaConf.create(config["dataset"]), "cpu")
    group = pack.Pack([pack.new_replica({**config, "replicate": r}, data) for r in range(2)], config, "split")
    assert DenseStep.of(group.model, precision, "cpu") is None
    assert DenseStep.of(group.model, "fp32", "cuda") is None


@pytest.mark.slow
def test_a_packed_sweep_from_the_command_line(tmp_path):
    args = ["-m", "source=init,none", "dataset=synthetic", "replicates=3", "pack=2", "epochs=2", "dataset.train_size=256",
            "dataset.test_size=128", "model.width=16", "device=cpu", f"output_root={tmp_path}"]
    out = subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.rglob("result.json"))
    assert len(runs) == 6  # 2 sources x 3 replicates, in 2 x 2 jobs
    assert len(list(tmp_path.rglob("pack-r0000-r0001"))) == 2
    for directory in runs:
        assert all((directory / name).is_file() for name in CONTRACT)
    assert "6 runs trained now" in out.stdout


def test_large_convolutional_packs_train_one_at_a_time_on_the_cpu(make_config):
    """On the CPU a pack of big convolutional models is slower (docs/benchmarks.md); the split
    convolutions are the solo computation, so training them one at a time changes no result."""
    from types import SimpleNamespace

    small = make_config("model=resnet6", "dataset.image_shape=[3,8,8]", "pack=4")
    big = make_config("model=resnet14", "dataset.image_shape=[3,32,32]", "pack=4", "batch_size=512")
    assert pack.sequential_reason(small, SimpleNamespace(input_shape=(3, 8, 8))) is None
    assert "slower" in pack.sequential_reason(big, SimpleNamespace(input_shape=(3, 32, 32)))
    assert pack.sequential_reason(make_config("pack=4"), SimpleNamespace(input_shape=(32,))) is None
    assert "no packed form" in pack.sequential_reason(
        make_config("model=vgg11", "dataset.image_shape=[3,32,32]", "pack=4"), SimpleNamespace(input_shape=(3, 32, 32)))


def test_snapshot_ensembles_train_in_a_pack_bitwise_as_alone(make_config, tmp_path):
    overrides = ("source=init", "schedule=snapshot", "schedule.cycles=2", "replicates=3", "epochs=3")
    for pack_size in (1, 3):
        root = f"output_root={tmp_path / str(pack_size)}"
        for replicate in range(0, 3, pack_size):
            run(make_config(*overrides, f"pack={pack_size}", f"replicate={replicate}", root))
    for replicate in range(3):
        alone = records.run_dir(make_config(*overrides, "pack=1", f"output_root={tmp_path / '1'}"), replicate)
        packed = records.run_dir(make_config(*overrides, "pack=3", f"output_root={tmp_path / '3'}"), replicate)
        assert json.loads((packed / "env.json").read_text())["pack"]["members"] == [0, 1, 2]
        for k in (1, 2):
            snap = f"snapshots/{k}/logits.npy"
            assert np.array_equal(np.load(packed / snap).view(np.uint32), np.load(alone / snap).view(np.uint32))
        assert np.array_equal(bits(packed), bits(alone))


# --- the batched GEMM, where it is the solo GEMM -------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_the_default_mlp_packs_bitwise_with_either_thread_count(make_config, tmp_path, threads):
    """The default MLP's shapes (batch 32, 128 hidden units, 10 classes): MKL's batched GEMM
    rounds like the solo GEMM for some of its products and not for others, depending on the
    thread count (on the machine these numbers come from: the output layer's weight gradient
    differs with 2 threads); the pack uses it only where the per-layout trial found it equal."""
    torch.set_num_threads(threads)
    solo, packed_dirs = solo_and_packed(make_config, tmp_path, "source=init", "model.width=128",
                                        "dataset.train_size=128", "epochs=1", replicates=3)
    for a, b in zip(solo, packed_dirs):
        assert np.array_equal(bits(a), bits(b))
        assert same_weights(weights(a), weights(b))


@pytest.mark.parametrize("way", ["split", "solo"])
def test_a_pack_without_the_batched_gemm_is_bitwise_too(make_config, tmp_path, monkeypatch, way):
    """The per-replica GEMMs, which the pack falls back on where a batched kernel rounds
    differently, are the solo computation (``split`` where the replicas' slices are aligned as
    the default MLP's are; ``solo`` anywhere)."""
    monkeypatch.setattr(packed, "gemm_way", lambda a, b, bias: way)
    solo, packed_dirs = solo_and_packed(make_config, tmp_path, "source=all", "model.dropout=0.2")
    for a, b in zip(solo, packed_dirs):
        assert np.array_equal(bits(a), bits(b))
        assert same_weights(weights(a), weights(b))


def _offset(t, floats):
    """``t``'s values in a tensor of its strides that starts ``floats`` floats past a 64-byte boundary."""
    buffer = torch.empty(t.numel() + 32)
    start = (-buffer.data_ptr() // 4) % 16 + floats
    return buffer.as_strided(t.shape, t.stride(), start).copy_(t)


def test_every_gemm_of_a_pack_is_the_gemm_of_each_replica_alone():
    """Whatever way ``gemm_way`` picks (batched, per replica into the pack's layout, or per
    replica on fresh copies), each replica's product is bitwise ``torch.mm``/``addmm`` on its
    own freshly allocated operands, as its layer computes alone: for the packed linear layer's
    layouts (forward, grad_x, grad_w), widths whose replica slices start off 16-byte boundaries
    (5, 6, 7), and operands that start off one themselves."""
    generator = torch.Generator().manual_seed(1)
    for width in (16, 6, 5, 7):
        layouts = [  # (a, b, bias) as the packed linear layer lays them out
            (torch.randn(32, 4, width).transpose(0, 1), torch.randn(4, 10, width).transpose(1, 2), True),
            (torch.randn(4, 32, 10), torch.randn(4, 10, width), False),
            (torch.randn(4, 32, 10).transpose(1, 2), torch.randn(4, 32, width), False),
            (_offset(torch.randn(4, 32, width), 1), torch.randn(4, width, 10), True),
            (torch.randn(4, 32, width), _offset(torch.randn(4, width, 10), 2), False),
        ]
        for a, b, bias in layouts:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                c = torch.randn(a.shape[0], b.shape[2], generator=generator) if bias else None
                got = packed.packed_gemm(a, b, c, batch_major=False)
                for p in range(a.shape[0]):
                    x, y = a[p].clone(), b[p].clone()  # fresh allocations, as a solo layer's
                    alone = torch.mm(x, y) if c is None else torch.addmm(c[p], x, y)
                    assert torch.equal(got[p], alone), (width, a.stride(), threads, packed.gemm_way(a, b, bias))
    ways = set(packed._GEMM_WAY.values())
    assert "batched" in ways and ways - {"batched"}  # tried once per layout: both verdicts occur


def test_a_pack_that_writes_no_checkpoint_builds_no_torch_optimizer(make_config, tmp_path, monkeypatch):
    """The first torch.optim optimizer of a process imports torch._dynamo (about a second); a
    pack steps through torch's functional update and builds its replicas' optimizers only for a
    checkpoint. Its run directories are those of a pack that built them."""
    built = []
    for cls in (torch.optim.SGD, torch.optim.Adam):
        real = cls.__init__
        counted = functools.wraps(real)(lambda self, *a, _real=real, **k: built.append(1) or _real(self, *a, **k))
        monkeypatch.setattr(cls, "__init__", counted)
    plain = {}
    for name in ("sgd", "adam"):
        config = make_config("pack=2", "replicates=2", "checkpoint_every=auto", f"optimizer={name}",
                             f"output_root={tmp_path / name}")
        run(config)
        assert built == [], name
        plain[name] = records.run_dir(config, 1)
        assert (plain[name] / "result.json").exists() and not (plain[name] / "checkpoint.pt").exists()
    config = make_config("pack=2", "replicates=2", "checkpoint_every=1", f"output_root={tmp_path / 'ck'}")
    run(config)  # a checkpoint after epoch 1 builds them, and the runs end where the others did
    assert len(built) == 2
    assert np.array_equal(bits(records.run_dir(config, 1)), bits(plain["sgd"]))
    assert same_weights(weights(records.run_dir(config, 1)), weights(plain["sgd"]))


def test_the_param_group_is_torch_optims():
    from nondet.optim import build_optimizer, param_group

    for name in ("sgd", "adam"):
        cfg = compose_optimizer(name)
        real = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))]).param_groups[0]
        assert param_group(cfg) == {k: v for k, v in real.items() if k != "params"}


def compose_optimizer(name):
    from conftest import compose_config

    return compose_config([f"optimizer={name}"])["optimizer"]
