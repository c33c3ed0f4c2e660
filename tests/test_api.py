"""``nondet.api.Run`` with data of your own, at a precision, timed: what it records is what ran."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from nondet import api, records
from nondet.config import ConfigError
from nondet.data import Dataset


def own_data(shift: float = 0.0) -> Dataset:
    """32 features, 10 classes; ``shift`` changes every training input (data rewritten). Normal
    draws are no bfloat16 numbers: bf16 autocast rounds them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 32, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    return Dataset("mine", x[:64] + shift, y[:64], x[64:], y[64:], 10, None, None)


def train(config: dict, data=None, *, autocast: bool = False, stop_in_epoch: int | None = None) -> api.Run:
    """A linear model on ``data`` (full batch), each forward pass under ``run.autocast()`` unless
    ``autocast`` is false (fp32 needs none); a KeyboardInterrupt (a kill) in epoch ``stop_in_epoch``."""
    with api.Run(OmegaConf.create(config), data=data) as run:
        model = run.build(torch.nn.Linear, 32, 10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.track(model, optimizer)
        precision = run.autocast if autocast else contextlib.nullcontext
        for epoch in run.epochs():
            if epoch == stop_in_epoch:
                raise KeyboardInterrupt
            with precision():
                loss = F.cross_entropy(model(run.data.x_train).float(), run.data.y_train)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad(), precision():
                run.record(model(run.data.x_test), train_loss=float(loss))
    return run


@pytest.fixture
def config(make_config):
    return make_config("source=init", "replicates=1", "epochs=2", "checkpoint_every=1")


def env_of(run: api.Run) -> dict:
    return json.loads((run.directory / records.ENV_FILE).read_text())


def test_a_checkpoint_is_not_resumed_on_other_data_of_your_own(config):
    with pytest.raises(KeyboardInterrupt):  # killed in epoch 2, after the checkpoint of epoch 1
        train(config, own_data(), stop_in_epoch=1)
    directory = records.run_dir({**config, "script": str(Path(__file__).resolve())})
    before = json.loads((directory / records.ENV_FILE).read_text())["data_sha256"]
    run = train(config, own_data(shift=1.0))  # the data rewritten, then relaunched
    assert run.outcome["failed"] == [str(directory)] and not (directory / records.RESULT_FILE).exists()
    assert re.search(r"checkpoint.pt was trained on other data than the script's Run\(cfg, data=...\) holds now",
                     run.outcome["fixes"][str(directory)])
    assert env_of(run)["data_sha256"] == before  # the record of what trained is kept
    assert train(config, own_data()).outcome["finished"] == [str(directory)]  # the data put back: resumed
    assert env_of(run)["resumed_from_epoch"] == 1


def test_a_scripts_checkpoint_copied_from_another_replicate_is_refused(make_config):
    configs = [make_config("source=init", "replicates=2", f"replicate={r}", "epochs=2", "checkpoint_every=1")
               for r in (0, 1)]
    for config in configs:  # each killed in epoch 2, after the checkpoint of epoch 1
        with pytest.raises(KeyboardInterrupt):
            train(config, own_data(), stop_in_epoch=1)
    first, second = (records.run_dir({**c, "script": str(Path(__file__).resolve())}) for c in configs)
    (second / records.CHECKPOINT_FILE).write_bytes((first / records.CHECKPOINT_FILE).read_bytes())
    run = train(configs[1], own_data())
    assert run.outcome["failed"] == [str(second)] and not (second / records.RESULT_FILE).exists()
    assert re.search(r"checkpoint.pt was written by another run \(replicate 0 there, 1 here; the seeds of init "
                     r"differ\).*delete it to train this run from scratch", run.outcome["fixes"][str(second)])
    assert train(configs[0], own_data()).outcome["finished"] == [str(first)]  # its own: resumed
    assert json.loads((first / records.ENV_FILE).read_text())["resumed_from_epoch"] == 1


def test_data_of_your_own_is_any_object_of_tensors_else_refused_in_one_line(config):
    data = own_data()
    mine = SimpleNamespace(x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
    run = train(config, mine)
    assert run.outcome["finished"] and len(env_of(run)["data_sha256"]) == 64
    loader = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    with pytest.raises(ConfigError, match=r"^data=TensorDataset: data of your own are a nondet.data.Dataset or "
                                          r"an object whose tensors are its attributes .*has no tensor attribute$"):
        train(config, loader)


def test_bf16_runs_the_forward_passes_under_autocast_or_fails_the_run(config):
    fp32 = train(config, own_data(), autocast=True)  # nothing at fp32
    bf16 = train({**config, "precision": "bf16"}, own_data(), autocast=True)
    logits = [torch.from_numpy(np.load(r.directory / records.LOGITS_FILE)) for r in (fp32, bf16)]
    assert fp32.directory != bf16.directory and not torch.equal(*logits)
    assert env_of(bf16)["precision"] == "bf16"
    forgot = train({**config, "precision": "bf16", "sweep_name": "forgot"}, own_data())
    (directory,) = forgot.outcome["failed"]
    assert "no forward pass of this run ran under run.autocast()" in forgot.outcome["fixes"][directory]
    assert not (Path(directory) / records.RESULT_FILE).exists()


def test_each_epochs_seconds_count_that_epoch(config, monkeypatch):
    clock = iter(range(1000))  # one second between any two readings
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    run = train(config, own_data())
    seconds = [row["seconds"] for row in records.read_metrics(run.directory / records.METRICS_FILE)]
    assert 0 < seconds[0] < seconds[1]


def test_cka_of_a_scripts_own_model_is_skipped_in_one_line(make_config, tmp_path):
    """CKA rebuilds each run's model from its config; a script's own model is not that one."""
    from analysis.cka import sweep_cka
    from analysis.load import load_sweep
    from test_examples import _recorded_run

    for replicate in (0, 1):
        _recorded_run(make_config("source=init", "replicates=2", "epochs=1", f"replicate={replicate}"))
    sweep = load_sweep(tmp_path / "outputs" / "default")
    assert sweep_cka(sweep, probe_size=16).empty
    (note,) = [n for n in sweep.notes if n.startswith("CKA skipped")]
    assert "\n" not in note and re.search(r"trained by the script \S+\.py \(nondet.api\) on a model of its "
                                          r"own, which nondet cannot rebuild from model=mlp: CKA needs", note)


def test_a_scripts_top_level_typo_is_refused_in_one_line(monkeypatch, tmp_path):
    from conftest import REPO

    main = api.main(config_path=str(REPO / "examples/own_loop/conf"), config_name="train")(lambda cfg: None)
    monkeypatch.setattr("sys.argv", ["train.py", "-m", "epoch=3", "source=init"])
    monkeypatch.setattr("nondet.callbacks.CHECK_JOBS", True)  # the script's entry clears it for its process
    with pytest.raises(SystemExit) as exit_:
        main()
    text = str(exit_.value.code)
    assert text.startswith("Error in the configuration: epoch is not a configuration key (a typo? did you "
                           "mean epochs?)") and "\n" not in text
    from nondet.callbacks import check_command_line

    (tmp_path / "mine").mkdir()  # a config group of the script's own: Hydra's to compose
    check_command_line(["-m", "mine=a", "user.hidden=3"], api.CONF_DIR, tmp_path)
