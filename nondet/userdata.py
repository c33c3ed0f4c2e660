"""Your own data: a function of yours (``dataset=custom``) or a directory of images
(``dataset=imagefolder``), loaded whole, checked and identified by content like an npz file.

    python launch.py dataset=custom dataset._target_=my_pkg.data.load +dataset.n=1000
    python launch.py dataset=imagefolder dataset.root=DIR dataset.image_size=32

``dataset=custom``: nondet imports ``_target_`` (from PYTHONPATH or the current directory) and
calls it with the keys you add (``+dataset.n=1000`` gives ``n=1000``) and the keys of nondet's
own dataset node that its signature names (``dataset.path=big.npz`` gives ``path=...``; one you
leave unset is your default: ``nondet.usermodel.target_arguments``). It returns the train and test data as one of

- ``(x_train, y_train, x_test, y_test)`` (tensors or numpy arrays), or a dict with those keys;
- ``(train, test)``, each an ``(x, y)`` pair or an in-memory ``torch.utils.data.Dataset`` of
  ``(x, y)`` items (x a tensor, an array or a PIL image; y an integer), which nondet stacks.

x is ``(N, D)`` features or ``(N, C, H, W)`` images (uint8 kept as uint8, anything else float32);
y holds the labels 0..K-1. ``dataset=imagefolder`` reads torchvision's ``ImageFolder`` layout,
``DIR/train/<class>/*.png`` and ``DIR/test/<class>/...`` (any format PIL reads), as RGB resized
to ``image_size`` x ``image_size``; a class is numbered by its place among the train folders.

Both go through the checks of ``dataset=npz`` (shapes, labels, NaN: ``nondet.data.checked_tensors``)
and both are identified by content: ``dataset.sha256`` (part of the runs' identity) is the SHA-256
of the tensors loaded, so changed data name new runs instead of pooling with the old ones.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np
import torch

from nondet.data import NPZ_KEYS, checked_tensors, tensors_sha256
from nondet.usermodel import call_target, locate_target, target_arguments

CONTENT_IDENTIFIED = ("custom", "imagefolder")

# The last data loaded, by its configuration: naming the runs of a sweep (``fingerprint``) and
# loading them (``load``) call the user's code once.
_LOADED: dict[str, tuple] = {}


def _key(cfg) -> str:
    node = {k: v for k, v in dict(cfg).items() if k not in ("sha256", "train_size", "test_size")}
    return json.dumps(node, sort_keys=True, default=str)


def load(cfg) -> tuple:
    """(name, x_train, y_train, x_test, y_test, num_classes, sha256) for ``cfg.name`` in
    ``CONTENT_IDENTIFIED``, on the CPU: what ``nondet.data.load_dataset`` expects of a loader."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    key = _key(cfg)
    if key not in _LOADED:
        loader = _load_custom if cfg["name"] == "custom" else _load_imagefolder
        where, arrays = loader(cfg)
        tensors = checked_tensors(arrays, where)
        sha256 = tensors_sha256(zip(NPZ_KEYS, tensors[:4]))
        _LOADED.clear()
        _LOADED[key] = (cfg["name"], *tensors, sha256)
    return _LOADED[key]


def fingerprint(dataset: dict) -> Optional[str]:
    """``dataset.sha256`` for your own data, or None when it cannot be loaded now (the job's
    own loading then says why, in one line)."""
    try:
        return load(dataset)[-1]
    except Exception:  # noqa: BLE001 - the job reports the same failure where it belongs
        return None


# --------------------------------------------------------------------------- dataset=custom


def _load_custom(cfg: dict) -> tuple[str, dict]:
    target = cfg.get("_target_")
    fn = locate_target("dataset._target_", target)
    returned = call_target("dataset._target_", target, target_arguments("dataset", cfg, fn), fn=fn)
    where = f"dataset._target_={target}"
    return where, _as_arrays(returned, where)


def _as_arrays(returned: Any, where: str) -> dict:
    if isinstance(returned, dict):
        missing = [k for k in NPZ_KEYS if k not in returned]
        if missing:
            raise ValueError(f"{where} returned a dict without {missing}; give {list(NPZ_KEYS)}")
        parts = [returned[k] for k in NPZ_KEYS]
    elif isinstance(returned, (tuple, list)) and len(returned) == 4:
        parts = list(returned)
    elif isinstance(returned, (tuple, list)) and len(returned) == 2:
        parts = [*_split(returned[0], where, "train"), *_split(returned[1], where, "test")]
    else:
        raise ValueError(
            f"{where} returned {type(returned).__name__}; return (x_train, y_train, x_test, y_test), "
            "a dict with those keys, or (train, test) datasets"
        )
    return {k: _array(v, f"{where}: {k}") for k, v in zip(NPZ_KEYS, parts)}


def _split(part: Any, where: str, split: str) -> tuple:
    """(x, y) of one split given as an (x, y) pair or an in-memory Dataset of (x, y) items."""
    if isinstance(part, (tuple, list)) and len(part) == 2:
        return part[0], part[1]
    if not (hasattr(part, "__len__") and hasattr(part, "__getitem__")):
        raise ValueError(f"{where}: the {split} part is a {type(part).__name__}; give (x, y) or a Dataset")
    xs, ys = [], []
    for i in range(len(part)):
        item = part[i]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise ValueError(f"{where}: {split} item {i} is not an (x, y) pair")
        xs.append(_example(item[0]))
        ys.append(int(item[1]))
    if not xs:
        raise ValueError(f"{where}: the {split} dataset is empty")
    try:
        x = np.stack(xs)
    except ValueError as exc:
        raise ValueError(f"{where}: the {split} examples differ in shape ({exc})") from None
    return x, np.asarray(ys, dtype=np.int64)


def _example(x: Any) -> np.ndarray:
    if hasattr(x, "mode") and hasattr(x, "size") and not isinstance(x, (np.ndarray, torch.Tensor)):
        from torchvision.transforms.functional import pil_to_tensor  # a PIL image: (C, H, W) uint8

        return pil_to_tensor(x).numpy()
    return _array(x, "x")


def _array(v: Any, where: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{where}: not an array ({type(v).__name__}: {exc})") from None


# --------------------------------------------------------------------------- dataset=imagefolder


def _load_imagefolder(cfg: dict) -> tuple[str, dict]:
    root, size = cfg.get("root"), cfg.get("image_size")
    if not root or root == "???":
        raise ValueError("dataset=imagefolder needs dataset.root=DIR (DIR/train/<class>/..., DIR/test/<class>/...)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"dataset.image_size={size}: give the side in pixels images are resized to (e.g. 32)")
    root = os.path.expanduser(root)
    where = f"dataset.root={cfg['root']}"
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise ValueError(
                f"{where}: no {split}/ directory in {os.path.abspath(root)}; expected "
                f"{split}/<class>/<image> for the train and the test images"
            )
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    resize = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
    splits = {}
    for split in ("train", "test"):
        try:
            splits[split] = ImageFolder(os.path.join(root, split), transform=resize)
        except (FileNotFoundError, OSError) as exc:
            raise ValueError(f"{where}: {split}/: {str(exc).splitlines()[0]}") from None
    train, test = splits["train"], splits["test"]
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise ValueError(
            f"{where}: test/ has class folder(s) {unknown[:5]} that train/ lacks; a class the model "
            "never trains on cannot be predicted"
        )
    arrays = {}
    for split, folder in (("train", train), ("test", test)):
        # the test set's classes numbered by the train set's folders, whatever test/ lacks
        rename = {i: train.class_to_idx[c] for c, i in folder.class_to_idx.items()}
        x, y = _split(folder, where, split)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, np.array([rename[int(c)] for c in y], dtype=np.int64)
    return where, arrays
