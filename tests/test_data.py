"""nondet.data: the synthetic process, torchvision's on-disk formats, npz checks, normalize, to().

    python -m pytest tests/test_data.py
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from nondet.config import DatasetConfig
from nondet.data import (
    Dataset,
    DataFileError,
    DatasetNotFoundError,
    TEACHER_ACTIVATIONS,
    channel_stats,
    data_identity,
    load_dataset,
    synthetic_generator,
)


def small(**kw) -> DatasetConfig:
    kw.setdefault("train_size", 512)
    kw.setdefault("test_size", 256)
    return DatasetConfig(**kw)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def same(a: Dataset, b: Dataset) -> bool:
    keys = ("x_train", "y_train", "x_test", "y_test")
    return all(torch.equal(bits(getattr(a, k)), bits(getattr(b, k))) for k in keys)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_defaults_shapes_and_dtypes():
    d = load_dataset(DatasetConfig())
    assert d.name == "synthetic" and d.num_classes == 10
    assert d.x_train.shape == (4096, 32) and d.x_train.dtype == torch.float32
    assert d.y_train.shape == (4096,) and d.y_train.dtype == torch.int64
    assert d.x_test.shape == (2048, 32) and d.y_test.shape == (2048,)
    assert not d.is_image and d.input_shape == (32,)
    assert d.mean is None and d.std is None
    assert 0 <= int(d.y_train.min()) and int(d.y_train.max()) < 10
    # every class occurs, and the inputs are O(1)
    assert torch.bincount(d.y_train, minlength=10).min() > 0
    assert abs(float(d.x_train.mean())) < 0.05 and abs(float(d.x_train.std()) - 1) < 0.05


def test_synthetic_is_bitwise_repeatable_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = load_dataset(small())
    b = load_dataset(small())
    assert torch.equal(torch.get_rng_state(), state)
    assert same(a, b)


def test_synthetic_changes_with_data_seed():
    a, b = load_dataset(small(data_seed=0)), load_dataset(small(data_seed=1))
    assert not torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.y_train, b.y_train)


def test_synthetic_test_split_does_not_depend_on_train_size():
    a, b = load_dataset(small(train_size=100)), load_dataset(small(train_size=300))
    assert len(a.x_train) == 100 and len(b.x_train) == 300
    assert torch.equal(bits(a.x_test), bits(b.x_test)) and torch.equal(a.y_test, b.y_test)


def test_env_json_names_the_test_set_apart_from_the_training_data():
    """analysis.compare pairs test examples only between runs whose test sets are one: another
    train_size keeps the test set, another data_seed does not."""
    base, more, other = (data_identity(load_dataset(small(**kw))) for kw in ({}, {"train_size": 300}, {"data_seed": 1}))
    assert base["data_sha256"] != more["data_sha256"] and base["test_sha256"] == more["test_sha256"]
    assert base["test_sha256"] != other["test_sha256"]


def test_synthetic_matches_the_documented_process():
    """Re-derive the data from the module docstring's five steps, exactly."""
    cfg = small(train_size=64, test_size=16, input_dim=5, num_classes=4, teacher_width=7, teacher_depth=2,
                imbalance=0.3, label_noise=0.25, data_seed=3)
    d = load_dataset(cfg)
    g = synthetic_generator(3, "teacher")
    ws, fan_in = [], 5
    for width in (7, 7, 4):
        ws.append(torch.randn(fan_in, width, generator=g, dtype=torch.float64) / math.sqrt(fan_in))
        fan_in = width
    bias = torch.tensor([-0.3 * math.log(10) * c / 3 for c in range(4)], dtype=torch.float64)
    for part, n, x_got, y_got in (("train", 64, d.x_train, d.y_train), ("test", 16, d.x_test, d.y_test)):
        g = synthetic_generator(3, part)
        x = torch.randn(n, 5, generator=g, dtype=torch.float64).float()
        logits = torch.tanh(torch.tanh(x.double() @ ws[0]) @ ws[1]) @ ws[2] + bias
        flip = torch.rand(n, generator=g, dtype=torch.float64) < 0.25
        noise = torch.randint(4, (n,), generator=g)
        assert torch.equal(bits(x_got), bits(x))
        assert torch.equal(y_got, torch.where(flip, noise, logits.argmax(1)))


def test_label_noise_one_gives_uniform_labels():
    d = load_dataset(DatasetConfig(label_noise=1.0))
    counts = torch.bincount(d.y_train, minlength=10).double()
    # 4096 uniform draws over 10 classes: 409.6 each, sd about 19
    assert (counts - 409.6).abs().max() < 80


def test_label_noise_flips_the_stated_fraction_and_nothing_else():
    clean, noisy = load_dataset(DatasetConfig()), load_dataset(DatasetConfig(label_noise=0.3))
    assert torch.equal(bits(clean.x_train), bits(noisy.x_train))
    changed = (clean.y_train != noisy.y_train).double().mean().item()
    # a replaced label redraws its own class 1 time in 10
    assert abs(changed - 0.3 * 0.9) < 0.03


def test_imbalance_favours_class_zero():
    fractions = []
    for imbalance in (0.0, 0.25, 0.5):
        d = load_dataset(DatasetConfig(imbalance=imbalance))
        assert torch.equal(bits(d.x_train), bits(load_dataset(DatasetConfig()).x_train))
        counts = torch.bincount(d.y_train, minlength=10)
        fractions.append((counts[0].item(), counts[-1].item()))
    firsts, lasts = zip(*fractions)
    assert firsts[0] < firsts[1] < firsts[2] and lasts[0] > lasts[1] > lasts[2]
    counts = torch.bincount(load_dataset(DatasetConfig(imbalance=0.5)).y_train, minlength=10)
    assert counts.argmax().item() == 0


def test_synthetic_image_shape():
    d = load_dataset(small(image_shape=[3, 8, 8]))
    assert d.x_train.shape == (512, 3, 8, 8) and d.x_train.dtype == torch.float32
    assert d.is_image and d.input_shape == (3, 8, 8)
    assert d.mean.shape == (3,) and d.std.shape == (3,)
    assert d.mean.abs().max() < 0.05 and (d.std - 1).abs().max() < 0.05
    z = d.normalize(d.x_train)
    assert z.dtype == torch.float32 and z.shape == d.x_train.shape
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-5


@pytest.mark.parametrize("activation", sorted(TEACHER_ACTIVATIONS))
def test_every_teacher_activation(activation):
    d = load_dataset(small(teacher_activation=activation))
    assert len(torch.unique(d.y_train)) >= 3


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"teacher_activation": "swish"}, "teacher_activation"),
        ({"label_noise": 1.5}, "label_noise"),
        ({"num_classes": 1}, "num_classes"),
        ({"image_shape": [8, 8]}, "image_shape"),
        ({"imbalance": -1.0}, "imbalance"),
        ({"train_size": 0}, "train_size"),
    ],
)
def test_synthetic_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(DatasetConfig(**kw))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset(DatasetConfig(name="imagenet"))


# --------------------------------------------------------------------------- normalize, stats, to()


def test_normalize_uint8_images_exactly():
    x = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).expand(2, 2, 1, 1).contiguous()
    d = Dataset("t", x, torch.zeros(2, dtype=torch.int64), x, torch.zeros(2, dtype=torch.int64), 1,
                mean=torch.tensor([0.5, 0.25]), std=torch.tensor([0.25, 0.5]))
    z = d.normalize(x)
    assert z.dtype == torch.float32
    assert z[:, 0].flatten().tolist() == [-2.0, 2.0]
    assert z[:, 1].flatten().tolist() == [-0.5, 1.5]


def test_normalize_features_is_identity():
    x = torch.randn(4, 3)
    y = torch.zeros(4, dtype=torch.int64)
    d = Dataset("t", x, y, x, y, 1, None, None)
    assert torch.equal(d.normalize(x), x) and d.normalize(x).dtype == torch.float32


def test_channel_stats_uint8_exact_and_constant_channel():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 4, 5), dtype=np.uint8)
    x[:, 2] = 7  # constant channel: std 1, not 0
    mean, std = channel_stats(torch.from_numpy(x), chunk=16)
    ref = x.astype(np.float64) / 255
    assert mean.dtype == torch.float32 and std.dtype == torch.float32
    assert torch.equal(mean, torch.tensor(ref.mean(axis=(0, 2, 3)), dtype=torch.float32))
    assert torch.allclose(std[:2], torch.tensor(ref.std(axis=(0, 2, 3))[:2], dtype=torch.float32))
    assert std[2].item() == 1.0


def test_channel_stats_float_does_not_depend_on_chunking():
    x = torch.randn(37, 2, 3, 3) * 5 + 2
    a, b = channel_stats(x, chunk=4), channel_stats(x, chunk=4096)
    ref = x.double()
    assert torch.allclose(a[0], ref.mean(dim=(0, 2, 3)).float()) and torch.allclose(a[1], b[1])
    assert torch.allclose(a[1], ref.std(dim=(0, 2, 3), unbiased=False).float())


def test_to_moves_every_tensor():
    d = load_dataset(small(image_shape=[1, 4, 4]), device="meta")
    for t in (d.x_train, d.y_train, d.x_test, d.y_test, d.mean, d.std):
        assert t.device.type == "meta"
    back = load_dataset(small(image_shape=[1, 4, 4])).to("meta")
    assert back.x_train.device.type == "meta" and back.normalize(back.x_train[:2]).device.type == "meta"
    feats = load_dataset(small()).to("meta")
    assert feats.mean is None and feats.x_train.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_keeps_values():
    cpu = load_dataset(small(image_shape=[3, 4, 4]))
    gpu = load_dataset(small(image_shape=[3, 4, 4]), device="cuda")
    assert gpu.x_train.is_cuda and gpu.mean.is_cuda
    assert same(cpu, gpu.to("cpu"))


# --------------------------------------------------------------------------- CIFAR-10


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes the way Python 2 pickled its ``str`` (BINSTRING opcodes), as in the real
    CIFAR-10 files: loaded with encoding="latin1" (torchvision) they become str, with
    encoding="bytes" (the CIFAR web page's snippet) they stay bytes (b'data', b'labels')."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump_py2(obj, path):
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
               b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar10(root, per_batch=3, n_test=4, seed=0):
    """Tiny CIFAR-10 in the on-disk format; returns (train images, train labels, test images,
    test labels) as the (N, 3, 32, 32) arrays the rows encode."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    images, labels = [], []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        img = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, size=n)]
        # a row is the R plane, then G, then B, each 32x32 row-major: exactly img.reshape(n, 3072)
        batch = {b"batch_label": name.encode(), b"labels": lab, b"data": img.reshape(n, 3072),
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        _dump_py2(batch, os.path.join(folder, name))
        images.append(img)
        labels.append(lab)
    _dump_py2({b"label_names": LABEL_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072},
              os.path.join(folder, "batches.meta"))
    return np.concatenate(images[:5]), np.concatenate(labels[:5]), images[5], np.array(labels[5])


@pytest.fixture
def skip_md5(monkeypatch):
    """torchvision md5-checks every batch (CIFAR10._check_integrity) and, separately, batches.meta
    (CIFAR10._load_meta); both go through cifar.check_integrity, so only the md5 is skipped."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_fake_cifar_batches_are_in_the_real_pickle_format(tmp_path):
    write_cifar10(str(tmp_path))
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")
    with open(path, "rb") as f:
        as_latin1 = pickle.load(f, encoding="latin1")
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert set(as_latin1) == {"batch_label", "labels", "data", "filenames"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (3, 3072)


def test_cifar10_round_trips_pixels_and_labels(tmp_path, skip_md5):
    x_train, y_train, x_test, y_test = write_cifar10(str(tmp_path))
    d = load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)))
    assert d.name == "cifar10" and d.num_classes == 10 and d.input_shape == (3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert torch.equal(d.x_train, torch.from_numpy(x_train)) and d.y_train.tolist() == y_train.tolist()
    assert torch.equal(d.x_test, torch.from_numpy(x_test)) and d.y_test.tolist() == y_test.tolist()
    # channel layout, from the raw row itself: bytes 1024..2047 are the green plane
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        row = pickle.load(f, encoding="latin1")["data"][2]
    assert torch.equal(d.x_train[2, 1], torch.from_numpy(row[1024:2048].reshape(32, 32)))
    assert d.x_train[2, 2, 5, 7].item() == row[2048 + 5 * 32 + 7]
    ref = x_train.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255
    assert torch.allclose(d.mean, torch.tensor(ref.mean(axis=1), dtype=torch.float32))
    assert torch.allclose(d.std, torch.tensor(ref.std(axis=1), dtype=torch.float32))


def test_cifar10_keeps_the_first_k(tmp_path, skip_md5):
    x_train, y_train, x_test, _ = write_cifar10(str(tmp_path))
    d = load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path), train_size=7, test_size=2))
    assert torch.equal(d.x_train, torch.from_numpy(x_train[:7]))
    assert d.y_train.tolist() == y_train[:7].tolist()
    assert torch.equal(d.x_test, torch.from_numpy(x_test[:2]))


def test_cifar10_missing_files_say_where_and_what(tmp_path):
    root = str(tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(DatasetConfig(name="cifar10", root=root))
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for part in (os.path.join(root, "cifar-10-batches-py"), "data_batch_1", "data_batch_5", "test_batch",
                 "https://www.cs.toronto.edu/~kriz/cifar.html", "dataset.download=true", "dataset.root="):
        assert part in msg


def test_cifar10_wrong_checksums_are_reported(tmp_path):
    write_cifar10(str(tmp_path))  # our files cannot match the official md5s
    with pytest.raises(DatasetNotFoundError, match="md5"):
        load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)))


# --------------------------------------------------------------------------- MNIST


def _write_idx(path, array: np.ndarray, magic: int):
    with open(path, "wb") as f:
        f.write(struct.pack(">i", magic))
        f.write(struct.pack(f">{array.ndim}i", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, n_train=6, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), img, 2051)
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), lab, 2049)
        out += [img, lab]
    return out


def test_mnist_reads_idx_files(tmp_path):
    x_train, y_train, x_test, y_test = write_mnist(str(tmp_path))
    d = load_dataset(DatasetConfig(name="mnist", root=str(tmp_path)))
    assert d.name == "mnist" and d.num_classes == 10 and d.input_shape == (1, 28, 28)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert torch.equal(d.x_train[:, 0], torch.from_numpy(x_train)) and d.y_train.tolist() == y_train.tolist()
    assert torch.equal(d.x_test[:, 0], torch.from_numpy(x_test)) and d.y_test.tolist() == y_test.tolist()
    assert d.mean.shape == (1,)
    assert abs(d.mean.item() - x_train.mean() / 255) < 1e-6


def test_mnist_missing_files_say_where_and_what(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(DatasetConfig(name="mnist", root=str(tmp_path)))
    msg = str(info.value)
    for part in (os.path.join(str(tmp_path), "MNIST", "raw"), "train-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte", "dataset.download=true", "dataset.root="):
        assert part in msg


def _refusal(cfg: DatasetConfig, error=DataFileError) -> str:
    with pytest.raises(error) as info:
        load_dataset(cfg)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_malformed_mnist_files_are_one_line_naming_the_file_and_the_fix(tmp_path):
    """torchvision asserts on a bad header and reshapes without saying which file; the labels and
    the image counts it never checks (a label of 200 trained, then failed; 200 images with 150
    labels trained silently on 150)."""
    def corrupted(name, damage):
        root = tmp_path / name
        write_mnist(str(root), n_train=12, n_test=6)
        raw = root / "MNIST" / "raw"
        damage(raw)
        return DatasetConfig(name="mnist", root=str(root)), raw

    def idx(raw, file, array, magic):
        _write_idx(str(raw / file), np.asarray(array), magic)

    cases = [
        ("garbage", lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(b"garbage\n"),
         "train-labels-idx1-ubyte", "its header is not that of an idx file"),
        ("truncated", lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(
            (raw / "t10k-images-idx3-ubyte").read_bytes()[:-100]), "t10k-images-idx3-ubyte", "truncated or padded"),
        ("label", lambda raw: idx(raw, "train-labels-idx1-ubyte", [1, 2, 200] + [3] * 9, 2049),
         "train-labels-idx1-ubyte", "label 200 of example 2 is not a class of MNIST (0..9)"),
        ("fewer images", lambda raw: idx(raw, "t10k-images-idx3-ubyte", np.zeros((5, 28, 28)), 2051),
         "t10k-images-idx3-ubyte", "holds 5 images but"),
        ("fewer labels", lambda raw: idx(raw, "train-labels-idx1-ubyte", [1] * 9, 2049),
         "train-images-idx3-ubyte", "holds 12 images but"),
        ("shape", lambda raw: idx(raw, "train-images-idx3-ubyte", np.zeros((12, 20, 20)), 2051),
         "train-images-idx3-ubyte", "images of shape (1, 20, 20), but MNIST's are (1, 28, 28)"),
    ]
    for name, damage, file, why in cases:
        cfg, raw = corrupted(name, damage)
        text = _refusal(cfg)
        assert text.startswith(str(raw / file)) and why in text, (name, text)
        assert f"{file}.gz" in text and "dataset.download=true" in text, (name, text)


def test_malformed_cifar10_files_are_one_line_naming_the_file(tmp_path, skip_md5):
    write_cifar10(str(tmp_path / "a"))
    folder = tmp_path / "a" / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(b"garbage")
    text = _refusal(DatasetConfig(name="cifar10", root=str(tmp_path / "a")))
    assert text.startswith(f"{folder / 'data_batch_2'}: not a CIFAR-10 batch") and "dataset.download=true" in text
    write_cifar10(str(tmp_path / "b"))
    folder = tmp_path / "b" / "cifar-10-batches-py"
    _dump_py2({b"batch_label": b"test", b"labels": [0, 11, 2, 3], b"data": np.zeros((4, 3072), np.uint8),
               b"filenames": [b"a.png"] * 4}, str(folder / "test_batch"))
    text = _refusal(DatasetConfig(name="cifar10", root=str(tmp_path / "b")))
    assert text.startswith(f"{folder / 'test_batch'}: label 11 of example 1 is not a class of CIFAR-10 (0..9)")


def test_cifar10_files_failing_their_md5_are_named_with_the_fix_in_the_first_line(tmp_path):
    write_cifar10(str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)))
    first = str(info.value).splitlines()[0]
    assert "data_batch_1, data_batch_2" in first and "md5" in first and "dataset.download=true" in first


def test_a_size_beyond_the_data_is_refused_naming_the_key_and_the_count(tmp_path):
    """The data were silently clamped and the row labelled with the size asked for."""
    write_mnist(str(tmp_path), n_train=12, n_test=6)
    text = _refusal(DatasetConfig(name="mnist", root=str(tmp_path), test_size=500), ValueError)
    assert text.startswith("dataset.test_size=500: dataset=mnist have only 6 test examples")
    assert "dataset.test_size=null" in text
    text = _refusal(DatasetConfig(name="npz", path=save(tmp_path, good_arrays()), train_size=21), ValueError)
    assert text.startswith("dataset.train_size=21: dataset=npz have only 20 training examples")
    d = load_dataset(DatasetConfig(name="mnist", root=str(tmp_path), train_size=12, test_size=6))
    assert len(d.x_train) == 12 and len(d.x_test) == 6  # all of them: not a refusal


# --------------------------------------------------------------------------- npz


def good_arrays(images=False, dtype=np.float64):
    rng = np.random.default_rng(0)
    shape = (3, 4, 4) if images else (5,)
    if dtype == np.uint8:
        x = rng.integers(0, 256, size=(30, *shape), dtype=np.uint8)
    else:
        x = rng.normal(size=(30, *shape)).astype(dtype)
    y = np.tile(np.arange(3, dtype=np.int32), 10)
    return {"x_train": x[:20], "y_train": y[:20], "x_test": x[20:], "y_test": y[20:]}


def save(tmp_path, arrays, name="d.npz"):
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def npz(path, **kw):
    return load_dataset(DatasetConfig(name="npz", path=path, **kw))


def test_npz_features(tmp_path):
    a = good_arrays()
    d = npz(save(tmp_path, a))
    assert d.name == "npz" and d.num_classes == 3 and not d.is_image and d.mean is None
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert torch.equal(d.x_train, torch.from_numpy(a["x_train"].astype(np.float32)))
    assert d.y_test.tolist() == a["y_test"].tolist()


def test_npz_uint8_images_stay_uint8(tmp_path):
    a = good_arrays(images=True, dtype=np.uint8)
    d = npz(save(tmp_path, a), train_size=8, test_size=10)
    assert d.is_image and d.x_train.dtype == torch.uint8 and d.input_shape == (3, 4, 4)
    assert torch.equal(d.x_train, torch.from_numpy(a["x_train"][:8])) and len(d.x_test) == 10
    ref = a["x_train"][:8].astype(np.float64) / 255
    assert torch.allclose(d.mean, torch.tensor(ref.mean(axis=(0, 2, 3)), dtype=torch.float32))
    assert d.num_classes == 3  # from the whole file, not the kept prefix


def test_npz_float_images(tmp_path):
    d = npz(save(tmp_path, good_arrays(images=True, dtype=np.float32)))
    assert d.x_train.dtype == torch.float32 and d.is_image and d.std.shape == (3,)


def _with(**changes):
    a = good_arrays()
    a.update(changes)
    return {k: v for k, v in a.items() if v is not None}


@pytest.mark.parametrize(
    "arrays, match",
    [
        (_with(y_test=None), r"missing key\(s\) \['y_test'\]; found \['x_test', 'x_train', 'y_train'\]"),
        (_with(x_train=np.zeros((20, 5, 2))), r"x_train has shape \(20, 5, 2\); expected \(N, D\)"),
        (_with(x_test=np.zeros((10, 6))), r"x_train examples have shape \(5,\) but x_test examples \(6,\)"),
        (_with(y_train=np.zeros(19, dtype=np.int64)), r"len\(x_train\)=20 but len\(y_train\)=19"),
        (_with(y_train=np.zeros(20, dtype=np.float32)), "y_train has dtype float32; labels must be integers"),
        (_with(y_test=np.full(10, -1)), "y_test has negative labels"),
        (_with(y_train=np.tile([0, 2], 10)), r"contiguous 0..2 .* classes \[1\] never occur in y_train"),
        (_with(y_test=np.full(10, 3)), r"y_test has label 3 but y_train only has classes 0..2"),
        (_with(y_train=np.zeros((20, 1), dtype=np.int64)), r"y_train has shape \(20, 1\); expected \(N,\)"),
        (_with(x_train=np.full((20, 5), np.nan)), "x_train contains NaN or inf"),
        (_with(x_test=np.full((10, 5), np.inf)), "x_test contains NaN or inf"),
        (_with(x_test=np.full((10, 5), 1e300)), "x_test has values beyond float32's range"),
        (_with(x_train=np.zeros((20, 5), dtype=bool)), "x_train has dtype bool"),
        (_with(x_train=np.zeros((0, 5)), y_train=np.zeros(0, dtype=np.int64)), "x_train is empty"),
    ],
)
def test_npz_bad_inputs(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match):
        npz(save(tmp_path, arrays))


def test_npz_path_unset_or_missing(tmp_path):
    with pytest.raises(ValueError, match="needs dataset.path="):
        npz(None)
    with pytest.raises(ValueError, match="no such file"):
        npz(str(tmp_path / "absent.npz"))


def test_npz_not_an_archive(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        npz(str(tmp_path / "one.npy"))
    (tmp_path / "junk.npz").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="not a readable .npz archive"):
        npz(str(tmp_path / "junk.npz"))
    path = save(tmp_path, _with(x_train=np.array([object()] * 20, dtype=object)), "obj.npz")
    with pytest.raises(ValueError, match="object arrays are refused"):
        npz(path)


def test_hydra_structured_config_works():
    """launch.py passes an OmegaConf node, not the dataclass."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(small(image_shape=[1, 4, 4], train_size=10, test_size=5))
    assert same(load_dataset(cfg), load_dataset(small(image_shape=[1, 4, 4], train_size=10, test_size=5)))


def test_dataset_is_a_dataclass_with_the_agreed_fields():
    names = [f.name for f in dataclasses.fields(Dataset)]
    assert names == ["name", "x_train", "y_train", "x_test", "y_test", "num_classes", "mean", "std",
                     "sha256"]


def test_a_checkpoint_is_not_resumed_on_mnist_files_rewritten_since(tmp_path, make_config, monkeypatch):
    """torchvision checks only that MNIST's files exist: a checkpoint trained on other files is
    refused by its env.json ``data_sha256`` instead of resumed on the new ones."""
    from omegaconf import OmegaConf

    from conftest import kill_after_epoch
    from nondet import job, records
    from nondet.config import ConfigError

    root = tmp_path / "data"
    write_mnist(str(root), n_train=32, n_test=8)
    config = make_config("dataset=mnist", f"dataset.root={root}", "epochs=3", "source=init")
    directory = records.run_dir(config)
    undo = kill_after_epoch(monkeypatch, 2)  # its checkpoint: epoch 1
    assert job.run_job(OmegaConf.create(config))["failed"] == [str(directory)]
    undo()
    for name in os.listdir(root / "MNIST" / "raw"):
        os.remove(root / "MNIST" / "raw" / name)
    os.rmdir(root / "MNIST" / "raw")
    write_mnist(str(root), n_train=32, n_test=8, seed=1)
    monkeypatch.setattr(job, "_DATA_CACHE", {})  # a relaunch: a new process reads the files again
    with pytest.raises(ConfigError, match=r"r0000/checkpoint.pt was trained on other data than dataset.root=.* "
                                          r"holds now .*put the data back to resume it, or delete the checkpoint"):
        job.run_job(OmegaConf.create(config))
    assert (directory / records.CHECKPOINT_FILE).exists()
