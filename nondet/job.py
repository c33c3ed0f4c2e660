"""One Hydra job: the replicas ``replicate ..`` (``pack_step`` of them) of one configuration.

``launch.py`` hands every job of a sweep to ``run_job``, which trains its replicas through the
one run lifecycle (``nondet/train.py``): together in one fused computation (``nondet/pack.py``)
where the model has a packed form that pays on the device, else one after another. Finished
replicas (``result.json`` present) are skipped; a finished replica that lost its ``config.yaml``
gets it back (``restore_config``); unfinished ones resume from their checkpoint; a replica that
raises leaves ``error.txt`` with the traceback and the sweep goes on. Mistakes in the
configuration itself (unknown source, ``device=cuda`` without a GPU, missing dataset files) raise
before anything is trained, with a message that says what to do.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from nondet import joblog, lm, logger, pack, records, usercode, userdata, usermodel
from nondet.backend import (LOWLEVEL_NONDETERMINISTIC, check_lowlevel, check_precision, configure_lowlevel,
                            configure_precision, resolve_device)
from nondet.config import SCALES, TEXT_DATASETS, ConfigError, check_config, whole_fractions_as_floats
from nondet.data import Dataset, data_fingerprint, data_sha256, load_dataset
from nondet.lock import run_locks
from nondet.pipeline import resample_size
from nondet.seeds import SeedPlan, check_sources
from nondet.snapshot import check_snapshot_count
from nondet.text import load_corpus
from nondet.train import train_job

log = logging.getLogger("nondet")

_DATA_CACHE: dict[str, Dataset] = {}


def resolved_config(cfg: DictConfig, *, concrete_device: bool = True) -> dict:
    """The job's configuration as a plain dict, interpolations resolved, ``device`` made
    concrete (``auto`` -> ``cpu`` or ``cuda``) so runs on different hardware never share a
    directory. Works on the task config and on Hydra's full config (the ``hydra`` node is left
    out). ``concrete_device=False`` leaves ``device`` as written (for a machine other than the
    one that will run the job)."""
    config = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in cfg
        if key != "hydra"
    }
    config = whole_fractions_as_floats(config)  # data_resample=1 is data_resample=1.0
    # your own model's and data's arguments that share a name with nondet's keys: what they get
    config = usermodel.with_your_defaults(config, usermodel.given_keys(cfg))
    if concrete_device:
        config["device"] = resolve_device(config["device"])
    fingerprint = data_fingerprint(loadable(config["dataset"]))
    if fingerprint is not None:
        # The data's content is part of the run's identity: a file rewritten in place names
        # new run directories instead of pooling with the runs that saw the old content.
        config["dataset"] = {**config["dataset"], "sha256": fingerprint}
    return config


def runs_root(config: dict, hydra: DictConfig | None) -> Path:
    """The directory a job's runs go below: Hydra's ``hydra.sweep.dir`` in a multirun; in a single
    run ``hydra.run.dir`` (less the job's own subdirectory, which the default ends with); without
    Hydra, ``output_root/sweep_name`` (what both default to). A relative one is relative to where
    the command was started (``launched_path``). A filesystem root is refused: runs below ``/``
    would have no sweep name, and the sweep's files would share the root with everything else."""
    if hydra is None:
        root = Path(config["output_root"]) / config["sweep_name"]
    elif hydra.mode == RunMode.MULTIRUN:
        root = launched_path(hydra.sweep.dir, hydra)
    else:
        run = launched_path(hydra.run.dir, hydra)
        # device=auto at launch: the job's own subdirectory is that of the device it becomes
        devices = ["cpu", "cuda"] if config["device"] == "auto" else [config["device"]]
        owns = [Path(job_subdir({**config, "device": device})).parts for device in devices]
        root = next((Path(*run.parts[: -len(own)]) for own in owns if run.parts[-len(own):] == own), run)
    key = "output_root" if hydra is None else ("hydra.sweep.dir" if hydra.mode == RunMode.MULTIRUN
                                               else "hydra.run.dir")
    if root.parent == root:
        raise ConfigError(f"{key}={root}: a filesystem root cannot hold a sweep; give a directory below it "
                          f"({key}={root / 'sweeps' / config['sweep_name']}, say)")
    held = next((p for p in (root, *root.parents) if _is_run_dir(p)), None)
    if held is not None:
        raise ConfigError(f"{key}={root}: inside the run directory {held}, where new runs would hide (the "
                          f"analysis reads a run directory as one run); give a directory outside every run")
    return root


def _is_run_dir(directory: Path) -> bool:
    """A run's directory: its config.yaml beside the seeds it was trained with."""
    return (directory / records.CONFIG_FILE).is_file() and (directory / records.SEEDS_FILE).is_file()


def launched_path(path: str | Path, hydra: DictConfig | None) -> Path:
    """``path`` (``hydra.sweep.dir``, ``hydra.run.dir``), relative ones taken from the directory
    the command was started in (``hydra.runtime.cwd``), as Hydra takes them: under
    ``hydra.job.chdir=true`` a job runs in its own output directory, where a relative path would
    put its runs inside that directory, out of every relaunch's sight."""
    path = Path(str(path))
    cwd = OmegaConf.select(hydra, "runtime.cwd", default=None) if hydra is not None else None
    return path if path.is_absolute() or not cwd else Path(cwd) / path


def located(config: dict, root: Path) -> dict:
    """``config`` with ``output_root``/``sweep_name`` naming ``root``, where its runs live, so
    that every file of the run (config.yaml included) agrees on it."""
    return {**config, "output_root": str(root.parent), "sweep_name": root.name}


def job_run_dirs(cfg: DictConfig, device: str | None = None) -> list[Path] | None:
    """The run directories a job will write, computed on any machine (the launching one), or
    None when they depend on the machine that runs it (``device=auto``: the device is part of a
    run's identity, so a run on a GPU never pools with one on a CPU) and ``device``, what
    ``auto`` becomes on that machine, is not given."""
    config = resolved_config(cfg, concrete_device=False)
    if config["device"] == "auto" and device is not None:
        config["device"] = device
    if config["device"] not in ("cpu", "cuda"):
        return None
    if "hydra" in cfg:
        config = located(config, launched_path(cfg.hydra.sweep.dir, cfg.hydra))
    return [records.run_dir(config, r) for r in replicas_of_job(config)]


def replicas_of_job(config: dict) -> range:
    """The replicate indices a job trains: ``pack_step`` of them from ``replicate`` on."""
    start, replicates = config["replicate"], config["replicates"]
    pack = pack_step(config["pack"], replicates)
    if not 0 <= start < replicates:
        raise ValueError(f"replicate={start} is outside range(0, replicates={replicates})")
    return range(start, min(start + pack, replicates))


def job_subdir(config: dict) -> str:
    """Where Hydra puts a job's own files (``.hydra/``, the job log), relative to the sweep
    directory: the run directory itself for one replica, a pack directory beside them else."""
    replicas = replicas_of_job(config)
    group = records.group_dirname(config)
    if len(replicas) == 1 and pack_step(config["pack"], config["replicates"]) == 1:
        return f"{group}/r{replicas[0]:04d}"
    return f"{group}/pack-r{replicas[0]:04d}-r{replicas[-1]:04d}"


def by_scale(paper: Any, smoke: Any, *, _root_: DictConfig) -> Any:
    """``${by_scale:PAPER,SMOKE}``: the value for the config's ``scale``.

    Experiment presets write both sizes side by side, ``epochs: ${by_scale:500,2}``, so
    ``+experiment=table1 scale=smoke`` runs the same pipeline shrunk to a CPU. Not for a key
    whose default is null and whose value is a list (``dataset.image_shape``): OmegaConf
    resolves those while merging, before ``scale`` is known; set them unconditionally.
    """
    scale = _root_.scale
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: use {' or '.join(SCALES)}")
    return smoke if scale == "smoke" else paper


def _job_subdir_or_placeholder(*, _root_: DictConfig) -> str:
    # A config that cannot name its run (device=cuda without a GPU, replicate out of range) gets
    # a placeholder directory for Hydra's files, so that run_job raises the mistake itself, as a
    # plain message, instead of Hydra wrapping it in an interpolation error on hydra.sweep.subdir.
    try:
        return job_subdir(resolved_config(_root_))
    except (ValueError, RuntimeError):
        return "invalid-config"


# pack=auto: the replicas of a job, at most. On one CPU thread a pack of 16 default MLPs trains 9.7x
# faster than one at a time, 32 only 12.5x (docs/benchmarks.md); 16 keeps a sweep of 100 in 7 jobs.
AUTO_PACK = 16


def pack_step(pack: Any, replicates: int) -> int:
    """``${nondet.pack_step:${pack},${replicates}}``: the sweep's step over ``replicate``, i.e. how
    many replicas one job trains. ``auto``: up to ``AUTO_PACK``; the job fuses them where the model
    has a packed form that pays on its device and is bitwise the solo computation, and trains them
    one after another otherwise (``nondet.pack.ImageFamily.apart``). The step depends on
    ``replicates`` alone, so the launching machine and the job's node always agree on it."""
    if pack == "auto":
        return max(1, min(AUTO_PACK, replicates))
    if not isinstance(pack, int) or isinstance(pack, bool) or pack < 1:
        raise ValueError(f"pack={pack} must be auto or at least 1 (1 = one replica per process)")
    return pack


def register_resolvers() -> None:
    """``${nondet.job_subdir:}`` (hydra.run.dir / sweep.subdir), ``${nondet.pack_step:...}``
    (the sweep over replicate) and ``${by_scale:...}``."""
    if not OmegaConf.has_resolver("nondet.job_subdir"):
        OmegaConf.register_new_resolver("nondet.job_subdir", _job_subdir_or_placeholder)
    if not OmegaConf.has_resolver("nondet.pack_step"):
        OmegaConf.register_new_resolver("nondet.pack_step", pack_step)
    if not OmegaConf.has_resolver("by_scale"):
        OmegaConf.register_new_resolver("by_scale", by_scale)
    if not OmegaConf.has_resolver("nondet.hydra_files"):  # hydra.output_subdir
        OmegaConf.register_new_resolver("nondet.hydra_files", joblog.hydra_files)


# The keys of nondet's dataset configs that name files or folders.
DATA_PATH_KEYS = ("path", "root")


def loadable(dataset: dict) -> dict:
    """``dataset`` with relative data paths taken from the directory the command was started in
    (Hydra's ``to_absolute_path``), where the launch's checks found them: under
    ``hydra.job.chdir=true`` a job runs in its own output directory, where the data are not (and
    MNIST-1D would be generated anew in every job's directory). For loading only: the path as
    configured stays in config.yaml and the run's identity. Your own data function's arguments
    (``dataset=custom``) reach it as given."""
    if dataset.get("name") == "custom":
        return dataset
    absolute = {
        key: to_absolute_path(value) for key in DATA_PATH_KEYS
        if isinstance(value := dataset.get(key), str) and value and not os.path.isabs(value)
    }
    return {**dataset, **absolute} if absolute else dataset


def _dataset(config: dict) -> Dataset:
    # The replicas of a job, and consecutive jobs of a basic-launcher sweep, share the data.
    key = json.dumps([config["dataset"], config["device"]], sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        # Text datasets (ptb, synthetic_text) load as a TextCorpus for the language-model loop.
        load = load_corpus if config["dataset"]["name"] in TEXT_DATASETS else load_dataset
        _DATA_CACHE[key] = load(OmegaConf.create(loadable(config["dataset"])), config["device"])
    return _DATA_CACHE[key]


def check_data_unchanged(config: dict, data) -> None:
    """The data loaded must be the data the runs' directories were named for: a file rewritten
    between composing the config and loading it would otherwise train under the old identity."""
    dataset = config["dataset"]
    named, content = dataset.get("sha256"), getattr(data, "sha256", None)
    where = _data_where(dataset)
    if named is None and content is not None and dataset["name"] in userdata.CONTENT_IDENTIFIED:
        raise ValueError(f"{where} could not be loaded when the runs were named, but can now; relaunch the command")
    if named is not None and content not in (None, named):
        raise ValueError(
            f"{where} changed while this job started (its SHA-256 is now {content}, the runs "
            f"were named for {named}); relaunch the command"
        )


def _data_where(dataset: dict) -> str:
    return next((f"dataset.{k}={dataset[k]}" for k in ("path", "_target_", "root") if dataset.get(k)), "the data")


def check_resumed_data(config: dict, data, replicas, where: str | None = None) -> None:
    """A checkpoint is resumed only on the data it was trained on (env.json ``data_sha256``).
    Data named by their content (npz, ptb, your own) name new run directories when they change;
    this catches the rest, such as MNIST's files, which torchvision reads without a checksum, and
    the data a script passes to ``nondet.api.Run`` (``where``: what holds them)."""
    now = None
    for replicate in replicas:
        directory = records.run_dir(config, replicate)
        if records.is_done(directory) or not (directory / records.CHECKPOINT_FILE).exists():
            continue
        try:
            before = records.read_json(directory / records.ENV_FILE).get("data_sha256")
        except (records.CorruptRunError, AttributeError):  # no record to compare: resumed as it is
            continue
        now = now or data_sha256(data)
        if before is not None and before != now:
            raise ConfigError(
                f"{directory / records.CHECKPOINT_FILE} was trained on other data than "
                f"{where or _data_where(config['dataset'])} "
                f"holds now (env.json data_sha256 {str(before)[:12]}, now {now[:12]}): put the data back to "
                "resume it, or delete the checkpoint to train the run again from scratch"
            )


# Settings that can turn a varied source off, and so can be refused before any data is loaded.
# A sweep over one of them (``+experiment=shamir`` sweeps shuffle_window=1,16,...) means its
# value 1 on purpose, the end of a curve: only a value fixed for the whole launch is refused.
SOURCE_SETTINGS = ("shuffle_window", "batch_size", "data_resample", "data_order")


def inert_by_setting(config: dict, studied=()) -> dict[str, str]:
    """The varied sources a ``SOURCE_SETTINGS`` value turns off, with why; the keys in
    ``studied`` (swept by the launch) are left alone. Checked when the command starts
    (``nondet.callbacks.check_or_exit``) and in every job outside a sweep."""
    vary, inert = config["source"]["vary"], {}
    if lm.is_language_model(config):  # inert_sources says why text has no shuffle or reduction
        return inert
    if "shuffle" in vary and config["shuffle_window"] == 1 and "shuffle_window" not in studied:
        inert["shuffle"] = "shuffle_window=1 keeps the stored order (set shuffle_window=null, or a window > 1)"
    if "reduction" in vary and config["batch_size"] == 1 and "batch_size" not in studied:
        inert["reduction"] = "batch_size=1 leaves no order inside a batch to permute (set batch_size > 1)"
    if ("data" in vary and config["data_resample"] == 1 and config["data_order"] == "sorted"
            and not {"data_resample", "data_order"} & set(studied)):
        inert["data"] = ("data_resample=1 keeps every training example, in stored order (use a fraction "
                         "below 1 or data_resample=bootstrap; data_order=drawn reorders the epochs by the "
                         "data seed, as runs recorded before data_order did)")
    return inert


def inert_sources(config: dict, data, studied=()) -> dict[str, str]:
    """The varied sources that cannot change anything in this configuration, with why
    (``studied``: settings the launch sweeps, see ``inert_by_setting``). ``data``: None where
    they are not loaded (what depends on them is then not refused)."""
    vary = config["source"]["vary"]
    inert = {}
    onset, epochs = config["onset_epoch"], config["epochs"]
    if onset >= epochs:
        for source in vary:
            inert[source] = f"onset_epoch={onset} >= epochs={epochs}, so no epoch varies (lower onset_epoch)"
        return inert
    if onset > 0 and "init" in vary:
        inert["init"] = (f"the weights are initialised before onset_epoch={onset} "
                         "(use onset_epoch=0 to vary init)")
    inert.update(inert_by_setting(config, studied))
    if lm.is_language_model(config):
        text = "a language model reads its text in order, in windows that are not shuffled"
        for source, why in (("shuffle", text), ("reduction", text),
                            ("augment", "text has no augmentation (crop and flip are for images)")):
            if source in vary:
                inert[source] = why
    elif "augment" in vary and not (config["dataset"]["augment"]
                                    and (data is None or getattr(data, "is_image", False))):
        inert["augment"] = (
            "dataset.augment is false (set dataset.augment=true)" if not config["dataset"]["augment"]
            else "the data are not images (crop and flip need images)"
        )
    if "dropout" in vary:
        model = config["model"]
        if lm.is_language_model(config):
            rates = [model[k] for k in ("dropout", "input_dropout", "hidden_dropout",
                                        "embedding_dropout", "weight_dropout")]
            if not any(rates) and not config["lm"]["variable_bptt"]:
                inert["dropout"] = "every dropout rate is 0 and lm.variable_bptt is false"
        elif not model["dropout"] and model["name"] != "custom":  # your own model's dropout is its own
            inert["dropout"] = "model.dropout is 0 (set model.dropout=0.1, say)"
    return inert


def check_sources_vary_something(config: dict, data, studied=()) -> None:
    """A sweep whose varied sources are all inert would report zero spread as if it were a
    finding (augment without augmentation, dropout at rate 0): refuse it, saying what to set."""
    vary = config["source"]["vary"]
    if "data" in vary and hasattr(data, "y_train"):
        resample_size(len(data.y_train), config["data_resample"])  # refuses an empty resample
    if "data" not in vary and config.get("data_resample", "bootstrap") != "bootstrap":
        log.warning("data_resample=%s has no effect: source=%s does not vary data, so every run "
                    "trains on the whole training set", config["data_resample"], config["source"]["name"])
    inert = inert_sources(config, data, studied)
    # A combination whose other sources vary: said here and by the analysis (for an image model not
    # of source=all, whose inert members are documented: every preset would warn).
    language_model = lm.is_language_model(config)
    if inert and not set(vary) <= set(inert) and (language_model or config["source"]["name"] != "all"):
        where = "a language model" if language_model else "this configuration"
        log.warning("source=%s: %s vary nothing in %s (%s)", config["source"]["name"],
                    sorted(inert), where, "; ".join(f"{s}: {why}" for s, why in inert.items()))
    refuse_inert(config, inert)


def refuse_inert(config: dict, inert: dict[str, str]) -> None:
    """Raise when every source ``config`` varies is ``inert`` (one line: why, and what to set)."""
    vary = config["source"]["vary"]
    if vary and set(vary) <= set(inert):
        reasons = "; ".join(f"{s}: {why}" for s, why in inert.items())
        fix = ("a language model varies with source=init, source=dropout (its masks and BPTT "
               "lengths) or source=bitflip" if lm.is_language_model(config) else
               "Turn the source on, or use another source")
        raise ValueError(
            f"source={config['source']['name']} varies {list(vary)}, which cannot change anything "
            f"here ({reasons}); every replicate would be identical to the control. {fix}."
        )


def restore_config(config: dict, directory: Path) -> str | None:
    """Rewrite the config.yaml a finished run lost (the analysis cannot group a run without it),
    after checking that what it kept is this configuration's run: result.json, logits and labels
    readable and consistent (the analysis's own checks), seeds.json the seeds of this replicate.
    Returns None when restored, else why the run must be trained again."""
    from analysis.load import RunProblem, read_done_run  # the analysis reads runs; lazily

    kept = read_done_run(directory, config)
    if isinstance(kept, RunProblem):
        return kept.reason
    plan = SeedPlan.for_run(config["base_seed"], config["source"]["vary"], config["replicate"])
    expected = {k: v for k, v in plan.as_record("").items() if k != "lowlevel"}
    recorded = {k: v for k, v in (kept.seeds or {}).items() if k != "lowlevel"}
    if recorded != expected:
        return f"{records.SEEDS_FILE} does not hold this replicate's seeds {expected['seeds']}"
    records.write_config(directory, config)
    return None


def _set_aside_result(directory: Path) -> Path:
    """Move a result that cannot be trusted out of the way of a retraining, keeping it."""
    kept = directory / f"{records.RESULT_FILE}.untrusted"
    os.replace(directory / records.RESULT_FILE, kept)
    return kept


def job_config(cfg: DictConfig) -> dict:
    """The configuration of the job running now (``run_job``, ``nondet.api.Run``): resolved,
    checked, and located below the sweep directory Hydra gave it."""
    config = resolved_config(cfg)
    check_config(config)
    config = located(config, runs_root(config, HydraConfig.get() if HydraConfig.initialized() else None))
    check_sources(config["source"]["vary"])
    return config


def check_device(config: dict) -> None:
    """What the job's device cannot do: ``lowlevel`` off CUDA (naming the source's stand-ins),
    ``precision=tf32`` off CUDA."""
    check_lowlevel(config["device"], config["source"], lm.is_language_model(config))
    check_precision(config["device"], config["precision"])


def configure_backend(config: dict) -> str:
    """Set this process's low-level kernels, precision and threads for the job's runs; returns
    the low-level mode their records name."""
    check_device(config)
    lowlevel = configure_lowlevel(
        config["device"], "lowlevel" in config["source"]["vary"], config["source"]["lowlevel_required"]
    )
    if config["onset_epoch"] > 0 and lowlevel == LOWLEVEL_NONDETERMINISTIC:
        # Deterministic until the onset epoch; nondet.train.start_of_epoch switches it.
        configure_lowlevel(config["device"], False, True)
    configure_precision(config["precision"])
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    return lowlevel


def check_job_config(config: dict) -> None:
    """The refusals of a job's configuration that need neither its data nor its device."""
    if config.get("script"):
        raise ConfigError(f"script={config['script']} names a training script of yours (nondet.api); "
                          "launch.py trains with nondet's own loop: leave script unset")
    lm.check_config(config)  # model / dataset kinds match; a no-op for image runs
    logger.check_logger(config)


def job_data(config: dict, judged: tuple[str, ...] | None = None):
    """The job's data, loaded and checked against its configuration: the data the runs were
    named for, sources that vary something (but for the settings in ``judged``, by default those
    a sweep's launch judged: ``_launch_judges``)."""
    data = _dataset(config)
    check_data_unchanged(config, data)
    check_sources_vary_something(config, data, _launch_judges() if judged is None else judged)
    if lm.is_language_model(config):  # (a language model has no snapshot schedule)
        lm.check_splits(config, data)
    else:
        check_snapshot_count(config["schedule"], pack.ImageFamily().steps_per_epoch(config, data), config["epochs"])
    return data


def _launch_judges() -> tuple[str, ...]:
    """The settings a sweep's launch judged for every job (``nondet.callbacks.check_or_exit``):
    a job sees its own shuffle_window=1, not whether the sweep also tries 16."""
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return SOURCE_SETTINGS if sweep else ()


def check_model_builds(config: dict, data) -> None:
    """Build the job's model once (on the CPU, from a throwaway generator): a model that cannot
    take these data (``model=resnet6`` on signals), an unknown activation, a ``bitflip.param``
    the model lacks (or that is not float32) are refused before any run starts, not once per
    run. Your own model also runs forward once on two training examples
    (``usermodel.check_output``): it must take them and return (N, num_classes) logits."""
    from nondet.bitflip import flipped_parameter
    from nondet.models import build_language_model, build_model

    flips = "bitflip" in config["source"]["vary"]
    language_model = lm.is_language_model(config)  # its data: a vocabulary, not input shapes
    shape = [data.vocab_size] if language_model else [list(data.input_shape), data.num_classes]
    key = json.dumps([config["model"], shape, config["bitflip"] if flips else None], sort_keys=True, default=str)
    if key in _MODELS_BUILT:  # the jobs of a sweep that share a model: built once at launch
        return
    try:
        model_config, generator = OmegaConf.create(config["model"]), torch.Generator().manual_seed(0)
        if language_model:
            model = build_language_model(model_config, data.vocab_size, generator)
        else:
            model = build_model(model_config, data.input_shape, data.num_classes, generator)
    except ConfigError:
        raise
    except Exception as e:  # a model of yours failed in its own code: where, not just what
        import traceback

        where = traceback.extract_tb(e.__traceback__)[-1]
        raise ConfigError(f"building model={config['model']['name']} raised {one_line(e)} "
                          f"(at {where.filename}:{where.lineno}, in {where.name})") from e
    if usermodel.is_custom(config["model"]):
        usermodel.check_output(model, config["model"]["_target_"], data.normalize(data.x_train[:2]).cpu(),
                               data.num_classes)
    if flips:
        flipped_parameter(model, config)
    _MODELS_BUILT.add(key)


_MODELS_BUILT: set[str] = set()


def check_job(cfg: DictConfig, *, local: bool, judged: tuple[str, ...] = ()) -> None:
    """Every refusal ``run_job`` makes before it trains, made without training: for each job of
    a sweep when the command starts (``nondet.callbacks.CheckCallback``). ``local``: the job runs
    on this machine, so its device (``lowlevel`` needs CUDA) and its data are checked too; else
    only what the configuration alone says. ``judged``: settings the caller has judged for the
    whole launch (``SOURCE_SETTINGS``: a sweep over shuffle_window=1,16 means its 1)."""
    config = resolved_config(cfg, concrete_device=local)
    check_config(config)
    check_sources(config["source"]["vary"])
    check_launch_code(cfg, config)  # first: an edit of your code is the cause of what else fails
    check_job_config(config)
    if local:
        check_device(config)
        data = job_data(config, judged)
        check_model_builds(config, data)
    else:
        if config["device"] != "auto":  # the node's device is known here only when it is named
            check_device(config)
        check_sources_vary_something(config, None, judged)


def check_launch_code(cfg: DictConfig, config: dict | None = None) -> None:
    """No run of a launch's job carries on across an edit of your code, on any launcher: the
    code check of ``usercode.check_code_unchanged`` for the job ``cfg`` (Hydra's, composed
    when the command starts; ``config``: resolved already), before any job starts."""
    if "hydra" not in cfg:
        return
    config = config or resolved_config(cfg, concrete_device=False)
    sweep = cfg.hydra.mode == RunMode.MULTIRUN or cfg.hydra.mode is None  # a sweep's job
    root = launched_path(cfg.hydra.sweep.dir, cfg.hydra) if sweep else runs_root(config, cfg.hydra)
    # device=auto on a node: the group of either device it may become
    for device in ([config["device"]] if config["device"] != "auto" else ["cpu", "cuda"]):
        usercode.check_code_unchanged(located({**config, "device": device}, root))


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Train (or skip, or resume) the replicas of one job; returns counts and directories."""
    config = job_config(cfg)
    replicas = replicas_of_job(config)
    # busy: runs another live process is training (left to it); fixes: what to do about a failed
    # run that a relaunch alone cannot mend, by directory.
    outcome: dict[str, Any] = {"finished": [], "skipped": [], "failed": [], "busy": [], "fixes": {}}
    try:  # where the launch could not check it (a node's launcher), the job says it, in error.txt;
        usercode.check_code_unchanged(config)  # first: an edit may be why the model fails below
    except ConfigError:
        refuse_runs([records.run_dir(config, r) for r in replicas], outcome)
        return outcome
    check_job_config(config)
    lowlevel = configure_backend(config)
    data = job_data(config)
    check_model_builds(config, data)  # once per process: a launch has checked it already
    check_resumed_data(config, data, replicas)

    def failed(directory) -> None:  # called inside an ``except`` block
        report_failure(directory, outcome)

    def finished(directory, result: dict) -> None:
        log.info(
            "%s: done  test_acc %.2f%%  test_ce %.4f  (%.1fs)",
            directory,
            result["test_accuracy"],
            result["test_cross_entropy"],
            result["train_seconds"],
        )
        outcome["finished"].append(str(directory))

    pending = []
    for replicate in replicas:
        replica_config = {**config, "replicate": replicate}
        directory = records.run_dir(replica_config)
        if records.is_done(directory) and not records.is_whole(directory):
            why = restore_config(replica_config, directory)
            if why is None:
                log.warning("%s: config.yaml was missing; rewritten from this job's configuration "
                            "(result, logits and seeds checked)", directory)
            else:
                kept = _set_aside_result(directory)
                log.warning("%s: config.yaml was missing and the run's files do not hold up (%s); "
                            "training it again (the old result.json is kept as %s)", directory, why, kept.name)
        if records.is_done(directory):
            log.info("%s: finished already, skipped", directory)
            outcome["skipped"].append(str(directory))
            continue
        pending.append((replica_config, directory))

    # Each run is locked while it trains: a second launch of the sweep leaves it to this one.
    with run_locks([directory for _, directory in pending]) as busy:
        for directory, holder in busy.items():
            log.info("%s: being trained by another process (%s); left to it", directory, holder)
            outcome["busy"].append(str(directory))
        mine = []
        for replica_config, directory in pending:
            if directory in busy:
                continue
            if records.is_done(directory):  # finished by another process since the check above
                log.info("%s: finished already, skipped", directory)
                outcome["skipped"].append(str(directory))
                continue
            mine.append((replica_config, directory))
        _train(config, mine, data, lowlevel, finished, failed)
    return outcome


def _train(config: dict, pending: list, data, lowlevel: str, finished, failed) -> None:
    """Train the job's pending replicas through the one run lifecycle (``nondet.train``), with
    the step and evaluation of the model's family."""
    family = lm.LMFamily() if lm.is_language_model(config) else pack.ImageFamily()
    train_job(pending, data, lowlevel, family, finished=finished, failed=failed)


def report_failure(directory: Path, outcome: dict[str, Any]) -> None:
    """A run that failed, reported from inside its ``except`` block (``run_job``'s replicas,
    ``nondet.api.Run``): error.txt with where it failed (host, SLURM job and array task) and
    the traceback, a line in the log, and the run in ``outcome`` (``failed``, and in ``fixes``
    what to do when a relaunch alone cannot mend it)."""
    error = sys.exc_info()[1]
    outcome["failed"].append(str(directory))
    fix = failure_fix(error)
    if fix:
        outcome["fixes"][str(directory)] = fix
    env = os.environ  # where it failed: the job to look up (sacct -j, the .submitit logs)
    where = f"host {socket.gethostname()}, SLURM job {env.get('SLURM_JOB_ID', 'none')}"
    if "SLURM_ARRAY_JOB_ID" in env:
        where += f" (array task {env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']})"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        records.write_text(directory / records.ERROR_FILE, f"# {where}\n{traceback.format_exc()}")
    except OSError as e:  # a full disk or a read-only directory: say so, and go on
        log.error("%s: failed (%s); its %s could not be written either (%s)", directory,
                  one_line(error), records.ERROR_FILE, one_line(e))
        outcome["fixes"].setdefault(str(directory), failure_fix(e) or one_line(error))
        return
    if isinstance(error, (OSError, records.CorruptRunError, ConfigError)):
        log.error("%s: failed: %s", directory, one_line(error))
    else:
        log.exception("%s: failed; the traceback is in %s", directory, records.ERROR_FILE)


def refuse_runs(directories: list[Path], outcome: dict[str, Any]) -> None:
    """Runs a job refuses to train, from inside its ``except`` block: each is failed in
    ``outcome``, with the fix; an unfinished one gets error.txt, a finished one's files stay."""
    error = sys.exc_info()[1]
    for directory in directories:
        if not records.is_done(directory):
            report_failure(directory, outcome)
            continue
        log.error("%s: refused: %s", directory, one_line(error))
        outcome["failed"].append(str(directory))
        outcome["fixes"][str(directory)] = failure_fix(error)


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _your_frame(error: BaseException | None):
    """The innermost frame of ``error``'s traceback in your own code (neither nondet's, an
    installed package's nor Python's), or None; None too for failures of the machine (memory,
    files), which a relaunch may not meet again."""
    import sysconfig

    # the device's, whatever code met them
    transient = ("out of memory", "CUDA error", "NCCL", "cuDNN", "CUDNN_STATUS", "CUBLAS_STATUS", "cuBLAS")
    if error is None or isinstance(error, (OSError, MemoryError, torch.OutOfMemoryError)) or any(
            t in str(error) for t in transient):
        return None
    ours = (str(Path(__file__).resolve().parent), sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"])
    frames = [f for f in traceback.extract_tb(error.__traceback__)[1:]  # [0]: where it was caught
              if not str(Path(f.filename).resolve()).startswith(ours) and not f.filename.startswith("<")]
    return frames[-1] if frames else None


def failure_fix(error: BaseException | None) -> str | None:
    """What to do about a failed run when relaunching the same command cannot mend it."""
    if isinstance(error, records.CorruptRunError):
        return str(error)  # it names the file to delete
    if isinstance(error, ConfigError):  # the same configuration fails the same way again
        return f"{str(error).strip().splitlines()[0]}: mend the configuration, then relaunch"
    if isinstance(error, usermodel.GlobalRandomUse):  # the model's own code: it draws so every time
        return f"{one_line(error)}: mend the model, then relaunch"
    where = _your_frame(error)
    if where is not None:  # your code raised: the same seeds make it raise again on a relaunch
        return (f"{one_line(error)} (at {where.filename}:{where.lineno}, in {where.name}): your code "
                "fails the same way on every relaunch; mend it, then relaunch")
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "the disk is full: free space, then relaunch the same command"
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f" {error.filename}" if error.filename else ""
        return f"cannot write{where} ({error.strerror}): make it writable, then relaunch"
    return None
