"""The run directory: where a run's files live, how they are written, and whether a run is done.

A run's directory is a function of its resolved configuration alone: relaunching a sweep finds
finished runs (``result.json`` present) and skips them, and finds unfinished runs
(``checkpoint.pt`` present) and resumes them. The run-directory contract (every file, what it
holds) is written once, in README.md, "The run directory". Every file is written to a temporary name and moved
into place with ``os.replace``; ``result.json`` is written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# Keys that say where or how a run is stored, not what is trained: they take no part in a run's
# identity (its directory) nor in the grouping of runs into table rows.
NON_IDENTITY_KEYS = frozenset(
    {"replicate", "replicates", "sweep_name", "output_root", "checkpoint_every", "logger",
     "lock_wait_seconds"}
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
# schedule=snapshot: snapshots/<k>/logits.npy, the model at the end of cycle k (nondet/snapshot.py).
SNAPSHOT_DIR = "snapshots"

# env.json keys whose value changes a run's floats on the same inputs, bit for bit: the device,
# the torch build and precision on every device; the CPU's model, vector width (the ATen kernels
# it dispatches to) and thread count (the order of parallel sums) on the CPU; the GPU's libraries
# on CUDA (its name is ``device_name``).
ARITHMETIC_KEYS = ("device", "device_name", "torch", "precision")
ARITHMETIC_KEYS_ON = {"cpu": ("cpu_model", "cpu_capability", "threads"), "cuda": ("cuda", "cudnn")}
# env.json of a run resumed under other arithmetic than it started with: the earlier settings.
EARLIER_ARITHMETIC = "earlier_arithmetic"


def arithmetic_of(env: Mapping) -> dict:
    """The ``ARITHMETIC_KEYS`` an env.json records (a key it predates is left out)."""
    keys = ARITHMETIC_KEYS + ARITHMETIC_KEYS_ON.get(env.get("device"), ())
    return {k: env[k] for k in keys if env.get(k) is not None}


def arithmetic_changes(earlier: Mapping, now: Mapping) -> dict:
    """{key: (earlier value, value in ``now``'s env.json)} for every arithmetic setting that
    differs (as far as both recorded it)."""
    current = arithmetic_of(now)
    return {k: (v, current[k]) for k, v in earlier.items() if k in current and current[k] != v}


def earlier_arithmetic(previous: Mapping | None, now: Mapping) -> list[dict]:
    """What a resumed run's new env.json keeps of the one it replaces: every earlier setting of
    the run's arithmetic that differs from ``now``'s (as far as both recorded it), oldest first."""
    if not isinstance(previous, Mapping):
        return []
    earlier = [e for e in previous.get(EARLIER_ARITHMETIC) or [] if isinstance(e, dict)] + [arithmetic_of(previous)]
    kept: list[dict] = []
    for settings in earlier:
        if arithmetic_changes(settings, now) and settings not in kept:
            kept.append(settings)
    return kept


class CorruptRunError(RuntimeError):
    """A run directory holds a file that cannot be read; the message says what to delete."""


class UnreadableRunError(CorruptRunError):
    """A run's file exists but this user may not read it: the run is not corrupt, and deleting
    it would lose a finished result; whoever owns it can make it readable."""


def cannot_read(path: Path, e: Exception) -> CorruptRunError:
    """The error for a run file that failed to read: unreadable (permissions) or corrupt."""
    path = Path(path)
    if isinstance(e, PermissionError):
        return UnreadableRunError(
            f"cannot read {path}: permission denied. The run is not corrupt: ask its owner to make "
            f"it readable (chmod -R a+rX {path.parent}), or read it as that user."
        )
    return CorruptRunError(f"cannot read {path}: {e}. Delete the run directory {path.parent} to retrain it.")


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


def _default_of(path: tuple[str, ...]) -> Any:
    from nondet import config as schema  # the schema of this version (a test may swap it)

    node: Any = schema.schema_defaults(schema.NondetConfig)
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
            # a new group at its defaults: gone (an empty one too, when empty is its default)
            if inner or ".".join(where) in _V1_GROUPS or (not value and _default_of(where) != value):
                out[key] = inner
        elif ".".join(where) in IDENTITY_V1_KEYS or _default_of(where) != value:
            out[key] = value
    return out


def identity(config: Mapping[str, Any]) -> dict:
    """The part of a resolved config (plain dict) that determines what a run computes: every key
    but where it is stored, less the keys added after version 1 that hold their default value
    (see ``IDENTITY_V1_KEYS``). Names run directories and groups the analysis' table rows.

    ``pack`` counts only where a pack may compute otherwise than one replica alone: an explicit
    ``pack=P`` on a GPU. On the CPU a packed replica is bitwise the solo one, and ``pack=auto``
    fuses only there, so the pack size neither splits a group nor moves a run's directory.
    ``data_order`` counts only where the data are varied (``data`` in ``source.vary``) and when
    not ``drawn``."""
    kept = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS and k != "hydra"}
    if "pack" in kept and (kept["pack"] == "auto" or kept.get("device") == "cpu"):
        kept["pack"] = 1
    # data_order matters only where the data are resampled; ``drawn`` is what runs recorded
    # before the key computed, so they keep their directories, and ``sorted`` runs get new ones.
    order = kept.pop("data_order", "drawn")
    kept = _drop_new_defaults(kept)
    if order != "drawn" and "data" in (config.get("source") or {}).get("vary", ()):
        kept["data_order"] = order
    return kept


def canonical_json(value: Any) -> str:
    """The text a run's identity is hashed from: ``1``, ``1.0`` and ``true`` are three values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Mapping[str, Any], length: int = 10) -> str:
    """A short, stable hash of a run's identity, shared by all replicates of one group."""
    return hashlib.sha256(canonical_json(identity(config)).encode()).hexdigest()[:length]


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


def _umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600 whatever the umask; a run's files get the mode open() would
        # give them (0644 under umask 022), so colleagues sharing the sweep can read it.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def config_yaml(config: Mapping) -> str:
    """config.yaml's text for a resolved config (plain containers): what
    ``OmegaConf.to_yaml(OmegaConf.create(config))`` writes, by OmegaConf's own YAML dumper without
    building the DictConfig first (which costs as much as the dump; a pack writes one per run)."""
    try:
        import yaml
        from omegaconf._utils import get_omega_conf_dumper
    except ImportError:  # another OmegaConf: its public way
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(OmegaConf.create(dict(config)))
    return yaml.dump(dict(config), default_flow_style=False, allow_unicode=True, sort_keys=False,
                     Dumper=get_omega_conf_dumper())


def write_config(directory: Path, config: Mapping) -> None:
    write_text(Path(directory) / CONFIG_FILE, config_yaml(config))


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


def copy_file(source: Path, target: Path) -> None:
    """``target`` becomes a byte-for-byte copy of ``source``, atomically."""
    _atomic_write_bytes(Path(target), Path(source).read_bytes())


def write_torch(path: Path, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(Path(path), buf.getvalue())


# --- reading -------------------------------------------------------------------------------


def is_done(directory: Path) -> bool:
    return (Path(directory) / RESULT_FILE).is_file()


def is_whole(directory: Path) -> bool:
    """Done, and with the config.yaml that lets the analysis find and group it. A done run that
    lost its config.yaml is not skipped by a relaunch: ``nondet.job`` restores it."""
    return is_done(directory) and (Path(directory) / CONFIG_FILE).is_file()


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise cannot_read(path, e) from e


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl (an empty list if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise cannot_read(path, e) from e


def result_contradiction(
    result: Mapping[str, Any], labels: np.ndarray, predictions: np.ndarray, logits: np.ndarray | None = None,
    target_logprobs: np.ndarray | None = None,
) -> str | None:
    """Why a run's result.json cannot come from the same evaluation as its stored arrays (the
    accuracy off by more than half an example, or the cross-entropy of ``logits``, or a language
    model's ``target_logprobs``, off by more than float32 rounding), or None when they agree.
    Such a run is corrupt: neither can be trusted. Non-finite numbers (a diverged run) are not
    compared."""
    n = len(labels)
    if not n:
        return None
    source = PREDICTIONS_FILE if logits is None else LOGITS_FILE

    def finite_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    reported = result.get("test_accuracy")
    if finite_number(reported):
        computed = 100.0 * float(np.mean(np.asarray(predictions) == np.asarray(labels)))
        if abs(computed - reported) > 50.0 / n:
            return f"result.json says test_accuracy {reported:.4f} but {source} gives {computed:.4f}"
    reported = result.get("test_cross_entropy")
    if not finite_number(reported) or (logits is None and target_logprobs is None):
        return None
    if logits is not None:
        computed = _cross_entropy(logits, labels)
    else:  # a language model: the mean negative log-probability of its test targets
        source = TARGET_LOGPROBS_FILE
        computed = -float(np.mean(np.asarray(target_logprobs, dtype=np.float64)))
    if not math.isfinite(computed):
        return None
    if abs(computed - reported) > 1e-3 * max(1.0, abs(reported)):
        return f"result.json says test_cross_entropy {reported:.6g} but {source} gives {computed:.6g}"
    perplexity = result.get("test_perplexity")  # compared as its log, the cross-entropy
    if (target_logprobs is not None and finite_number(perplexity)
            and (perplexity <= 0 or abs(math.log(perplexity) - computed) > 1e-3 * max(1.0, abs(computed)))):
        return (f"result.json says test_perplexity {perplexity:.6g} but {source} gives "
                f"{math.exp(min(computed, 709.0)):.6g}")
    return None


def _cross_entropy(logits: np.ndarray, labels: np.ndarray, rows: int = 8192) -> float:
    """Mean negative log-likelihood of ``labels`` (nats, float64), a block of rows at a time."""
    total = 0.0
    for start in range(0, len(labels), rows):
        x = np.asarray(logits[start : start + rows], dtype=np.float64)
        y = np.asarray(labels[start : start + rows])
        top = x.max(axis=1, keepdims=True)
        log_total = np.log(np.exp(x - top).sum(axis=1)) + top[:, 0]
        total += float(np.sum(log_total - x[np.arange(len(y)), y]))
    return total / len(labels)


def read_checkpoint(path: Path, device: str) -> dict:
    """A training checkpoint (``checkpoint.pt``, an onset prefix), loaded as plain data only.

    ``weights_only=True``: tensors, numbers, strings and containers, which is all a checkpoint
    holds. A pickled object of any other type is refused without being run, so a checkpoint
    planted in a shared sweep directory cannot execute code on the next relaunch.
    """
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a checkpoint's mapping")
    except Exception as e:  # truncated, foreign, or carrying code: keep it for inspection
        reason = _load_failure(e)
        raise CorruptRunError(
            f"cannot read the checkpoint {path} ({reason}); delete it to restart this run from scratch"
        ) from None
    return state


def _load_failure(error: Exception) -> str:
    """Why torch.load failed, in one line. With weights_only torch explains at length how to load
    the file unsafely; the line worth showing names the refused object or the unreadable byte."""
    import pickle

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not isinstance(error, pickle.UnpicklingError) or not lines or "Weights only" not in lines[0]:
        return lines[0] if lines else type(error).__name__
    marker = "WeightsUnpickler error:"
    for line in lines:
        if "GLOBAL" in line:
            return f"it carries a pickled object, refused without running it: {line.replace(marker, '').strip()}"
    after = [i for i, line in enumerate(lines) if marker in line]
    if after:
        detail = lines[after[0]].split(marker, 1)[1].strip() or (lines[after[0] + 1:] or [""])[0]
        if detail and not detail.startswith("Check the documentation"):
            return f"not a checkpoint: {detail}"
    return "not a checkpoint"


def read_array(path: Path, ndim: int, kind: str) -> np.ndarray:
    """Memory-map a .npy file; a truncated file fails here because the map would overrun it."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except PermissionError as e:
        raise cannot_read(path, e) from e
    except (OSError, ValueError, EOFError) as e:
        raise CorruptRunError(f"cannot read {path.name}: {e}") from e
    if array.ndim != ndim or array.dtype.kind not in kind:
        raise CorruptRunError(
            f"{path.name} has shape {array.shape} and dtype {array.dtype}, "
            f"expected {ndim} dimensions of kind {kind!r}"
        )
    return array
