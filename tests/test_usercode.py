"""Your own code, fingerprinted in env.json (``code_sha256``): a run trained under one version of
your model's module (or script) is never skipped, resumed or forked under another."""

from __future__ import annotations

import itertools
import json
import sys
import re
import shutil

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


def test_an_edited_model_is_not_skipped_nor_resumed(make_config, user_model, monkeypatch, tmp_path):
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
    for config, what in ((done, "the finished run"), (killed, "the finished run"), (killed, "the resumable run")):
        if what == "the resumable run":  # alone in its group now
            shutil.move(records.run_dir(done), tmp_path / "kept")
        refused(run_job(OmegaConf.create(config)), records.run_dir(config),
                rf"^{nets.resolve()} \(model._target_\) has changed since {what} "
                r".*a new sweep_name or output_root.*revert nets.py")
    shutil.move(tmp_path / "kept", records.run_dir(done))
    # a new sweep trains the new code; runs recorded before code_sha256 existed are taken as they are
    assert run_job(OmegaConf.create(make_config(*model, "replicate=0", "sweep_name=new")))["finished"]
    for config in (done, killed):
        env_file = records.run_dir(config) / records.ENV_FILE
        env = json.loads(env_file.read_text())
        env.pop(usercode.CODE_KEY)
        records.write_json(env_file, env)
    assert run_job(OmegaConf.create(done))["skipped"] == [str(records.run_dir(done))]


def refused(outcome: dict, directory, message: str) -> None:
    """The job refused ``directory`` in one line (its fix; error.txt's last line if unfinished)."""
    assert outcome["failed"] == [str(directory)] and not outcome["finished"]
    assert re.search(message, outcome["fixes"][str(directory)])
    if not records.is_done(directory):
        assert re.search(message, (directory / records.ERROR_FILE).read_text().splitlines()[-1].split(": ", 1)[1])


def test_an_onset_prefix_trained_under_other_code_is_not_forked(make_config, user_model):
    nets, model = user_model
    first = make_config(*model, "source=shuffle", "onset_epoch=1", "replicate=0")
    run_job(OmegaConf.create(first))
    shutil.rmtree(records.run_dir(first))  # the prefix alone holds the old code
    edit(nets)
    second = make_config(*model, "source=shuffle", "onset_epoch=1", "replicate=1")
    refused(run_job(OmegaConf.create(second)), records.run_dir(second),
            r"nets.py \(model._target_\) has changed since the shared onset prefix")
    assert not (records.run_dir(second) / records.CONFIG_FILE).exists()


def test_a_sweep_extended_under_other_code_is_refused_and_named(make_config, user_model, tmp_path):
    """A replicate added to a group (``replicates=3`` after 2), or trained alone, under an edited
    model is refused: by the launch's check on any launcher, and by the job itself (error.txt);
    a row whose runs were trained under two versions anyway is named by the analysis."""
    from analysis.compare import arm_notes
    from analysis.load import load_sweep
    from conftest import CONF, tiny_for
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    from nondet.job import check_job

    nets, model = user_model
    model = [*model[:-1], "replicates=3", "epochs=1"]
    for replicate in (0, 1):
        run_job(OmegaConf.create(make_config(*model, f"replicate={replicate}")))
    sweep = tmp_path / "outputs" / "default"
    good = load_sweep(sweep)
    assert not any("versions of" in n for n in good.notes)
    edit(nets)
    added = make_config(*model, "replicate=2")
    refused(run_job(OmegaConf.create(added)), records.run_dir(added),
            r"nets.py \(model._target_\) has changed since the finished run .*r0000 was trained with it")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*tiny_for(model), *model, "replicate=2", f"output_root={tmp_path / 'outputs'}"],
                      return_hydra_config=True)
    cfg.hydra.mode = RunMode.MULTIRUN
    for local in (True, False):  # the basic launcher's jobs, and a cluster's (submitit)
        with pytest.raises(ConfigError, match=r"nets.py \(model._target_\) has changed since the finished run"):
            check_job(cfg, local=local)
    # runs of two versions in one row (code_sha256 as an edit between launches leaves it)
    env_file = records.run_dir(added, 1) / records.ENV_FILE
    env = json.loads(env_file.read_text())
    env[usercode.CODE_KEY]["model._target_"]["sha256"] = "0" * 64
    records.write_json(env_file, env)
    (group,) = load_sweep(sweep).groups
    (note,) = [n for n in group.notes if "versions of" in n]
    assert f"2 versions of {nets.resolve()} (model._target_: " in note and "0000000000 for r0001" in note
    assert any("versions of" in n for n in arm_notes(group, "A"))  # analysis.compare shows it too


def test_an_edited_training_script_is_not_skipped(make_config, tmp_path, monkeypatch):
    script = tmp_path / "my_train.py"
    script.write_text("# a training loop of yours\n")
    config = make_config(f"script={script}", "epochs=1", "pack=1")
    assert _recorded_run(config).outcome["finished"]
    assert _recorded_run(config).outcome["skipped"]
    script.write_text("# a training loop of yours, changed\n")
    for replicate in (0, 1):  # the finished run, and one the sweep adds to its group
        one = {**config, "replicate": replicate}
        refused(_recorded_run(one).outcome, records.run_dir(one),
                r"my_train.py \(script\) has changed since the finished run .*r0000 was")
    # and the script's launch says it once, in one line, before any job starts
    from conftest import CONF, TINY
    from hydra import compose, initialize_config_dir

    from nondet import callbacks

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"script={script}", "epochs=1", "replicate=1",
                                           f"output_root={tmp_path / 'outputs'}"], return_hydra_config=True)
    monkeypatch.setattr(callbacks, "CHECK_JOBS", False)  # as nondet.api.main sets it
    with pytest.raises(SystemExit, match=r"^Error in the configuration: \S+my_train.py \(script\) has changed"):
        callbacks.check_or_exit(cfg, [cfg], config_checked=True)


def test_a_library_target_is_not_your_code(make_config):
    """A model an installed library defines is versioned by the library (env.json records torch's):
    upgrading it must not make a finished sweep refuse."""
    config = make_config("model=custom", "model._target_=torchvision.models.resnet18")
    assert usercode.code_files(config) == {} and usercode.code_identity(config) == {}


def test_a_module_of_yours_your_model_imports_is_fingerprinted_too(make_config, tmp_path, monkeypatch):
    package = f"mypk_{next(_names)}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    layers = tmp_path / package / "layers.py"
    layers.write_text("from torch import nn\n\nACT = nn.ReLU\n")
    (tmp_path / package / "nets.py").write_text(NET.replace("nn.ReLU()", "ACT()").replace(
        "from torch import nn\n", "from torch import nn\n\nfrom .layers import ACT\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = make_config("model=custom", f"model._target_={package}.nets.Net", "replicates=1", "epochs=1")
    files = usercode.code_files(config)
    assert files[f"import {package}.layers"] == str(layers.resolve())
    assert sorted(files) == [f"import {package}.layers", "model._target_"]  # not torch's
    assert run_job(OmegaConf.create(config))["finished"]
    layers.write_text("from torch import nn\n\nACT = nn.Sigmoid\n")
    refused(run_job(OmegaConf.create(config)), records.run_dir(config),
            rf"layers.py \(import {package}.layers\) has changed since the finished run")


def test_an_edit_that_breaks_your_model_is_said_as_the_edit(make_config, user_model):
    """The code check comes first, in the job and at launch: a model edited so that its output no
    longer fits the data is refused as changed code (new sweep or revert), not as a model whose
    output is wrong."""
    from nondet import job

    nets, model = user_model
    run_job(OmegaConf.create(make_config(*model, "replicate=0")))
    nets.write_text(nets.read_text().replace("return self.body(x)", "return self.body(x)[:, :1]"))
    for name in [m for m in sys.modules if m.startswith(nets.parent.name)]:  # as a new process imports it
        del sys.modules[name]
    job._MODELS_BUILT.clear()
    added = make_config(*model, "replicate=1")
    refused(run_job(OmegaConf.create(added)), records.run_dir(added),
            r"nets.py \(model._target_\) has changed since the finished run")
