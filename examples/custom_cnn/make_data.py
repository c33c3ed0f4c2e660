"""Write the toy images as one .npz (x_train, y_train, x_test, y_test) for dataset=npz.

    python examples/custom_cnn/make_data.py /tmp/toy.npz [--size 8]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import toy_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=256)
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = toy_images(n_train=args.n_train, size=args.size)
    np.savez(args.path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


if __name__ == "__main__":
    main()
