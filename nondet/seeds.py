"""The seed model: one seed, and one ``torch.Generator``, per source of nondeterminism.

A ``source`` config names the sources that vary. A varied source takes a seed derived from
(base_seed, source name, replicate); every other source takes ``base_seed``. ``lowlevel`` cannot
be seeded: it is either deterministic (the default) or not (when varied). So ``source=none``
gives R bitwise-identical runs, and ``source=shuffle`` changes the shuffle stream and nothing
else.

    >>> plan = SeedPlan.for_run(base_seed=0, vary=["shuffle"], replicate=3)
    >>> plan.seeds["init"] == 0, plan.seeds["shuffle"] != 0
    (True, True)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import torch

# Sources that draw from a generator, in the order their generators are created.
SEEDABLE = ("init", "shuffle", "augment", "dropout", "reduction", "bitflip")
# ``lowlevel``: CUDA/cuDNN kernel choice and atomics; on or off, never seeded.
PAPER_SOURCES = SEEDABLE + ("lowlevel",)
# Seeded sources outside the paper's set (and outside ``source=all``) that exist in a run only
# when varied: a run that does not vary them has no seed, no generator and no draw of theirs,
# so it computes, records and checkpoints exactly what it did before they existed.
# ``data``: the run's resample of the training set (``data_resample``; nondet/pipeline.py).
OPTIONAL_SOURCES = ("data",)
SOURCES = PAPER_SOURCES + OPTIONAL_SOURCES


def hashed_seed(*parts: object) -> int:
    """A 63-bit seed from the SHA-256 of ``parts`` joined by "/": the one way nondet names a
    stream (sources, synthetic data and text, the language model's stored positions).

    SHA-256 rather than ``base_seed + replicate`` so that neighbouring replicates, sources and
    base seeds never share or shift streams.
    """
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def derive_seed(base_seed: int, source: str, replicate: int) -> int:
    """A 63-bit seed that depends on all three arguments and on nothing else."""
    return hashed_seed("nondet", base_seed, source, replicate)


def check_sources(vary: Iterable[str]) -> list[str]:
    """Validate the names a source config varies; returns them as a list."""
    vary = list(vary)
    unknown = [s for s in vary if s not in SOURCES]
    if unknown:
        raise ValueError(
            f"unknown source(s) {unknown} in source.vary; the sources are {list(SOURCES)}. "
            "Write your own combination as conf/source/<name>.yaml with `name:` and `vary: [...]`."
        )
    if len(set(vary)) != len(vary):
        raise ValueError(f"source.vary lists a source twice: {vary}")
    return vary


@dataclass(frozen=True)
class SeedPlan:
    """Which sources vary in one run, and the seed of each (``seeds.json``)."""

    base_seed: int
    replicate: int
    vary: tuple[str, ...]
    seeds: dict[str, int]

    @classmethod
    def for_run(cls, base_seed: int, vary: Iterable[str], replicate: int) -> "SeedPlan":
        vary = tuple(check_sources(vary))
        seeds = {
            s: derive_seed(base_seed, s, replicate) if s in vary else base_seed for s in SEEDABLE
        }
        seeds.update({s: derive_seed(base_seed, s, replicate) for s in OPTIONAL_SOURCES if s in vary})
        return cls(base_seed=base_seed, replicate=replicate, vary=vary, seeds=seeds)

    def varies(self, source: str) -> bool:
        return source in self.vary

    def onset_seeds(self) -> dict[str, int]:
        """Seeds before the onset epoch: every source at base_seed (the shared prefix)."""
        return {s: self.base_seed for s in self.seeds}

    def generators(self, device: torch.device | str, before_onset: bool = False) -> dict:
        """A fresh generator per seedable source.

        ``init``, ``bitflip`` and ``data`` draw on the CPU, so a model starts from the same
        weights and trains on the same resample on any device; the per-step sources draw on the
        training device, next to the data.
        """
        seeds = self.onset_seeds() if before_onset else self.seeds
        return {s: make_generator(seeds[s], generator_device(s, device)) for s in seeds}

    def as_record(self, lowlevel: str) -> dict:
        return {
            "base_seed": self.base_seed,
            "replicate": self.replicate,
            "vary": list(self.vary),
            "seeds": dict(self.seeds),
            "lowlevel": lowlevel,
        }


def generator_device(source: str, device: torch.device | str) -> torch.device:
    return torch.device("cpu") if source in ("init", "bitflip", "data") else torch.device(device)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
