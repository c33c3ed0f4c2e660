"""Fake run directories that follow the run-directory contract (README.md, "The run directory"), for tests.

    from fake_runs import fake_config, write_run, write_group
    config = fake_config(**{"source.name": "init", "source.vary": ["init"]}, output_root=str(tmp_path))
    paths = write_group(config, logits, labels)           # logits (R, N, C): one run per replicate

Files are written with ``nondet.records``' own atomic writers; a run is done when ``result.json``
is written, as in the engine. Nothing here trains a model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from nondet import records
from nondet.config import NondetConfig


def fake_config(**overrides: Any) -> dict:
    """A fully resolved config (the schema's defaults) with dotted-key overrides applied.

    ``fake_config(**{"source.name": "init"}, replicates=4)``
    """
    config = OmegaConf.to_container(OmegaConf.structured(NondetConfig), resolve=True)
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config


def random_logits(
    rng: np.random.Generator, runs: int, n: int, classes: int, ties: bool = False, spread: float = 1.0
) -> np.ndarray:
    """(runs, n, classes) float32 logits sharing a common signal (so runs correlate).

    ``ties=True`` rounds to one decimal, so the logits hold many exact ties.
    """
    common = rng.standard_normal((1, n, classes))
    logits = common + spread * rng.standard_normal((runs, n, classes))
    if ties:
        logits = np.round(logits, 1)
    return logits.astype(np.float32)


def result_for(logits: np.ndarray, labels: np.ndarray, **extra: Any) -> dict:
    """result.json's dict, with accuracy and cross-entropy computed from the logits."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return {
        "test_accuracy": float(100.0 * np.mean(logits.argmax(axis=1) == labels)),
        "test_cross_entropy": float(-logp[np.arange(len(labels)), labels].mean()),
        "train_seconds": 1.0,
        **extra,
    }


def write_run(
    directory: Path,
    config: dict,
    logits: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    result: dict | bool = True,
    metrics: list[dict] | None = None,
    seeds: dict | None = None,
    error: str | None = None,
    weights: dict | None = None,
    env: dict | None = None,
) -> Path:
    """Write one run directory. ``result=False`` leaves the run unfinished (no result.json);
    ``error`` writes error.txt instead of result.json, as a failed run does. env.json holds
    ``env``, by default a ``test_sha256`` of the labels (runs with the same labels share a test set)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    records.write_text(directory / records.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(config)))
    records.write_json(directory / records.SEEDS_FILE, seeds or {"init": config.get("replicate", 0)})
    if metrics is not None:
        records.write_jsonl(directory / records.METRICS_FILE, metrics)
    if error is not None:
        records.write_text(directory / records.ERROR_FILE, error)
        return directory
    if logits is not None:
        if env is None:
            env = {"test_sha256": hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()}
        records.write_json(directory / records.ENV_FILE, env)
        records.write_npy(directory / records.LOGITS_FILE, np.asarray(logits, dtype=np.float32))
        records.write_npy(directory / records.LABELS_FILE, np.asarray(labels, dtype=np.int64))
    if weights is not None:
        records.write_torch(directory / records.WEIGHTS_FILE, weights)
    if result is True:  # evaluated at the last epoch of its metrics, as the engine's runs are
        result = result_for(np.asarray(logits), np.asarray(labels), **({"epochs": metrics[-1]["epoch"]} if metrics else {}))
    if result:
        records.write_json(directory / records.RESULT_FILE, result)
    return directory


def metrics_rows(rng: np.random.Generator, epochs: int, scale: float = 0.1) -> list[dict]:
    """metrics.jsonl rows of a fake training run whose test cross-entropy falls with noise."""
    rows = []
    for epoch in range(1, epochs + 1):
        ce = 2.0 / epoch + scale * abs(rng.standard_normal())
        rows.append(
            {
                "epoch": epoch,
                "test_accuracy": 50.0 + epoch,
                "test_cross_entropy": ce,
                "train_loss": ce,
                "lr": 0.1,
                "seconds": float(epoch),
            }
        )
    return rows


def write_group(
    config: dict, logits: np.ndarray, labels: np.ndarray, metrics: list[list[dict]] | None = None,
    env: dict | None = None,
) -> list[Path]:
    """One run per replicate r = 0..R-1 of ``config``, at the engine's path ``records.run_dir``."""
    paths = []
    for r, run_logits in enumerate(logits):
        run_config = dict(config, replicate=r, replicates=len(logits))
        paths.append(
            write_run(
                records.run_dir(run_config),
                run_config,
                run_logits,
                labels,
                metrics=None if metrics is None else metrics[r],
                seeds={"init": 1000 + r},
                env=env,
            )
        )
    return paths
