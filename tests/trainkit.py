"""Small real data sets for the train / eval / predict / demo tests, cut from the digits shipped with classicnets.

Not a test module (no test_ prefix): test files import it (`from trainkit import ...`, pytest puts tests/ on the path).
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from classicnets.data import read_idx
from classicnets.demo import digits_dir


def shipped_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = digits_dir() / split
    return read_idx(folder / f"{split}-images-idx3-ubyte.gz"), read_idx(folder / f"{split}-labels-idx1-ubyte.gz")


def first_per_class(labels: np.ndarray, per_class: int, classes=range(10)) -> list[int]:
    return [int(i) for c in classes for i in np.flatnonzero(labels == c)[:per_class]]


def write_idx(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """`name`-images-idx3-ubyte.gz and its labels file in `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array, magic in (("images", images, 2051), ("labels", labels, 2049)):
        header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
        suffix = "idx3" if kind == "images" else "idx1"
        data = header + array.astype(np.uint8).tobytes()
        (folder / f"{name}-{kind}-{suffix}-ubyte.gz").write_bytes(gzip.compress(data, mtime=0))
    return folder


def digit_idx(folder: Path, *, per_class: int = 20, split: str = "train", classes=range(10)) -> Path:
    """An IDX folder with the first `per_class` shipped digits of each class."""
    images, labels = shipped_digits(split)
    index = first_per_class(labels, per_class, classes)
    return write_idx(folder, split, images[index], labels[index])


def digit_folders(
    root: Path, *, per_class: int = 12, classes=("3", "7"), split: str = "train", rgb=False, names=None
) -> Path:
    """Class folders of PNG digits (root/3/*.png, root/7/*.png): the photo-folder layout users have.
    `names` renames the folders (digits 3 and 7 in folders a/ and b/)."""
    images, labels = shipped_digits(split)
    for digit, name in zip(classes, names or classes, strict=True):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == int(digit))[:per_class]:
            img = Image.fromarray(images[i])
            (img.convert("RGB") if rgb else img).save(root / name / f"{split}_{i:04d}.png")
    return root


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
