"""Time the aggregation of one group: R runs of N x C test logits, on random data.

    python benchmarks/aggregate.py                        # R=100, N=10,000, C=10 (a paper row)
    python benchmarks/aggregate.py --runs 25 --examples 2000 --classes 100

    python benchmarks/aggregate.py --runs 4000 --memmap /tmp/logits.npy --total-only --repeat 1

Prints the seconds each part of ``analysis.metrics.group_metrics`` and ``analysis.stats`` takes
(best of ``--repeat``) and the total of every column of the table. Up to
``analysis.pairs.EXACT_MAX_RUNS`` runs the pairwise columns use all R(R-1)/2 pairs (R^2 N C for
the ensembles); above it they are linear in R (identities, and a fixed number of sampled pairs).
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

from analysis import metrics, stats  # noqa: E402


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
    p.add_argument("--memmap", metavar="FILE", help="write the logits to this .npy and read them memory-mapped")
    p.add_argument("--total-only", action="store_true", help="time only every column together")
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    shape = (args.runs, args.examples, args.classes)
    # A shared signal plus per-run noise, as in real sweeps (runs agree on most examples).
    common = rng.standard_normal(shape[1:])
    if args.memmap:  # written block by block and read back memory-mapped, as the runs' files are
        out = np.lib.format.open_memmap(args.memmap, mode="w+", dtype=np.float32, shape=shape)
        for start in range(0, args.runs, 100):
            block = out[start : start + 100]
            block[:] = common + 0.5 * rng.standard_normal(block.shape)
        out.flush()
        del out
        logits = np.load(args.memmap, mmap_mode="r")
    else:
        logits = (common + 0.5 * rng.standard_normal(shape)).astype(np.float32)
    labels = rng.integers(0, args.classes, args.examples)
    correct = np.argmax(logits, axis=-1) == labels

    parts = {
        "accuracy + cross-entropy": lambda: (metrics.accuracy(logits, labels), metrics.cross_entropy(logits, labels)),
        "bootstrap SD of SD (B=1000)": lambda: metrics.bootstrap_sd_sd(rng.standard_normal((2, args.runs))),
        "disagreement": lambda: metrics.disagreement(logits),
        "spearman": lambda: metrics.spearman(logits),
        "ensembles + prediction difference": lambda: metrics.ensemble_metrics(logits, labels),
        "test-set decomposition + classes": lambda: stats.stats_columns(correct, labels, args.classes),
        "best of k": lambda: stats.best_of_k(correct.mean(axis=1)),
        "multibootstrap (B=1000, two arms)": lambda: stats.multibootstrap(correct, correct[::-1], False, 1000),
        "P(B > A) (B=1000)": lambda: stats.prob_better(correct.mean(axis=1), correct[::-1].mean(axis=1), 1000),
    }
    print(
        f"R={args.runs} N={args.examples} C={args.classes} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, numpy {np.__version__}"
    )
    for name, fn in parts.items() if not args.total_only else ():
        print(f"  {name:36s} {best_of(args.repeat, fn):7.2f} s")
    every = lambda: (metrics.group_metrics(logits, labels), stats.stats_columns(np.argmax(logits, axis=-1) == labels, labels, args.classes))  # noqa: E731
    total = best_of(args.repeat, every)
    print(f"  {'every column of the table':36s} {total:7.2f} s")


if __name__ == "__main__":
    main()
