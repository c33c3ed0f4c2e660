"""Train the runs of a sweep: one Hydra job per replicate (or pack of replicates).

    python launch.py -m source=init,shuffle,bitflip          # 3 sources x `replicates` runs
    python launch.py -m source=init replicates=30 model=conv1 dataset.image_shape=[3,32,32]
    python launch.py -m +experiment=table1 scale=smoke        # a paper preset, CPU-sized

See README.md for the config groups and the run-directory contract.
"""

import gc
import sys
from pathlib import Path

import nondet.backend  # noqa: F401  (sets CUBLAS_WORKSPACE_CONFIG before CUDA starts)
import hydra
from omegaconf import DictConfig

from nondet.callbacks import check_command_line
from nondet.config import register_configs
from nondet.job import register_resolvers, run_job

register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg)


if __name__ == "__main__":
    # What is imported lives as long as the process: out of the garbage collector's way, its full
    # collections (and the interpreter's exit) need not walk torch's objects (about half a second
    # of a short sweep's wall time; docs/benchmarks.md).
    gc.freeze()
    check_command_line(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    main()
