"""The run directory: where a run's files live, how they are written, and whether a run is done.

A run's directory is a function of its resolved configuration alone (DESIGN.md): relaunching a
sweep finds finished runs (``result.json`` present) and skips them, and finds unfinished runs
(``checkpoint.pt`` present) and resumes them. Every file is written to a temporary name and moved
into place with ``os.replace``; ``result.json`` is written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# Keys that say where or how a run is stored, not what is trained: they take no part in a run's
# identity (its directory) nor in the grouping of runs into table rows.
NON_IDENTITY_KEYS = frozenset(
    {"replicate", "replicates", "sweep_name", "output_root", "checkpoint_every", "logger"}
)

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
SEEDS_FILE = "seeds.json"
METRICS_FILE = "metrics.jsonl"
LOGITS_FILE = "logits.npy"
LABELS_FILE = "labels.npy"
WEIGHTS_FILE = "weights.pt"
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"
CHECKPOINT_FILE = "checkpoint.pt"
# Language models (nondet/lm.py) store these instead of logits.npy (N x V is too large).
TARGET_LOGPROBS_FILE = "target_logprobs.npy"
PREDICTIONS_FILE = "predictions.npy"
LOGPROBS_SUBSET_FILE = "logprobs_subset.npy"
SUBSET_POSITIONS_FILE = "subset_positions.npy"


class CorruptRunError(RuntimeError):
    """A run directory holds a file that cannot be read; the message says what to delete."""


# --- identity ------------------------------------------------------------------------------


def identity(config: Mapping[str, Any]) -> dict:
    """The part of a resolved config (plain dict) that determines what a run computes."""
    return {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS and k != "hydra"}


def config_hash(config: Mapping[str, Any], length: int = 10) -> str:
    """A short, stable hash of a run's identity, shared by all replicates of one group."""
    text = json.dumps(identity(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def group_dirname(config: Mapping[str, Any]) -> str:
    """``<source>-<model>-<dataset>-<hash>``: readable, and unique per configuration."""
    model = config["model"]["name"]
    dataset = config["dataset"]["name"]
    source = config["source"]["name"]
    return f"{source}-{model}-{dataset}-{config_hash(config)}"


def run_dir(config: Mapping[str, Any], replicate: int | None = None) -> Path:
    """``<output_root>/<sweep_name>/<group>/r<replicate>``: the directory of one run."""
    replicate = config["replicate"] if replicate is None else replicate
    return (
        Path(config["output_root"])
        / config["sweep_name"]
        / group_dirname(config)
        / f"r{replicate:04d}"
    )


# --- atomic writes -------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: list[Mapping[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    _atomic_write_bytes(Path(path), buf.getvalue())


def write_torch(path: Path, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(Path(path), buf.getvalue())


# --- reading -------------------------------------------------------------------------------


def is_done(directory: Path) -> bool:
    return (Path(directory) / RESULT_FILE).is_file()


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CorruptRunError(
            f"cannot read {path}: {e}. Delete the run directory {Path(path).parent} to retrain it."
        ) from e


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl (an empty list if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as e:
        raise CorruptRunError(
            f"cannot read {path}: {e}. Delete the run directory {path.parent} to retrain it."
        ) from e


def read_array(path: Path, ndim: int, kind: str) -> np.ndarray:
    """Memory-map a .npy file; a truncated file fails here because the map would overrun it."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CorruptRunError(f"cannot read {path.name}: {e}") from e
    if array.ndim != ndim or array.dtype.kind not in kind:
        raise CorruptRunError(
            f"{path.name} has shape {array.shape} and dtype {array.dtype}, "
            f"expected {ndim} dimensions of kind {kind!r}"
        )
    return array
