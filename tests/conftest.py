"""Shared fixtures: the real configs, composed with hydra.compose and shrunk to test size."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nondet.config import register_configs
from nondet.job import register_resolvers, resolved_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small enough that a run takes a fraction of a second on one core; one replica per job (pack=1),
# so that a test's job trains the one replicate it names. Synthetic data: generated in memory.
TINY = [
    "dataset=synthetic",
    "pack=1",
    "checkpoint_every=1",
    "epochs=2",
    "batch_size=32",
    "dataset.train_size=256",
    "dataset.test_size=128",
    "model.width=16",
    "device=cpu",
]

register_configs()
register_resolvers()


def pytest_collection_modifyitems(config, items):
    """Tests marked slurm are skipped unless asked for (CI=true or NONDET_TEST_SLURM=1): they
    would submit jobs to any SLURM that answers, and may install one."""
    try:
        from slurm_fixture import slurm_opt_in
    except ImportError:  # tests/ imported as a package
        from tests.slurm_fixture import slurm_opt_in

    reason = slurm_opt_in()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


# Data a test writes itself (or sizes with dataset.num_samples): as small as the test wants, and
# a train_size or test_size beyond what the data hold is refused.
OWN_SIZED_DATA = ("dataset=npz", "dataset=custom", "dataset=imagefolder", "dataset=mnist", "dataset=cifar10")


def tiny_for(overrides) -> list[str]:
    """TINY, less ``model.width`` for your own model (``model=custom``), which takes none unless
    its signature names it (and refuses one it does not name), and less the dataset sizes for
    data of the test's own size (``OWN_SIZED_DATA``, ``dataset.num_samples=``)."""
    tiny = [o for o in TINY if not o.startswith("model.")] if "model=custom" in overrides else TINY
    if any(o in OWN_SIZED_DATA or o.startswith("dataset.num_samples=") for o in overrides):
        tiny = [o for o in tiny if not o.startswith(("dataset.train_size=", "dataset.test_size="))]
    return tiny


def compose_config(overrides=(), tiny=True):
    """The resolved config (plain dict) that launch.py would see, with `overrides` applied."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=(tiny_for(overrides) if tiny else []) + list(overrides))
    return resolved_config(cfg)


@pytest.fixture
def make_config(tmp_path):
    def make(*overrides, tiny=True):
        return compose_config([f"output_root={tmp_path / 'outputs'}", *overrides], tiny=tiny)

    return make


def kill_after_epoch(monkeypatch, epoch: int):
    """Make a run's job fail right after it records epoch ``epoch`` (metrics row and logger
    written; a checkpoint of a later epoch not): a job killed there. Returns the undo."""
    from nondet import logger

    original = logger.record_metrics

    def killed(config, directory, history):
        original(config, directory, history)
        if history[-1]["epoch"] == epoch:
            raise RuntimeError("killed")

    monkeypatch.setattr(logger, "record_metrics", killed)
    return lambda: monkeypatch.setattr(logger, "record_metrics", original)


def read_only(monkeypatch, folder) -> None:
    """Below ``folder``, every open for writing fails as on a read-only file system (EROFS), where
    ``os.access`` (as root) still says writable: builtin and io ``open`` (pandas, pathlib,
    matplotlib) and ``os.open`` (tempfile, the atomic writes of nondet.records)."""
    import builtins
    import errno
    import io
    import os

    real_open, real_os_open, below = builtins.open, os.open, str(folder)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(file).startswith(below) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if str(path).startswith(below) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
