"""Your own code, fingerprinted in env.json (``code_sha256``): a run trained under one version of
your model's module (or script) is never skipped, resumed or forked under another."""

from __future__ import annotations

import itertools
import json

import pytest
from omegaconf import OmegaConf

from conftest import kill_after_epoch
from test_examples import _recorded_run
from nondet import records, usercode
from nondet.config import ConfigError
from nondet.job import run_job

NET = """import math
from torch import nn


class Net(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)
"""
_names = itertools.count()


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """A package of yours on the path (a fresh name per test: modules stay imported); returns
    (the model's module file, the model overrides)."""
    package = f"mypk_{next(_names)}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    nets = tmp_path / package / "nets.py"
    nets.write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return nets, ("model=custom", f"model._target_={package}.nets.Net", "+model.hidden=8", "replicates=2")


def edit(path):
    # another length too: the file's hash is remembered per (size, mtime) within a process
    path.write_text(path.read_text().replace("nn.ReLU()", "nn.Sigmoid()"))


def test_an_edited_model_is_not_skipped_nor_resumed(make_config, user_model, monkeypatch):
    nets, model = user_model
    done = make_config(*model, "replicate=0")
    run_job(OmegaConf.create(done))
    env = json.loads((records.run_dir(done) / records.ENV_FILE).read_text())
    assert env[usercode.CODE_KEY]["model._target_"]["file"] == str(nets.resolve())
    undo = kill_after_epoch(monkeypatch, 2)  # replicate 1 keeps the checkpoint of epoch 1
    killed = make_config(*model, "replicate=1")
    run_job(OmegaConf.create(killed))
    undo()
    assert (records.run_dir(killed) / records.CHECKPOINT_FILE).exists()
    edit(nets)
    for config, what in ((done, "the finished run"), (killed, "the resumable run")):
        with pytest.raises(ConfigError, match=rf"^{nets.resolve()} \(model._target_\) has changed since {what} "
                                              r".*a new sweep_name or output_root.*revert nets.py"):
            run_job(OmegaConf.create(config))
    # a new sweep trains the new code; runs recorded before code_sha256 existed are taken as they are
    assert run_job(OmegaConf.create(make_config(*model, "replicate=0", "sweep_name=new")))["finished"]
    env.pop(usercode.CODE_KEY)
    records.write_json(records.run_dir(done) / records.ENV_FILE, env)
    assert run_job(OmegaConf.create(done))["skipped"] == [str(records.run_dir(done))]


def test_an_onset_prefix_trained_under_other_code_is_not_forked(make_config, user_model):
    nets, model = user_model
    first = make_config(*model, "source=shuffle", "onset_epoch=1", "replicate=0")
    run_job(OmegaConf.create(first))
    edit(nets)
    second = make_config(*model, "source=shuffle", "onset_epoch=1", "replicate=1")
    with pytest.raises(ConfigError, match=r"nets.py \(model._target_\) has changed since the shared onset prefix"):
        run_job(OmegaConf.create(second))
    assert not records.run_dir(second).exists()


def test_an_edited_training_script_is_not_skipped(make_config, tmp_path):
    script = tmp_path / "my_train.py"
    script.write_text("# a training loop of yours\n")
    config = make_config(f"script={script}", "epochs=1", "pack=1")
    assert _recorded_run(config).outcome["finished"]
    assert _recorded_run(config).outcome["skipped"]
    script.write_text("# a training loop of yours, changed\n")
    with pytest.raises(ConfigError, match=r"my_train.py \(script\) has changed since the finished run"):
        _recorded_run(config)


def test_a_library_target_is_not_your_code(make_config):
    """A model an installed library defines is versioned by the library (env.json records torch's):
    upgrading it must not make a finished sweep refuse."""
    config = make_config("model=custom", "model._target_=torchvision.models.resnet18")
    assert usercode.code_files(config) == {} and usercode.code_identity(config) == {}
