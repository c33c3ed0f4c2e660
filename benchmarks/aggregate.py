"""Time the aggregation of one group: R runs of N x C test logits, on random data.

    python benchmarks/aggregate.py                        # R=100, N=10,000, C=10 (a paper row)
    python benchmarks/aggregate.py --runs 25 --examples 2000 --classes 100

Prints the seconds each part of ``analysis.metrics.group_metrics`` takes (best of ``--repeat``)
and the total. Everything pairwise is vectorised over the R(R-1)/2 pairs, so the total grows as
R^2 N C for the ensembles and as R N C log(N C) + R^2 N C (one matrix product) for Spearman.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import metrics  # noqa: E402


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--examples", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    shape = (args.runs, args.examples, args.classes)
    # A shared signal plus per-run noise, as in real sweeps (runs agree on most examples).
    logits = (rng.standard_normal(shape[1:]) + 0.5 * rng.standard_normal(shape)).astype(np.float32)
    labels = rng.integers(0, args.classes, args.examples)

    parts = {
        "accuracy + cross-entropy": lambda: (metrics.accuracy(logits, labels), metrics.cross_entropy(logits, labels)),
        "bootstrap SD of SD (B=1000)": lambda: metrics.bootstrap_sd_sd(rng.standard_normal((2, args.runs))),
        "disagreement": lambda: metrics.disagreement(logits),
        "spearman": lambda: metrics.spearman(logits),
        "ensembles + prediction difference": lambda: metrics.ensemble_metrics(logits, labels),
    }
    print(
        f"R={args.runs} N={args.examples} C={args.classes} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, numpy {np.__version__}"
    )
    for name, fn in parts.items():
        print(f"  {name:36s} {best_of(args.repeat, fn):7.2f} s")
    total = best_of(args.repeat, lambda: metrics.group_metrics(logits, labels))
    print(f"  {'group_metrics (all columns)':36s} {total:7.2f} s")


if __name__ == "__main__":
    main()
