"""Your own model: any ``nn.Module`` class (or function returning one), trained under the protocol.

    python launch.py -m source=init,dropout model=custom model._target_=my_pkg.nets.SmallCNN +model.channels=16

``build_custom_model`` imports ``model._target_`` (from PYTHONPATH or the current directory) and
calls it with the keys you add (``+model.channels=16`` gives ``channels=16``), the keys of
nondet's own model node that its signature names (``model.dropout=0.1`` gives ``dropout=0.1``;
one you leave unset is your default, recorded as such: ``with_your_defaults``), ``input_shape``
when its signature names it and ``num_classes`` when it names it or takes ``**kwargs``.

What each source means for a model nondet did not write:

- ``init``: the constructor runs with the global RNGs (torch's CPU and CUDA generators, Python's
  ``random``, numpy's) seeded from the init source and restored afterwards, so the model's own
  initialisation is respected, depends on the init seed alone, and leaves the caller's streams
  as they were (``forked_global_rng``).
- ``dropout``: every draw the model makes while training (``nn.Dropout``, ``F.dropout``,
  stochastic depth, ``torch.rand`` in forward) comes from the global generator of the device it
  draws on; each training step runs with that generator's state taken from, and given back to,
  the dropout source's generator (``global_rng_from``). A model that draws from Python's
  ``random`` or numpy's global state while training is refused: those streams are nobody's source.
- ``bitflip``: one element of ``bitflip.param`` (default: the first float32 parameter in
  ``named_parameters()`` order, ``flip_parameter``).
- CKA: forward hooks on ``model.representations`` (module names; default the model's top-level
  children, ``representation_modules``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import random
import re
import sys
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from nondet.config import ConfigError, DatasetConfig, ModelConfig, schema_defaults
from nondet.seeds import hashed_seed

# Keys of the model and dataset nodes never passed to your code: nondet's choice of your code
# and what it does with it (CKA's modules; the data's content, a derived key).
_NEVER_PASSED = {"model": {"name", "_target_", "representations"}, "dataset": {"name", "_target_", "sha256"}}
# The node's record of the keys of nondet's own that your code's signature names (``with_your_defaults``).
TAKEN = "nondet_keys_taken"
for _never in _NEVER_PASSED.values():
    _never.add(TAKEN)
# Keys nondet declares and reads itself for your data, whether or not your function takes them.
_NONDET_READS = {"model": set(), "dataset": {"augment", "train_size", "test_size"}}
_SCHEMAS = {"model": ModelConfig, "dataset": DatasetConfig}


def nondet_defaults(group: str) -> dict:
    """The keys nondet declares in its ``model`` or ``dataset`` node, with their defaults."""
    return schema_defaults(_SCHEMAS[group])


def locate_target(key: str, target: Any):
    """The object ``target`` ("pkg.module.Name") names; ``ConfigError`` in one line if none."""
    if not isinstance(target, str) or not target or target == "???" or "." not in target:
        raise ConfigError(f"{key}={target}: give the dotted path of your class or function, e.g. {key}=my_pkg.nets.SmallCNN")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `python launch.py` puts the script's folder there, not the cwd
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # this prefix is not a module: try a shorter one
            raise ConfigError(f"{key}={target}: importing {module_name} failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
            raise ConfigError(f"{key}={target}: importing {module_name} failed: {type(exc).__name__}: {exc}") from None
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            raise ConfigError(f"{key}={target}: {module_name} has no {'.'.join(parts[cut:])}") from None
        if inspect.ismodule(obj) or not callable(obj):
            raise ConfigError(f"{key}={target} is {_not_callable(obj, key)}")
        return obj
    raise ConfigError(
        f"{key}={target}: no module {parts[0]!r} on the path; run from the directory that holds it "
        "or add it to PYTHONPATH"
    )


def _not_callable(obj, key: str) -> str:
    """What ``obj`` is instead of a class or function, and the fix: a callable it holds."""
    if not inspect.ismodule(obj):
        return f"a {type(obj).__name__}, not a class or function: name the class or function that builds it"
    own = [name for name, value in vars(obj).items()
           if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
           and getattr(value, "__module__", None) == obj.__name__]
    if key.startswith("model."):  # an nn.Module class first: what model._target_ names
        own.sort(key=lambda name: not (inspect.isclass(vars(obj)[name]) and issubclass(vars(obj)[name], nn.Module)))
    example = f", e.g. {key}={obj.__name__}.{own[0]}" if own else ""
    return f"a module, not a class or function: name one in it{example}"


def call_target(key: str, target: Any, kwargs: Mapping[str, Any], fn=None):
    """``target(**kwargs)`` (``fn`` when already located); an argument the callable does not
    take is one line naming ``key``, not a traceback."""
    fn = fn if fn is not None else locate_target(key, target)
    _check_call(key, target, fn, kwargs)
    return fn(**kwargs)


def check_targets(config: Mapping[str, Any]) -> None:
    """Refuse, in one line and before anything is trained, a ``model._target_`` or
    ``dataset._target_`` that cannot be imported or does not take the arguments given."""
    model, dataset = config.get("model") or {}, config.get("dataset") or {}
    if is_custom(model):
        target = locate_target("model._target_", model.get("_target_"))
        _check_call("model._target_", model["_target_"], target, constructor_kwargs(model, (1,), 2, target))
    if dataset.get("name") == "custom":
        target = locate_target("dataset._target_", dataset.get("_target_"))
        _check_call("dataset._target_", dataset["_target_"], target, target_arguments("dataset", dataset, target))


def _check_call(key: str, text: str, fn, kwargs: Mapping[str, Any]) -> None:
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        group = key.split(".")[0]
        missing = re.search(r"missing a required argument: '(\w+)'", str(exc))
        how = (f"give it with {group}.{missing[1]}=VALUE" if missing and missing[1] in nondet_defaults(group)
               else f"its arguments come from +{group}.KEY=VALUE")
        raise ConfigError(f"{key}={text}: {exc} ({how})") from None
    except ValueError:  # no signature to inspect (a builtin): the call itself will say
        pass


def _named_parameters(fn) -> dict[str, inspect.Parameter]:
    """The parameters of ``fn`` that a keyword names ({} where it has no signature to read)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _takes_kwargs(fn) -> bool:
    try:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


def target_arguments(group: str, node: Mapping[str, Any], fn) -> dict:
    """The keyword arguments your ``{group}._target_`` (``fn``) gets from its node: the keys you
    add, and the keys nondet declares that its signature names, with their values (unset ones
    hold your default by now: ``with_your_defaults``). A key nondet declares, set to other than
    its default, that ``fn`` does not name would be dropped: refused in one line. One that ``fn``
    requires and that holds nondet's default is left out, so the call says to give it."""
    defaults, named = nondet_defaults(group), _named_parameters(fn)
    kwargs = {}
    for key, value in node.items():
        if key in _NEVER_PASSED[group]:
            continue
        if key in named and key in defaults and named[key].default is inspect.Parameter.empty and value == defaults[key]:
            continue  # not given: nondet's default is no value of yours (dataset.path: null)
        if key not in defaults or key in named:
            kwargs[key] = value
        elif value != defaults[key] and key not in _NONDET_READS[group]:
            name = getattr(fn, "__qualname__", str(fn))
            raise ConfigError(
                f"{group}.{key}={value}: {name} takes no argument {key!r}, so this value would reach "
                f"nothing ({group}.{key} is read by nondet's own {group}s); leave {group}.{key} unset, "
                f"or add a {key} argument to {name}"
            )
    return kwargs


def given_keys(cfg) -> set[str]:
    """The keys the command line sets (``model.dropout`` of ``model.dropout=0.0``), from Hydra's
    record of the job's overrides: ``cfg.hydra`` or the running job's; empty without Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hydra = cfg["hydra"] if "hydra" in cfg else (HydraConfig.get() if HydraConfig.initialized() else None)
        task = list(hydra.overrides.task) if hydra is not None else []
    except Exception:  # noqa: BLE001 - a config without Hydra's record: nothing known as given
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in task if "=" in o}


def with_your_defaults(config: dict, given: set[str] = frozenset()) -> dict:
    """``config`` with each key of nondet's own that your ``model=custom``/``dataset=custom``
    code names in its signature, and that holds nondet's default without being ``given`` on the
    command line, set to your code's own default: what it is called with, and what config.yaml
    records (``width: 8`` for ``def __init__(..., width=8)``, not nondet's ``width: 128``).

    Such keys are listed under ``TAKEN`` (part of the runs' identity), and so is a model's
    ``num_classes`` offered through ``**kwargs``: runs recorded before these reached your code,
    which trained with your defaults whatever the node said, never pool with runs that get them.
    A node whose code takes none of them is left as it was."""
    changed = {}
    for group in ("model", "dataset"):
        node = config.get(group)
        if not isinstance(node, dict) or node.get("name") != "custom":
            continue
        try:
            fn = locate_target(f"{group}._target_", node.get("_target_"))
        except ConfigError:
            continue  # check_targets says why, in one line
        named, defaults = _named_parameters(fn), nondet_defaults(group)
        taken = sorted(k for k in named.keys() & defaults.keys() if k not in _NEVER_PASSED[group])
        ours = {k: named[k].default for k in taken
                if f"{group}.{k}" not in given and node.get(k) == defaults[k] and _plain(named[k].default)}
        if group == "model" and "num_classes" not in named and _takes_kwargs(fn):
            taken.append("num_classes")  # the data's, through **kwargs (``constructor_kwargs``)
        if taken:
            changed[group] = {**node, **{k: list(v) if isinstance(v, tuple) else v for k, v in ours.items()},
                              TAKEN: taken}
    return {**config, **changed} if changed else config


def _plain(value) -> bool:
    """Whether config.yaml can hold ``value`` as it is (a required argument's marker cannot)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def seed_from(generator: torch.Generator, purpose: str) -> int:
    """A 63-bit seed drawn from ``generator`` (advancing it), mixed with ``purpose``."""
    draw = int(torch.randint(2**62, (1,), generator=generator, dtype=torch.int64))
    return hashed_seed("nondet.usermodel", purpose, draw)


@contextlib.contextmanager
def forked_global_rng(seed: int) -> Iterator[None]:
    """Run the block with torch's (CPU and every CUDA device's), Python's and numpy's global
    RNGs seeded from ``seed``; give them their states back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            # not torch.manual_seed: before CUDA starts it would queue a seed for later, outside the fork
            torch.random.default_generator.manual_seed(seed)
            for device in devices:
                torch.cuda.default_generators[device].manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def constructor_kwargs(cfg: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, target) -> dict:
    """``target_arguments`` of the model node, plus ``input_shape`` where ``target``'s signature
    names it and ``num_classes`` where it names it or takes ``**kwargs`` (torchvision's
    ``resnet18(**kwargs)`` then builds a head for the data's classes, not ImageNet's 1000), unless
    you give them (``+model.num_classes``: ``check_output`` then says whether they fit)."""
    kwargs = target_arguments("model", cfg, target)
    params = _named_parameters(target)
    if "input_shape" in params:
        kwargs.setdefault("input_shape", tuple(int(d) for d in input_shape))
    if "num_classes" in params or _takes_kwargs(target):
        kwargs.setdefault("num_classes", int(num_classes))
    return kwargs


def build_custom_model(cfg, input_shape: Sequence[int], num_classes: int, init_generator: torch.Generator) -> nn.Module:
    """``model._target_(**arguments)`` built with the global RNGs forked and seeded from the
    init source (one draw from ``init_generator``); on the CPU, in training mode."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    target = locate_target("model._target_", cfg.get("_target_"))
    kwargs = constructor_kwargs(cfg, input_shape, num_classes, target)
    seed = seed_from(init_generator, "init")
    try:
        with forked_global_rng(seed):
            model = call_target("model._target_", cfg["_target_"], kwargs, fn=target)
    except TypeError as exc:
        # num_classes offered through **kwargs that the code hands on to something without it:
        # built as it is then (check_output says whether its head fits the data)
        if "num_classes" in _named_parameters(target) or "num_classes" in cfg or "num_classes" not in str(exc):
            raise
        kwargs.pop("num_classes")
        with forked_global_rng(seed):
            model = call_target("model._target_", cfg["_target_"], kwargs, fn=target)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={cfg['_target_']} returned a {type(model).__name__}, not a torch.nn.Module")
    representation_modules(model, cfg.get("representations"))  # a wrong name fails now, not in the analysis
    return mark_custom(model).cpu().train()


def check_output(model: nn.Module, target: str, x: torch.Tensor, num_classes: int) -> None:
    """One training-mode forward of your model on ``x`` (a few training examples, as the
    training step feeds them), with the dropout stream a throwaway generator's: a model that
    cannot take the data, draws from Python's or numpy's global RNG, or returns anything but
    (N, num_classes) logits is refused in one line, before anything trains."""
    import traceback

    model.train()
    try:
        with torch.no_grad(), global_rng_from([torch.Generator().manual_seed(0)]):
            out = model(x)
    except GlobalRandomUse as exc:
        raise ConfigError(f"model._target_={target}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - your model's own code failed on these data
        where = traceback.extract_tb(exc.__traceback__)[-1]
        text = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"model._target_={target} cannot take the data: its forward on a batch of shape "
            f"{tuple(x.shape)} ({x.dtype}) raised {type(exc).__name__}: {text} (at {where.filename}:{where.lineno}, "
            f"in {where.name})"
        ) from None
    expected = (x.shape[0], num_classes)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"model._target_={target}: forward returned a {type(out).__name__}; nondet trains on one tensor "
            f"of logits, shape (N, {num_classes}) for the data's {num_classes} classes: return the logits alone"
        )
    if tuple(out.shape) != expected:
        fix = ("return one row of logits per example" if out.dim() != 2 else
               "give its classifier num_classes outputs (nondet passes num_classes to an argument of that name)")
        raise ConfigError(
            f"model._target_={target}: forward returned shape {tuple(out.shape)} for a batch of {x.shape[0]}; "
            f"nondet trains on {expected} logits, one per class of the data's {num_classes}: {fix}"
        )
    if not out.is_floating_point():
        raise ConfigError(f"model._target_={target}: forward returned {out.dtype} values; return float logits")


CUSTOM_MARK = "_nondet_custom_model"


def is_custom(model_cfg: Mapping[str, Any]) -> bool:
    """Whether a model config names your own model (``model=custom``)."""
    return model_cfg.get("name") == "custom"


def mark_custom(model: nn.Module) -> nn.Module:
    """Mark ``model`` as yours (an attribute, so copies keep it): its nn.Dropout layers are
    allowed, since they draw from the global generator, which each training step fills from the
    dropout source."""
    model.__dict__[CUSTOM_MARK] = True
    return model


def is_custom_model(model: nn.Module) -> bool:
    """Whether ``model`` was built by ``build_custom_model``."""
    return bool(model.__dict__.get(CUSTOM_MARK))


# --------------------------------------------------------------------------- dropout


class GlobalRandomUse(RuntimeError):
    """The model drew from Python's ``random`` or numpy's global RNG while training."""


@contextlib.contextmanager
def global_rng_from(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Run the block with each generator's state in the global generator of its device (the
    dropout source's stream), then move the advanced state back into the generator and restore
    the global one. Draws from Python's ``random`` or numpy inside the block are refused."""
    saved = []
    for g in generators:
        if g.device.type == "cuda":
            index = g.device.index if g.device.index is not None else torch.cuda.current_device()
            saved.append((g, torch.cuda.get_rng_state(index), index))
            torch.cuda.set_rng_state(g.get_state(), index)
        else:
            saved.append((g, torch.get_rng_state(), None))
            torch.set_rng_state(g.get_state())
    py_state, np_state = random.getstate(), np.random.get_state()
    # a CUDA stream covers the GPU's draws; the CPU's global generator must then stay untouched
    cpu_state = None if any(index is None for _, _, index in saved) else torch.get_rng_state()
    try:
        yield
    finally:
        for g, state, index in saved:
            if index is None:
                g.set_state(torch.get_rng_state())
                torch.set_rng_state(state)
            else:
                g.set_state(torch.cuda.get_rng_state(index))
                torch.cuda.set_rng_state(state, index)
    moved = [name for name, same in (
        ("Python's random", random.getstate() == py_state),
        ("numpy's global RNG", _same_np(np.random.get_state(), np_state)),
        ("torch's CPU generator (the model trains on a GPU)", cpu_state is None or torch.equal(cpu_state, torch.get_rng_state())),
    ) if not same]
    if moved:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if cpu_state is not None:
            torch.set_rng_state(cpu_state)
        raise GlobalRandomUse(
            f"the model drew from {' and '.join(moved)} while training; no source seeds that stream, "
            "so runs could not be repeated: draw with torch (torch.rand, nn.Dropout), which nondet "
            "feeds from the dropout source"
        )


def _same_np(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


# --------------------------------------------------------------------------- bitflip, CKA


def flip_parameter(model: nn.Module, name: Optional[str]) -> tuple[str, nn.Parameter]:
    """(name, parameter) the bitflip source moves: ``name`` from ``bitflip.param``, else the first
    float32 parameter in ``named_parameters()`` order."""
    params = dict(model.named_parameters())
    if name is None:
        for qualified, p in params.items():
            if p.dtype == torch.float32:
                return qualified, p
        raise ConfigError(f"{type(model).__name__} has no float32 parameter to flip; set bitflip.param")
    if name not in params:
        names = list(params)
        raise ConfigError(
            f"bitflip.param={name} is not a parameter of {type(model).__name__}; its parameters: "
            f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
        )
    if params[name].dtype != torch.float32:  # the flip moves one float32 ULP
        floats = [n for n, p in params.items() if p.dtype == torch.float32]
        raise ConfigError(
            f"bitflip.param={name} is {str(params[name].dtype).replace('torch.', '')}, and the bit flip moves "
            "one float32 ULP: name a float32 parameter"
            + (f" ({', '.join(floats[:8])}{' ...' if len(floats) > 8 else ''})" if floats else "")
        )
    return name, params[name]


def representation_modules(model: nn.Module, names: Optional[Sequence[str]] = None) -> dict[str, nn.Module]:
    """{name: module} whose forward outputs CKA compares: ``names`` (``model.representations``,
    qualified module names), else the model's own ``representation_layers()`` when it has one,
    else its top-level children."""
    if names:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            children = [n for n, _ in model.named_children()]
            raise ConfigError(
                f"model.representations names {missing}, not modules of {type(model).__name__}; "
                f"its top-level modules: {', '.join(children)}"
            )
        return {n: modules[n] for n in names}
    own = getattr(model, "representation_layers", None)
    if callable(own):
        return dict(own())
    children = dict(model.named_children())
    if not children:
        raise ConfigError(f"{type(model).__name__} has no child modules to compare; set model.representations")
    return children
