"""Training runs end to end: the run-directory contract, exact repeats, resume, failures."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from nondet import pack, records, train
from nondet.backend import LowLevelUnavailableError, environment
from nondet.job import run_job

CONTRACT = ["config.yaml", "env.json", "seeds.json", "metrics.jsonl", "logits.npy", "labels.npy",
            "weights.pt", "result.json"]


def run(config):
    return run_job(OmegaConf.create(config))


def test_run_directory_contract(make_config):
    config = make_config("source=bitflip", "replicate=2", "epochs=3")
    outcome = run(config)
    directory = records.run_dir(config)
    assert outcome["finished"] == [str(directory)]
    for name in CONTRACT:
        assert (directory / name).is_file(), name
    assert not (directory / "checkpoint.pt").exists()
    assert not (directory / "error.txt").exists()
    assert not list(directory.glob(".*.tmp"))

    saved = yaml.safe_load((directory / "config.yaml").read_text())
    assert saved["replicate"] == 2 and saved["source"]["name"] == "bitflip"
    assert saved["device"] == "cpu"

    env = json.loads((directory / "env.json").read_text())
    for key in ("torch", "cuda", "cudnn", "device_name", "threads", "deterministic_algorithms",
                "precision", "git_commit", "host", "slurm_job_id", "lowlevel", "cpu_model", "cpu_capability"):
        assert key in env, key
    assert env["precision"] == "fp32" and env["allow_tf32_matmul"] is False

    seeds = json.loads((directory / "seeds.json").read_text())
    assert seeds["vary"] == ["bitflip"] and seeds["seeds"]["init"] == config["base_seed"]
    assert seeds["seeds"]["bitflip"] != config["base_seed"]

    metrics = records.read_metrics(directory / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert set(metrics[0]) == {"epoch", "test_accuracy", "test_cross_entropy", "train_loss", "lr", "seconds"}

    logits, labels = np.load(directory / "logits.npy"), np.load(directory / "labels.npy")
    assert logits.dtype == np.float32 and labels.dtype == np.int64
    assert logits.shape == (config["dataset"]["test_size"], config["dataset"]["num_classes"])
    assert labels.shape == (logits.shape[0],)

    result = json.loads((directory / "result.json").read_text())
    accuracy = 100.0 * float((logits.argmax(1) == labels).mean())
    assert result["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert result["test_cross_entropy"] == pytest.approx(metrics[-1]["test_cross_entropy"])
    assert result["train_seconds"] > 0
    flip = result["bitflip"]
    assert set(flip) >= {"param", "index", "before", "after"}
    assert float.fromhex(flip["before"]) != float.fromhex(flip["after"])

    weights = torch.load(directory / "weights.pt")
    assert set(weights) >= {flip["param"]}


def test_result_is_written_last(make_config, monkeypatch):
    config = make_config()
    order = []
    real = records.write_json

    def spy(path, obj):
        order.append(path.name)
        real(path, obj)

    monkeypatch.setattr(records, "write_json", spy)
    monkeypatch.setattr(records, "write_npy", lambda p, a: order.append(p.name) or np.save(p, a))
    run(config)
    assert order[-1] == "result.json" and "logits.npy" in order


def _arrays(directory):
    weights = torch.load(directory / "weights.pt")
    return np.load(directory / "logits.npy"), weights


def test_control_runs_are_bitwise_identical(make_config):
    dirs = []
    for replicate in (0, 1, 2):
        config = make_config("source=none", f"replicate={replicate}", "model.dropout=0.3")
        run(config)
        dirs.append(records.run_dir(config))
    logits0, weights0 = _arrays(dirs[0])
    for directory in dirs[1:]:
        logits, weights = _arrays(directory)
        assert np.array_equal(logits.view(np.uint32), logits0.view(np.uint32))
        assert all(torch.equal(weights[k], weights0[k]) for k in weights0)


@pytest.mark.parametrize("source", ["init", "shuffle", "reduction", "bitflip"])
def test_varied_runs_differ(make_config, source):
    logits = []
    for replicate in (0, 1):
        config = make_config(f"source={source}", f"replicate={replicate}")
        run(config)
        logits.append(np.load(records.run_dir(config) / "logits.npy"))
    assert not np.array_equal(logits[0], logits[1])


def test_resume_is_bitwise_exact(make_config, tmp_path, monkeypatch):
    overrides = ("source=all", "replicate=1", "epochs=4", "model.dropout=0.2",
                 "dataset.image_shape=[3,8,8]", "dataset.augment=true", "schedule=cosine",
                 "schedule.warmup_epochs=1")
    whole = make_config(*overrides, f"output_root={tmp_path / 'whole'}")
    run(whole)

    broken = make_config(*overrides, f"output_root={tmp_path / 'broken'}")
    real_epoch = pack.train_pack_epoch
    calls = {"n": 0}

    def dies_in_epoch_three(group, data, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stands in for a kill: no error.txt, nothing cleaned up
        return real_epoch(group, data, *args)

    monkeypatch.setattr(pack, "train_pack_epoch", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run(broken)
    directory = records.run_dir(broken)
    assert (directory / "checkpoint.pt").exists() and not records.is_done(directory)
    monkeypatch.setattr(pack, "train_pack_epoch", real_epoch)
    run(broken)

    logits_a, weights_a = _arrays(records.run_dir(whole))
    logits_b, weights_b = _arrays(directory)
    assert np.array_equal(logits_a.view(np.uint32), logits_b.view(np.uint32))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(records.read_metrics(directory / "metrics.jsonl")) == strip(
        records.read_metrics(records.run_dir(whole) / "metrics.jsonl"))
    assert json.loads((directory / "env.json").read_text())["resumed_from_epoch"] == 2


def test_finished_runs_are_skipped(make_config):
    config = make_config()
    assert len(run(config)["finished"]) == 1
    directory = records.run_dir(config)
    stamp = (directory / "result.json").stat().st_mtime_ns
    outcome = run(config)
    assert outcome["skipped"] == [str(directory)] and outcome["finished"] == []
    assert (directory / "result.json").stat().st_mtime_ns == stamp


def test_a_failing_replica_leaves_error_txt_and_the_rest_go_on(make_config, monkeypatch):
    config = make_config("pack=3", "replicates=3", "source=init")
    real = pack.new_replica

    def fails_for_one(cfg, data):
        if cfg["replicate"] == 1:
            raise RuntimeError("boom in replicate 1")
        return real(cfg, data)

    monkeypatch.setattr(pack, "new_replica", fails_for_one)
    outcome = run(config)
    assert len(outcome["finished"]) == 2 and len(outcome["failed"]) == 1
    failed = records.run_dir(config, 1)
    assert "boom in replicate 1" in (failed / "error.txt").read_text()
    assert not records.is_done(failed)
    # a relaunch retries only the failed run, and clears its error
    monkeypatch.setattr(pack, "new_replica", real)
    outcome = run(config)
    assert outcome["finished"] == [str(failed)] and len(outcome["skipped"]) == 2
    assert not (failed / "error.txt").exists()


def test_corrupt_checkpoint_says_what_to_do(make_config):
    config = make_config()
    directory = records.run_dir(config)
    directory.mkdir(parents=True)
    (directory / "checkpoint.pt").write_bytes(b"not a checkpoint")
    outcome = run(config)
    assert outcome["failed"]
    assert "delete it to restart this run from scratch" in (directory / "error.txt").read_text()
    assert (directory / "checkpoint.pt").exists()  # kept for inspection


def test_lowlevel_on_cpu_points_to_reduction(make_config):
    with pytest.raises(LowLevelUnavailableError, match="source=reduction"):
        run(make_config("source=lowlevel"))
    with pytest.raises(LowLevelUnavailableError):
        run(make_config("source=shuffle_lowlevel"))


def test_all_on_cpu_records_lowlevel_unavailable(make_config):
    config = make_config("source=all")
    run(config)
    env = json.loads((records.run_dir(config) / "env.json").read_text())
    assert env["lowlevel"].startswith("unavailable")
    assert env["deterministic_algorithms"] is True


def test_env_records_what_sets_the_cpu_arithmetic():
    """Two CPUs (or vector widths) round the same operations differently: env.json tells them apart."""
    env = environment("cpu", "fp32", "deterministic")
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads"] == torch.get_num_threads()
    model = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    assert env["cpu_model"] == (model or platform.processor() or platform.machine()) and env["cpu_model"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error(make_config):
    with pytest.raises(RuntimeError, match="device=cpu"):
        make_config("device=cuda")


def test_config_yaml_is_what_omegaconf_writes(make_config):
    """config.yaml is written by OmegaConf's own dumper straight from the resolved config; the
    text is OmegaConf.to_yaml's, for the default config and for values YAML could misread."""
    from nondet.records import config_yaml

    tricky = {"a": "1e-3", "b": "null", "c": "yes", "d": None, "e": [1, 2.5, "x"], "f": {"g": "${x}", "h": ""},
              "i": "é", "j": 1e-3, "k": float("inf"), "l": True, "m": "0x1F", "n": "~"}
    for config in (make_config(), make_config("model=cnn1d", "dataset=mnist1d"), tricky):
        assert config_yaml(config) == OmegaConf.to_yaml(OmegaConf.create(config))
