"""Hydra callbacks: what a multirun did, and the summary table, when it ends.

Configured in conf/config.yaml (``hydra.callbacks.summary``); runs in the launching process
after every job of the sweep has returned, whatever the launcher (basic, submitit_local,
submitit_slurm). Relaunching a sweep prints, for example:

    Sweep outputs/default: 22 runs trained now, 8 finished earlier (skipped), 0 failed; of the 22
    trained now, 21 from scratch and 1 resumed from a checkpoint.

(one line). The counts, the exit status and the advice are about the runs this command launched,
as its jobs reported them (``run_job``'s outcome: finished, skipped, failed, busy): runs that
another launch running at the same time trained are counted as such (the summary waits for them,
at most ``lock_wait_seconds``, saying whose lock it waits for),
and failures an earlier launch left in the same sweep directory are a note, not this command's
failure. A failed run of this command makes it exit 1, with the advice that mends it (delete a
corrupt checkpoint, free disk space, or relaunch). Under a launcher that reports no outcomes (a
plain hydra-submitit launcher), "now" means result.json written since the launch began (its time
taken from the file system, so a cluster's clock skew does not matter), the runs another launch
holds the lock of when the jobs have returned are waited for as above and counted as trained
by it, and every failed, corrupt or unfinished run below the sweep directory counts (exit 1).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nondet.lock import RUN_LOCK, run_lock, wait_until_free
from nondet.records import CONFIG_FILE, ENV_FILE, ERROR_FILE, RESULT_FILE, is_done

# The outcomes (run_job's return values) of the jobs this command launched, as they come back:
# from Hydra's on_job_end where jobs run in this process (basic launcher), from the sweep-aware
# submitit launchers (hydra_plugins/nondet_launcher) where they run elsewhere.
_OUTCOMES: list[dict] = []


def record_job_returns(returns: list[JobReturn]) -> None:
    for job_return in returns:
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return._return_value, dict):
            _OUTCOMES.append(job_return._return_value)


@dataclass
class Launched:
    """The runs of the jobs this command launched, by what the jobs did with them."""

    finished: list[Path]
    skipped: list[Path]
    failed: list[Path]
    busy: list[Path]  # being trained by another process when the job came to them
    fixes: dict[Path, str]  # failed runs a relaunch alone cannot mend: what to do
    lost: list[str] = field(default_factory=list)  # jobs killed before their runs could be found

    @classmethod
    def of(cls, outcomes: list[dict]) -> "Launched":
        """Each run once, by the most that any job did with it: jobs whose replicates overlap
        (``-m replicate=0,2`` with 4 a job) meet the same run, one training it and the other
        finding it finished (skipped) or being trained (busy)."""
        counted: set[Path] = set()

        def paths(key: str) -> list[Path]:
            found = [d for d in dict.fromkeys(Path(p).resolve() for o in outcomes for p in o.get(key, []))
                     if d not in counted]
            counted.update(found)
            return found

        finished, failed, busy, skipped = paths("finished"), paths("failed"), paths("busy"), paths("skipped")
        fixes = {Path(p).resolve(): fix for o in outcomes for p, fix in o.get("fixes", {}).items()}
        return cls(finished, skipped, failed, busy, fixes, [job for o in outcomes for job in o.get("lost", [])])

    def all(self) -> set[Path]:
        return {*self.finished, *self.skipped, *self.failed, *self.busy}


@dataclass
class SweepCounts:
    """The runs below a sweep directory, split by what the latest launch did with them."""

    scratch: int = 0  # finished by this launch, trained from epoch 0
    resumed: int = 0  # finished by this launch, resumed from checkpoint.pt
    skipped: int = 0  # finished before this launch
    failed: int = 0  # error.txt and no result.json
    by_other: int = 0  # finished meanwhile by another launch that was training them
    corrupt: int = 0  # finished before this launch, but their files cannot be used (skipped)

    @property
    def trained(self) -> int:
        return self.scratch + self.resumed

    def __str__(self) -> str:
        text = (f"{self.trained} runs trained now, {self.skipped} finished earlier (skipped), "
                f"{self.failed} failed")
        if self.corrupt:
            text += f", {self.corrupt} corrupt (skipped, listed below)"
        if self.trained:
            text += (f"; of the {self.trained} trained now, {self.scratch} from scratch and "
                     f"{self.resumed} resumed from a checkpoint")
        if self.by_other:
            text += f"; {self.by_other} trained meanwhile by another launch of this sweep"
        return text


def filesystem_now(directory: Path) -> float:
    """The current time as the file system holding ``directory`` sees it: the mtime of a file
    written now. Compared with the mtimes of files that jobs on other nodes wrote, this is immune
    to clock skew between the launching machine and the nodes (a shared file system stamps both)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".launch-", suffix=".tmp") as f:
            return os.fstat(f.fileno()).st_mtime
    except OSError:
        return time.time()


def sweep_counts(sweep_dir: Path, since: float, by_other: list[Path] = (), corrupt: list[Path] = ()) -> SweepCounts:
    """Count the runs below ``sweep_dir``: finished at or after ``since`` (from scratch or
    resumed, per env.json's ``resumed_from_epoch``), finished before it, and failed; those of
    ``by_other`` (runs another launch was training) that are finished count as trained by it,
    those of ``corrupt`` (the analysis cannot use their files) as corrupt."""
    counts = SweepCounts()
    other, bad = {Path(d).resolve() for d in by_other}, {Path(d).resolve() for d in corrupt}
    for result in Path(sweep_dir).rglob(RESULT_FILE):
        if result.parent.resolve() in bad:
            counts.corrupt += 1
            continue
        if result.parent.resolve() in other:
            counts.by_other += 1
            continue
        if result.stat().st_mtime < since:
            counts.skipped += 1
            continue
        if _resumed(result.parent):
            counts.resumed += 1
        else:
            counts.scratch += 1
    counts.failed = len(failed_runs(sweep_dir))
    return counts


def held_runs(sweep_dir: Path) -> list[Path]:
    """Unfinished runs below ``sweep_dir`` whose run lock a live process holds: once this
    command's jobs have all returned, another launch of the sweep is training them."""
    locks = Path(sweep_dir).rglob(RUN_LOCK)
    return sorted(p.parent.resolve() for p in locks if not is_done(p.parent) and run_lock(p.parent).is_held())


def failed_runs(sweep_dir: Path) -> list[Path]:
    """Run directories below ``sweep_dir`` with error.txt and no result.json."""
    errors = Path(sweep_dir).rglob(ERROR_FILE)
    return sorted(e.parent for e in errors if not (e.parent / RESULT_FILE).exists())


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _resumed(directory: Path) -> bool:
    try:
        return json.loads((directory / ENV_FILE).read_text()).get("resumed_from_epoch") is not None
    except (OSError, ValueError):
        return False


def launched_counts(launched: Launched, corrupt: list[Path] = ()) -> SweepCounts:
    """The counts of the summary line, from what this command's jobs did; a skipped run that is
    ``corrupt`` (the analysis cannot use its files) counts as corrupt."""
    bad = {Path(d).resolve() for d in corrupt}
    skipped = [d for d in launched.skipped if d not in bad]
    resumed = sum(_resumed(d) for d in launched.finished)
    counts = SweepCounts(scratch=len(launched.finished) - resumed, resumed=resumed, skipped=len(skipped),
                         failed=len(launched.failed), corrupt=len(launched.skipped) - len(skipped))
    counts.by_other = sum(is_done(d) for d in launched.busy)
    return counts


def writable_sweep_dir(sweep_dir: Path) -> str | None:
    """None when the sweep directory can be written (created if need be), else why not."""
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=sweep_dir, prefix=".launch-", suffix=".tmp") as probe:
            probe.write(b"\n")  # a full disk fails here, not only a read-only directory
            probe.flush()
            os.fsync(probe.fileno())
        record = sweep_dir / "multirun.yaml"  # Hydra rewrites it: a read-only copy fails too
        if record.exists():
            with open(record, "a"):
                pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def swept_values(config: DictConfig):
    """``(key, value)`` for each value a ``-m`` sweep on the command line gives a key whose range
    is checked (``-m replicates=0,4``): the composed config holds none of them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nondet.config import RANGES

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    for override in overrides:
        if override.is_sweep_override() and override.key_or_group in RANGES:
            for value in override.sweep_iterator():
                yield override.key_or_group, value


def launch_values(config: DictConfig, key: str) -> list | None:
    """The values this launch gives ``key``: the command line's (``-m shuffle_window=1,16`` gives
    both, ``batch_size=1`` one), else a preset's ``hydra.sweeper.params``; None when neither
    names it (the composed config holds its one value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    params = config.hydra.sweeper.get("params") or {}
    for lines in (list(config.hydra.overrides.task), [f"{key}={params[key]}"] if key in params else []):
        try:
            overrides = OverridesParser.create().parse_overrides(lines)
        except HydraException:  # a sweeper's own syntax: the sweeper reads it, not this check
            continue
        named = [o for o in overrides if o.key_or_group == key and not o.is_delete()]
        if named:  # the last one, as Hydra takes it
            return list(named[-1].sweep_iterator()) if named[-1].is_sweep_override() else [named[-1].value()]
    return None


def _source_option(config: DictConfig, name: str) -> dict | None:
    """``source=name`` composed with the launch's other fixed overrides: its ``vary``."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    fixed = [o.input_line for o in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
             if not o.is_sweep_override() and o.key_or_group != "source"]
    try:
        composed = GlobalHydra.instance().config_loader().load_sweep_config(config, fixed + [f"source={name}"])
    except (HydraException, ValueError):  # the job composing it says what is wrong
        return None
    return OmegaConf.to_container(composed.source, resolve=True)


def check_settings_leave_sources_varying(config: DictConfig, resolved: dict) -> None:
    """Refuse a launch in which a setting fixed for every job turns off everything a source
    varies (``-m source=shuffle shuffle_window=1``, ``source=reduction batch_size=1``): its rows
    would show zero spread as if it were a finding. A sweep over the setting is left alone."""
    from nondet.job import SOURCE_SETTINGS, inert_by_setting, refuse_inert

    values = {k: launch_values(config, k) for k in SOURCE_SETTINGS}
    studied = {k for k, v in values.items() if v is not None and len(v) > 1}
    setting = {**resolved, **{k: v[0] for k, v in values.items() if v is not None and len(v) == 1}}
    if not any(setting[k] == 1 for k in SOURCE_SETTINGS if k not in studied):
        return  # nothing could be turned off: no source is composed
    names = launch_values(config, "source")
    if names is None or names == [resolved["source"]["name"]]:
        sources = [resolved["source"]]
    else:
        sources = [s for s in (_source_option(config, str(n)) for n in names) if s is not None]
    for source in sources:
        one = {**setting, "source": source}
        refuse_inert(one, inert_by_setting(one, studied))


def sweep_jobs(config: DictConfig) -> list[DictConfig]:
    """The configurations of a multirun's jobs, composed as Hydra's basic sweeper composes them:
    one per combination of swept values, ``replicate`` aside (no refusal depends on it); none
    under another sweeper (one that picks its values as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return []
    loader = GlobalHydra.instance().config_loader()
    params = config.hydra.sweeper.get("params") or {}
    swept = [f"{key}={params[key]}" for key in params if key != "replicate"]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(
        swept + list(config.hydra.overrides.task))
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    return [loader.load_sweep_config(config, job) for job in jobs]


def runs_here(config: DictConfig) -> bool:
    """Whether the jobs run in this process (Hydra's basic launcher), on this machine's device
    and with its data, rather than on a cluster's nodes."""
    return str(config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")


# What a configuration mistake raises: nondet's checks, a dataset that cannot load, a device
# that is not there (RuntimeError: device=cuda, lowlevel on a CPU).
REFUSALS = (ValueError, RuntimeError, OSError)


def refusal_line(error: BaseException) -> str:
    """``Error in the configuration: ...``: the mistake, in one line (an ``OSError`` with its type:
    a file that is missing or cannot be written, ``PermissionError: ...``)."""
    from omegaconf.errors import OmegaConfBaseException

    from nondet.job import one_line

    # An interpolation error wraps the mistake (by_scale's, pack_step's): say the mistake.
    while isinstance(error, OmegaConfBaseException) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, OSError):
        return f"Error: {one_line(error)}"
    lines = str(error).strip().splitlines()
    return f"Error in the configuration: {lines[0] if lines else type(error).__name__}"


def check_no_deleted_keys(overrides: list[str]) -> None:
    """Refuse ``~base_seed``, ``~dataset``, ``~model.width``: a job reads every key and config group
    of nondet's (a deleted one fails each run, and a deleted group trains the schema's defaults).
    Keys of your own (``~user.KEY``, ``~model.KEY`` of your ``model=custom``) may go."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from nondet.config import ConfigError, NondetConfig, declared_keys, schema_defaults

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:  # a malformed override: Hydra says what is wrong with it
        return
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() and (key in declared_keys() or key == "schema"):
            # a node that is no config group (lm, bitflip, user) takes values key by key
            node = isinstance(schema_defaults(NondetConfig).get(key), dict) and key not in (*NAMED_GROUPS, "source")
            raise ConfigError(f"~{key}: nondet needs every key of its config; set a value instead "
                              f"({key}{'.KEY' if node else ''}=...)")


# Keys a launch takes one value of, and why. Hydra resolves the replicate sweep once, from the
# launch's replicates and pack, so the jobs of other values would train the wrong runs; a preset
# brings its own sweep (its sources, its sweep name), which Hydra does not apply to a sweep over
# presets (only the default source trained); and the summary reads the launch's one sweep directory.
ONE_VALUE_KEYS = {
    "replicates": "the replicate sweep is built from it",
    "pack": "the replicate sweep is built from it",
    "experiment": "a preset brings its own sweep of sources, which a sweep over presets drops",
    "sweep_name": "the summary reads one sweep directory",
    "output_root": "the summary reads one sweep directory",
    "hydra.sweep.dir": "the summary reads one sweep directory",
}


def check_one_value_per_launch(config: DictConfig) -> None:
    """Refuse a multirun that sweeps a key of ``ONE_VALUE_KEYS`` (``-m replicates=2,18``,
    ``-m +experiment=table1,table3``, ``-m sweep_name=a,b``) before anything trains."""
    from nondet.config import ConfigError

    for key, why in ONE_VALUE_KEYS.items():
        values = launch_values(config, key)
        if values is not None and len(values) > 1:
            typed = "+experiment" if key == "experiment" else key
            raise ConfigError(f"{typed}={','.join(map(str, values))}: one value per launch ({why}); "
                              f"launch once per value")


def check_replicates_of_jobs(config: DictConfig, jobs: list[DictConfig]) -> None:
    """Refuse a multirun with a job whose ``replicate`` is outside ``range(0, replicates)`` (it
    would fail once others trained) or, where the replicate sweep is the one built from the
    launch's ``replicates`` and ``pack``, a job whose own values (a swept preset or ``scale`` sets
    them) that sweep does not fit: it would fail, or leave replicates untrained."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nondet.config import ConfigError
    from nondet.job import pack_step

    starts = launch_values(config, "replicate") or []
    task = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    raw = (OmegaConf.to_container(config.hydra.sweeper.get("params") or {}, resolve=False) or {}).get("replicate")
    derived = "${replicates}" in str(raw) and not any(o.key_or_group == "replicate" for o in task)
    swept = {o.key_or_group: o.get_key_element() for o in task if o.is_sweep_override()}
    for job in jobs:
        replicates, step = job.replicates, pack_step(job.pack, job.replicates)
        job_task = OverridesParser.create().parse_overrides(list(job.hydra.overrides.task))
        label = " ".join(o.input_line for o in job_task if o.key_or_group in swept and o.key_or_group != "replicate")
        covered = {i for r in starts if isinstance(r, int) and 0 <= r for i in range(r, min(r + step, replicates))}
        fits = all(isinstance(r, int) and 0 <= r < replicates for r in starts)
        if derived and not (fits and covered == set(range(replicates))):
            raise ConfigError(
                f"{label or 'the configuration'} sets replicates={replicates}, pack={job.pack}, but the replicate "
                f"sweep is built from the launch's replicates={config.replicates}, pack={config.pack}: launch "
                f"once per value of {', '.join(sorted(swept.values())) or 'the preset'}")
        if not fits:
            bad = next(r for r in starts if not (isinstance(r, int) and 0 <= r < replicates))
            raise ConfigError(f"replicate={bad} is outside range(0, replicates={replicates})"
                              + (f" (the job {label})" if label else "")
                              + ": give replicate values below replicates, or leave replicate out to sweep them all")


def check_or_exit(config: DictConfig, jobs: list[DictConfig] | None = None, *, config_checked: bool = False) -> None:
    """Exit with one line (naming the key and what it accepts) for a configuration mistake, before
    the launcher starts any job: an unknown key, a value out of range, a preset that cannot
    resolve (``scale=tiny``, ``-m pack=0``), unless ``config_checked`` (a first call did); then
    every refusal of each of ``jobs`` (a source that varies nothing, a model the data do not fit,
    ``lowlevel`` on a CPU: ``check_job``)."""
    from omegaconf.errors import OmegaConfBaseException

    from nondet.config import check_config, check_range
    from nondet.job import SOURCE_SETTINGS, check_job, check_launch_code, resolved_config, runs_root

    try:
        if not config_checked:
            if "hydra" in config:
                check_no_deleted_keys(list(config.hydra.overrides.task))
            check_range("scale", config.get("scale"))  # first: presets resolve their values by it
            resolved = resolved_config(config, concrete_device=False)
            check_config(resolved)
            for key, value in swept_values(config):
                check_range(key, value)
            if "hydra" in config and config.hydra.mode == RunMode.MULTIRUN:
                check_one_value_per_launch(config)
            check_settings_leave_sources_varying(config, resolved)  # judges SOURCE_SETTINGS for all
            if "hydra" in config:
                runs_root(resolved, config.hydra)  # refuses a filesystem root
        if jobs and "hydra" in config and config.hydra.mode == RunMode.MULTIRUN:
            check_replicates_of_jobs(config, jobs)
        for job in jobs or []:
            if not CHECK_JOBS:  # a script of yours: only whether its code changed since a run trained
                check_launch_code(job)
                continue
            check_chosen_groups(job)
            check_job(job, local=runs_here(config), judged=SOURCE_SETTINGS)
    except (*REFUSALS, OmegaConfBaseException) as e:
        sys.exit(refusal_line(e))


# Config groups whose option files name what they hold (``name: qrnn`` in conf/model/qrnn.yaml).
NAMED_GROUPS = ("model", "dataset", "optimizer", "schedule")


def check_chosen_groups(job: DictConfig) -> None:
    """Refuse a command line whose choice of a config group a preset then overrides.

    An experiment preset sets ``model.name``/``dataset.name`` after the groups are composed
    (``name: ${by_scale:resnet14,resnet6}``), so ``+experiment=table1 model=qrnn`` would train
    a ResNet with the QRNN's options mixed in, and ``+experiment=table2 scale=smoke dataset=ptb``
    would train on synthetic text. The chosen option's file says what it holds; where the composed
    name differs and the command line did not set that name itself, the command is refused."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = job.get("hydra") or {}
    task = list((hydra_cfg.get("overrides") or {}).get("task") or [])
    choices = (hydra_cfg.get("runtime") or {}).get("choices") or {}
    overrides = OverridesParser.create().parse_overrides(task)
    keys = {o.key_or_group for o in overrides if o.package is None}
    if not GlobalHydra.instance().is_initialized():
        return
    repository = GlobalHydra.instance().config_loader().repository
    for group in NAMED_GROUPS:
        chosen = choices.get(group)
        if group not in keys or f"{group}.name" in keys or not chosen:
            continue
        found = repository.load_config(f"{group}/{chosen}")
        declared = found.config.get("name") if found is not None else None
        composed = (job.get(group) or {}).get("name")
        if isinstance(declared, str) and composed is not None and composed != declared:
            preset = f"+experiment={choices['experiment']}" if choices.get("experiment") else "the configuration"
            raise ValueError(
                f"{group}={chosen}: {preset} sets {group}.name={composed} (with its own {group} options), so "
                f"{chosen} would not be what trains; to use {chosen} under it, also set "
                f"{group}.name={declared} (the preset's other {group} options still apply), or drop "
                f"{preset}")


def check_command_line(args: list[str], config_dir: Path, own_dir: Path | None = None,
                       config_name: str | None = None) -> None:
    """Exit with one line for an override of a top-level key the schema does not have
    (``epoch=3``). Hydra refuses it while it composes the config, before any callback runs, and
    advises ``+epoch=3``, which would only add a key nothing reads; a nested one (``model.widht``)
    composes and ``check_or_exit`` names it. Config groups (``experiment=...``, and those of
    ``own_dir``, a script's config directory: ``nondet.api.main``) are Hydra's to say. The top-level
    keys of your own primary config (``--config-name``, or ``config_name``: a script's) are checked
    as those of the command line."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    from nondet.config import NondetConfig, schema_defaults, unknown_key_message

    top = schema_defaults(NondetConfig)
    groups = [d.name for c in (config_dir, own_dir) if c is not None and c.is_dir() for d in c.iterdir() if d.is_dir()]
    known = {*top, "hydra", *groups}
    try:
        parsed = get_args_parser().parse_known_args(args)[0]
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except HydraException:  # a malformed override: Hydra says what is wrong with it
        return
    if parsed.cfg and parsed.multirun:  # Hydra refuses it with a traceback
        sys.exit(f"Error: --cfg {parsed.cfg} shows the configuration of one job, and Hydra refuses it with "
                 f"-m (--multirun): drop -m, and give one value of each swept key")
    try:  # before Hydra composes: ``~epochs`` would fail there, in Hydra's words, without the fix
        check_no_deleted_keys(parsed.overrides)
    except ValueError as e:
        sys.exit(refusal_line(e))
    if parsed.config_name or config_name:
        check_own_primary_config(parsed.config_name or config_name, [parsed.config_dir, own_dir, config_dir], top)
    if parsed.config_dir or parsed.config_name or any(o.key_or_group == "hydra.searchpath" for o in overrides):
        return  # a config of your own may bring config groups of its own: Hydra judges those
    for override in overrides:
        key = override.key_or_group
        plain = override.type == OverrideType.CHANGE and override.package is None
        if plain and key.isidentifier() and key not in known:  # not model.width, hydra/launcher
            sys.exit(f"Error in the configuration: {unknown_key_message(key, top)}")


def check_own_primary_config(name: str, folders: list, top: dict) -> None:
    """Exit with one line for a top-level key the schema does not have (``epoch: 3``) in your own
    primary config (``--config-name mine``) that composes nondet's (``defaults: [config, _self_]``):
    Hydra refuses it with its ConfigKeyError, without the key it meant."""
    from omegaconf import ListConfig
    from omegaconf.errors import OmegaConfBaseException

    from nondet.config import unknown_key_message

    for folder in (Path(f) for f in folders if f):
        path = folder / (name if name.endswith(".yaml") else f"{name}.yaml")
        if not path.is_file():
            continue
        try:
            own = OmegaConf.load(path)
        except (OSError, OmegaConfBaseException):  # Hydra says what is wrong with the file
            return
        defaults = own.get("defaults") if isinstance(own, DictConfig) else None
        if not isinstance(defaults, ListConfig) or "config" not in list(defaults):
            return  # it does not compose nondet's config as a whole: Hydra judges its keys
        unknown = sorted(k for k in own if k not in {*top, "defaults", "hydra"})
        if unknown:
            sys.exit(f"Error in the configuration: {path}: {unknown_key_message(str(unknown[0]), top)}")
        return


# Whether the command's jobs are launch.py's (``run_job``), whose data, model and device
# ``check_job`` checks before any starts; a script of yours (``nondet.api.main``) trains a model
# of its own, on data of its choosing, so only its configuration is checked up front, and whether
# its code changed since a run of the sweep trained (``check_launch_code``).
CHECK_JOBS = True


class CheckCallback(Callback):
    """``hydra.callbacks.check``: the configuration checks of ``nondet.config.check_config``, then
    those of ``nondet.job.check_job`` for every job, when the command starts, so a mistake is one
    line before anything trains instead of a traceback once some jobs are done."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with launch_stopped_by_any_error("checking the command"):
            check_or_exit(config, [config])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweeper resolves hydra.sweeper.params (``${nondet.pack_step:${pack},${replicates}}``)
        # next: first the command's own config, whose mistake is then said once, not per job.
        with launch_stopped_by_any_error("checking the command"):
            check_or_exit(config)
            check_or_exit(config, sweep_jobs(config), config_checked=True)


@contextmanager
def launch_stopped_by_any_error(what: str):
    """An error a callback did not expect while the command starts (``what`` it was doing) ends
    the command in one line, naming where it was raised: Hydra turns a callback's exception into
    a warning and launches the jobs anyway."""
    try:
        yield
    except Exception as e:  # SystemExit (the checks' own refusals) passes through
        import traceback

        from nondet.job import one_line

        where = traceback.extract_tb(e.__traceback__)[-1]
        sys.exit(f"Error: {what} before launching it raised {one_line(e)} (at {where.filename}:"
                 f"{where.lineno}, in {where.name}); nothing was launched: mend what it names, then relaunch")


class SummaryCallback(Callback):
    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with launch_stopped_by_any_error("preparing the sweep directory"):
            self._start_sweep(config)

    def _start_sweep(self, config: DictConfig) -> None:
        _OUTCOMES.clear()
        sweep_dir = sweep_dir_of(config)
        why = writable_sweep_dir(sweep_dir)
        if why:  # Hydra would fail writing multirun.yaml there, with a traceback
            print(f"Cannot launch into {sweep_dir}: {why}. Nothing was trained or changed; make it "
                  f"writable, or write the sweep elsewhere (output_root=DIR). To read its results: "
                  f"python -m analysis {sweep_dir}", file=sys.stderr, flush=True)
            sys.exit(1)
        self.started = filesystem_now(sweep_dir)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _OUTCOMES.clear()
        with launch_stopped_by_any_error("preparing the run directory"):
            self.started = filesystem_now(run_sweep_dir(config))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        record_job_returns([job_return])  # a job of this process (basic launcher)
        failed = job_return.status == JobStatus.FAILED
        if failed and config.hydra.mode == RunMode.MULTIRUN and runs_here(config):
            # The sweeper raises this job's error next, ending the sweep: first say what the
            # jobs before it did, and a refusal in one line instead of a traceback.
            if _OUTCOMES:
                self.summarize(sweep_dir_of(config), config, exit_on_failure=False)
            refuse(job_return._return_value)

    def on_run_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A single run (no ``-m``): the same summary and exit status as a multirun's."""
        if job_return.status == JobStatus.FAILED:
            refuse(job_return._return_value)
            return  # Hydra's traceback follows: not a mistake of the configuration
        self.summarize(run_sweep_dir(config), config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.summarize(sweep_dir_of(config), config)

    def summarize(self, sweep_dir: Path, config: DictConfig, exit_on_failure: bool = True) -> None:
        """The counts line, the table and the advice for what this command launched; exit 1
        when a run it launched is not done (``exit_on_failure``)."""
        import analysis

        launched = Launched.of(_OUTCOMES) if _OUTCOMES else None
        if launched and launched.busy:
            wait_for_other_launch(launched.busy, sweep_dir, lock_wait_seconds(config))
        others = [] if launched else held_runs(sweep_dir)
        if others:  # no outcomes say which runs the jobs left to another launch: its locks do
            wait_for_other_launch(others, sweep_dir, lock_wait_seconds(config))
        try:
            sweep = analysis.load_sweep(sweep_dir)  # read once: the table, the counts and the advice
        except analysis.MixedTestSetError as e:
            sweep, mixed = None, e
        # A corrupt run was skipped (its result.json is there): the counts line says it is corrupt.
        corrupt = [p.path.resolve() for p in sweep.problems if p.status == "corrupt"] if sweep else []
        counts = (launched_counts(launched, corrupt) if launched
                  else sweep_counts(sweep_dir, self.started, others, corrupt))
        print(f"\nSweep {sweep_dir}: {counts}.\n", flush=True)
        try:
            if sweep is None:
                raise mixed
            print(analysis.summarize(sweep), flush=True)
            from analysis.report import report_command

            print(f"HTML report: {report_command(sweep_dir)}", flush=True)
        except analysis.MixedTestSetError as e:
            # Every run is kept; the table needs runs of one group to share a test set.
            print(f"No table: {e}", flush=True)
            sys.exit(1)
        # analysis finds runs by their config.yaml; a run can fail before writing it (a corrupt
        # checkpoint, a model that cannot be built), so those are listed here.
        all_failed = failed_runs(sweep_dir)
        early = [d for d in all_failed if not (d / CONFIG_FILE).exists()]
        for directory in early:
            print(f"- failed before writing {CONFIG_FILE}: {directory}: "
                  f"{last_line(directory / ERROR_FILE)}", flush=True)
        failed = [d.resolve() for d in all_failed]
        if launched is None:  # no outcomes: every failed, corrupt or unfinished run counts
            if failed or corrupt:
                status = sweep.status
                more = f" (and {len(early)} failed before writing {CONFIG_FILE})" if early else ""
                advice = status.advice or "relaunch the same command to retry the failed runs"
                print(f"\n{status}{more}: {advice}.", flush=True)
                if exit_on_failure:
                    sys.exit(1)
            # a run the other launch left before writing config.yaml is none of the analysis's
            unfinished = sorted({*(p.path.resolve() for p in sweep.problems if p.status == "unfinished"),
                                 *(d for d in others if not is_done(d))})
            if unfinished:
                print("\n" + unfinished_advice(unfinished, sweep_dir), flush=True)
                if exit_on_failure:
                    sys.exit(1)
            return
        mine = launched.all()
        earlier = sorted({d for d in failed + corrupt if d not in mine})
        if earlier:
            print(f"\nNote: {len(earlier)} failed or corrupt runs below {sweep_dir} are not this "
                  f"command's: an earlier launch left them, this one did not touch them (each is listed "
                  f"above with what went wrong).", flush=True)
        advice = own_advice(launched, [d for d in corrupt if d in mine])
        if advice:
            print("\n" + advice, flush=True)
            if exit_on_failure:
                sys.exit(1)


def sweep_dir_of(config: DictConfig) -> Path:
    """The sweep directory of a multirun, a relative one taken from where the command started
    (a job's callback runs in the job's directory under ``hydra.job.chdir=true``)."""
    from nondet.job import launched_path

    return launched_path(config.hydra.sweep.dir, config.hydra)


def run_sweep_dir(config: DictConfig) -> Path:
    """The sweep directory of a single run (no ``-m``): where its run directories go."""
    from nondet.job import resolved_config, runs_root

    return runs_root(resolved_config(config), config.hydra)


def refuse(error: BaseException) -> None:
    """Exit with one line for a job that refused its configuration or its data (any other error
    keeps Hydra's traceback: a RuntimeError of a job is more likely a bug than a mistake)."""
    from nondet.backend import LowLevelUnavailableError

    if isinstance(error, (ValueError, OSError, LowLevelUnavailableError)):
        sys.exit(refusal_line(error))


# A line while the summary waits for another launch's runs, every this many seconds.
WAIT_REPORT_SECONDS = 60.0


def lock_wait_seconds(config: DictConfig) -> int:
    """How long the summary waits for runs another launch is training (``lock_wait_seconds``)."""
    from nondet.config import NondetConfig

    return int(config.get("lock_wait_seconds", NondetConfig.lock_wait_seconds))


def _runs(directories: list[Path], sweep_dir: Path, most: int = 6) -> str:
    """``group/r0003, group/r0004, ...``: runs named below the sweep directory, at most ``most``."""
    names = []
    for d in directories[:most]:
        try:
            names.append(str(Path(d).relative_to(Path(sweep_dir).resolve())))
        except ValueError:
            names.append(str(d))
    return ", ".join(names) + (f" and {len(directories) - most} more" if len(directories) > most else "")


def _holders(directories: list[Path]) -> str:
    return "; ".join(sorted({run_lock(d).describe() for d in directories}))


def _stop_commands(directories: list[Path]) -> str:
    """How to stop the processes holding the runs' locks: ``scancel 123`` or ``kill 77 on node``."""
    commands = set()
    for d in directories:
        holder = run_lock(d).holder() or {}
        job = holder.get("slurm_array_task") or holder.get("slurm_job")
        commands.add(f"scancel {job}" if job else f"kill {holder.get('pid', '?')} on {holder.get('host', '?')}")
    return ", ".join(sorted(commands))


def wait_for_other_launch(busy: list[Path], sweep_dir: Path, limit: int) -> list[Path]:
    """Wait (at most ``limit`` seconds, with a line every ``WAIT_REPORT_SECONDS``) for the runs
    another launch of this sweep was training when this command's jobs came to them, so that the
    summary counts them; returns those it gave up on, with one line saying what to do."""
    waiting = [d for d in busy if not is_done(d) and run_lock(d).is_held()]
    if not waiting:
        return []
    print(f"\nWaiting for {len(waiting)} runs another launch is training ({_holders(waiting)}): "
          f"{_runs(waiting, sweep_dir)}; for at most {limit} s (lock_wait_seconds); Ctrl-C to stop "
          f"waiting (that launch goes on).", flush=True)

    def report(left: list[Path], waited: float) -> None:
        print(f"Still waiting for {len(left)} of {len(waiting)} runs after {waited:.0f} s of "
              f"lock_wait_seconds={limit}: {_runs(left, sweep_dir)}", flush=True)

    try:
        left = wait_until_free(waiting, is_done, limit_seconds=limit, report=report,
                               report_seconds=WAIT_REPORT_SECONDS)
    except KeyboardInterrupt:
        sys.exit(f"Stopped waiting for {len(waiting)} runs another launch is training "
                 f"({_holders(waiting)}); python -m analysis {sweep_dir} reads the sweep when they are done.")
    if left:
        print(f"Gave up after {limit} s (lock_wait_seconds) waiting for {len(left)} runs another launch "
              f"is still training ({_holders(left)}): {_runs(left, sweep_dir)}. If that launch is stuck, "
              f"stop it ({_stop_commands(left)}) and relaunch the same command; "
              f"else let it finish (python -m analysis {sweep_dir} reads the sweep then) or relaunch with a "
              f"larger lock_wait_seconds.", flush=True)
    return left


def unfinished_advice(unfinished: list[Path], sweep_dir: Path) -> str:
    """What to do about the unfinished runs below the sweep directory, under a launcher that
    reports no outcomes (so they may be this command's: it exits 1)."""
    todo = _busy_todo(unfinished, "are not being trained by any process", sweep_dir)
    return f"Of the runs below {sweep_dir}, {len(unfinished)} are not finished: " + "; ".join(todo) + "."


def _busy_todo(unfinished: list[Path], left_are: str, sweep_dir: Path | None = None) -> list[str]:
    """What to do about unfinished runs another process was training: relaunch for those it
    left (``left_are`` says how; named with ``sweep_dir``), wait for those it still holds."""
    held = [d for d in unfinished if run_lock(d).is_held()]
    left = [d for d in unfinished if d not in held]
    todo = []
    if left:
        named = f" ({_runs(left, sweep_dir)})" if sweep_dir is not None else ""
        todo.append(f"{len(left)} {left_are}{named}: relaunch the same command to train them")
    if held:
        todo.append(f"{len(held)} are still being trained by another launch (the line above says what "
                    f"to do if it is stuck)")
    return todo


def own_advice(launched: Launched, corrupt: list[Path]) -> str:
    """What to do about this command's runs that are not done ('' when all are)."""
    lines, todo = [], []
    retry = [d for d in launched.failed if d not in launched.fixes]
    mend = [d for d in launched.failed if d in launched.fixes]
    if retry:
        todo.append(f"{len(retry)} failed: relaunch the same command to retry them")
    if mend:
        todo.append(f"{len(mend)} failed in a way a relaunch alone cannot mend: do what each says below")
        lines += [f"- {d}: {launched.fixes[d]}" for d in mend]
    todo += _busy_todo([d for d in launched.busy if not is_done(d)],
                       "were left unfinished by another process that was training them")
    if corrupt:
        todo.append(f"{len(corrupt)} are corrupt: delete their directories (listed above) and relaunch "
                    f"to train them again")
    if launched.lost:
        jobs = f"{len(launched.lost)} job" + ("s" if len(launched.lost) > 1 else "")
        todo.append(f"those of {jobs} killed outside Python before locking any (device=auto: only the node "
                    f"knows their directories) are not done: relaunch the same command to train or resume them")
        lines += [f"- killed: {job}" for job in launched.lost]
    if not todo:
        return ""
    return "\n".join(["Of the runs this command launched, " + "; ".join(todo) + ".", *lines])
