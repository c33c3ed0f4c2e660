"""Your own model and data: construction under forked seeded RNGs, dropout from the dropout
stream, bitflip.param, representations, torch.func packs, dataset=custom and imagefolder."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF, compose_config
from hydra import compose, initialize_config_dir
from nondet import userdata
from nondet.bitflip import flip_one_ulp
from nondet.config import ConfigError, check_config
from nondet.data import data_fingerprint, load_dataset
from nondet.funcpack import ROUNDING, pack_reason
from nondet.job import resolved_config
from nondet.models import build_model, representation_layers
from nondet.seeds import make_generator
from nondet.usermodel import GlobalRandomUse, global_rng_from

HERE = __name__  # tests/ is on sys.path: `_target_` names this module's classes


class TinyNet(nn.Module):
    """A user model: its own init (normal, from the global RNG) and nn.Dropout."""

    def __init__(self, input_shape, num_classes, hidden: int = 8, p: float = 0.5):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU())
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(hidden, num_classes)
        for param in self.parameters():
            nn.init.normal_(param, std=0.5)

    def forward(self, x):
        return self.head(self.drop(self.body(x)))


class PythonRandomNet(TinyNet):
    def forward(self, x):
        random.random()
        return super().forward(x)


class ItemNet(TinyNet):
    def forward(self, x):  # control flow on a replica's own values: vmap cannot batch it
        h = super().forward(x)
        return h * (2.0 if h.sum().item() > 0 else 1.0)



class SkewNet(nn.Module):
    """Elementwise, so a torch.func pack computes each replica's own bits on any batch, except
    that under vmap a batch of ``skew`` examples is shifted: a batched kernel that rounds
    differently at one batch shape, forced. Its weight's gradient is zero, exactly."""

    def __init__(self, input_shape, num_classes, skew: int = 0):
        super().__init__()
        self.shift = nn.Parameter(torch.ones(num_classes))
        self.skew, self.out = skew, nn.Identity()  # a child module: what CKA compares

    def forward(self, x):
        out = x.flatten(1)[:, : len(self.shift)] + 0.0 * self.shift
        if x.shape[0] == self.skew and torch._C._functorch.is_batchedtensor(x):
            out = out + 1.0
        return self.out(out)

def model_cfg(**extra):
    return {"name": "custom", "_target_": f"{HERE}.TinyNet", "representations": None, **extra}


def build(seed=0, **extra):
    return build_model(model_cfg(**extra), (6,), 3, make_generator(seed))


def global_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def same_states(a, b):
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_init_seed_alone_sets_the_weights_and_the_global_rngs_are_untouched():
    before = global_states()
    a, b, c = build(0), build(0), build(1)
    assert same_states(before, global_states())
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name
    assert float(a.head.weight.detach().std()) > 0.2  # the model's own init (std 0.5), not nondet's
    assert build(0, hidden=5).body[1].out_features == 5  # +model.hidden=5


def test_unknown_constructor_argument_is_one_line():
    with pytest.raises(ConfigError, match=r"^model\._target_=.*TinyNet: .*widht") as e:
        build(0, widht=3)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no module 'no_such_pkg'"):
        build_model({"name": "custom", "_target_": "no_such_pkg.Net"}, (6,), 3, make_generator(0))


def test_dropout_draws_from_the_dropout_stream_only():
    model, x = build(0), torch.randn(4, 6)
    before = global_states()

    def masks(seed):
        g = make_generator(seed)
        with global_rng_from([g]):
            first, second = model(x), model(x)
        return first, second, g

    a1, a2, g = masks(5)
    b1, _, _ = masks(5)
    c1, _, _ = masks(6)
    assert same_states(before, global_states())  # the global stream is given back
    assert torch.equal(a1, b1) and not torch.equal(a1, a2) and not torch.equal(a1, c1)
    assert not torch.equal(g.get_state(), make_generator(5).get_state())  # the stream advanced


def test_python_random_in_forward_is_refused():
    model = build_model({**model_cfg(), "_target_": f"{HERE}.PythonRandomNet"}, (6,), 3, make_generator(0))
    state = random.getstate()
    with pytest.raises(GlobalRandomUse, match="Python's random"):
        with global_rng_from([make_generator(0)]):
            model(torch.randn(2, 6))
    assert random.getstate() == state


def test_bitflip_param_moves_one_ulp_of_the_named_parameter():
    model, reference = build(0), build(0)
    config = {"model": model_cfg(), "bitflip": {"param": "head.weight"}}
    record = flip_one_ulp(model, make_generator(3), config)
    assert record["param"] == "head.weight"
    changed = (model.head.weight != reference.head.weight).nonzero()
    assert changed.tolist() == [list(divmod(record["index"], 8))]
    before, after = float.fromhex(record["before"]), float.fromhex(record["after"])
    assert after == float(np.nextafter(np.float32(before), np.float32(np.inf if record["direction"] == "up" else -np.inf)))
    default = flip_one_ulp(build(0), make_generator(3), {"model": model_cfg(), "bitflip": {"param": None}})
    assert default["param"] == "body.1.weight"  # the first parameter in named_parameters()
    with pytest.raises(ConfigError, match=r"bitflip.param=head.wieght is not a parameter.*body\.1\.weight"):
        flip_one_ulp(build(0), make_generator(3), {"model": model_cfg(), "bitflip": {"param": "head.wieght"}})


def test_representations_default_to_children_and_take_names():
    model = build(0)
    assert list(representation_layers(model)) == ["body", "drop", "head"]
    assert list(representation_layers(model, ["body.1", "head"])) == ["body.1", "head"]
    with pytest.raises(ConfigError, match="model.representations names .'bodyy'."):
        build(0, representations=["bodyy"])


def test_torch_func_packs_or_says_why():
    x, y = torch.randn(8, 6), torch.randint(3, (8,))
    models = [build(0, p=0.0), build(1, p=0.0)]
    assert pack_reason(models, x, y, exact=False) is None
    exact = pack_reason(models, x, y, exact=True)
    assert exact is None or exact.startswith(ROUNDING)
    with_dropout = [build(0), build(1)]
    assert "dropout streams differ" in pack_reason(with_dropout, x, y, shared_dropout=False)
    item = [build_model({**model_cfg(), "_target_": f"{HERE}.ItemNet"}, (6,), 3, make_generator(s)) for s in (0, 1)]
    assert pack_reason(item, x, y).startswith("torch.func cannot vmap its training step")


def test_model_custom_composes_and_its_keys_are_the_constructors():
    config = compose_config(["model=custom", f"model._target_={HERE}.TinyNet", "+model.hidden=4"])
    check_config(config)  # a node with a _target_ takes its class's arguments
    assert config["model"]["hidden"] == 4
    with pytest.raises(ConfigError, match="model.widht is not a configuration key"):
        check_config(compose_config(["model.widht=3"]))
    # the constructor's own arguments: refused when the command starts, not in every job
    with pytest.raises(ConfigError, match=r"model._target_=.*TinyNet: .*'hiden'.*\+model.KEY=VALUE"):
        check_config(compose_config(["model=custom", f"model._target_={HERE}.TinyNet", "+model.hiden=4"]))
    with pytest.raises(ConfigError, match=r"dataset._target_=.*load_four: .*'shfit'"):
        check_config(compose_config(["dataset=custom", f"dataset._target_={HERE}.load_four", "+dataset.shfit=1"]))


# --------------------------------------------------------------------------- your own data


def arrays(n=12, shift=0.0):
    g = np.random.default_rng(0)
    x = g.normal(size=(n, 5)).astype(np.float32) + shift
    return x, np.arange(n) % 3, x[:6], np.arange(6) % 3


def load_four(shift=0.0):
    return arrays(shift=shift)


def load_datasets():
    x, y, xt, yt = arrays()
    pairs = lambda a, b: [(torch.from_numpy(a[i]), int(b[i])) for i in range(len(a))]  # noqa: E731
    return pairs(x, y), pairs(xt, yt)


def load_nan():
    x, y, xt, yt = arrays()
    x[2, 1] = np.nan
    return x, y, xt, yt


def custom(target, **extra):
    return {"name": "custom", "_target_": f"{HERE}.{target}", "train_size": None, "test_size": None,
            "augment": False, **extra}


def test_custom_dataset_forms_load_alike_and_identify_by_content():
    a = load_dataset(OmegaConf.create(custom("load_four")))
    b = load_dataset(OmegaConf.create(custom("load_datasets")))
    assert a.name == "custom" and a.num_classes == 3 and a.input_shape == (5,)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.sha256 == b.sha256 == data_fingerprint(custom("load_four"))
    assert data_fingerprint(custom("load_four", shift=1.0)) != a.sha256  # +dataset.shift=1.0
    named = compose_config(["dataset=custom", f"dataset._target_={HERE}.load_four", "+dataset.shift=1.0"])
    assert named["dataset"]["sha256"] == data_fingerprint(custom("load_four", shift=1.0))  # in the identity
    with pytest.raises(ValueError, match=r"^dataset._target_=.*load_nan: x_train contains NaN"):
        load_dataset(OmegaConf.create(custom("load_nan")))


def test_imagefolder_reads_resizes_and_numbers_classes_by_train_folders(tmp_path):
    from PIL import Image

    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
    for split, classes in (("train", ["cat", "dog", "emu"]), ("test", ["dog", "emu"])):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (10 + k, 7), colours[c]).save(tmp_path / split / c / f"{k}.png")
    cfg = {"name": "imagefolder", "root": str(tmp_path), "image_size": 4, "train_size": None,
           "test_size": None, "augment": False}
    data = load_dataset(OmegaConf.create(cfg))
    assert data.x_train.shape == (6, 3, 4, 4) and data.x_train.dtype == torch.uint8
    assert data.y_train.tolist() == [0, 0, 1, 1, 2, 2] and data.y_test.tolist() == [1, 1, 2, 2]
    assert data.x_test[0, :, 0, 0].tolist() == [0, 255, 0]  # a dog is green
    assert data_fingerprint(cfg) == data.sha256
    (tmp_path / "test" / "fox").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / "fox" / "0.png")
    userdata._LOADED.clear()
    with pytest.raises(ValueError, match=r"test/ has class folder\(s\) \['fox'\] that train/ lacks"):
        load_dataset(OmegaConf.create(cfg))


# --------------------------------------------------------------------------- runs of your own model


def custom_run(make_config, *overrides):
    return make_config("model=custom", f"model._target_={HERE}.TinyNet", "+model.hidden=8", *overrides)


def test_each_source_of_a_custom_model_changes_its_own_part_only(make_config):
    from nondet import pack

    def replicas(source):
        data = load_dataset(OmegaConf.create(custom_run(make_config)["dataset"]))
        return [pack.new_replica(custom_run(make_config, f"source={source}", f"replicate={r}"), data)
                for r in (0, 1)]

    def same(a, b, what):
        if what == "weights":
            return all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
        return torch.equal(a.generators[what].get_state(), b.generators[what].get_state())

    expected = {  # what differs between two replicates of each source
        "none": set(), "init": {"weights"}, "shuffle": {"shuffle"}, "dropout": {"dropout"},
    }
    for source, differs in expected.items():
        a, b = replicas(source)
        for part in ("weights", "shuffle", "dropout", "augment", "reduction"):
            assert same(a, b, part) != (part in differs), (source, part)


def test_custom_model_runs_none_identical_bitflip_one_ulp_and_the_global_rng_untouched(make_config):
    from nondet import records
    from nondet.job import run_job

    before = global_states()
    logits = []
    for replicate in (0, 1):
        config = custom_run(make_config, "source=none", f"replicate={replicate}")
        run_job(OmegaConf.create(config))
        logits.append(np.load(records.run_dir(config) / "logits.npy"))
    assert logits[0].tobytes() == logits[1].tobytes()
    flipped = custom_run(make_config, "source=bitflip", "replicate=1")
    run_job(OmegaConf.create(flipped))
    record = json.loads((records.run_dir(flipped) / "result.json").read_text())["bitflip"]
    assert record["param"] == "body.1.weight"  # the first parameter in named_parameters()
    before_flip = np.float32(float.fromhex(record["before"]))
    assert np.float32(float.fromhex(record["after"])) == np.nextafter(
        before_flip, np.float32(np.inf if record["direction"] == "up" else -np.inf))
    assert same_states(before, global_states())


def test_custom_model_resume_is_bitwise_exact(make_config, tmp_path, monkeypatch):
    from nondet import pack, records
    from nondet.job import run_job

    overrides = ("source=all", "replicate=1", "epochs=3", "source.lowlevel_required=false")
    whole = custom_run(make_config, *overrides, f"output_root={tmp_path / 'whole'}")
    run_job(OmegaConf.create(whole))
    broken = custom_run(make_config, *overrides, f"output_root={tmp_path / 'broken'}")
    real_epoch, calls = pack.train_pack_epoch, {"n": 0}

    def dies_in_epoch_two(group, data, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # stands in for a kill
        return real_epoch(group, data, *args)

    monkeypatch.setattr(pack, "train_pack_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_job(OmegaConf.create(broken))
    monkeypatch.setattr(pack, "train_pack_epoch", real_epoch)
    run_job(OmegaConf.create(broken))
    a, b = records.run_dir(whole), records.run_dir(broken)
    assert np.load(a / "logits.npy").tobytes() == np.load(b / "logits.npy").tobytes()
    assert json.loads((b / "env.json").read_text())["resumed_from_epoch"] == 1


def test_a_torch_func_pack_trains_every_replica(make_config, monkeypatch):
    """Where torch.func packs (a GPU; forced here), a pack's replicas match their solo runs."""
    from nondet import funcpack, records
    from nondet.job import run_job

    solo = [custom_run(make_config, "source=init", f"replicate={r}", "replicates=2", "+model.p=0.0") for r in (0, 1)]
    for config in solo:
        run_job(OmegaConf.create(config))
    monkeypatch.setattr(funcpack, "pack_reason", lambda *a, **k: None)
    packed = custom_run(make_config, "source=init", "replicates=2", "pack=2", "+model.p=0.0",
                        f"output_root={records.run_dir(solo[0]).parents[2]}-packed")
    assert len(run_job(OmegaConf.create(packed))["finished"]) == 2
    for replicate, config in enumerate(solo):
        mine = np.load(records.run_dir({**packed, "replicate": replicate}) / "logits.npy")
        np.testing.assert_allclose(mine, np.load(records.run_dir(config) / "logits.npy"), rtol=1e-4, atol=1e-5)


def test_a_custom_pack_is_tried_on_every_batch_shape_of_the_job(make_config, monkeypatch, caplog):
    """On the CPU a pack of your model is used only where it is bitwise each replica alone on
    every batch shape the job sees: the short last training batch and the last evaluation chunk
    too (forced by SkewNet, whose pack is off at one batch size only)."""
    from nondet import records, train
    from nondet.job import run_job
    from nondet.pack import ImageFamily

    monkeypatch.setattr(train, "EVAL_BATCH", 100)  # 128 test examples: chunks of 100 and 28

    def config(skew, *more):
        return make_config("model=custom", f"model._target_={HERE}.SkewNet", f"+model.skew={skew}",
                           "dataset.train_size=300", "pack=auto", "replicates=3", "source=none", *more)

    data = load_dataset(OmegaConf.create(config(0)["dataset"]))
    assert ImageFamily().apart(config(0), data) is None  # bitwise on every shape: a pack
    assert "(training batch of 12, loss)" in (ImageFamily().apart(config(12), data) or "")  # 300 = 9*32 + 12
    packed, solo = config(28), config(28, "pack=1")
    with caplog.at_level("INFO", logger="nondet"):
        run_job(OmegaConf.create(packed))
    assert "(evaluation chunk of 28, logits); training its replicas one after another" in caplog.text
    run_job(OmegaConf.create(solo))  # replicate 0 alone
    alone = np.load(records.run_dir(solo) / "logits.npy")
    for replicate in range(3):
        mine = np.load(records.run_dir({**packed, "replicate": replicate}) / "logits.npy")
        assert mine.tobytes() == alone.tobytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_custom_pack_on_the_cpu_is_each_replica_alone(make_config, threads):
    """pack=auto with the CPU's real kernels, a short last batch (300 = 9*32 + 12) and layers 5
    and 8 wide (a replica's slice off and on a 16-byte boundary): whether the job packs or not,
    every replica's logits and weights are bitwise those of the replica trained alone."""
    from nondet import records
    from nondet.job import run_job

    before = torch.get_num_threads()
    try:
        for hidden in (5, 8):
            def config(*more):
                return custom_run(make_config, f"model.hidden={hidden}", "dataset.train_size=300", "source=none",
                                  "replicates=3", f"threads={threads}", f"sweep_name=h{hidden}", *more)

            packed, solo = config("pack=auto"), config("pack=1", f"sweep_name=h{hidden}-solo")
            run_job(OmegaConf.create(packed))
            run_job(OmegaConf.create(solo))
            alone = records.run_dir(solo)
            weights = torch.load(alone / "weights.pt")
            for replicate in range(3):
                mine = records.run_dir({**packed, "replicate": replicate})
                assert np.load(mine / "logits.npy").tobytes() == np.load(alone / "logits.npy").tobytes()
                for name, tensor in torch.load(mine / "weights.pt").items():
                    assert torch.equal(tensor, weights[name]), (hidden, replicate, name)
    finally:
        torch.set_num_threads(before)


def test_a_pack_after_the_shared_prefix_takes_its_replicas_in_training_mode(make_config, monkeypatch):
    """onset_epoch=1: the replica that trained the shared prefix evaluated it (eval mode), the
    other forked from it (training mode); the pack of both trains them (forced to pack here)."""
    from nondet import funcpack
    from nondet.job import run_job

    monkeypatch.setattr(funcpack, "pack_reason", lambda *a, **k: None)
    config = custom_run(make_config, "source=shuffle", "onset_epoch=1", "replicates=2", "pack=auto")
    result = run_job(OmegaConf.create(config))
    assert len(result["finished"]) == 2 and not result.get("failed")


# --------------------------------------------------------------------------- nondet's keys, your code's


class KeyNet(nn.Module):
    """Names two of nondet's own model keys, with defaults other than nondet's (128, 0.0)."""

    def __init__(self, input_shape, num_classes, width: int = 8, dropout: float = 0.25):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.drop(self.body(x)))


def load_path(path="default.npz", num_classes=3):
    x, y, xt, yt = arrays()
    return x, y % num_classes, xt, yt % num_classes


def load_required(path):
    return arrays()


def test_nondet_keys_your_code_names_reach_it_as_recorded():
    def model_of(*overrides):
        config = compose_config(["model=custom", f"model._target_={HERE}.KeyNet", *overrides])
        check_config(config)
        model = build_model(config["model"], (6,), 3, make_generator(0))
        return config["model"], model.body[1].out_features, model.drop.p

    set_ = model_of("model.width=5", "model.dropout=0.9")
    assert set_[0]["width"] == 5 and set_[0]["dropout"] == 0.9 and set_[1:] == (5, 0.9)
    unset = model_of()  # your defaults, and config.yaml records them
    assert unset[0]["width"] == 8 and unset[0]["dropout"] == 0.25 and unset[1:] == (8, 0.25)
    # named in the runs' identity: runs that trained on your defaults whatever the node said stay apart
    assert unset[0]["nondet_keys_taken"] == ["dropout", "width"]
    assert "nondet_keys_taken" not in compose_config(["model=custom", f"model._target_={HERE}.TinyNet"])["model"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # as a launch composes it
        launched = compose("config", overrides=["model=custom", f"model._target_={HERE}.KeyNet", "model.dropout=0.0"],
                           return_hydra_config=True)
    assert resolved_config(launched)["model"]["dropout"] == 0.0  # nondet's default, given: passed
    with pytest.raises(ConfigError, match=r"^model.dropout=0.5: TinyNet takes no argument 'dropout'"):
        check_config(compose_config(["model=custom", f"model._target_={HERE}.TinyNet", "model.dropout=0.5"]))

    def data_of(*overrides):
        config = compose_config(["dataset=custom", f"dataset._target_={HERE}.load_path", *overrides])
        check_config(config)
        return config["dataset"], load_dataset(OmegaConf.create(config["dataset"]))

    dataset, data = data_of("dataset.num_classes=2", "dataset.path=big.npz")
    assert dataset["num_classes"] == 2 and data.num_classes == 2 and dataset["path"] == "big.npz"
    dataset, data = data_of()
    assert dataset["num_classes"] == 3 and data.num_classes == 3 and dataset["path"] == "default.npz"
    with pytest.raises(ConfigError, match=r"missing a required argument: 'path' \(give it with dataset.path=VALUE\)"):
        check_config(compose_config(["dataset=custom", f"dataset._target_={HERE}.load_required"]))
    with pytest.raises(ConfigError, match=r"^dataset.num_classes=2: load_four takes no argument 'num_classes'"):
        check_config(compose_config(["dataset=custom", f"dataset._target_={HERE}.load_four", "dataset.num_classes=2"]))


def test_a_module_as_target_names_a_callable_in_it():
    with pytest.raises(ConfigError, match=r"examples.custom_cnn.nets is a module, not a class or function: "
                                          r"name one in it, e.g. model._target_=examples.custom_cnn.nets.SmallCNN"):
        build_model({"name": "custom", "_target_": "examples.custom_cnn.nets"}, (6,), 3, make_generator(0))


# --------------------------------------------------------------------------- what the model returns


class Head(nn.Module):
    def __init__(self, input_shape, num_classes, extra: int = 0, shape: str = "logits"):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes + extra)
        self.shape = shape

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.training and self.shape == "numpy":
            out = out * float(np.random.rand() > -1)
        return {"logits": out, "column": out.unsqueeze(-1), "pair": (out, x)}.get(self.shape, out)


class RGBOnly(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def resnet_like(*, weights=None, **kwargs):
    """torchvision's builders: num_classes only through **kwargs, ImageNet's 1000 by default."""
    return Head((5,), kwargs.get("num_classes", 1000))


class HandsOn(nn.Module):
    """Takes **kwargs, but hands them to something that takes no num_classes."""

    def __init__(self, input_shape, **kwargs):
        super().__init__(**kwargs)
        self.fc = nn.Linear(math.prod(input_shape), 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Float64(Head):
    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes)
        self.fc.double()

    def forward(self, x):
        return self.fc(x.flatten(1).double()).float()


def load_gray():
    x, y, xt, yt = arrays(n=16)
    return x[:, :4].reshape(-1, 1, 2, 2), y, xt[:, :4].reshape(-1, 1, 2, 2), yt


def test_a_model_that_cannot_take_the_data_or_returns_other_than_its_logits_is_refused(make_config):
    from nondet.job import check_model_builds, run_job

    def check(target, *overrides, data="load_four"):
        config = make_config("model=custom", f"model._target_={HERE}.{target}", "dataset=custom",
                             f"dataset._target_={HERE}.{data}", "dataset.train_size=null",
                             "dataset.test_size=null", *overrides)
        check_model_builds(config, load_dataset(OmegaConf.create(config["dataset"])))
        return config

    check("Head")
    assert check("resnet_like")["model"]["nondet_keys_taken"] == ["num_classes"]  # through **kwargs: 3 classes
    check("HandsOn")  # built without it where **kwargs does not take it after all
    refusals = {
        ("Head", "+model.extra=3"): r"forward returned shape \(2, 6\) for a batch of 2; .*\(2, 3\) logits",
        ("Head", "+model.shape=column"): r"forward returned shape \(2, 3, 1\) .*one row of logits per example",
        ("Head", "+model.shape=pair"): r"forward returned a tuple; .*return the logits alone",
        ("Head", "+model.shape=numpy"): r"the model drew from numpy's global RNG while training",
        ("Float64", "source=bitflip", "bitflip.param=fc.weight"): r"bitflip.param=fc.weight is float64.*float32 ULP",
    }
    for (target, *overrides), message in refusals.items():
        with pytest.raises(ConfigError, match=rf"^model._target_=.*{target}: {message}|^{message}") as e:
            check(target, *overrides)
        assert "\n" not in str(e.value)
    # a model that cannot take the data: one line when the job starts, before its pack is tried
    config = make_config("model=custom", f"model._target_={HERE}.RGBOnly", "dataset=custom",
                         f"dataset._target_={HERE}.load_gray", "dataset.train_size=null", "dataset.test_size=null",
                         "pack=auto", "replicates=2", "source=init")
    with pytest.raises(ConfigError, match=r"^model._target_=.*RGBOnly cannot take the data: its forward on a batch "
                                          r"of shape \(2, 1, 2, 2\) \(torch.float32\) raised RuntimeError") as e:
        run_job(OmegaConf.create(config))
    assert "\n" not in str(e.value)


def raises_in_your_code():
    raise IndexError("index 7 is out of bounds")


def raises_out_of_memory():
    raise torch.OutOfMemoryError("CUDA out of memory")


def test_a_failure_your_code_repeats_is_not_told_to_relaunch():
    from nondet.job import failure_fix, pack_step
    from nondet.usermodel import GlobalRandomUse

    def error_of(call, *args):  # caught here, as nondet's loop catches a run's failure
        try:
            call(*args)
        except Exception as e:  # noqa: BLE001
            return e

    assert "mend the model, then relaunch" in failure_fix(GlobalRandomUse("the model drew from numpy's global RNG"))
    fix = failure_fix(error_of(raises_in_your_code))
    assert "IndexError: index 7" in fix and "test_usermodel.py" in fix and "mend it, then relaunch" in fix
    assert failure_fix(error_of(pack_step, "x", 2)) is None  # raised in nondet: may be retried
    assert failure_fix(error_of(raises_out_of_memory)) is None  # the machine's, not the code's
