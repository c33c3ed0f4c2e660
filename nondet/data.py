"""Datasets, loaded whole onto the training device: ``load_dataset(cfg.dataset, device)``.

    python launch.py                                     # dataset=mnist1d, the embedded default
    python launch.py dataset=synthetic                   # a random teacher labels Gaussian inputs
    python launch.py dataset=cifar10 dataset.root=/data  # /data/cifar-10-batches-py/...
    python launch.py dataset=mnist dataset.root=/data    # /data/MNIST/raw/*-idx?-ubyte
    python launch.py dataset=npz dataset.path=my.npz     # bring your own arrays
    python launch.py dataset=custom dataset._target_=my_pkg.data.load     # nondet/userdata.py
    python launch.py dataset=imagefolder dataset.root=DIR dataset.image_size=32

The training loop keeps every tensor resident on the device (no DataLoader, no workers), draws
batches by index, augments them in their stored dtype and then calls ``Dataset.normalize``.

Synthetic data (``dataset=synthetic``), generated on the CPU from ``dataset.data_seed`` alone,
with its own ``torch.Generator`` per part (teacher, train split, test split; the seed of each is
SHA-256 of ``nondet.data/synthetic/<data_seed>/<part>``), never the global RNG:

1. Inputs: x ~ N(0, I) in float64 of dimension ``input_dim`` (or prod(``image_shape``), then
   reshaped to (C, H, W)), rounded to float32; the labels are computed from the float32 values.
2. Teacher: ``teacher_depth`` hidden layers of ``teacher_width`` units, h <- act(W h) with
   W ~ N(0, 1/fan_in) and no biases, ``act`` = ``teacher_activation`` (tanh, relu, gelu, silu,
   softplus, leaky_relu (slope 0.01), smelu (beta 1), linear); then a linear readout
   W_out ~ N(0, 1/fan_in) to ``num_classes`` logits, all in float64.
3. Imbalance: logit_c += -imbalance * ln(10) * c / (num_classes - 1), which favours class 0 and
   disfavours the last class. The teacher's logits have a spread of about 1, so this is strong:
   with the defaults the most/least frequent class ratio is about 3 at imbalance=0 (the random
   teacher is itself uneven), 7 at 0.25, 40 at 0.5, and at 1 the last classes are nearly empty.
4. Label = argmax of the logits.
5. Label noise: with probability ``label_noise`` the label is replaced by a class drawn uniformly
   from all ``num_classes`` (it may redraw the same class), from the split's own generator.

Train and test draw from separate generators, so ``train_size`` never changes the test set.
Sizes default to 4096 train / 2048 test examples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from nondet.config import DatasetConfig
from nondet.seeds import hashed_seed, make_generator
from nondet.mnist1d import load_mnist1d

log = logging.getLogger("nondet")

SYNTHETIC_TRAIN_SIZE = 4096
SYNTHETIC_TEST_SIZE = 2048
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a torchvision dataset are missing (or fail torchvision's checksum)."""


@dataclass
class Dataset:
    """A whole dataset on one device, plus the per-channel statistics ``normalize`` uses."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    # Images: per-channel mean/std of the training set, in the units of x.float() / 255 for uint8
    # images and raw units for float images. None for feature vectors.
    mean: Optional[torch.Tensor]
    std: Optional[torch.Tensor]
    # SHA-256 of what was loaded: the file's bytes for a file dataset (npz), else set by
    # ``data_sha256``. Recorded in each run's env.json as ``data_sha256``.
    sha256: Optional[str] = None

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        """The same dataset with every tensor on ``device``."""

        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self,
            x_train=move(self.x_train),
            y_train=move(self.y_train),
            x_test=move(self.x_test),
            y_test=move(self.y_test),
            mean=move(self.mean),
            std=move(self.std),
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in stored dtype -> float32 model input (after augmentation, per batch)."""
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        else:
            x = x.to(torch.float32)
        if not self.is_image:
            return x
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def load_dataset(cfg: DatasetConfig, device: torch.device | str = "cpu") -> Dataset:
    """Load ``cfg.name`` (synthetic, cifar10, mnist, npz, mnist1d, custom, imagefolder) onto ``device``."""
    loaders = {
        "synthetic": _load_synthetic,
        "cifar10": _load_cifar10,
        "mnist": _load_mnist,
        "npz": _load_npz,
        "mnist1d": load_mnist1d,
    }
    from nondet import userdata  # your own data: a function's (custom), a directory's (imagefolder)

    loaders.update({name: userdata.load for name in userdata.CONTENT_IDENTIFIED})
    if cfg.name not in loaders:
        raise ValueError(f"unknown dataset {cfg.name!r}; choose one of {sorted(loaders)}")
    name, x_train, y_train, x_test, y_test, num_classes, *sha256 = loaders[cfg.name](cfg)
    if cfg.name != "synthetic":
        x_train, y_train = _first(x_train, y_train, cfg.train_size, "train_size", f"dataset={cfg.name}")
        x_test, y_test = _first(x_test, y_test, cfg.test_size, "test_size", f"dataset={cfg.name}")
    classes = torch.unique(y_train).tolist()
    if len(classes) < 2:
        # Every run would predict the one class: 100% accuracy with SD 0, a finding of nothing.
        raise ValueError(
            f"dataset={cfg.name}: the training set has a single class ({classes[0]}); a classifier "
            "needs at least two (check y_train, or a train_size that keeps too few examples)"
        )
    mean, std = channel_stats(x_train) if x_train.dim() == 4 else (None, None)
    data = Dataset(name, x_train, y_train, x_test, y_test, num_classes, mean, std, *sha256)
    return data.to(device)


# --------------------------------------------------------------------------- fingerprints

_FILE_SHA256: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) within a process: a sweep
    names every job's runs from it without reading the file again."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_SHA256[key] = digest.hexdigest()
    return _FILE_SHA256[key]


def data_fingerprint(dataset: dict) -> Optional[str]:
    """The content of a user's data file (npz) or files (the Penn Treebank's three), as part of
    the runs' identity (``dataset.sha256``); None for data that the configuration itself
    determines (generated data; CIFAR-10, whose files torchvision checks against their MD5s),
    root-based data read by another library (MNIST: torchvision checks only that its files
    exist, so a changed file shows in env.json's ``data_sha256``, which the analysis splits rows
    by and a resume checks: ``nondet.job.check_resumed_data``) or files that are not
    there (loading them says so). Your own data
    (``dataset=custom``, ``imagefolder``) is loaded to be fingerprinted (``nondet.userdata``)."""
    from nondet import userdata

    if dataset.get("name") in userdata.CONTENT_IDENTIFIED:
        return userdata.fingerprint(dataset)
    try:
        if dataset.get("name") == "ptb" and dataset.get("root"):  # three text files, not checksummed
            from nondet.text import PTB_SPLITS, ptb_files, ptb_sha256

            paths = ptb_files(dataset["root"])
            return None if paths is None else ptb_sha256({s: file_sha256(paths[s]) for s in PTB_SPLITS})
        path = dataset.get("path") if dataset.get("name") == "npz" else None
        if not path or not os.path.isfile(os.path.expanduser(path)):
            return None
        return file_sha256(os.path.expanduser(path))
    except OSError:  # unreadable: loading it says so, in one line
        return None


def data_sha256(data) -> str:
    """``data_sha256`` of env.json: the loaded file's SHA-256, or one of the tensors (in order,
    with their shapes and dtypes) for data generated or read from a dataset's own files. ``data``
    is a ``Dataset``, or any object whose tensors are its attributes (``nondet.api.Run(cfg,
    data=...)``: a ``SimpleNamespace(x_train=..., ...)``, hashed by name); one with none is refused."""
    if getattr(data, "sha256", None) is not None:
        return data.sha256
    if dataclasses.is_dataclass(data):
        names = [field.name for field in dataclasses.fields(data)]
    else:
        names = sorted(vars(data)) if hasattr(data, "__dict__") else []
    named = [(n, getattr(data, n)) for n in names
             if isinstance(getattr(data, n), torch.Tensor) and n not in ("mean", "std")]
    if not named:
        from nondet.config import ConfigError

        raise ConfigError(
            f"data={type(data).__name__}: data of your own are a nondet.data.Dataset or an object whose "
            "tensors are its attributes (x_train, y_train, x_test, y_test, as in types.SimpleNamespace), "
            f"which env.json's data_sha256 identifies; a {type(data).__name__} has no tensor attribute"
        )
    return _kept(data, "sha256", tensors_sha256(named))


def _kept(data, attribute: str, digest: str) -> str:
    """``digest``, kept on ``data`` as ``attribute`` so that it is computed once per loaded data
    (a frozen or slotted object keeps nothing: hashed again next time)."""
    try:
        setattr(data, attribute, digest)
    except AttributeError:
        pass
    return digest


def test_sha256(data) -> str | None:
    """``test_sha256`` of env.json: the test set's tensors alone (``x_test``, ``y_test``; a text
    corpus's ``test``), so that configurations whose training data differ can still be known to
    share their test examples (``python -m analysis.compare`` pairs examples only then). None
    for data without them. Computed once per loaded dataset."""
    cached = getattr(data, "_test_sha256", None)
    if cached is None:
        named = [(name, getattr(data, name)) for name in ("x_test", "y_test", "test")
                 if isinstance(getattr(data, name, None), torch.Tensor)]
        if not named:
            return None
        cached = _kept(data, "_test_sha256", tensors_sha256(named))
    return cached


def data_identity(data) -> dict:
    """env.json's ``data_sha256`` and (when the data have a test set) ``test_sha256``."""
    identity = {"data_sha256": data_sha256(data)}
    test = test_sha256(data)
    return identity if test is None else {**identity, "test_sha256": test}


def tensors_sha256(named) -> str:
    """SHA-256 of (name, tensor) pairs, in order: each name, shape and dtype, then its bytes."""
    digest = hashlib.sha256()
    for name, value in named:
        digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of a CPU image tensor (N, C, H, W), float32.

    Exact for uint8 (a 256-bin histogram per channel); float64 sums in a fixed order otherwise,
    so the result does not depend on thread count. A constant channel gets std 1 (not 0), so
    normalising it cannot divide by zero.
    """
    n, c = x.shape[0], x.shape[1]
    count = n * x[0, 0].numel()
    means, stds = [], []
    for ch in range(c):
        if x.dtype == torch.uint8:
            hist = torch.zeros(256, dtype=torch.int64)
            for i in range(0, n, chunk):
                hist += torch.bincount(x[i : i + chunk, ch].reshape(-1), minlength=256)
            values = np.arange(256, dtype=np.float64) / 255.0
            weights = hist.numpy().astype(np.float64) / count
            mean = float(np.dot(weights, values))
            var = float(np.dot(weights, (values - mean) ** 2))
        else:
            # Two passes (mean, then squared deviations) in numpy float64: numpy's pairwise sum
            # is single-threaded, so the statistics are the same on every machine.
            total = 0.0
            for i in range(0, n, chunk):
                total += float(x[i : i + chunk, ch].numpy().astype(np.float64).sum())
            mean = total / count
            sq = 0.0
            for i in range(0, n, chunk):
                sq += float(((x[i : i + chunk, ch].numpy().astype(np.float64) - mean) ** 2).sum())
            var = sq / count
        means.append(mean)
        stds.append(math.sqrt(var) if var > 0 else 1.0)
    return torch.tensor(means, dtype=torch.float32), torch.tensor(stds, dtype=torch.float32)


def _first(x: torch.Tensor, y: torch.Tensor, k: Optional[int], key: str, name: str = "the data"):
    """Keep the first k examples (all when k is None or k == N): the smoke-scale presets. More
    than the data hold is refused: the runs would be labelled with a size they never had."""
    if k is None:
        return x, y
    if k < 1:
        raise ValueError(f"dataset.{key}={k}: must be a positive number of examples or null (all)")
    if k > len(x):
        split = "training" if key == "train_size" else "test"
        raise ValueError(f"dataset.{key}={k}: {name} have only {len(x)} {split} examples; "
                         f"use dataset.{key}={len(x)} or fewer, or dataset.{key}=null (all of them)")
    if k == len(x):
        return x, y
    # clone so the full arrays can be freed rather than kept alive by a view
    return x[:k].clone(), y[:k].clone()


# --------------------------------------------------------------------------- synthetic


def _smelu(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    quadratic = (x + beta) ** 2 / (4 * beta)
    return torch.where(x <= -beta, torch.zeros_like(x), torch.where(x >= beta, x, quadratic))


TEACHER_ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "leaky_relu": F.leaky_relu,
    "smelu": _smelu,
    "linear": lambda x: x,
}


def synthetic_generator(data_seed: int, part: str) -> torch.Generator:
    """The CPU generator of one part ("teacher", "train", "test") of the synthetic data."""
    return make_generator(hashed_seed("nondet.data/synthetic", data_seed, part))


def _check_synthetic(cfg: DatasetConfig) -> tuple[int, ...]:
    """Validate the generative parameters; returns the shape of one input."""
    if cfg.image_shape is not None:
        shape = tuple(int(s) for s in cfg.image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"dataset.image_shape={list(cfg.image_shape)}: give [C, H, W], all >= 1")
    else:
        if cfg.input_dim < 1:
            raise ValueError(f"dataset.input_dim={cfg.input_dim}: must be >= 1")
        shape = (cfg.input_dim,)
    if cfg.num_classes < 2:
        raise ValueError(f"dataset.num_classes={cfg.num_classes}: must be >= 2")
    if cfg.teacher_depth < 0 or cfg.teacher_width < 1:
        raise ValueError(
            f"dataset.teacher_depth={cfg.teacher_depth}, teacher_width={cfg.teacher_width}: "
            "need depth >= 0 (0 = a linear teacher) and width >= 1"
        )
    if cfg.teacher_activation not in TEACHER_ACTIVATIONS:
        raise ValueError(
            f"dataset.teacher_activation={cfg.teacher_activation!r}; "
            f"choose one of {sorted(TEACHER_ACTIVATIONS)}"
        )
    if not 0.0 <= cfg.label_noise <= 1.0:
        raise ValueError(f"dataset.label_noise={cfg.label_noise}: a probability in [0, 1]")
    if cfg.imbalance < 0:
        raise ValueError(f"dataset.imbalance={cfg.imbalance}: must be >= 0 (0 = no imbalance)")
    for key in ("train_size", "test_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ValueError(f"dataset.{key}={value}: must be >= 1 or null (the default)")
    return shape


def _load_synthetic(cfg: DatasetConfig):
    shape = _check_synthetic(cfg)
    dim = math.prod(shape)
    act = TEACHER_ACTIVATIONS[cfg.teacher_activation]

    g = synthetic_generator(cfg.data_seed, "teacher")
    weights, fan_in = [], dim
    for width in [cfg.teacher_width] * cfg.teacher_depth + [cfg.num_classes]:
        weights.append(torch.randn(fan_in, width, generator=g, dtype=torch.float64) / math.sqrt(fan_in))
        fan_in = width
    # c / (C - 1) runs from 0 to 1, so the last class's logit is down by imbalance * ln(10)
    bias = -cfg.imbalance * math.log(10.0) * torch.arange(cfg.num_classes, dtype=torch.float64)
    bias = bias / (cfg.num_classes - 1)

    def split(part: str, n: int):
        g = synthetic_generator(cfg.data_seed, part)
        # float64 draws: torch's CPU float32 normal sampler has a separate AVX2 code path,
        # the float64 one is the same scalar code on every CPU, so the data do not depend on it.
        x = torch.randn(n, dim, generator=g, dtype=torch.float64).to(torch.float32)
        h = x.to(torch.float64)
        for w in weights[:-1]:
            h = act(h @ w)
        y = torch.argmax(h @ weights[-1] + bias, dim=1)
        # draw both streams whatever label_noise is, so changing it flips labels and nothing else
        flip = torch.rand(n, generator=g, dtype=torch.float64) < cfg.label_noise
        noise = torch.randint(cfg.num_classes, (n,), generator=g, dtype=torch.int64)
        y = torch.where(flip, noise, y)
        return x.reshape(n, *shape), y

    x_train, y_train = split("train", cfg.train_size or SYNTHETIC_TRAIN_SIZE)
    x_test, y_test = split("test", cfg.test_size or SYNTHETIC_TEST_SIZE)
    return "synthetic", x_train, y_train, x_test, y_test, cfg.num_classes


# --------------------------------------------------------------------------- torchvision


def _torchvision_splits(dataset_cls, cfg: DatasetConfig, error, unreadable, missing: tuple[str, ...]) -> list:
    """The train and test splits of a torchvision dataset; files that are not there raise
    ``error(root, cause)``, whose message says where to get them, and files that are there but
    cannot be read raise ``unreadable(root, cause)``, naming the file (no chained traceback)."""
    root = os.path.expanduser(cfg.root)
    try:
        return [dataset_cls(root, train=train, download=cfg.download and train) for train in (True, False)]
    except (RuntimeError, OSError) as exc:
        # RuntimeError: torchvision's "Dataset not found or corrupted" / "metadata file not found";
        # OSError (URLError): a download attempted without internet.
        if isinstance(exc, OSError) or any(m in str(exc) for m in missing):
            raise error(root, exc) from None
        raise unreadable(root, exc) from None
    except Exception as exc:  # torchvision's parsers assert, or raise what the bytes lead them to
        raise unreadable(root, exc) from None


class DataFileError(ValueError):
    """A dataset's file is there but is not what it should be (malformed, truncated, labels out of
    range): one line naming the file and how to replace it."""


def _one_line(error: BaseException) -> str:
    from nondet.job import one_line  # lazily: nondet.job imports this module

    return one_line(error)


def _check_split(x: torch.Tensor, y: torch.Tensor, image_file: str, label_file: str,
                 shape: tuple[int, ...], dataset: str, fix) -> None:
    """One split of a dataset read from its own files (MNIST, CIFAR-10): images of the dataset's
    shape, one label in 0..9 per image, not empty. A mistake names the file, and ``fix(file)``
    says how to replace it."""
    if tuple(x.shape[1:]) != shape:
        raise DataFileError(f"{image_file}: images of shape {tuple(x.shape[1:])}, but {dataset}'s are {shape}; "
                            f"{fix(image_file)}")
    if len(x) != len(y):
        raise DataFileError(f"{image_file} holds {len(x)} images but {label_file} {len(y)} labels; each image "
                            f"needs its label: {fix(image_file if image_file == label_file else (image_file, label_file))}")
    if len(x) == 0:
        raise DataFileError(f"{image_file}: holds no images; {fix(image_file)}")
    bad = ((y < 0) | (y > 9)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataFileError(f"{label_file}: label {int(y[i])} of example {i}{more} is not a class of {dataset} "
                            f"(0..9); {fix(label_file)}")


CIFAR10_FIX = (f"replace the files with those of a fresh cifar-10-python.tar.gz ({CIFAR10_URL}) unpacked into "
               "dataset.root, or run once with dataset.download=true")


def _cifar10_fix(_files) -> str:
    return CIFAR10_FIX


def _cifar10_error(root: str, cause: Exception) -> DatasetNotFoundError:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = os.path.join(os.path.abspath(root), "cifar-10-batches-py")
    missing = [f for f in CIFAR10_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        state = f"missing: {', '.join(missing)}"
    else:
        md5s = dict(CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])])
        failing = [f for f in CIFAR10_FILES if not check_integrity(os.path.join(folder, f), md5s.get(f))]
        state = f"{', '.join(failing) or 'all present, but they'} fail torchvision's md5 check"
    return DatasetNotFoundError(
        f"CIFAR-10 not found (or corrupted) in {folder} ({state}): get cifar-10-python.tar.gz from "
        f"{CIFAR10_URL} and unpack it into dataset.root={root!r}, or run once with dataset.download=true.\n"
        f"torchvision said: {cause}.\n"
        f"Expected the python-version batches cifar-10-batches-py/data_batch_1 .. data_batch_5, "
        f"test_batch and batches.meta under dataset.root={root!r}.\n"
        f"dataset.download=true works on a machine with internet (or offline, when the official "
        f"cifar-10-python.tar.gz is already in the root: torchvision then only unpacks it).\n"
        f"Point elsewhere with dataset.root=/path/to/dir (the directory that holds cifar-10-batches-py)."
    )


def _cifar10_batch_problem(path: str) -> str | None:
    """What is wrong with one CIFAR-10 batch file (None: nothing torchvision would trip on)."""
    import pickle

    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"])
        labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    except Exception as exc:  # not a pickle, or not a batch: whatever the bytes make pickle raise
        return f"not a CIFAR-10 batch ({_one_line(exc)})"
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        return f"its data have shape {data.shape} and dtype {data.dtype}, not (N, 3072) uint8"
    if len(labels) != len(data):
        return f"it holds {len(data)} images but {len(labels)} labels"
    return None


def _cifar10_unreadable(root: str, cause: Exception) -> DataFileError:
    folder = os.path.join(os.path.abspath(root), "cifar-10-batches-py")
    for name in CIFAR10_FILES[:-1]:  # batches.meta: torchvision reads only its class names
        problem = _cifar10_batch_problem(os.path.join(folder, name))
        if problem:
            return DataFileError(f"{os.path.join(folder, name)}: {problem}; {CIFAR10_FIX}")
    return DataFileError(f"{folder}: torchvision cannot read the CIFAR-10 batches ({_one_line(cause)}); {CIFAR10_FIX}")


def _load_cifar10(cfg: DatasetConfig):
    from torchvision.datasets import CIFAR10  # lazily: torchvision is slow to import

    splits = _torchvision_splits(CIFAR10, cfg, _cifar10_error, _cifar10_unreadable, ("not found",))
    folder = os.path.join(os.path.abspath(os.path.expanduser(cfg.root)), "cifar-10-batches-py")
    out = []
    for ds, files in zip(splits, ("data_batch_1 .. data_batch_5", "test_batch")):
        # .data is (N, 32, 32, 3) HWC uint8; the models want CHW
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor(ds.targets, dtype=torch.int64)
        where = os.path.join(folder, files)
        _check_split(x, y, where, where, (3, 32, 32), "CIFAR-10", _cifar10_fix)
        out += [x, y]
    return ("cifar10", *out, 10)


def _mnist_fix(files) -> str:
    """How to replace an MNIST file (or a pair of them: ``(images, labels)``)."""
    names = [os.path.basename(f) for f in ((files,) if isinstance(files, str) else files)]
    which = "it with the official file" if len(names) == 1 else "them with the official files"
    return (f"replace {which} (gunzip {' and '.join(n + '.gz' for n in names)} from {MNIST_URL}), or delete "
            f"{'it' if len(names) == 1 else 'them'} and run once with dataset.download=true")


def _mnist_error(root: str, cause: Exception) -> DatasetNotFoundError:
    folder = os.path.join(os.path.abspath(root), "MNIST", "raw")
    missing = [f for f in MNIST_FILES if not os.path.isfile(os.path.join(folder, f))]
    return DatasetNotFoundError(
        f"MNIST not found in {folder} (missing: {', '.join(missing) or 'none'}): get the .gz files from "
        f"{MNIST_URL} and gunzip them there, or run once with dataset.download=true.\n"
        f"torchvision said: {cause}.\n"
        f"Expected the uncompressed idx files MNIST/raw/{', '.join(MNIST_FILES)} under "
        f"dataset.root={root!r}; torchvision reads only the uncompressed files (also at "
        f"http://yann.lecun.com/exdb/mnist/). dataset.download=true works on a machine with internet, or "
        f"offline when the official .gz files are already in MNIST/raw: torchvision then only unpacks them.\n"
        f"Point elsewhere with dataset.root=/path/to/dir (the directory that holds MNIST/)."
    )


def _idx_problem(path: str) -> str | None:
    """What is wrong with one MNIST idx file, as torchvision reads it (None: nothing)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    try:
        (read_image_file if "-images-" in os.path.basename(path) else read_label_file)(path)
    except AssertionError:  # torchvision's header checks carry no message
        return "its header is not that of an idx file of bytes (another file, or still gzipped?)"
    except RuntimeError as exc:  # torch's view: the bytes do not fill the header's shape
        return f"its length does not match the shape its header gives ({exc}): truncated or padded"
    except Exception as exc:
        return f"torchvision cannot read it ({_one_line(exc)})"
    return None


def _mnist_unreadable(root: str, cause: Exception) -> DataFileError:
    folder = os.path.join(os.path.abspath(root), "MNIST", "raw")
    for name in MNIST_FILES:
        problem = _idx_problem(os.path.join(folder, name))
        if problem:
            return DataFileError(f"{os.path.join(folder, name)}: {problem}; {_mnist_fix(name)}")
    return DataFileError(f"{folder}: torchvision cannot read the MNIST files ({_one_line(cause)}); "
                         f"replace them with the official ones from {MNIST_URL}, or delete them and run once "
                         "with dataset.download=true")


def _load_mnist(cfg: DatasetConfig):
    from torchvision.datasets import MNIST  # lazily: torchvision is slow to import

    splits = _torchvision_splits(MNIST, cfg, _mnist_error, _mnist_unreadable, ("not found", "downloading"))
    folder = os.path.join(os.path.abspath(os.path.expanduser(cfg.root)), "MNIST", "raw")
    out = []
    for ds, prefix in zip(splits, ("train", "t10k")):
        x = ds.data.to(torch.uint8).unsqueeze(1).contiguous()  # (N, 28, 28) -> (N, 1, 28, 28)
        y = ds.targets.to(torch.int64)
        images, labels = (os.path.join(folder, f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
        _check_split(x, y, images, labels, (1, 28, 28), "MNIST", _mnist_fix)
        out += [x, y]
    return ("mnist", *out, 10)


# --------------------------------------------------------------------------- npz


def _load_npz(cfg: DatasetConfig):
    """``python launch.py dataset=npz dataset.path=my.npz``: arrays from np.savez(...).

    x: (N, D) features (any real dtype, stored as float32) or (N, C, H, W) images (uint8 kept as
    uint8, anything else float32). y: integer labels 0..K-1 with every class present in y_train;
    y_test may miss classes but must not exceed K-1. num_classes = K = max(y_train) + 1, taken
    from the whole file before train_size/test_size keep a prefix.
    """
    if not cfg.path:
        raise ValueError(
            "dataset=npz needs dataset.path=/path/to/data.npz (x_train, y_train, x_test, y_test)"
        )
    path = os.path.expanduser(cfg.path)
    if not os.path.isfile(path):
        raise ValueError(f"dataset.path={cfg.path!r}: no such file ({os.path.abspath(path)})")
    with open(path, "rb") as f:  # hashed as read: the runs record the bytes they trained on
        raw = f.read()
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        # ValueError: neither zip nor .npy, so numpy took it for a pickle and refused it
        raise ValueError(f"{path}: not a readable .npz archive (write it with np.savez): {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: a single .npy array; expected an .npz archive (np.savez) with {list(NPZ_KEYS)}"
        )
    with archive:
        found = sorted(archive.files)
        missing = [k for k in NPZ_KEYS if k not in found]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing}; found {found}. Expected {list(NPZ_KEYS)}")
        try:
            arrays = {k: archive[k] for k in NPZ_KEYS}
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}; save plain numeric arrays (object arrays are refused)") from exc

    return ("npz", *checked_tensors(arrays, path), sha256)


def checked_tensors(arrays: dict, path: str) -> tuple:
    """``arrays`` (x_train, y_train, x_test, y_test as numpy arrays) checked and converted:
    (x_train, y_train, x_test, y_test, num_classes) as tensors. Any mistake raises one line
    that starts with ``path`` (the file, or what the data came from). The npz rules of
    ``_load_npz``, shared by ``dataset=custom`` and ``dataset=imagefolder``."""
    xs, ys = [], []
    for split in ("train", "test"):
        x, y = _channels_first(arrays[f"x_{split}"], f"{path}: x_{split}"), arrays[f"y_{split}"]
        if x.ndim not in (2, 4):
            raise ValueError(
                f"{path}: x_{split} has shape {x.shape}; expected (N, D) features or (N, C, H, W) images"
            )
        if len(x) == 0:
            raise ValueError(f"{path}: x_{split} is empty")
        if y.ndim != 1:
            raise ValueError(
                f"{path}: y_{split} has shape {y.shape}; expected (N,) labels (try y.reshape(-1))"
            )
        if len(x) != len(y):
            raise ValueError(f"{path}: len(x_{split})={len(x)} but len(y_{split})={len(y)}; they must match")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or x.dtype == bool:
            raise ValueError(f"{path}: x_{split} has dtype {x.dtype}; expected a real number dtype")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"{path}: y_{split} has dtype {y.dtype}; labels must be integers 0..K-1 (y.astype(np.int64))"
            )
        if y.min() < 0:
            raise ValueError(f"{path}: y_{split} has negative labels (min {y.min()}); labels must be 0..K-1")
        xs.append(x)
        ys.append(y)

    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise ValueError(
            f"{path}: x_train examples have shape {xs[0].shape[1:]} but x_test examples {xs[1].shape[1:]}; "
            "they must match"
        )
    num_classes = int(ys[0].max()) + 1
    absent = sorted(set(range(num_classes)) - set(np.unique(ys[0]).tolist()))
    if absent:
        raise ValueError(
            f"{path}: labels must be contiguous 0..{num_classes - 1} with every class in y_train; classes "
            f"{absent[:10]}{' ...' if len(absent) > 10 else ''} never occur in y_train "
            "(remap with np.unique(y, return_inverse=True))"
        )
    if ys[1].max() >= num_classes:
        raise ValueError(
            f"{path}: y_test has label {int(ys[1].max())} but y_train only has classes 0..{num_classes - 1}; "
            "a class the model never trains on cannot be predicted"
        )

    out = []
    for split, x, y in zip(("train", "test"), xs, ys):
        if x.ndim == 4 and x.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(x))
        else:
            if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                raise ValueError(f"{path}: x_{split} contains NaN or inf")
            with np.errstate(over="ignore"):
                t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if not torch.isfinite(t).all():
                raise ValueError(f"{path}: x_{split} has values beyond float32's range (about 3.4e38)")
        out.append(t)
        out.append(torch.from_numpy(y.astype(np.int64)))
    return (*out, num_classes)


IMAGE_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA


def _channels_first(x: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W, C) images, as PIL, matplotlib and TensorFlow store them, moved to (N, C, H, W):
    taken as they are, crops and flips would act on the wrong axes."""
    if x.ndim == 4 and x.shape[3] in IMAGE_CHANNELS and x.shape[1] not in IMAGE_CHANNELS:
        log.warning("%s has shape %s: channel-last images, used as (N, C, H, W) = %s",
                    name, x.shape, (x.shape[0], x.shape[3], *x.shape[1:3]))
        return np.moveaxis(x, 3, 1)
    return x
