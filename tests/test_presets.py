"""The experiment presets (conf/experiment/*.yaml): every one composes at paper and smoke scale,
its sweep expands as Hydra's basic sweeper expands it, the paper-scale values are the paper's,
and (slow) every preset of this repository runs at smoke scale end to end through the analysis
(a preset whose smoke runs are another's, SMOKE_HOSTS, through the analysis of that one's sweep).

    python -m pytest tests/test_presets.py -m "not slow"     # composition only, seconds
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
import re
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import CONF, REPO
from nondet.job import pack_step, replicas_of_job, resolved_config
from nondet.records import NON_IDENTITY_KEYS

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# Language-model presets: composed here, run end to end by their own tests (tests/test_lm.py).
LANGUAGE_MODEL_PRESETS = {"table2", "table4"}
IMAGE_PRESETS = [p for p in PRESETS if p not in LANGUAGE_MODEL_PRESETS]
EXPECTED = {"table1", "table3", "table5", "table6", "table6_mnist", "table7", "table8", "fig1", "fig2", "fig3", "shamir"}
# Presets whose smoke runs are runs of another preset's smoke sweep (its host), and how many
# replicates per group they train beyond the host's: their end-to-end checks analyse the host's
# sweep instead of training the same runs again. fig1 is Table 1's first three sources; fig3 is
# Table 8's bit-flip rows of the linear model and the MLP, with a fourth replicate that is only
# another seed of the same groups.
SMOKE_HOSTS = {"fig1": ("table1", 0), "fig3": ("table8", 0)}


def sweep_jobs(preset: str, scale: str, *extra: str) -> tuple[list[list[str]], dict]:
    """The jobs of ``python launch.py -m +experiment=PRESET scale=SCALE EXTRA``: each job's
    sweep overrides, as the basic sweeper builds them (params from the config, then the command
    line), and the task config of the first job."""
    overrides = [f"+experiment={preset}", f"scale={scale}", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    arguments = [f"{k}={v}" for k, v in params.items()] + list(extra)
    parsed = OverridesParser.create().parse_overrides(arguments)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return jobs, resolved_config(cfg)


def job_config(preset: str, scale: str, job: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}", f"scale={scale}", *job])
    return resolved_config(cfg)


def groups_of(jobs: list[list[str]]) -> list[tuple[str, ...]]:
    """The distinct configurations of a sweep (its jobs without the replicate index)."""
    return sorted({tuple(o for o in job if not o.startswith("replicate=")) for job in jobs})


def values_of(groups, key: str) -> list[str]:
    return sorted({o.split("=", 1)[1] for g in groups for o in g if o.split("=", 1)[0] == key})


def smoke_runs(preset: str) -> list[dict]:
    """Every run of the preset's smoke sweep: the resolved config each job trains it with."""
    runs = []
    for job in sweep_jobs(preset, "smoke")[0]:
        config = job_config(preset, "smoke", job)
        runs += [{**config, "replicate": r} for r in replicas_of_job(config)]
    return runs


def test_every_table_and_figure_has_a_preset():
    assert EXPECTED <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("scale", ["paper", "smoke"])
def test_preset_composes_and_its_sweep_expands(preset, scale):
    jobs, config = sweep_jobs(preset, scale)
    groups = groups_of(jobs)
    assert config["scale"] == scale
    assert config["sweep_name"] == preset  # each preset writes its own sweep directory
    step = pack_step(config["pack"], config["replicates"])
    assert len(jobs) == len(groups) * -(-config["replicates"] // step)  # a job per pack
    # Each distinct configuration composes (the first and last of the sweep and one per
    # swept value, to keep this quick), typed by the schema.
    sample = {groups[0], groups[-1]}
    for key in {o.split("=", 1)[0] for g in groups for o in g}:
        for value in values_of(groups, key):
            sample.add(next(g for g in groups if f"{key}={value}" in g))
    for group in sample:
        job = job_config(preset, scale, list(group))
        assert job["sweep_name"] == preset
        if scale == "smoke":
            # CPU-sized: no GPU-only source, no torchvision download, few epochs.
            assert job["source"]["name"] not in {"lowlevel", "shuffle_lowlevel", "shuffle_augment_lowlevel"}
            assert job["dataset"]["name"] in {"synthetic", "synthetic_text", "mnist1d"}  # generated
            assert job["threads"] == 1
            assert job["epochs"] <= 50


@pytest.mark.parametrize("preset", IMAGE_PRESETS)
def test_preset_header_gives_its_commands_and_cost(preset):
    text = (CONF / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert f"python launch.py -m +experiment={preset}" in text
    assert f"python launch.py -m +experiment={preset} scale=smoke" in text
    assert "python -m analysis outputs/" in text
    assert re.search(r"Cost", text)


def test_table1_is_the_papers_setting():
    jobs, config = sweep_jobs("table1", "paper")
    assert values_of(groups_of(jobs), "source") == sorted(
        ["init", "shuffle", "augment", "lowlevel", "shuffle_lowlevel", "shuffle_augment_lowlevel", "all"]
    )
    # pack=auto: jobs of 16 replicates (one after another on a GPU); cluster=slurm sets pack=1
    assert config["replicates"] == 100 and len(jobs) == 7 * 7 and config["pack"] == "auto"
    assert config["model"]["name"] == "resnet14" and config["model"]["width"] == 16
    assert config["dataset"]["name"] == "cifar10" and config["dataset"]["augment"] is True
    assert config["epochs"] == 500 and config["batch_size"] == 512
    assert config["optimizer"] == {**config["optimizer"], "name": "sgd", "lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4}
    assert config["schedule"]["name"] == "cosine" and config["schedule"]["warmup_epochs"] == 3
    assert config["precision"] == "fp32" and config["threads"] is None


def test_smoke_swaps_lowlevel_for_its_reduction_stand_ins():
    jobs, _ = sweep_jobs("table1", "smoke")
    assert values_of(groups_of(jobs), "source") == sorted(["init", "shuffle", "reduction", "shuffle_reduction", "all"])


def test_paper_scale_of_the_other_presets():
    def check(preset, key, expected, extra=()):
        jobs, _ = sweep_jobs(preset, "paper", *extra)
        assert values_of(groups_of(jobs), key) == sorted(expected), (preset, key)

    check("table3", "source", ["bitflip"])
    check("table5", "schedule", ["cosine", "snapshot"])
    check("table5", "source", ["all"])
    check("table6", "model", ["resnet6", "resnet10", "resnet14", "resnet18", "vgg11", "shufflenetv2_050"])
    check("table6", "source", ["init", "all", "bitflip"])
    check("table7", "source", ["all"])
    check("table8", "model", ["linear", "mlp", "conv1"])
    check("table8", "source", ["init", "bitflip"])
    check("fig2", "onset_epoch", ["0", "50", "100", "200", "300", "400", "450"])
    check("fig3", "model", ["linear", "mlp"])
    check("shamir", "source", ["init", "shuffle", "bitflip"])
    check("shamir", "shuffle_window", ["1", "16", "256", "4096", "null"])
    # The second command of Table 6 (its snapshot rows): the command line replaces the sweep's source.
    check("table6", "source", ["all"], extra=("schedule=snapshot", "source=all"))
    _, table5 = sweep_jobs("table5", "paper")
    assert table5["schedule"]["cycles"] == 5 and table5["epochs"] == 500 and table5["replicates"] == 100
    resnet18 = job_config("table6", "paper", ["model=resnet18", "source=init"])
    assert resnet18["model"]["width"] == 64  # each architecture keeps its group's width
    mnist = job_config("table6_mnist", "paper", ["source=init"])
    assert mnist["dataset"]["name"] == "mnist" and mnist["dataset"]["augment"] is False
    _, fig1 = sweep_jobs("fig1", "paper")
    assert fig1["replicates"] == 25
    _, fig2 = sweep_jobs("fig2", "paper")
    assert fig2["replicates"] == 20


@pytest.mark.parametrize("preset", sorted(SMOKE_HOSTS))
def test_a_hosted_presets_smoke_runs_are_its_hosts_runs(preset):
    """The ground for analysing a hosted preset on its host's smoke sweep (end to end, below)."""
    host, extra = SMOKE_HOSTS[preset]
    runs, host_runs = smoke_runs(preset), smoke_runs(host)
    # Where a run is written and how large its sweep is take no part in what it trains (on the
    # CPU a pack=auto replica is bitwise the solo run), so those may differ, and nothing else.
    size = {"replicates"}
    assert size <= NON_IDENTITY_KEYS
    where = {"sweep_name", "output_root", *size}

    def trained(run):
        return {k: v for k, v in run.items() if k not in where}

    assert {r["sweep_name"] for r in runs} == {preset} and {r["sweep_name"] for r in host_runs} == {host}
    assert runs[0]["replicates"] == host_runs[0]["replicates"] + extra
    hosted = [trained(r) for r in host_runs]
    within = [r for r in runs if r["replicate"] < host_runs[0]["replicates"]]
    assert len(within) == len(runs) * host_runs[0]["replicates"] // runs[0]["replicates"]
    assert all(trained(r) in hosted for r in within), preset


# --- smoke scale, end to end ---------------------------------------------------------------


@functools.cache
def launch_py():
    """The repository's launch.py, as a module."""
    spec = importlib.util.spec_from_file_location("launch", REPO / "launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch(*args: str) -> tuple[int, str]:
    """``python launch.py ARGS`` in this process: Hydra's command line, sweeper, launcher and
    callbacks as in a shell, less the seconds of a new interpreter importing torch (the command
    itself, in a subprocess, is tests/test_launch.py's). Its exit status and what it printed; what
    a run leaves behind in the process (Hydra's logging, the torch thread count) is put back."""
    command = launch_py()
    root, threads = logging.getLogger(), torch.get_num_threads()
    handlers, level = root.handlers[:], root.level
    printed = io.StringIO()
    try:
        with (mock.patch.object(sys, "argv", ["launch.py", "--config-path", str(CONF), *args]),
              mock.patch.dict(os.environ, HYDRA_FULL_ERROR="1"),
              contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed)):
            command.main()
        status = 0
    except SystemExit as e:  # Hydra reports a failed job this way
        status = e.code if isinstance(e.code, int) else 1
    finally:
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:], root.level = handlers, level
        torch.set_num_threads(threads)
    return status, printed.getvalue()


def launch_smoke(preset: str, tmp_path: Path) -> tuple[list, list[Path]]:
    """The preset's sweep at smoke scale, launched: its jobs and its runs' result.json files, every
    run finished and found by the end-of-sweep table."""
    jobs, config = sweep_jobs(preset, "smoke")
    runs = len(groups_of(jobs)) * config["replicates"]
    status, out = launch("-m", f"+experiment={preset}", "scale=smoke", f"output_root={tmp_path}")
    assert status == 0, out[-6000:]
    results = sorted((tmp_path / preset).rglob("result.json"))
    assert len(results) == runs
    assert f"All {runs} runs found below" in out  # the end-of-sweep table
    return jobs, results


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """``smoke_sweep(PRESET)``: the preset's smoke sweep, launched once for this module, as its
    runs' result.json files and its sweep directory, which the tests share: read it, never write it."""
    launched = {}

    def sweep(preset: str) -> tuple[list[Path], Path]:
        if preset not in launched:
            root = tmp_path_factory.mktemp(f"smoke-{preset}")
            launched[preset] = launch_smoke(preset, root)[1], root / preset
        return launched[preset]

    return sweep


def analyse(capsys, sweep_dir: Path, *args: str) -> str:
    from analysis import __main__ as cli

    capsys.readouterr()
    assert cli.main([str(sweep_dir), "--bootstrap", "100", *args]) == 0
    return capsys.readouterr().out


SMOKE_FIGURES = {
    "fig1": {"cka.png"},
    "fig2": {"onset.png", "onset.pdf"},
    "fig3": {"instability.png", "instability.pdf"},
    "table8": {"instability.png"},
    "shamir": {"prediction_difference.png", "prediction_difference.pdf"},
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", IMAGE_PRESETS)
def test_preset_runs_at_smoke_scale_through_the_analysis(preset, smoke_sweep, tmp_path, capsys):
    # A hosted preset's runs are its host's (test_a_hosted_presets_smoke_runs_are_its_hosts_runs):
    # its checks run on the host's sweep, launched once for both.
    results, sweep_dir = smoke_sweep(SMOKE_HOSTS.get(preset, (preset,))[0])
    runs = len(results)

    figures = tmp_path / "figs"
    text = analyse(capsys, sweep_dir, "--figures", str(figures), "--csv", str(tmp_path / "t.csv"),
                   *(["--cka", "--cka-probe", "128"] if preset == "fig1" else []))
    assert "| Source |" in text and (figures / "variability.png").exists()
    assert SMOKE_FIGURES.get(preset, set()) <= {p.name for p in figures.iterdir()}

    if preset == "table8":
        # Sec. 4.2, exactly: no test prediction of any linear bit-flip run changes, and the
        # deeper models' cross-entropy SD is orders of magnitude larger.
        assert "bitflip, linear, 3 bit-flip runs: HOLDS" in text
        assert "test predictions that differ between runs: 0 of" in text
        from analysis import instability

        assert instability.main([str(sweep_dir)]) == 0
    if preset == "fig2":
        assert "Figure 2: accuracy SD" in text and "| Onset epoch | shuffle | bitflip |" in text
    if preset == "fig1":
        assert "Linear CKA" in text and "stage1" in text
    if preset == "shamir":
        assert "smooth activations give a lower PD than ReLU" in text
        assert "a larger shuffle window gives a higher PD" in text
    if preset == "table5":
        assert "Table 5: snapshot ensembles" in text
        assert all(f"| vanilla N={n} |" in text for n in range(1, 6))
        assert (tmp_path / "t_table5.csv").exists()
        # Every snapshot run holds its 5 per-cycle logits, and its logits.npy is their ensemble.
        snapshot_runs = [p.parent for p in results if "name: snapshot" in (p.parent / "config.yaml").read_text()]
        assert len(snapshot_runs) == runs // 2
        assert all((run / "snapshots" / str(k) / "logits.npy").exists() for run in snapshot_runs for k in range(1, 6))
        assert "| snapshot M=1 (last 1 of 5) |" in text and "| snapshot M=5 |" in text
        assert "differs from the ensemble" not in text and "predate snapshot saving" not in text


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(LANGUAGE_MODEL_PRESETS))
def test_language_model_preset_runs_at_smoke_scale_through_the_analysis(preset, tmp_path, capsys):
    launch_smoke(preset, tmp_path)
    sweep_dir = tmp_path / preset
    text = analyse(capsys, sweep_dir, "--csv", str(tmp_path / "t.csv"))
    assert "PPL" in text or "perplexity" in text.lower()
