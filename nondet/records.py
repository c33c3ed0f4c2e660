"""The run directory: where a run's files live, how they are written, and whether a run is done.

A run's directory is a function of its resolved configuration alone (DESIGN.md): relaunching a
sweep finds finished runs (``result.json`` present) and skips them, and finds unfinished runs
(``checkpoint.pt`` present) and resumes them. Every file is written to a temporary name and moved
into place with ``os.replace``; ``result.json`` is written last.
"""

from __future__ import annotations

import functools
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
    {"replicate", "replicates", "sweep_name", "output_root", "checkpoint_every"}
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

# Every key a run's identity held when identities were first hashed (version 1). A key added
# since then takes part in a run's identity only when its value differs from the schema's
# default, so that upgrading nondet neither moves finished runs to new directories (a relaunch
# would retrain them) nor splits their table rows: a new key at its default means what older
# versions did without it. Never add to this list; a new key needs nothing but its default.
IDENTITY_V1_KEYS = frozenset(
    f"{group}.{key}" for group, keys in {
        "model": "name activation smelu_beta dropout width depth embedding_dim input_dropout "
                 "hidden_dropout embedding_dropout weight_dropout",
        "dataset": "name root download path augment train_size test_size input_dim num_classes "
                   "image_shape teacher_width teacher_depth teacher_activation label_noise "
                   "imbalance data_seed valid_size vocab_size hidden_states sentence_length",
        "optimizer": "name lr momentum nesterov weight_decay betas eps",
        "schedule": "name warmup_epochs cycles",
        "source": "name vary lowlevel_required",
        "lm": "bptt variable_bptt clip alpha beta asgd nonmono eval_batch_size test_batch_size "
              "logprob_positions",
    }.items() for key in keys.split()
) | frozenset(
    "replicates replicate base_seed pack precision device epochs batch_size onset_epoch "
    "shuffle_window scale sweep_name output_root eval_every checkpoint_every threads".split()
)

_V1_GROUPS = frozenset(k.split(".")[0] for k in IDENTITY_V1_KEYS if "." in k)
_NO_DEFAULT = object()


@functools.lru_cache(maxsize=None)
def _schema_defaults(schema: type) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(schema))


def _default_of(path: tuple[str, ...]) -> Any:
    from nondet import config as schema  # the schema of this version (a test may swap it)

    node: Any = _schema_defaults(schema.NondetConfig)
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _NO_DEFAULT
        node = node[key]
    return node


def _drop_new_defaults(node: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict:
    out = {}
    for key, value in node.items():
        where = (*path, key)
        if isinstance(value, Mapping):
            inner = _drop_new_defaults(value, where)
            if inner or not value or ".".join(where) in _V1_GROUPS:  # a new group at its defaults: gone
                out[key] = inner
        elif ".".join(where) in IDENTITY_V1_KEYS or _default_of(where) != value:
            out[key] = value
    return out


def identity(config: Mapping[str, Any]) -> dict:
    """The part of a resolved config (plain dict) that determines what a run computes: every key
    but where it is stored, less the keys added after version 1 that hold their default value
    (see ``IDENTITY_V1_KEYS``). Names run directories and groups the analysis' table rows."""
    return _drop_new_defaults(
        {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS and k != "hydra"}
    )


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
