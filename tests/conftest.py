"""Shared fixtures: the real configs, composed with hydra.compose and shrunk to test size."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nondet.config import register_configs
from nondet.job import register_resolvers, resolved_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small enough that a run takes a fraction of a second on one core.
TINY = [
    "epochs=2",
    "batch_size=32",
    "dataset.train_size=256",
    "dataset.test_size=128",
    "model.width=16",
    "device=cpu",
]

register_configs()
register_resolvers()


def compose_config(overrides=(), tiny=True):
    """The resolved config (plain dict) that launch.py would see, with `overrides` applied."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=(TINY if tiny else []) + list(overrides))
    return resolved_config(cfg)


@pytest.fixture
def make_config(tmp_path):
    def make(*overrides, tiny=True):
        return compose_config([f"output_root={tmp_path / 'outputs'}", *overrides], tiny=tiny)

    return make
