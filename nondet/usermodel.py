"""Your own model: any ``nn.Module`` class (or function returning one), trained under the protocol.

    python launch.py -m source=init,dropout model=custom model._target_=my_pkg.nets.SmallCNN +model.channels=16

``build_custom_model`` imports ``model._target_`` (from PYTHONPATH or the current directory) and
calls it with the model node's keys that nondet does not declare itself (``+model.channels=16``
gives ``channels=16``), plus ``input_shape`` and ``num_classes`` when its signature names them.

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
import dataclasses
import importlib
import inspect
import os
import random
import sys
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from nondet.config import ConfigError, ModelConfig
from nondet.seeds import hashed_seed

# Keys nondet declares itself: never passed to the constructor.
_OWN_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} | {"_target_", "representations"}


def locate_target(key: str, target: Any):
    """The object ``target`` ("pkg.module.Name") names; ``ConfigError`` in one line if none."""
    if not isinstance(target, str) or not target or target == "???" or "." not in target:
        raise ConfigError(f"{key}={target}: give the dotted path of your class or function, e.g. {key}=my_pkg.nets.SmallCNN")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `python launch.py` puts the script's folder there, not the cwd
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
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
        return obj
    raise ConfigError(
        f"{key}={target}: no module {parts[0]!r} on the path; run from the directory that holds it "
        "or add it to PYTHONPATH"
    )


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
        from nondet.userdata import call_arguments

        target = locate_target("dataset._target_", dataset.get("_target_"))
        _check_call("dataset._target_", dataset["_target_"], target, call_arguments(dataset))


def _check_call(key: str, text: str, fn, kwargs: Mapping[str, Any]) -> None:
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        group = key.split(".")[0]
        raise ConfigError(f"{key}={text}: {exc} (its arguments come from +{group}.KEY=VALUE)") from None
    except ValueError:  # no signature to inspect (a builtin): the call itself will say
        pass


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
    """The model node's keys nondet does not declare, plus ``input_shape`` and ``num_classes``
    where ``target``'s signature names them."""
    kwargs = {k: v for k, v in cfg.items() if k not in _OWN_KEYS}
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    if "input_shape" in params:
        kwargs["input_shape"] = tuple(int(d) for d in input_shape)
    if "num_classes" in params:
        kwargs["num_classes"] = int(num_classes)
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
    with forked_global_rng(seed):
        model = call_target("model._target_", cfg["_target_"], kwargs, fn=target)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={cfg['_target_']} returned a {type(model).__name__}, not a torch.nn.Module")
    representation_modules(model, cfg.get("representations"))  # a wrong name fails now, not in the analysis
    return mark_custom(model).cpu().train()


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
