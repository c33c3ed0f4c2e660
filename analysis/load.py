"""Find the runs of a sweep, read their files and group them into table rows.

    python -m analysis SWEEP_DIR              # uses load_sweep
    python -m analysis.compare DIR_A DIR_B    # uses load_sweep on each side

A run is any directory below the sweep directory that holds ``config.yaml`` (at any depth; hidden
directories such as ``.hydra`` or ``.submitit`` are skipped). Everything is read from the run's
files, never from folder names. A run is *done* when ``result.json`` is present (README.md, "The run directory");
otherwise it is *failed* (``error.txt``) or *unfinished*. A done run whose files cannot be read,
or whose logits contradict its own result.json, is *corrupt*; one this user may not read is
*unreadable* (not corrupt: its owner can make it readable); a done run that lost its
``config.yaml`` is *broken* (a relaunch restores it). Only readable done runs enter the tables;
the others are reported with a reason.

Runs are grouped by every configuration key (flattened with dots: ``model.name``) except the
keys of ``nondet.records.NON_IDENTITY_KEYS`` (``replicate``, ``replicates``, the output location
...). Seeds live in ``seeds.json`` and so never split a group. Runs of one configuration that
saw different data (``data_sha256`` in env.json) are never pooled: they become separate rows
(``data_sha256`` shows which). A configuration whose runs were evaluated on different test sets
is left out of the tables with a note. A row whose runs were computed with different float
arithmetic (``nondet.records.ARITHMETIC_KEYS`` of env.json: CPU model, vector width, thread count, torch, GPU)
stays one row, with a note naming the runs and what differs; so does a row whose runs were trained
under different versions of your code (env.json ``code_sha256``). Each row's test logits are compared
bit for bit with its first run's (by their SHA-256, one read of each run: ``Run.outputs_digest``): a
``source=none`` control whose runs differ, and a row varying a source whose runs are all identical,
get a note (``variation_notes``); so do two replicates of such a row whose outputs are bitwise
identical, likely one copied over the other (``_copy_notes``), and
runs whose metrics.jsonl stops before the epoch their result was evaluated at (``_metrics_notes``),
which the per-epoch figures leave out.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import yaml
from omegaconf import OmegaConf

from analysis.lm import LMArrays, is_lm_run, read_lm_arrays
from analysis.render import format_value, row_label
from nondet import records

# The order of the paper's tables; sources not listed here follow, alphabetically.
SOURCE_ORDER = ("none", "init", "shuffle", "augment", "dropout", "lowlevel", "reduction", "bitflip", "all")




class MixedTestSetError(ValueError):
    """Runs of one group were evaluated on different test sets: their metrics cannot be pooled."""


# Why a run is left out of the tables, in the order they are reported.
PROBLEM_STATUSES = ("unfinished", "failed", "corrupt", "broken", "unreadable")


@dataclass
class RunProblem:
    """A run left out of the tables: ``status`` is ``unfinished``, ``failed``, ``corrupt``,
    ``unreadable`` (permissions) or ``broken`` (done, but config.yaml is missing)."""

    path: Path
    status: str
    reason: str
    key: tuple | None = None  # its group key, when its config could be read
    replicate: int | None = None


@dataclass
class Run:
    """One finished run: its configuration, result and (memory-mapped) test-set arrays."""

    path: Path
    config: dict
    key: tuple
    result: dict
    logits: np.ndarray  # (N, C) floating, memory-mapped (None for a language model: see lm)
    labels: np.ndarray  # (N,) integer, memory-mapped
    metrics: list[dict]
    seeds: dict | None
    # A language-model run (analysis/lm.py): per-token arrays instead of logits.
    lm: LMArrays | None = None
    data_sha256: str | None = None  # env.json's hash of the data's content (None: not recorded)
    test_sha256: str | None = None  # env.json's hash of the test set alone (None: not recorded)
    arithmetic: dict = field(default_factory=dict)  # env.json's recorded records.ARITHMETIC_KEYS
    # the arithmetic of the run's earlier segments, where it was resumed under another
    earlier_arithmetic: list = field(default_factory=list)
    code: dict = field(default_factory=dict)  # env.json's code_sha256: {role: (file, sha256)}
    inert: dict = field(default_factory=dict)  # env.json's inert_sources: {source: why}
    env: dict = field(default_factory=dict)  # env.json as read ({} without one): the report's table

    @property
    def replicate(self) -> int | None:
        return self.config.get("replicate")

    @cached_property
    def outputs_digest(self) -> OutputsDigest:
        """``digest_outputs`` of the run's test outputs, computed on first use: every note that
        compares or checks them (divergence, float arithmetic, variation, copies, a replicate found
        twice) and ``python -m analysis.compare`` read the file once, not once per question."""
        return digest_outputs(_outputs(self))


@dataclass(frozen=True)
class OutputsDigest:
    """What the notes need of a run's test outputs, from one pass over them."""

    sha256: str  # of dtype, shape and bytes: equal digests, bitwise equal outputs (NaN included)
    finite: bool  # every value finite (else the run diverged)
    nan: bool  # some value is NaN (np.array_equal calls such outputs unequal even to themselves)


# Bytes of outputs hashed and checked at a time: small enough to stay in cache between the hash
# and the finiteness check, so the file is read from memory once.
_DIGEST_CHUNK = 1 << 20


def digest_outputs(outputs: np.ndarray) -> OutputsDigest:
    """One pass over ``outputs`` (memory-mapped or not, any shape), a block of rows at a time so
    no copy of the whole array is made: the SHA-256 of its dtype, shape and C-order bytes, and
    whether every value is finite."""
    outputs = np.asarray(outputs)
    digest = hashlib.sha256(f"{outputs.dtype.str}{outputs.shape}".encode())
    finite, nan = True, False
    row_bytes = max(1, outputs[:1].nbytes)
    step = max(1, _DIGEST_CHUNK // row_bytes)
    for start in range(0, len(outputs), step):
        block = np.ascontiguousarray(outputs[start:start + step])
        digest.update(memoryview(block.reshape(-1).view(np.uint8)))
        if not np.isfinite(block).all():
            finite = False
            nan = nan or bool(np.isnan(block).any())
    return OutputsDigest(digest.hexdigest(), finite, nan)


@dataclass
class Group:
    """The runs that share one configuration (one row of the table), sorted by replicate."""

    key: tuple  # ((dotted key, hashable value), ...), sorted by key
    runs: list[Run]
    notes: list[str] = field(default_factory=list)  # diverged runs, ...: shown by compare too
    problems: list[RunProblem] = field(default_factory=list)  # its runs left out, with why

    @property
    def params(self) -> dict:
        """The group's configuration keys: its identity's, and the top-level settings its identity
        leaves out at their default (``data_resample=bootstrap``), from its config.yaml, so a
        row beside ``data_resample=0.5`` shows bootstrap, not nothing. The resampling settings
        only where the data are varied: elsewhere they do nothing, and the row leaves them blank."""
        params = {k: plain(v) for k, v in self.key}
        config = self.runs[0].config if self.runs else {}
        data_varied = "data" in (params.get("source.vary") or ())
        implied = {k: v for k, v in config.items()
                   if k not in params and k not in records.NON_IDENTITY_KEYS and k != "hydra"
                   and not isinstance(v, Mapping) and (k not in RESAMPLING_KEYS or data_varied)}
        return {**params, **implied}

    @property
    def config(self) -> dict:
        """The configuration of the group's first run (every identity key is shared)."""
        return self.runs[0].config

    @property
    def is_language_model(self) -> bool:
        return self.runs[0].lm is not None

    @cached_property
    def logits(self) -> np.ndarray:
        """(R, N, C) float32: every run's test logits, stacked."""
        if self.is_language_model:
            raise TypeError("a language-model group stores no logits; see analysis/lm.py")
        return np.stack([np.asarray(r.logits, dtype=np.float32) for r in self.runs])

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.runs[0].labels, dtype=np.int64)

    @cached_property
    def predictions(self) -> np.ndarray:
        """(R, N) int64: each run's argmax class on each test example (a language model's stored
        next-token predictions). Computed once, run by run from the memory-mapped logits as load
        checked them against result.json; the table, the statistics, the figures and
        ``python -m analysis.compare`` all read this one."""
        if self.is_language_model:
            rows = [np.asarray(r.lm.predictions, dtype=np.int64) for r in self.runs]
        else:
            rows = [np.argmax(np.asarray(r.logits), axis=1) for r in self.runs]
        return np.stack(rows)

    @cached_property
    def correct(self) -> np.ndarray:
        """(R, N) bool: run r's prediction is example i's label."""
        return self.predictions == self.labels

    def with_runs(self, runs: list[Run]) -> Group:
        """The group holding only ``runs`` (some of its own, in any order: the finite or paired
        runs of ``python -m analysis.compare``); the stacked arrays already computed come along,
        indexed, so no argmax is taken again."""
        position = {id(r): i for i, r in enumerate(self.runs)}
        index = [position[id(r)] for r in runs]
        part = replace(self, runs=list(runs))
        for name in ("logits", "predictions", "correct"):
            if name in self.__dict__:  # a cached_property already computed
                part.__dict__[name] = self.__dict__[name][index]
        return part

    def cells(self, keys: list[str]) -> dict:
        """The table cells of ``keys``: a key the group does not have (``data_order`` where the
        data are not varied) is blank, not "None" (which a ``shuffle_window`` of None means)."""
        params = self.params
        return {k: cell(params[k]) if k in params else "" for k in keys}

    def label(self, keys: list[str]) -> str:
        """A short row label from the given keys: ``init`` or ``init, model.width=64``. A key the
        group does not have (``data_order`` where the data are not varied) is left out, not "=None"."""
        params = self.params
        keys = [k for k in keys if k in params or k == "source.name"]
        return row_label([params.get(k) for k in keys], keys) or "all runs"


# Settings of the training set's resample, which only a source varying ``data`` draws.
RESAMPLING_KEYS = ("data_resample", "data_order")


@dataclass
class Sweep:
    """What ``load_sweep`` found below ``root``."""

    root: Path
    groups: list[Group]
    problems: list[RunProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Groups left out of the tables (their runs were evaluated on different test sets), with why.
    refused: list[tuple[Group, str]] = field(default_factory=list)

    @property
    def n_finished(self) -> int:
        return sum(len(g.runs) for g in self.groups)

    @property
    def display_keys(self) -> list[str]:
        return display_keys([g.key for g in self.groups])

    @property
    def status(self) -> SweepStatus:
        """The counts of ``sweep_status``, from this scan (the end-of-sweep callback reads the
        sweep once): every readable done run, those of refused groups included."""
        n_runs = sum(len(g.runs) for g in self.groups) + sum(len(g.runs) for g, _ in self.refused)
        return SweepStatus.of(n_runs, self.problems)


@dataclass
class SweepStatus:
    """Counts of a sweep's run directories, for the end-of-sweep callback."""

    finished: int
    failed: int
    unfinished: int
    corrupt: int
    broken: int = 0
    unreadable: int = 0

    @classmethod
    def of(cls, n_runs: int, problems: list[RunProblem]) -> SweepStatus:
        counts = Counter(p.status for p in problems)
        return cls(n_runs, counts["failed"], counts["unfinished"], counts["corrupt"], counts["broken"],
                   counts["unreadable"])

    @property
    def total(self) -> int:
        return self.finished + self.failed + self.unfinished + self.corrupt + self.broken + self.unreadable

    @property
    def ok(self) -> bool:
        """No run failed or is unreadable (unfinished runs may still be running or resumable)."""
        return self.failed == 0 and self.corrupt == 0 and self.broken == 0 and self.unreadable == 0

    def __str__(self) -> str:
        more = "".join(f", {n} {s}" for s, n in (("broken", self.broken), ("unreadable", self.unreadable)) if n)
        return (
            f"{self.finished} finished, {self.failed} failed, {self.corrupt} corrupt, "
            f"{self.unfinished} unfinished{more}"
        )

    @property
    def advice(self) -> str:
        """What to do about the failed and corrupt runs."""
        todo = []
        if self.failed:
            todo.append("relaunch the same command to retry the failed runs")
        if self.corrupt:
            todo.append("delete the corrupt runs' directories (listed above) and relaunch to train them again")
        if self.broken:
            todo.append(BROKEN_ADVICE)
        if self.unreadable:
            todo.append(UNREADABLE_ADVICE)
        return "; ".join(todo)


BROKEN_ADVICE = (
    "relaunch the same command to restore the broken runs' config.yaml (kept results are "
    "checked, and retrained if they do not hold up)"
)
UNREADABLE_ADVICE = (
    "the unreadable runs are not corrupt, do not delete them: ask their owner to make them "
    "readable (chmod -R a+rX DIR)"
)


# --- configuration keys -------------------------------------------------------------------


def hashable(value: Any) -> Any:
    """Lists become tuples and mappings sorted tuples of items, recursively."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(hashable(v) for v in value)
    return value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"name": "mlp"}}`` -> ``{"model.name": "mlp"}``; leaves made hashable."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(flatten(v, name + "."))
        else:
            flat[name] = hashable(v)
    return flat


class Exact:
    """A number, boolean or list in a group key: equal only to a value with the same JSON text,
    as in the run-directory hash (``records.config_hash``), where ``1``, ``1.0`` and ``true``
    name three directories; Python's ``1 == 1.0 == True`` would pool them in one row. Shows as
    its value; ``Group.params`` holds the value itself."""

    __slots__ = ("value", "text")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.text = records.canonical_json(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Exact) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return repr(self.value)


def exact(value: Any) -> Any:
    """A group key's leaf: strings and None as they are (their equality is already exact)."""
    return value if value is None or isinstance(value, str) else Exact(value)


def plain(value: Any) -> Any:
    """The value of a group key's leaf."""
    return value.value if isinstance(value, Exact) else value


def group_key(config: Mapping[str, Any]) -> tuple:
    """The grouping key of a run: every flattened identity key of its config, sorted, each value
    compared as the run-directory hash compares it (``Exact``): runs of two directories never
    share a row."""
    return tuple(sorted((k, exact(v)) for k, v in flatten(records.identity(config)).items()))


def cell(value: Any) -> Any:
    """A grouping value as a table cell: tuples (lists in the config) as ``[a,b]``."""
    return format_value(value) if isinstance(value, tuple) else value


def key_frame(rows: list[dict], columns: list[str], keys: list[str]):
    """``pd.DataFrame(rows, columns=columns)`` with the configuration keys' cells kept as they
    are (object columns): an integer stays ``128`` beside a group without that key (None), where
    pandas would make the column float (``128.0``, ``nan``) in every table, CSV and legend."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=columns)
    for k in keys:
        frame[k] = pd.Series([row.get(k) for row in rows], index=frame.index, dtype=object)
    return frame


def display_keys(keys: list[tuple]) -> list[str]:
    """The grouping keys worth a table column: ``source.name`` and the keys that differ.

    Other ``source.*`` keys (``vary``, ``lowlevel_required``) are implied by the source's name and
    shown only when they differ between groups of the same name, so a table over sources reads
    like the paper's Table 1.
    """
    dicts = [dict(k) for k in keys]
    missing = object()
    order: list[str] = []
    for d in dicts:
        order += [k for k in d if k not in order]
    varying = [k for k in order if len({repr(d.get(k, missing)) for d in dicts}) > 1]

    def implied_by_source_name(k: str) -> bool:
        by_name = defaultdict(set)
        for d in dicts:
            by_name[repr(d.get("source.name"))].add(repr(d.get(k, missing)))
        return all(len(v) == 1 for v in by_name.values())

    shown = [
        k
        for k in varying
        if k != "source.name" and not (k.startswith("source.") and implied_by_source_name(k))
    ]
    return ["source.name"] + shown


def sort_groups(groups: list[Group], keys: list[str]) -> list[Group]:
    """Sources in the paper's order, then the other shown keys (numbers numerically)."""

    def rank(k: str, v: Any):
        if k == "source.name":
            return (SOURCE_ORDER.index(v) if v in SOURCE_ORDER else len(SOURCE_ORDER), str(v))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, v)
        return (1, str(v))

    return sorted(groups, key=lambda g: tuple(rank(k, g.params.get(k)) for k in keys))


# --- finding and reading runs -------------------------------------------------------------


def find_run_dirs(root: Path, unlistable: list[Path] | None = None) -> Iterator[Path]:
    """Every directory at or below ``root`` holding config.yaml (or result.json: a run that lost
    its config.yaml), skipping hidden directories. Directories this user may not list are
    appended to ``unlistable``.

    A run directory is a leaf: nothing below it is searched.
    """
    root = Path(root)

    def onerror(e: OSError) -> None:
        if unlistable is not None and e.filename is not None:
            unlistable.append(Path(e.filename))

    for directory, subdirs, files in os.walk(root, onerror=onerror):
        if records.CONFIG_FILE in files and _hydras_files(Path(directory), files):
            subdirs[:] = []  # not a run, and no run below it
            continue
        if records.CONFIG_FILE in files or records.RESULT_FILE in files:
            subdirs[:] = []
            yield Path(directory)
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))


# Hydra's record of a job (``hydra.output_subdir``, e.g. ``hydra_rec``): its config.yaml beside these.
_HYDRA_RECORD = {"hydra.yaml", "overrides.yaml"}
# A top-level defaults list: a Hydra config (a repository's conf/), never a run's resolved config.
_DEFAULTS_LIST = re.compile(r"^defaults:", re.MULTILINE)


def _hydras_files(directory: Path, files: list[str]) -> bool:
    """Whether ``directory``'s config.yaml is Hydra's, not a run's: Hydra's record of a job (under
    an ``hydra.output_subdir`` other than a hidden one), or a config directory's primary config."""
    if _HYDRA_RECORD & set(files):
        return True
    if records.RESULT_FILE in files:
        return False
    try:
        with open(directory / records.CONFIG_FILE, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16)
    except OSError:  # the run reader names what is wrong with it
        return False
    return _DEFAULTS_LIST.search(head) is not None


@cache
def _c_yaml_loader() -> type | None:
    """OmegaConf's YAML loader (its float syntax, no timestamps, duplicate keys refused) on
    libyaml's C parser: a run's config.yaml in about 1 ms instead of 15 (the end-of-sweep
    summary reads every run's). None without libyaml."""
    try:
        from omegaconf._utils import get_yaml_loader
        from yaml.constructor import SafeConstructor
        from yaml.cyaml import CParser
        from yaml.resolver import Resolver
    except ImportError:
        return None

    class Loader(CParser, get_yaml_loader()):
        def __init__(self, stream):
            CParser.__init__(self, stream)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return Loader


def _plain(value: Any) -> bool:
    """True when OmegaConf would hand ``value`` back as it is: str keys, scalars, lists and
    mappings, no interpolation (``${...}``) to resolve."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, str):
        return "${" not in value
    return value is None or isinstance(value, (bool, int, float))


def _read_config_fast(path: Path) -> dict | None:
    """The config as ``_read_config`` returns it when it is a plain mapping parsed by the C
    loader; None (anything else, any error) leaves it to OmegaConf, which says what is wrong."""
    loader = _c_yaml_loader()
    if loader is None:
        return None
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except Exception:  # noqa: BLE001  (OmegaConf reads it again and names the error)
        return None
    return config if isinstance(config, dict) and _plain(config) else None


def _read_config(path: Path) -> dict:
    config = _read_config_fast(path)
    if config is not None:
        return config
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except PermissionError as e:
        raise records.cannot_read(path, e) from e
    except Exception as e:  # yaml and omegaconf raise many types; all mean "unreadable"
        raise records.CorruptRunError(f"cannot read {path}: {e}") from e
    if not isinstance(config, dict):
        raise records.CorruptRunError(f"{path} does not hold a mapping")
    return config


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError as e:
        return f"error.txt unreadable: {e}"
    text = lines[-1] if lines else "error.txt is empty"
    return text if len(text) <= 300 else text[:297] + "..."


def _unfinished_reason(directory: Path, config: dict | None) -> str:
    try:
        rows = records.read_metrics(directory / records.METRICS_FILE)
    except records.CorruptRunError:
        rows = []
    epochs = (config or {}).get("epochs")
    progress = f"; last evaluated epoch {rows[-1].get('epoch')} of {epochs}" if rows else ""
    if (directory / records.CHECKPOINT_FILE).exists():
        named, now = ((config or {}).get("dataset") or {}).get("sha256"), _data_now((config or {}).get("dataset"))
        if named and now and named != now:  # its relaunch names a new directory for the new data
            return (f"no result.json; checkpoint.pt present, but trained on the old data (dataset.sha256 "
                    f"{str(named)[:12]}, the data now {now[:12]}): not resumable by relaunching the command, "
                    f"which trains a new run on the data as they are; put the old data back to resume it"
                    f"{progress}")
        return f"no result.json; checkpoint.pt present (resumable){progress}"
    return f"no result.json (not started, running, or killed before its first checkpoint){progress}"


def _data_now(dataset: dict | None) -> str | None:
    """The ``dataset.sha256`` the data files (npz, ptb) would give a run launched now; None for
    data not named by their files' content (your own code's data are not loaded here)."""
    if not isinstance(dataset, dict) or dataset.get("name") not in ("npz", "ptb"):
        return None
    from nondet.data import data_fingerprint  # torch: only for an unfinished run of such data

    return data_fingerprint(dataset)


def _left_out(directory: Path, e: Exception, key: tuple | None = None, replicate=None) -> RunProblem:
    """A done run that cannot enter the tables: unreadable (permissions) or corrupt."""
    if isinstance(e, (records.UnreadableRunError, PermissionError)):
        reason = str(e) if isinstance(e, records.UnreadableRunError) else str(records.cannot_read(
            Path(e.filename or directory), e))
        return RunProblem(directory, "unreadable", reason, key, replicate)
    return RunProblem(directory, "corrupt", str(e), key, replicate)


def read_run(directory: Path) -> Run | RunProblem:
    """Read one run directory: a ``Run`` when it is done and readable, else a ``RunProblem``."""
    directory = Path(directory)
    try:
        return _read_run(directory)
    except PermissionError as e:  # a stat or listing refused outside the file readers
        return _left_out(directory, e)


def _read_run(directory: Path) -> Run | RunProblem:
    if not (directory / records.CONFIG_FILE).exists():
        return RunProblem(
            directory, "broken",
            "result.json is present but config.yaml is missing, so the run cannot be grouped: "
            "relaunch the same command to restore config.yaml (the kept result is checked first, "
            "and retrained if it does not hold up)",
        )
    try:
        config = _read_config(directory / records.CONFIG_FILE)
        key = group_key(config)
    except records.CorruptRunError as e:
        return _left_out(directory, e)
    replicate = config.get("replicate")
    if not (directory / records.RESULT_FILE).exists():
        if (directory / records.ERROR_FILE).exists():
            reason = _last_line(directory / records.ERROR_FILE)
            return RunProblem(directory, "failed", reason, key, replicate)
        return RunProblem(directory, "unfinished", _unfinished_reason(directory, config), key, replicate)
    return read_done_run(directory, config, key)


def read_done_run(directory: Path, config: dict, key: tuple | None = None) -> Run | RunProblem:
    """The files of a done run (result.json present) whose configuration is ``config``: a ``Run``
    when every one is readable and consistent, else a ``RunProblem`` saying why. A relaunch
    checks a run that lost its config.yaml with it (``nondet.job``)."""
    directory = Path(directory)
    key = group_key(config) if key is None else key
    replicate = config.get("replicate")
    try:
        result = records.read_json(directory / records.RESULT_FILE)
        if not isinstance(result, dict):
            raise records.CorruptRunError(f"{records.RESULT_FILE} does not hold a JSON object")
        if is_lm_run(directory):
            return _read_lm_run(directory, config, key, result, replicate)
        logits = records.read_array(directory / records.LOGITS_FILE, 2, "f")
        labels = records.read_array(directory / records.LABELS_FILE, 1, "iu")
        if len(labels) != len(logits):
            raise records.CorruptRunError(
                f"logits.npy has {len(logits)} rows but labels.npy has {len(labels)}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise records.CorruptRunError(f"labels.npy holds classes outside [0, {logits.shape[1]})")
        contradiction = records.result_contradiction(result, labels, np.argmax(logits, axis=1), logits)
        if contradiction:
            raise records.CorruptRunError(_contradiction_reason(directory, contradiction))
        metrics, seeds, env = _run_records(directory)
    except records.CorruptRunError as e:
        return _left_out(directory, e, key, replicate)
    return Run(directory, config, key, result, logits, labels, metrics, seeds, **env)


def _contradiction_reason(directory: Path, contradiction: str) -> str:
    return (
        f"{contradiction}: the two come from different evaluations, so neither can be trusted. "
        f"Delete the run directory {directory} and relaunch to retrain it."
    )


def _run_records(directory: Path) -> tuple[list[dict], dict | None, dict]:
    """metrics.jsonl's rows, seeds.json (None when absent) and ``Run``'s fields from env.json."""
    seeds_path = directory / records.SEEDS_FILE
    seeds = records.read_json(seeds_path) if seeds_path.exists() else None
    return records.read_metrics(directory / records.METRICS_FILE), seeds, _env_fields(directory)


def _env_fields(directory: Path) -> dict:
    """env.json's ``data_sha256`` (the data the run trained and was tested on), ``test_sha256``
    (its test set alone) and its recorded ``records.ARITHMETIC_KEYS``; a key the run predates
    (or a run without env.json) is left out."""
    path = directory / records.ENV_FILE
    env = records.read_json(path) if path.exists() else None
    if not isinstance(env, dict):
        return {"data_sha256": None, "arithmetic": {}}
    sha, test = env.get("data_sha256"), env.get("test_sha256")
    arithmetic = {k: hashable(v) for k, v in records.arithmetic_of(env).items()}
    earlier = [e for e in env.get(records.EARLIER_ARITHMETIC) or [] if isinstance(e, dict)]
    return {"data_sha256": str(sha) if sha is not None else None,
            "test_sha256": str(test) if test is not None else None, "arithmetic": arithmetic,
            "earlier_arithmetic": earlier, "code": _code_of(env),
            "inert": {str(k): str(v) for k, v in (env.get("inert_sources") or {}).items()}, "env": env}


def _read_lm_run(directory: Path, config: dict, key: tuple, result: dict, replicate) -> Run | RunProblem:
    """A finished language-model run: labels, per-token arrays (analysis/lm.py), no logits."""
    try:
        labels = records.read_array(directory / records.LABELS_FILE, 1, "iu")
        arrays = read_lm_arrays(directory, len(labels))
        contradiction = records.result_contradiction(result, labels, arrays.predictions,
                                                      target_logprobs=arrays.target_logprobs)
        if contradiction:
            raise records.CorruptRunError(_contradiction_reason(directory, contradiction))
        metrics, seeds, env = _run_records(directory)
    except records.CorruptRunError as e:
        return _left_out(directory, e, key, replicate)
    return Run(directory, config, key, result, None, labels, metrics, seeds, lm=arrays, **env)


def scan_runs(root: Path) -> tuple[list[Run], list[RunProblem]]:
    """Every run directory below ``root``, read: (done runs, runs left out with a reason)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    runs, problems, unlistable = [], [], []
    for directory in find_run_dirs(root, unlistable):
        item = read_run(directory)
        (runs if isinstance(item, Run) else problems).append(item)
    for directory in unlistable:
        problems.append(RunProblem(
            directory, "unreadable",
            f"permission denied listing {directory}: runs below it, if any, are not in the tables. "
            f"They are not corrupt: ask the owner to make it readable (chmod -R a+rX {directory})",
        ))
    return runs, problems


def sweep_status(sweep_dir: Path) -> SweepStatus:
    """Finished / failed / unfinished / corrupt run counts (the end-of-sweep callback's exit code)."""
    runs, problems = scan_runs(sweep_dir)
    return SweepStatus.of(len(runs), problems)


def _check_test_set(runs: list[Run]) -> None:
    first = runs[0]
    # A language-model run has no logits: its test set is its N target tokens.
    shape = lambda run: run.logits.shape if run.lm is None else (len(run.labels),)  # noqa: E731
    what = "logits" if first.lm is None else "target log-probabilities"
    for run in runs[1:]:
        same_labels = len(run.labels) == len(first.labels) and np.array_equal(run.labels, first.labels)
        if shape(run) != shape(first) or not same_labels:
            raise MixedTestSetError(
                "runs of one configuration were evaluated on different test sets, so their "
                f"metrics cannot be pooled: {first.path} ({what} {shape(first)}) and "
                f"{run.path} ({what} {shape(run)}"
                + ("" if same_labels else ", different labels")
                + "). Move one of them out of the sweep directory (or delete it to retrain)."
            )


def _completeness_notes(members: list, label: str, beside: set[int] = frozenset()) -> list[str]:
    """Replicate indices a group expected (config ``replicates``) but has no directory for, and
    indices that occur twice (the same run copied into the sweep twice would bias every metric).
    ``beside``: indices whose directory is there but could not be grouped (listed as corrupt)."""
    notes = []
    configs = [m.config for m in members if isinstance(m, Run)]
    seen = [m.replicate for m in members if m.replicate is not None] + list(beside)
    expected = max((c.get("replicates") or 0 for c in configs), default=0)
    absent = sorted(set(range(expected)) - set(seen))
    if absent:
        shown = ", ".join(map(str, absent[:20])) + (" ..." if len(absent) > 20 else "")
        notes.append(f"{label}: {len(absent)} of {expected} replicates have no run directory ({shown})")
    return notes


def _replicates_beside(runs: list, problems: list[RunProblem]) -> set[int]:
    """The replicate indices of run directories beside a group's runs whose config.yaml could not
    be read (so no group is theirs): their directory's name (``r0003``) says which."""
    parents = {r.path.parent for r in runs}
    names = [p.path.name for p in problems if p.key is None and p.path.parent in parents]
    return {int(name[1:]) for name in names if name[:1] == "r" and name[1:].isdigit()}


def _one_run_per_replicate(members: list[Run], label: str) -> tuple[list[Run], list[str], str | None]:
    """A run found twice under the analysed directory (the same sweep copied in twice, two presets
    sharing a configuration) would count as two replicates and bias every metric. Copies that
    computed the same bits are one run: the first path is kept, with a note. Copies that differ
    cannot both be replicate r: (members, notes, why the row is left out or None)."""
    by_replicate: dict = defaultdict(list)
    for run in members:
        by_replicate[run.replicate].append(run)
    kept, counted_once, conflicting = [], [], []
    for replicate, runs in by_replicate.items():
        if replicate is None or len(runs) == 1:
            kept += runs
            continue
        kept.append(runs[0])
        same = all(_same_bits(r, runs[0]) for r in runs[1:])
        (counted_once if same else conflicting).append((replicate, runs))
    notes = [
        f"{label}: replicate {r} is under the analysed directory {len(runs)} times, bitwise the same run "
        f"({_listed([str(x.path) for x in runs], 3)}): counted once"
        for r, runs in counted_once
    ]
    why = None
    if conflicting:
        shown = "; ".join(f"r{r}: {_listed([str(x.path) for x in runs], 3)}" for r, runs in conflicting[:3])
        why = (f"replicate indices {[r for r, _ in conflicting]} occur more than once with different results "
               f"({shown}): analyse one copy of each run (one sweep directory, or move the copies apart)")
    return kept, notes, why


def diverged(run: Run) -> bool:
    """A run whose test outputs are non-finite: its cross-entropy or logits, or a language
    model's target log-probabilities or perplexity (inf once the cross-entropy passes ~709
    nats, a run that diverged without reaching inf)."""
    result = run.result
    numbers = [result.get("test_cross_entropy")] + ([result.get("test_perplexity")] if run.lm else [])
    if any(isinstance(v, (int, float)) and not math.isfinite(v) for v in numbers):
        return True
    return not run.outputs_digest.finite


def _divergence_notes(group: Group, label: str) -> list[str]:
    """Runs that diverged (``diverged``): they stay in the table, as outcomes of the recipe, but
    their NaN or saturated metrics should not pass unnoticed."""
    names = [run.path.name for run in group.runs if diverged(run)]
    if not names:
        return []
    shown = _listed(names, 8)
    what = ("cross-entropy, perplexity or target log-probabilities" if group.is_language_model
            else "cross-entropy or logits")
    # Runs that all broke alike predict one constant class: SDs and disagreements of 0 that read
    # as perfect reproducibility.
    meaningless = ("every metric of this row is NaN or meaningless (an SD or a disagreement of 0 "
                   "means the runs broke alike, not that they agree)" if len(names) == len(group.runs)
                   else "their metrics are NaN or meaningless")
    return [
        f"{label}: {len(names)} of {len(group.runs)} runs diverged (non-finite test "
        f"{what}: {shown}); {meaningless}: lower the learning rate, or check the recipe"
    ]


def n_diverged(group: Group) -> int:
    """How many of a group's runs diverged (``diverged``): the ``n_diverged`` column of
    ``python -m analysis SWEEP --csv FILE``."""
    return sum(diverged(run) for run in group.runs)


def _arithmetic_notes(group: Group, label: str) -> list[str]:
    """Runs of one row computed with different float arithmetic (``records.ARITHMETIC_KEYS``): the same
    experiment, so one row, but its spread includes that difference and a ``source=none`` control
    is not identical across them. A key some runs did not record is compared among the others."""
    differing, keys = [], []
    for key in dict.fromkeys(k for run in group.runs for k in run.arithmetic):
        by_value: dict[Any, list[str]] = defaultdict(list)
        for run in group.runs:
            if key in run.arithmetic:
                by_value[run.arithmetic[key]].append(run.path.name)
        if len(by_value) > 1:
            keys.append(key)
            differing.append(f"{key}: " + "; ".join(
                f"{cell(value)} for {_listed(names, 4)}"
                for value, names in by_value.items()
            ))
    if not differing:
        return []
    said = f"{label}: its runs were computed with different float arithmetic ({'), ('.join(differing)})"
    if all(_same_bits(r, group.runs[0]) for r in group.runs[1:]):  # e.g. a control, rounded alike
        return [f"{said}, which can change results bit for bit; here every run's test outputs are "
                f"bitwise identical all the same"]
    return [
        f"{said}: on the same inputs these can change results bit for bit, so the spread of this row "
        f"may include that difference, and a source=none control need not be identical across them. "
        f"Relaunch the differing runs with the same settings to compare like with like: delete their "
        f"directories and launch the same command again on one kind of node with one torch"
        + (" (or launch with an explicit threads=N, whose runs form a row of their own)" if "threads" in keys else "")
    ]


def _code_of(env: dict) -> dict:
    """env.json's ``code_sha256`` as {role: (file, sha256)} ({} when the run used none of your code)."""
    code = env.get("code_sha256")
    if not isinstance(code, dict):
        return {}
    return {role: (str(e.get("file")), str(e.get("sha256"))) for role, e in code.items() if isinstance(e, dict)}


def _code_notes(group: Group, label: str) -> list[str]:
    """Runs of one row trained under different versions of your code (env.json ``code_sha256``:
    a model or script edited between launches): the row's spread then mixes the edit in."""
    notes = []
    for role in dict.fromkeys(r for run in group.runs for r in run.code):
        by_sha: dict[str, list[str]] = defaultdict(list)
        for run in group.runs:
            if role in run.code:
                by_sha[run.code[role][1]].append(run.path.name)
        if len(by_sha) > 1:
            path = next(run.code[role][0] for run in group.runs if role in run.code)
            versions = "; ".join(f"{sha[:12]} for {_listed(names, 4)}" for sha, names in by_sha.items())
            notes.append(f"{label}: its runs were trained under {len(by_sha)} versions of {path} ({role}: "
                         f"{versions}), so its spread includes your edit: retrain the runs of one version "
                         f"in a sweep of their own (delete or move the others)")
    return notes


def inert_member_notes(group: Group, label: str) -> list[str]:
    """A named combination one of whose sources varied nothing in its runs (env.json
    ``inert_sources``: ``source=init_dropout`` at ``model.dropout=0``): the row's label promises
    a spread it does not measure. ``all`` is left alone: its inert members are documented."""
    source = group.config.get("source", {})
    inert = {s: why for run in group.runs for s, why in run.inert.items()}
    if not inert or source.get("name") == "all":
        return []
    rest = [s for s in source.get("vary") or [] if s not in inert]
    return [f"{label}: source {source.get('name')} varies {', '.join(sorted(inert))}, which varied nothing "
            f"in these runs ({'; '.join(f'{s}: {why}' for s, why in sorted(inert.items()))}): the row "
            f"measures {', '.join(rest)} alone"]


def _listed(names: list[str], limit: int) -> str:
    """The first ``limit`` of ``names`` for a note, with ", ..." when there are more."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _resumed_arithmetic_notes(group: Group, label: str) -> list[str]:
    """Runs resumed under other float arithmetic than they trained with before (env.json
    ``earlier_arithmetic``): each is a run no uninterrupted training gives, whose resume was not
    bitwise."""
    mixed = []
    for run in group.runs:
        if run.earlier_arithmetic:
            changes = "; ".join(
                f"{k}: {cell(v)} before, {cell(now)} after"
                for k, (v, now) in records.arithmetic_changes(run.earlier_arithmetic[-1], run.arithmetic).items()
            )
            mixed.append(f"{run.path.name} ({changes})")
    if not mixed:
        return []
    shown = _listed(mixed, 4)
    return [
        f"{label}: {len(mixed)} of {len(group.runs)} runs were resumed under other float arithmetic "
        f"than they trained with before ({shown}): a resume is promised bitwise the uninterrupted run "
        f"only on the same arithmetic (another may round differently), so each may be a run no "
        f"uninterrupted training gives. To be sure, delete their directories and relaunch on one kind "
        f"of node to retrain them"
    ]


def _same_bits(a: Run, b: Run) -> bool:
    """The two runs' test outputs are bitwise equal (dtype, shape, bytes; NaN included), by their
    cached digests."""
    return a.outputs_digest.sha256 == b.outputs_digest.sha256


def _outputs(run: Run) -> np.ndarray:
    """What a run computed on the test set: its logits (a language model's target log-probabilities).
    The notes read it through ``Run.outputs_digest`` alone, so each run's file is read once."""
    return run.logits if run.lm is None else run.lm.target_logprobs


# Why a varied source can leave every run bitwise identical, for the note that says so.
_INERT_HINTS = {
    "init": "the model sets its own initial weights (a torch.manual_seed in its __init__, or weights "
            "loaded from a file): let nondet's init seed draw them",
    "shuffle": "the data order never changes (shuffle_window=1 keeps the stored order: use "
               "shuffle_window=null or a window > 1)",
    "augment": "no augmentation acts (dataset.augment=false, or the data are not images)",
    "dropout": "no dropout acts (model.dropout=0, or your own loop calls dropout outside `with run.dropout():`)",
    "reduction": "no batch has two examples to reorder (batch_size=1: use batch_size > 1)",
    "lowlevel": "no non-deterministic kernel ran (lowlevel acts only on a GPU)",
    "bitflip": "the one-ULP change did not reach the logits (precision=tf32 or bf16 rounds it away, "
               "or bitflip.param names a weight the output does not use)",
    "data": "every resample drew the same examples",
}


def _inert_hint(source: str, config: dict) -> str:
    """Why ``source`` may have left every run identical, for this configuration: the usual
    cause where the configuration has it, else what remains (a late onset, too little training
    for float32 outputs to record the change)."""
    if source != "shuffle" or config.get("shuffle_window") == 1:
        return _INERT_HINTS[source]
    onset = config.get("onset_epoch") or 0
    late = f"it acts from onset_epoch={onset} on, and " if onset else ""
    return (f"the data order did vary, but {late}the training after it did not move the test "
            f"outputs by a float32 ULP (few steps, a small learning rate, or a snapshot ensemble "
            f"dominated by an earlier snapshot)")


def variation_notes(group: Group, label: str, arithmetic_differs: bool) -> list[str]:
    """The safety net under every row: a ``source=none`` control whose runs are not bitwise
    identical (every other row's spread then includes that nondeterminism), and a row varying a
    source whose runs all are (its zero spread is by construction, not a finding). One run: no note."""
    if len(group.runs) < 2:
        return []
    vary = list(group.config.get("source", {}).get("vary") or [])
    first = group.runs[0]
    if not vary:
        differ = [r.path.name for r in group.runs[1:] if not _same_bits(r, first)]
        if not differ:
            return []
        cause = ("its runs were computed with different float arithmetic (the note on it says which)"
                 if arithmetic_differs else
                 "randomness nondet does not seed: the model or your own loop draws from torch's global "
                 "generator (dropout outside `with run.dropout():`, torch.rand, a DataLoader's shuffle), "
                 "or a GPU kernel that is not deterministic")
        return [
            f"{label}: the control is not deterministic: {len(differ)} of its {len(group.runs)} runs "
            f"differ bitwise from {group.runs[0].path.name} in their test logits ({_listed(differ, 4)}), "
            f"so every other row's spread includes this nondeterminism. Likely cause: {cause}; make "
            f"the control's runs bitwise identical before trusting the other rows"
        ]
    if any(not _same_bits(r, first) for r in group.runs[1:]):
        return []
    if diverged(group.runs[0]):  # identical NaNs: the divergence note names the cause
        return []
    name = group.config["source"].get("name", "+".join(vary))
    hints = "; ".join(f"{s}: {_inert_hint(s, group.config)}" for s in vary if s in _INERT_HINTS)
    return [
        f"{label}: source {name} varied nothing in this configuration: its {len(group.runs)} runs "
        f"are bitwise identical (test logits), so its spread is 0 by construction, not a finding. "
        f"Likely cause: {hints or 'the varied sources do not reach the result'}"
    ]


def _copy_notes(group: Group, label: str) -> list[str]:
    """Runs of a row varying a seeded source whose test outputs are bitwise identical though they
    are different replicates (whose seeds differ by construction): a run directory copied over
    another's (its config.yaml or seeds.json kept or edited), or a run resumed from another's
    checkpoint, passes for a replicate of its own and understates the row's spread. Named, not left
    out: which of them is the copy cannot be told from the files, and a bit flip that misses the
    logits gives the same picture honestly. A row whose runs are all identical has
    ``variation_notes``' note instead; one replicate found twice is ``_one_run_per_replicate``'s."""
    vary = (group.config.get("source") or {}).get("vary") or []
    if len(group.runs) < 2 or not [s for s in vary if s != "lowlevel"]:  # lowlevel: no seed to differ
        return []
    by_digest: dict[str, list[Run]] = defaultdict(list)
    for run in group.runs:
        by_digest[run.outputs_digest.sha256].append(run)
    if len(by_digest) == 1:
        return []  # every run identical: the "varied nothing" note
    # diverged runs may share their NaNs bit for bit: the divergence note names them
    clusters = [runs for runs in by_digest.values() if len(runs) > 1 and not diverged(runs[0])]
    if not clusters:
        return []
    named = "; ".join(" and ".join(r.path.name for r in runs) for runs in clusters)
    flip = " (or, in a bit-flip row, their flips did not reach the test logits)" if "bitflip" in vary else ""
    return [
        f"{label}: {named}: bitwise identical test outputs though they are different replicates, whose "
        f"seeds of {', '.join(vary)} differ by construction, so one is likely a copy of the other{flip}; the "
        f"row counts each, which "
        f"understates its spread. Delete the copy's run directory and relaunch to train it"
    ]


def expected_last_epoch(run: Run) -> int | None:
    """The epoch a run's result was evaluated at, which its metrics.jsonl ends with (result.json's
    ``epochs``, else config's; training always evaluates the last epoch, whatever ``eval_every``)."""
    epochs = run.result.get("epochs", run.config.get("epochs"))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return None
    return epochs


def last_recorded_epoch(run: Run) -> int | None:
    """The last epoch of a run's metrics.jsonl (None: no row)."""
    epochs = [row["epoch"] for row in run.metrics if isinstance(row, dict) and isinstance(row.get("epoch"), int)]
    return max(epochs) if epochs else None


def short_metrics(group: Group) -> list[Run]:
    """The runs whose metrics.jsonl stops before the epoch their result was evaluated at (a file
    cut short or emptied: its lost rows would silently shrink every per-epoch figure). A run
    without the file counts only beside runs that have rows (else the row has no per-epoch data)."""
    any_rows = any(run.metrics for run in group.runs)
    short = []
    for run in group.runs:
        expected, last = expected_last_epoch(run), last_recorded_epoch(run)
        if expected is not None and (last or 0) < expected and (
                any_rows or (run.path / records.METRICS_FILE).exists()):
            short.append(run)
    return short


def _metrics_notes(group: Group, label: str) -> list[str]:
    """``short_metrics``, named: the per-epoch figures leave those runs out."""
    short = short_metrics(group)
    if not short:
        return []
    described = []
    for run in short:
        last, expected = last_recorded_epoch(run), expected_last_epoch(run)
        described.append(f"{run.path.name} (empty, {expected} epochs expected)" if last is None
                         else f"{run.path.name} (ends at epoch {last} of {expected})")
    return [
        f"{label}: the metrics.jsonl of {len(short)} of {len(group.runs)} runs stops before the epoch their "
        f"result was evaluated at ({_listed(described, 6)}): the file was cut short, and its lost epochs are "
        f"not in the per-epoch figures, which leave these runs out (the table, from the logits, keeps them). "
        f"Restore the file, or delete the run's directory and relaunch to retrain it"
    ]


def _split_by_data(key: tuple, runs: list[Run], label: str) -> tuple[list[tuple[tuple, list[Run]]], list[str]]:
    """The runs of one configuration, split by the data they saw (env.json ``data_sha256``).

    Runs that saw different data are never pooled: each hash becomes its own row, its key
    extended by ``data_sha256`` (12 hex digits; ``unrecorded`` for runs made before nondet
    recorded it, whose data cannot be checked against the others). One value: one group, as is.
    """
    by_data: dict[str | None, list[Run]] = defaultdict(list)
    for run in runs:
        by_data[run.data_sha256].append(run)
    if len(by_data) == 1:
        return [(key, runs)], []
    parts, described = [], []
    for sha, members in sorted(by_data.items(), key=lambda item: (item[0] is None, str(item[0]))):
        short = sha[:12] if sha else "unrecorded"
        parts.append((tuple(sorted(key + (("data_sha256", short),))), members))
        names = _listed([r.path.name for r in members], 6)
        described.append(f"{len(members)} with {short} ({names})")
    note = (
        f"{label}: its runs saw different data (env.json data_sha256: {'; '.join(described)}): "
        f"they are not pooled; each data_sha256 is its own row. Move the runs of the data you "
        f"do not want out of the sweep directory"
    )
    return parts, [note]


def load_sweep(sweep_dir: Path) -> Sweep:
    """Find, read and group every run below ``sweep_dir``.

    A configuration whose runs were evaluated on different test sets is left out, in
    ``Sweep.refused`` and a note; runs that saw different data are split into rows. Raises
    ``FileNotFoundError`` when ``sweep_dir`` is not a directory.
    """
    runs, problems = scan_runs(sweep_dir)
    by_key: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    problems_by_key = defaultdict(list)
    for p in problems:
        problems_by_key[p.key].append(p)
    candidates = [
        Group(key, members, problems=sorted(problems_by_key[key], key=lambda p: str(p.path)))
        for key, members in by_key.items()
    ]
    label_keys = display_keys([g.key for g in candidates]) if candidates else ["source.name"]
    groups, refused, notes = [], [], []
    for whole in candidates:
        label = whole.label(label_keys)
        beside = _replicates_beside(whole.runs, problems_by_key[None])
        whole.notes += _completeness_notes(whole.runs + whole.problems, label, beside)
        parts, data_notes = _split_by_data(whole.key, whole.runs, label)
        whole.notes += data_notes
        for key, members in parts:
            members.sort(key=lambda r: (r.replicate is None, r.replicate or 0, str(r.path)))
            members, copy_notes, conflict = _one_run_per_replicate(members, label)
            group = Group(key, members, list(whole.notes) + copy_notes, whole.problems)
            try:
                _check_test_set(members)
            except MixedTestSetError as e:
                conflict = conflict or str(e)
            if conflict:
                reason = f"{label}: left out of the tables: {conflict}"
                group.notes.append(reason)
                refused.append((group, reason))
                continue
            groups.append(group)
    keys = display_keys([g.key for g in groups]) if groups else ["source.name"]
    groups = sort_groups(groups, keys)
    for group in groups:
        group.notes += _divergence_notes(group, group.label(keys))
        arithmetic = _arithmetic_notes(group, group.label(keys))
        group.notes += arithmetic
        group.notes += _resumed_arithmetic_notes(group, group.label(keys))
        group.notes += variation_notes(group, group.label(keys), bool(arithmetic))
        group.notes += _copy_notes(group, group.label(keys))
        group.notes += _metrics_notes(group, group.label(keys))
        group.notes += _code_notes(group, group.label(keys))
        group.notes += inert_member_notes(group, group.label(keys))
    seen = set()
    for group in groups + [g for g, _ in refused]:
        notes += [n for n in group.notes if not (n in seen or seen.add(n))]
    notes += _data_content_notes(groups, keys)
    notes += _number_spelling_notes(groups, keys)
    return Sweep(Path(sweep_dir), groups, sorted(problems, key=lambda p: str(p.path)), notes, refused)


def _data_content_notes(groups: list[Group], keys: list[str]) -> list[str]:
    """Rows of one dataset configuration (every ``dataset.*`` key alike) whose data file held
    different content (``dataset.sha256``): the file was rewritten between launches, or under a
    sweep, so their runs are kept apart, never pooled, and rows that differ in more than the
    data (another source) compare runs trained on different data. One note per dataset
    configuration, naming the rows of each content."""
    by_dataset = defaultdict(list)
    for group in groups:
        by_dataset[tuple(kv for kv in group.key if kv[0].startswith("dataset.") and kv[0] != "dataset.sha256")].append(group)
    notes = []
    shown_keys = [k for k in keys if k != "dataset.sha256"]
    for same in by_dataset.values():
        by_content = defaultdict(list)
        for group in same:
            by_content[str(group.params.get("dataset.sha256") or "not recorded")[:12]].append(group)
        if len(by_content) < 2:
            continue
        contents = "; ".join(
            f"{sha}: " + ", ".join(f"{g.label(shown_keys)} ({len(g.runs)} runs)" for g in rows)
            for sha, rows in by_content.items()
        )
        notes.append(
            f"{_data_source(same[0].params)} for different runs: the data changed between launches or "
            f"under the sweep (SHA-256 {contents}); each content is its own row, never pooled, and rows "
            f"of different content compare runs trained on different data. Relaunch the rows of the old "
            f"content on the data as it is now (delete their directories), or analyse them apart"
        )
    return notes


def _data_source(params: dict) -> str:
    """The key that names a row's data, with what it held: the file of ``dataset=npz``, the
    function of ``dataset=custom``, the directory of ``dataset=imagefolder`` and ``dataset=ptb``."""
    if params.get("dataset.name") == "custom":
        return f"dataset._target_={params.get('dataset._target_')} returned different data"
    key = "dataset.root" if params.get("dataset.name") in ("imagefolder", "ptb") else "dataset.path"
    return f"{key}={params.get(key)} had different contents"


def _number_spelling_notes(groups: list[Group], keys: list[str]) -> list[str]:
    """Rows whose keys are equal but for how a number is written (``user.lr=1`` and
    ``user.lr=1.0``): their runs live in different run directories, so they are kept apart."""
    by_value = defaultdict(list)
    for group in groups:
        by_value[tuple((k, plain(v)) for k, v in group.key)].append(group)
    return [
        f"{' and '.join(g.label(keys) for g in same)}: the same configuration but for how a number "
        f"is written (1 or 1.0, true or 1), so their runs are in different run directories and are "
        f"not pooled; write the number one way and relaunch to train them in one row"
        for same in by_value.values() if len(same) > 1
    ]
