"""Toy images: each class a noisy bright square at its own place (for the examples and tests).

    python examples/custom_cnn/make_data.py /tmp/toy.npz                   # as an npz file
    python launch.py dataset=custom dataset._target_=examples.custom_cnn.data.toy_images
"""

from __future__ import annotations

import numpy as np


def toy_images(n_train: int = 256, n_test: int = 128, size: int = 8, classes: int = 4, seed: int = 0):
    """(x_train, y_train, x_test, y_test): uint8 images (N, 1, size, size), labels 0..classes-1."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = np.arange(n) % classes
        x = rng.normal(60, 40, size=(n, 1, size, size))
        half = size // 2
        for c in range(classes):
            row, col = divmod(c, 2)
            x[y == c, :, row * half:(row + 1) * half, col * half:(col + 1) * half] += 90
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    return (*split(n_train), *split(n_test))
