"""The SLURM tests run only when asked (CI=true or NONDET_TEST_SLURM=1): a plain `python -m pytest`
on a cluster's login node must neither submit jobs to it nor install a SLURM of its own."""

from __future__ import annotations

import pytest

import conftest
from slurm_fixture import slurm_opt_in


class Item:
    def __init__(self, slurm: bool):
        self.slurm, self.markers = slurm, []

    def get_closest_marker(self, name):
        return object() if name == "slurm" and self.slurm else None

    def add_marker(self, marker):
        self.markers.append(marker)


@pytest.mark.parametrize("environ, asked", [
    ({}, False), ({"CI": "false"}, False), ({"NONDET_TEST_SLURM": "0"}, False),
    ({"CI": "true"}, True), ({"NONDET_TEST_SLURM": "1"}, True),
])
def test_slurm_tests_are_opt_in(environ, asked):
    reason = slurm_opt_in(environ)
    assert (reason is None) == asked
    if not asked:
        assert "NONDET_TEST_SLURM=1 python -m pytest -m slurm" in reason


def test_slurm_marked_tests_are_skipped_unless_asked(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("NONDET_TEST_SLURM", raising=False)
    slurm, plain = Item(True), Item(False)
    conftest.pytest_collection_modifyitems(None, [slurm, plain])
    assert [m.name for m in slurm.markers] == ["skip"] and not plain.markers
    monkeypatch.setenv("NONDET_TEST_SLURM", "1")
    slurm = Item(True)
    conftest.pytest_collection_modifyitems(None, [slurm])
    assert not slurm.markers
