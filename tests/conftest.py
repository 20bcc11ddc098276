"""Fixtures every test folder shares (tests/unit: one module at a time on small inputs; tests/integration: commands
and training runs end to end on real data).

- `shared_data("mnist")`: a path under ../shared/data, the real data beside the checkout on our machines; the test
  skips with the reason when that folder is absent.
- `digit_kit`: small real data sets cut from the MNIST digits shipped with classicnets (IDX files, folders of
  PNGs).
- `is_png(path)`: whether a file is a PNG (by its signature).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the checkout on our machines)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Callable[..., Path]:
    """shared_data(*parts) -> a path under ../shared/data, or skip the test when it is absent."""
    return _shared_data


@pytest.fixture(scope="session")
def is_png() -> Callable[[Path], bool]:
    return lambda path: Path(path).is_file() and Path(path).read_bytes()[:8] == PNG_SIGNATURE


class DigitKit:
    """Small real data sets cut from the digits shipped with classicnets (classicnets/assets/digits)."""

    def shipped(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images N x 28 x 28 uint8, labels) of the shipped `split` ("train": 8,000 digits, "test": 2,000)."""
        from classicnets.data import read_idx
        from classicnets.demo import digits_dir

        folder = digits_dir() / split
        return read_idx(folder / f"{split}-images-idx3-ubyte.gz"), read_idx(folder / f"{split}-labels-idx1-ubyte.gz")

    @staticmethod
    def first_per_class(labels: np.ndarray, per_class: int, classes: Iterable[int] = range(10)) -> list[int]:
        return [int(i) for c in classes for i in np.flatnonzero(labels == c)[:per_class]]

    @staticmethod
    def write_idx(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> Path:
        """`name`-images-idx3-ubyte.gz and its labels file in `folder`; returns the folder."""
        folder.mkdir(parents=True, exist_ok=True)
        for kind, array, magic in (("images", images, 2051), ("labels", labels, 2049)):
            header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
            suffix = "idx3" if kind == "images" else "idx1"
            data = header + array.astype(np.uint8).tobytes()
            (folder / f"{name}-{kind}-{suffix}-ubyte.gz").write_bytes(gzip.compress(data, mtime=0))
        return folder

    def idx(self, folder: Path, *, per_class: int = 20, split: str = "train", classes=range(10)) -> Path:
        """An IDX folder with the first `per_class` shipped digits of each class."""
        images, labels = self.shipped(split)
        index = self.first_per_class(labels, per_class, classes)
        return self.write_idx(folder, split, images[index], labels[index])

    def folders(
        self, root: Path, *, per_class: int = 12, classes=("3", "7"), split: str = "train", rgb=False, names=None
    ) -> Path:
        """Class folders of PNG digits (root/3/*.png, root/7/*.png): the photo-folder layout users have.
        `names` renames the folders (digits 3 and 7 in folders a/ and b/)."""
        images, labels = self.shipped(split)
        for digit, name in zip(classes, names or classes, strict=True):
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == int(digit))[:per_class]:
                img = Image.fromarray(images[i])
                (img.convert("RGB") if rgb else img).save(root / name / f"{split}_{i:04d}.png")
        return root


@pytest.fixture(scope="session")
def digit_kit() -> DigitKit:
    return DigitKit()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
