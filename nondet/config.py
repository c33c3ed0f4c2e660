"""Typed schemas for every config group, registered in Hydra's ConfigStore.

The primary config (``conf/config.yaml``) lists ``schema`` first in its defaults, so every group
file is merged into a typed node: a misspelt key such as ``model.widht=3`` or a string where a
number belongs fails when Hydra composes the config, not an hour into a cluster job. What a type
cannot say (a key added with ``+``, a value out of range) ``check_config`` refuses, in one line,
when the command starts (``nondet.callbacks.CheckCallback``) and in every job.

Used by ``launch.py`` (``register_configs()`` before ``@hydra.main``) and by the tests, which
compose the real configs with ``hydra.compose``.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

# The names a key accepts where nothing else defines them (checked by RANGES below). Model,
# activation, dataset, optimizer and schedule names are defined where they are built:
# nondet.models (MODEL_NAMES, LANGUAGE_MODEL_NAMES, ACTIVATIONS), nondet.data, nondet.optim.
TEXT_DATASETS = ("ptb", "synthetic_text")  # nondet/text.py loads them, nondet/lm.py trains on them
PRECISIONS = ("fp32", "tf32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
SCALES = ("paper", "smoke")


@dataclass
class ModelConfig:
    name: str = "mlp"
    activation: str = "relu"
    # SmeLU's half-width: 0 below -beta, (x + beta)^2 / (4 beta) on [-beta, beta], x above beta.
    smelu_beta: float = 1.0
    # Dropout rate before the classifier (and in vgg11's classifier); masks come from the
    # ``dropout`` source's generator.
    dropout: float = 0.0
    # mlp: hidden units per layer; conv1: channels; resnets: width of the first stage.
    width: int = 128
    # mlp: number of hidden layers (1 = the paper's "one fully-connected hidden layer").
    # qrnn: width = hidden units per layer, depth = QRNN layers, dropout = output dropout.
    depth: int = 1
    # --- qrnn only (AWD-LSTM's emsize, dropouti, dropouth, dropoute, wdrop; nondet/models/qrnn.py) ---
    embedding_dim: int = 256
    input_dropout: float = 0.0
    hidden_dropout: float = 0.0
    embedding_dropout: float = 0.0
    weight_dropout: float = 0.0


@dataclass
class DatasetConfig:
    name: str = "synthetic"
    # cifar10 / mnist: where torchvision's dataset classes find (or, with download=true, put) the files.
    root: str = "data"
    download: bool = False
    # npz: one file with x_train, y_train, x_test, y_test.
    path: Optional[str] = None
    # Random crop (4-pixel zero padding) and horizontal flip of training images, drawn from the
    # ``augment`` source's generator. A no-op, with a warning, for feature data.
    augment: bool = False
    # synthetic: number of examples generated; other datasets: keep the first k (null = all).
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    # --- synthetic only: the generative process (see nondet/data.py and the README) ---
    input_dim: int = 32
    num_classes: int = 10
    # (C, H, W) to shape the synthetic inputs as images (for convolutional models); null = features.
    image_shape: Optional[List[int]] = None
    teacher_width: int = 64
    teacher_depth: int = 1
    teacher_activation: str = "tanh"
    label_noise: float = 0.0
    imbalance: float = 0.0
    # The data seed is not a source of nondeterminism: every run of a sweep sees the same data.
    data_seed: int = 0
    # imagefolder: the side, in pixels, every image is resized to (image_size x image_size).
    image_size: Optional[int] = None
    # --- mnist1d only: the arguments of the mnist1d package's make_dataset, its defaults (its
    # `seed` is data_seed, 42 in conf/dataset/mnist1d.yaml; see nondet/mnist1d.py) ---
    num_samples: int = 5000
    train_split: float = 0.8
    template_len: int = 12
    padding: List[int] = field(default_factory=lambda: [36, 60])
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 0.02
    shear_scale: float = 0.75
    shuffle_seq: bool = False
    final_seq_length: int = 40
    # --- text datasets (nondet/text.py): sizes in tokens; ptb keeps the first k ---
    valid_size: Optional[int] = None
    # synthetic_text only: words (with <eos>), hidden states, mean sentence length.
    vocab_size: int = 100
    hidden_states: int = 16
    sentence_length: float = 20.0


@dataclass
class OptimizerConfig:
    # Defaults: conf/optimizer/sgd.yaml (the default group); every optimizer file sets lr and
    # weight_decay.
    name: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5.0e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # conf/config.yaml's default group
    # cosine only (conf/schedule/cosine.yaml sets 1); 0 is what the other schedules hold.
    warmup_epochs: float = 0.0
    # snapshot: number of cosine cycles (snapshots) M.
    cycles: int = 5


@dataclass
class SourceConfig:
    # The name of the row in the tables ("init", "shuffle_lowlevel", ...).
    name: str = "none"
    # Which sources take a replicate-derived seed; every other source takes base_seed.
    vary: List[str] = field(default_factory=list)
    # When ``lowlevel`` is varied on a machine without CUDA: raise (true) or record it as
    # unavailable in env.json and go on with the other sources (false; ``source=all``).
    lowlevel_required: bool = True


@dataclass
class LMConfig:
    """The language-model training loop (nondet/lm.py); defaults: the AWD-LSTM QRNN PTB recipe."""

    # Base BPTT length; variable: the base with probability 0.95, else half, plus N(0, 5^2)
    # jitter, at least 5, drawn from the dropout source's generator; the step's learning rate
    # is scaled by length / bptt.
    bptt: int = 70
    variable_bptt: bool = True
    # Gradient-norm clipping (0 = off); activation (alpha) and temporal activation (beta)
    # regularisation of the last layer's output.
    clip: float = 0.2
    alpha: float = 2.0
    beta: float = 1.0
    # NT-ASGD: average the iterates from the epoch the validation loss stops improving on the
    # best of all but the last `nonmono` epochs; the average is what is evaluated and saved.
    asgd: bool = True
    nonmono: int = 5
    # Parallel streams for evaluation: validation and test (AWD-LSTM: 10 and 1).
    eval_batch_size: int = 10
    test_batch_size: int = 1
    # Test positions (seeded by the data) whose full log-probabilities are stored.
    logprob_positions: int = 2000


@dataclass
class BitflipConfig:
    # The parameter whose element the bitflip source moves (a name from named_parameters());
    # null = the first layer's weight (the built-in models) or the first float32 parameter
    # in named_parameters() order (model=custom).
    param: Optional[str] = None


@dataclass
class NondetConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    bitflip: BitflipConfig = field(default_factory=BitflipConfig)
    # Your own settings (a training script of yours, nondet/api.py): any keys, part of the runs'
    # identity, never checked by nondet; a config group of yours at user/NAME lands at user.NAME.
    user: Dict[str, Any] = field(default_factory=dict)
    # The training script of yours (nondet.api) that trains the runs, as its file's path (or a
    # name you give): part of their identity, so they never share a directory or a table row with
    # nondet's own loop (launch.py, null) or with another script's runs.
    script: Optional[str] = None
    replicates: int = 8
    replicate: int = 0
    base_seed: int = 0
    # replicas a job trains at once: a number, or auto (nondet.job.pack_step; docs/benchmarks.md)
    pack: Any = "auto"
    precision: str = "fp32"
    device: str = "auto"
    epochs: int = 24
    batch_size: int = 32
    onset_epoch: int = 0
    shuffle_window: Optional[int] = None
    # source=data: each replicate's resample of the training set, ``bootstrap`` (n examples
    # drawn with replacement) or a fraction f in (0, 1] (floor(f n) drawn without replacement).
    data_resample: Any = "bootstrap"
    # source=data: the order a resample is kept in. ``sorted`` (stored order: the epoch shuffle,
    # the same for every replicate unless shuffle is varied too, then orders the same positions,
    # so only WHICH examples differ); ``drawn`` (the order of the draw: the data seed also reorders
    # the epochs, as runs recorded before ``data_order`` existed did).
    data_order: str = "sorted"
    scale: str = "paper"
    # outputs/<sweep_name>/...: a name, never a timestamp, so a relaunch finds its runs.
    sweep_name: str = "default"
    output_root: str = "outputs"
    eval_every: int = 1
    checkpoint_every: Any = "auto"  # auto (by elapsed time: nondet.train) or every k epochs
    # torch.set_num_threads for the run (null = torch's default); recorded in env.json.
    threads: Optional[int] = None
    # Per-epoch metrics also as TensorBoard event files in each run directory (nondet/logger.py):
    # none or tensorboard (pip install -e .[tensorboard]). Not part of a run's identity.
    logger: str = "none"
    # How long a launch's summary waits for runs another launch of the sweep is training
    # (nondet.callbacks.wait_for_other_launch); 0: not at all. Not part of a run's identity.
    lock_wait_seconds: int = 3600


def register_configs() -> None:
    """Register the typed primary config as ``schema`` (first in conf/config.yaml's defaults).

    ``model`` and ``dataset`` stay open to keys the schema does not declare, so that a group file
    of your own (``model/my_net.yaml``: ``_target_`` and the constructor's arguments) composes;
    ``check_config`` still refuses an undeclared key in a node without a ``_target_``."""
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(NondetConfig)
    OmegaConf.set_struct(schema.model, False)
    OmegaConf.set_struct(schema.dataset, False)
    ConfigStore.instance().store(name="schema", node=schema)


# --- checks that a type cannot express ------------------------------------------------------

# Keys nondet adds to a resolved config itself (never typed on the command line).
DERIVED_KEYS = frozenset({"dataset.sha256"})


class ConfigError(ValueError):
    """A configuration mistake, said in one line that names the key and what it accepts."""


def _at_least(low):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low, f"an integer >= {low}"


def _optional(check):
    ok, text = check
    return (lambda v: v is None or ok(v)), f"null or {text}"


def _fraction(upper_open: bool):
    ok = (lambda v: 0 <= v < 1) if upper_open else (lambda v: 0 <= v <= 1)
    return ok, "in [0, 1)" if upper_open else "in [0, 1]"


def _choice(options):
    return (lambda v: v in options), f"one of {', '.join(options)}"


_POSITIVE = (lambda v: v > 0), "> 0"
_NONNEGATIVE = (lambda v: v >= 0), ">= 0"

# key -> (accepts(value), the allowed range in words). Checked when the config is composed.
RANGES = {
    "replicates": _at_least(1),
    "epochs": _at_least(1),
    "batch_size": _at_least(1),
    "eval_every": _at_least(1),
    "checkpoint_every": ((lambda v: v == "auto" or _at_least(1)[0](v)), "auto or an integer >= 1"),
    # "auto" leaves the pack size to nondet where a version offers it.
    "pack": ((lambda v: v == "auto" or _at_least(1)[0](v)), "auto or an integer >= 1"),
    "threads": _optional(_at_least(1)),
    "lock_wait_seconds": _at_least(0),
    "shuffle_window": _optional(_at_least(1)),
    "data_resample": ((lambda v: v == "bootstrap" or (
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1)),
        "bootstrap or a fraction in (0, 1]"),
    "onset_epoch": _at_least(0),
    "data_order": _choice(("sorted", "drawn")),
    "scale": _choice(SCALES),
    "precision": _choice(PRECISIONS),
    "device": _choice(DEVICES),
    "model.width": _at_least(1),
    "model.depth": _at_least(1),
    "model.dropout": _fraction(True),
    "model.input_dropout": _fraction(True),
    "model.hidden_dropout": _fraction(True),
    "model.embedding_dropout": _fraction(True),
    "model.weight_dropout": _fraction(True),
    "dataset.train_size": _optional(_at_least(1)),
    "dataset.test_size": _optional(_at_least(1)),
    "dataset.valid_size": _optional(_at_least(1)),
    "dataset.num_classes": _at_least(2),
    "dataset.input_dim": _at_least(1),
    "dataset.label_noise": _fraction(False),
    "optimizer.lr": _POSITIVE,
    "optimizer.momentum": _NONNEGATIVE,
    "optimizer.weight_decay": _NONNEGATIVE,
    "schedule.warmup_epochs": _NONNEGATIVE,
    "schedule.cycles": _at_least(1),
}


# Keys the schema cannot type as a float (they also take a word) whose numbers are fractions:
# a whole number given there is made a float, so that ``data_resample=1`` and ``data_resample=1.0``
# name one run directory (the float, as a fraction is written). Keys the schema types as float
# are made floats by OmegaConf itself; keys nondet does not type (``user.*``, the ``+model.*``
# arguments of your own model) keep the type written.
FRACTION_KEYS = ("data_resample",)


def whole_fractions_as_floats(config: dict) -> dict:
    """``config`` with a whole number at a key of ``FRACTION_KEYS`` made a float."""
    changed = {k: float(config[k]) for k in FRACTION_KEYS
               if isinstance(config.get(k), int) and not isinstance(config[k], bool)}
    return {**config, **changed} if changed else config


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value.get("_target_") or f"{prefix}{key}" == "user":
            continue  # your own class's arguments (its signature checks them), your own settings
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.lru_cache(maxsize=None)
def schema_defaults(schema: type) -> dict:
    """The defaults of a structured schema as plain containers, built once (a structured config
    takes tens of milliseconds to build). Shared: read it, never change it."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(schema))


def declared_keys() -> frozenset[str]:
    """Every key nondet's schema declares, nested ones dotted (``model.width``), and its nodes
    (``model``, ``lm``, ``user``): what a job reads, so none may be deleted (``~base_seed``)."""
    defaults = schema_defaults(NondetConfig)
    return frozenset({*defaults, *_flat(defaults)})


def unknown_keys(config: dict) -> list[str]:
    """Keys of a resolved config that the schema does not declare (``+model.widht=3``). A node
    with a ``_target_`` takes any arguments of the class it names, so its keys are not checked."""
    known = set(_flat(schema_defaults(NondetConfig)))
    given = {k for k in _flat({k: v for k, v in config.items() if k != "hydra"})}
    return sorted(given - known - DERIVED_KEYS)


def unknown_key_message(key: str, known) -> str:
    """The line for a key that is not in its node: the close match, if any, and the node's keys."""
    import difflib

    group, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, list(known), n=1)
    where = f"the keys of {group} are" if group else "the top-level keys are"
    return (f"{key} is not a configuration key (a typo?"
            + (f" did you mean {group + '.' if group else ''}{close[0]}?" if close else "")
            + f"); {where}: {', '.join(sorted(known))}")


def _model_choices() -> dict:
    """The names ``model.name`` and ``model.activation`` accept, where the models are built."""
    from nondet.models import ACTIVATIONS, LANGUAGE_MODEL_NAMES, MODEL_NAMES

    return {"model.name": _choice((*MODEL_NAMES, *LANGUAGE_MODEL_NAMES, "custom")),
            "model.activation": _choice(ACTIVATIONS)}


def check_range(key: str, value) -> None:
    """``ConfigError`` when ``value`` is outside the range ``RANGES`` allows for ``key``."""
    accepts, allowed = RANGES[key]
    try:
        ok = accepts(value)
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"{key}={value} is out of range: {key} must be {allowed}")


def check_config(config: dict) -> None:
    """Raise ``ConfigError`` for a key the schema does not know or a value out of its range.

    Run when the config is composed (``nondet.callbacks.CheckCallback``, before anything
    trains) and again by every job (``nondet.job.run_job``), whatever launched it."""
    unknown = unknown_keys(config)
    if unknown:
        key = unknown[0]
        group, _, _ = key.rpartition(".")
        node = schema_defaults(NondetConfig)
        for part in group.split(".") if group else []:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        raise ConfigError(unknown_key_message(key, node if isinstance(node, dict) else {})
                          + (f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""))
    flat = _flat(config)
    for key in RANGES.keys() & flat.keys():
        check_range(key, flat[key])
    for key, (accepts, allowed) in _model_choices().items():
        if key in flat and not accepts(flat[key]):
            raise ConfigError(f"{key}={flat[key]} is out of range: {key} must be {allowed}")
    if not 0 <= config["replicate"] < config["replicates"]:
        raise ConfigError(
            f"replicate={config['replicate']} is outside range(0, replicates={config['replicates']})"
        )
    if "data" in config["source"]["vary"] and config["onset_epoch"] > 0:
        raise ConfigError(
            f"source={config['source']['name']} varies data with onset_epoch={config['onset_epoch']}: "
            "a run's resample of the training set is drawn once, at its start; use onset_epoch=0"
        )
    if config["onset_epoch"] > config["epochs"]:
        raise ConfigError(
            f"onset_epoch={config['onset_epoch']} is out of range: onset_epoch must be in "
            f"0 .. epochs={config['epochs']}"
        )
    from nondet.usermodel import check_targets  # your own model's and data's arguments

    check_targets(config)