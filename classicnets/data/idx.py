"""MNIST's IDX files (http://yann.lecun.com/exdb/mnist/), gzipped or not, as an in-memory dataset; Fashion-MNIST
(https://github.com/zalandoresearch/fashion-mnist) ships the same files under the same names.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the values in C order. MNIST images are type 0x08 (unsigned byte) with 3 dimensions
(magic 2051), labels type 0x08 with 1 dimension (magic 2049).

A folder with both the training and the test files (`train-*` and `t10k-*`, as both downloads unpack) has those
two splits. Fashion-MNIST is told from MNIST by its path: a path with "fashion" in it (Zalando's `data/fashion/`,
Keras' `~/.keras/datasets/fashion-mnist/`, torchvision's `FashionMNIST/raw/`) gets its 10 class names.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import torch

from classicnets.config.schema import MAX_CLASSES
from classicnets.data.datasets import InMemoryDataset
from classicnets.errors import DataError

# IDX type codes -> numpy big-endian dtypes (the IDX specification on the MNIST page).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# t10k-images-idx3-ubyte, train-images.idx3-ubyte (a common re-packaging), optionally .gz
_IMAGES_RE = re.compile(r"images[-.]idx3[-.]ubyte(\.gz)?$")
# Fashion-MNIST's labels 0-9, from its README (zalandoresearch/fashion-mnist, "Labels").
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def is_idx_name(name: str) -> bool:
    return bool(re.search(r"idx\d[-.]ubyte(\.gz)?$", name))


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip detected from its first bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: broken gzip data ({e}); download the file again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says {shape} but holds {len(raw) - header} bytes, not {expected}; truncated?")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def labels_path_for(images: Path) -> Path | None:
    """The labels file beside an images file (images-idx3 -> labels-idx1, with or without .gz)."""
    stem = _IMAGES_RE.sub("", images.name)
    for sep in ("-", "."):
        for gz in (".gz", ""):
            candidate = images.with_name(f"{stem}labels{sep}idx1{sep}ubyte{gz}")
            if candidate.is_file():
                return candidate
    return None


def class_names_for(path: Path, count: int) -> list[str]:
    """Fashion-MNIST's names when `path` says fashion (and the labels fit), else "0", "1", ... (digits)."""
    if "fashion" in str(path).lower() and count <= len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(count)]


def _idx_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _IMAGES_RE.search(p.name) and labels_path_for(p))


def idx_splits(folder: Path) -> dict[str, Path] | None:
    """{"train": images file, "test": images file} for a folder holding exactly a training pair and a test pair
    (`train-...` and `t10k-...` or `test-...`), else None."""
    images = _idx_images(folder)
    if len(images) != 2:
        return None
    train = [p for p in images if "train" in p.name]
    test = [p for p in images if "t10k" in p.name or "test" in p.name]
    if len(train) != 1 or len(test) != 1 or train == test:
        return None
    return {"train": train[0], "test": test[0]}


def find_idx_pair(folder: Path) -> Path | None:
    """The images file of the one IDX images/labels pair in `folder`, None when there is none."""
    images = _idx_images(folder)
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise DataError(f"{folder} holds several IDX image files ({names}); pass the one you want")
    return images[0] if images else None


def open_idx(images_path: str | Path, *, num_classes: int | None = None) -> InMemoryDataset:
    """An IDX images file and its labels file as an InMemoryDataset (uint8 N x H x W, classes "0".."K-1" with K the
    largest label + 1 unless `num_classes` says more, or Fashion-MNIST's names; see class_names_for)."""
    images_path = Path(images_path)
    if not _IMAGES_RE.search(images_path.name):
        raise DataError(f"{images_path}: expected an IDX images file named like t10k-images-idx3-ubyte[.gz]")
    labels_path = labels_path_for(images_path)
    if labels_path is None:
        raise DataError(f"{images_path}: no labels file beside it (expected ...labels-idx1-ubyte[.gz])")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{images_path}: expected uint8 images N x H x W, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: {labels.shape[0]} labels for {len(images)} images")
    if len(images) == 0:
        raise DataError(f"{images_path} holds no images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: labels of type {labels.dtype}; class labels are integers")
    if labels.min() < 0:
        raise DataError(f"{labels_path}: negative labels")
    if labels.max() >= MAX_CLASSES:
        first = int(np.argmax(labels >= MAX_CLASSES))
        raise DataError(
            f"{labels_path}: label {int(labels[first])} (of image {first}) is past the limit of {MAX_CLASSES:,} classes"
        )
    classes = class_names_for(images_path, max(int(labels.max()) + 1, num_classes or 0))
    return InMemoryDataset(
        torch.from_numpy(np.ascontiguousarray(images)), labels.astype(np.int64).tolist(), classes,
        source=str(images_path),
    )  # fmt: skip
