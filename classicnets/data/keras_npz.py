"""Keras' cached `.npz` data sets (`~/.keras/datasets/mnist.npz`, what `keras.datasets.mnist.load_data()` reads), and
any `.npz` in that layout: arrays `x_train`, `y_train`, `x_test`, `y_test`.

Read with `np.load(..., allow_pickle=False)`: an `.npz` is a zip of `.npy` files, and an object array inside
(which would need pickle, and so could run code) is refused. Images are uint8, N x H x W (grayscale) or
N x H x W x C with C = 1 or 3 (Keras' channels-last), labels integers, shape (N,) or (N, 1).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from classicnets.config.schema import MAX_CLASSES
from classicnets.data.datasets import InMemoryDataset
from classicnets.data.idx import class_names_for
from classicnets.errors import DataError, first_line
from classicnets.fileio import open_regular

KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")
SPLITS = ("train", "test")


def is_npz_name(name: str) -> bool:
    return name.lower().endswith(".npz")


def open_npz(path: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, InMemoryDataset]:
    """{split: InMemoryDataset} from a Keras-layout .npz; the class count is the largest label + 1 over all splits
    (10 for MNIST), with Fashion-MNIST's names when the path says fashion."""
    arrays = _load(path)
    labels = {s: _labels(path, arrays, s) for s in SPLITS}
    top = max((int(y.max()) for y in labels.values() if len(y)), default=0)
    if top >= MAX_CLASSES:
        raise DataError(f"{path}: label {top} is past the limit of {MAX_CLASSES:,} classes")
    classes = class_names_for(path, top + 1)
    out = {}
    for split in splits:
        images = _images(path, arrays, split)
        if len(images) != len(labels[split]):
            raise DataError(f"{path}: x_{split} holds {len(images)} images but y_{split} {len(labels[split])} labels")
        out[split] = InMemoryDataset(
            torch.from_numpy(np.ascontiguousarray(images)), labels[split].tolist(), classes, source=str(path),
            name=f"{path.name}:{split}",
        )  # fmt: skip
    return out


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with open_regular(path) as f, np.load(f, allow_pickle=False) as npz:
            missing = [k for k in KERAS_KEYS if k not in npz.files]
            if missing:
                found = ", ".join(npz.files) or "nothing"
                raise DataError(
                    f"{path}: expected arrays {', '.join(KERAS_KEYS)} (Keras' mnist.npz layout); it holds {found}"
                )
            return {k: npz[k] for k in KERAS_KEYS}
    except ValueError as e:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise DataError(f"{path}: refused: {first_line(e)} (an object array would need pickle)") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({first_line(e)})") from None


def _images(path: Path, arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
    x = arrays[f"x_{split}"]
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x_{split} must be uint8 images, got {x.dtype}")
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return x.transpose(0, 3, 1, 2)  # Keras' N x H x W x C -> N x C x H x W
    if x.ndim == 3:
        return x
    raise DataError(f"{path}: x_{split} must be N x H x W or N x H x W x C (C = 1 or 3), got shape {x.shape}")


def _labels(path: Path, arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
    y = arrays[f"y_{split}"]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # Keras' CIFAR labels are N x 1
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y_{split} must be integer labels of shape (N,), got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: y_{split} has negative labels")
    return y.astype(np.int64)
