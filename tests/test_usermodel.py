"""Your own model and data: construction under forked seeded RNGs, dropout from the dropout
stream, bitflip.param, representations, torch.func packs, dataset=custom and imagefolder."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import compose_config
from nondet import userdata
from nondet.bitflip import flip_one_ulp
from nondet.config import ConfigError, check_config
from nondet.data import data_fingerprint, load_dataset
from nondet.funcpack import ROUNDING, pack_reason
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
    from omegaconf import OmegaConf

    a = load_dataset(OmegaConf.create(custom("load_four")))
    b = load_dataset(OmegaConf.create(custom("load_datasets")))
    assert a.name == "custom" and a.num_classes == 3 and a.input_shape == (5,)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.sha256 == b.sha256 == data_fingerprint(custom("load_four"))
    assert data_fingerprint(custom("load_four", shift=1.0)) != a.sha256  # +dataset.shift=1.0
    with pytest.raises(ValueError, match=r"^dataset._target_=.*load_nan: x_train contains NaN"):
        load_dataset(OmegaConf.create(custom("load_nan")))


def test_imagefolder_reads_resizes_and_numbers_classes_by_train_folders(tmp_path):
    from omegaconf import OmegaConf
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
