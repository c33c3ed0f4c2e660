"""MNIST-1D (Greydanus, "Scaling down Deep Learning", 2020): real data with no download.

    python launch.py dataset=mnist1d model=cnn1d optimizer=adam optimizer.lr=0.01 batch_size=100
    python launch.py -m +experiment=mnist1d               # the CPU preset (conf/experiment/mnist1d.yaml)

10 classes of 1-D signals of length 40 (4,000 train / 1,000 test with the defaults), generated
procedurally by the ``mnist1d`` package's ``make_dataset(get_dataset_args())``; its download path
(``get_dataset``) is never used. The package's arguments are ``dataset.*`` keys with its defaults
(``num_samples``, ``train_split``, ``template_len``, ``padding``, ``scale_coeff``,
``max_translation``, ``corr_noise_scale``, ``iid_noise_scale``, ``shear_scale``, ``shuffle_seq``,
``final_seq_length``), its ``seed`` is ``dataset.data_seed`` (42 in conf/dataset/mnist1d.yaml).
They are part of the run identity like every other key. ``num_samples`` is rounded down to a
multiple of 10 (the package makes ``num_samples // 10`` signals per class).

The generator reseeds Python's and numpy's global RNGs; both are saved and restored around it, so
loading the data touches no stream of any source of nondeterminism (nor the caller's). The arrays,
exactly as the package returns them (float64 signals, int64 labels), are cached in
``<dataset.root>/mnist1d/mnist1d-<digest>.npz``, keyed by the generation arguments and the
package's version, so later runs load instead of regenerating. The model sees float32 signals of
shape (N, 1, L): one channel for ``cnn1d``; ``linear`` and ``mlp`` flatten them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from nondet.config import DatasetConfig
from nondet.records import _atomic_write_bytes

log = logging.getLogger("nondet")

NUM_CLASSES = 10
# make_dataset's arguments that are dataset.* keys of the same name (its seed is data_seed).
ARG_KEYS = (
    "num_samples", "train_split", "template_len", "padding", "scale_coeff", "max_translation",
    "corr_noise_scale", "iid_noise_scale", "shear_scale", "shuffle_seq", "final_seq_length",
)
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def generation_args(cfg: DatasetConfig) -> dict:
    """The arguments handed to ``make_dataset``, checked; plain Python values."""
    args = {key: getattr(cfg, key) for key in ARG_KEYS}
    args["padding"] = [int(p) for p in args["padding"]]
    args["seed"] = int(cfg.data_seed)
    if args["num_samples"] < 2 * NUM_CLASSES:
        raise ValueError(f"dataset.num_samples={args['num_samples']}: need at least {2 * NUM_CLASSES} (10 classes)")
    kept = args["num_samples"] // NUM_CLASSES * NUM_CLASSES
    if not 0 < int(kept * args["train_split"]) < kept:
        raise ValueError(f"dataset.train_split={args['train_split']}: must leave both splits non-empty (0 < split < 1)")
    if len(args["padding"]) != 2 or not 0 <= args["padding"][0] <= args["padding"][1]:
        raise ValueError(f"dataset.padding={args['padding']}: give [low, high] with 0 <= low <= high")
    for key in ("template_len", "max_translation", "final_seq_length"):
        if args[key] < 1:
            raise ValueError(f"dataset.{key}={args[key]}: must be >= 1")
    return args


def generate(args: dict) -> dict[str, np.ndarray]:
    """``mnist1d.data.make_dataset`` on ``args``, the global RNGs it reseeds put back as they were."""
    from mnist1d.data import get_dataset_args, make_dataset  # lazily: it imports matplotlib.pyplot
    from mnist1d.utils import ObjectView

    full = get_dataset_args(as_dict=True)
    full.update(args)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(full))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {"x_train": data["x"], "y_train": data["y"], "x_test": data["x_test"], "y_test": data["y_test"]}


def cache_path(cfg: DatasetConfig, args: dict) -> Path:
    """``<root>/mnist1d/mnist1d-<digest>.npz``: one file per generation arguments and version."""
    key = json.dumps({"args": args, "mnist1d": metadata.version("mnist1d")}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(os.path.expanduser(cfg.root)) / "mnist1d" / f"mnist1d-{digest}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in ARRAYS}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        # Only a cache: the arrays are regenerated from the arguments and the file replaced.
        log.warning("%s: unreadable MNIST-1D cache (%s); regenerating it", path, exc)
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray], args: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, args=np.array(json.dumps(args, sort_keys=True)))
    try:
        _atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:  # a read-only root costs a regeneration next time, nothing more
        log.warning("%s: cannot cache MNIST-1D there (%s); set dataset.root to a writable directory", path, exc)


def mnist1d_arrays(cfg: DatasetConfig) -> dict[str, np.ndarray]:
    """The package's arrays for ``cfg`` (float64 x (N, L), int64 y), from the cache when present."""
    args = generation_args(cfg)
    path = cache_path(cfg, args)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = generate(args)
        _write_cache(path, arrays, args)
    return arrays


def load_mnist1d(cfg: DatasetConfig):
    """``load_dataset``'s loader for ``dataset=mnist1d``: float32 signals (N, 1, L), int64 labels."""
    arrays = mnist1d_arrays(cfg)
    out = []
    for split in ("train", "test"):
        x = torch.from_numpy(np.ascontiguousarray(arrays[f"x_{split}"], dtype=np.float32))
        out += [x.unsqueeze(1), torch.from_numpy(arrays[f"y_{split}"].astype(np.int64))]
    return ("mnist1d", *out, NUM_CLASSES)
