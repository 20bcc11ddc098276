"""What a data path holds, decided from its files: `open_dataset` (one set) and `open_splits` (the splits a source
defines itself).

One set: a class-per-folder tree, a list file, an IDX images file (or a folder with one IDX pair), one CIFAR batch
file (`test_batch`, `test.bin`, ...). Sources with their own splits: a prepared folder (`train/`, `val/`, `test/`),
a CIFAR-10/100 folder or `.tar.gz` (python or binary version), a Keras `.npz` (`mnist.npz`), a folder with the
training and test IDX files of MNIST or Fashion-MNIST. Their splits are the files' own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from classicnets.choices import LABEL_MODES
from classicnets.data.archives import is_archive_name
from classicnets.data.cifar import CifarSource, find_cifar
from classicnets.data.datasets import ImageDataset
from classicnets.data.decode import is_image_file
from classicnets.data.folders import find_split_dirs, open_class_folders, open_list_file
from classicnets.data.idx import find_idx_pair, idx_splits, is_idx_name, labels_path_for, open_idx, read_idx
from classicnets.data.keras_npz import is_npz_name, open_npz
from classicnets.errors import DataError, UsageError


@dataclass(frozen=True)
class OpenOptions:
    in_chans: int = 3  # how image files are decoded (1: grayscale, 3: RGB); in-memory sets keep their own
    allow_empty: bool = False  # an empty class folder is a class without images instead of an error
    label_mode: str = "fine"  # CIFAR-100: fine (100 classes) or coarse (20 superclasses)


class SplitSource(Protocol):
    @property
    def kind(self) -> str:  # what the source is, for messages ("a prepared folder", "CIFAR-10 (python version)")
        ...

    @property
    def splits(self) -> tuple[str, ...]: ...

    def open_splits(self, names: Sequence[str], options: OpenOptions) -> dict[str, ImageDataset]: ...


@dataclass
class _PreparedFolder:
    dirs: dict[str, Path]
    kind: str = "a prepared folder"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.dirs)

    def open_splits(self, names: Sequence[str], options: OpenOptions) -> dict[str, ImageDataset]:
        _fine_only(self.kind, options)
        return {n: _open_single(self.dirs[n], options) for n in names}


@dataclass
class _IdxPairs:
    files: dict[str, Path]
    kind: str = "MNIST-style IDX files"
    splits: tuple[str, ...] = ("train", "test")

    def open_splits(self, names: Sequence[str], options: OpenOptions) -> dict[str, ImageDataset]:
        _fine_only(self.kind, options)
        # the class count of both splits, so a test file without the largest label still has every class
        count = max(int(read_idx(_labels_of(self.files[s])).max()) + 1 for s in self.splits)
        return {n: open_idx(self.files[n], num_classes=count) for n in names}


@dataclass
class _KerasNpz:
    path: Path
    kind: str = "a Keras .npz"
    splits: tuple[str, ...] = ("train", "test")

    def open_splits(self, names: Sequence[str], options: OpenOptions) -> dict[str, ImageDataset]:
        _fine_only(self.kind, options)
        return dict(open_npz(self.path, tuple(names)))


@dataclass
class _Cifar:
    source: CifarSource

    @property
    def kind(self) -> str:
        return self.source.layout.title

    @property
    def splits(self) -> tuple[str, ...]:
        return self.source.splits

    def open_splits(self, names: Sequence[str], options: OpenOptions) -> dict[str, ImageDataset]:
        return dict(self.source.open(names, label_mode=options.label_mode))


def _labels_of(images: Path) -> Path:
    labels = labels_path_for(images)
    assert labels is not None  # idx_splits only pairs images files that have one
    return labels


def _fine_only(kind: str, options: OpenOptions) -> None:
    if options.label_mode != "fine":
        raise UsageError(f"label_mode {options.label_mode!r} applies to CIFAR-100; this data is {kind}")


def find_split_source(path: str | os.PathLike) -> SplitSource | None:
    """The source at `path` if it defines its own splits, else None (a single set, or nothing readable)."""
    path = Path(path)
    if path.is_dir():
        dirs = find_split_dirs(path)
        if dirs:
            return _PreparedFolder(dirs)
        cifar = find_cifar(path)
        if cifar is not None:
            return _Cifar(cifar)
        files = idx_splits(path)
        return _IdxPairs(files) if files else None
    if is_npz_name(path.name):  # also a FIFO or device so named: refused when read, without blocking
        return _KerasNpz(path)
    if path.is_file():
        cifar = find_cifar(path)
        if cifar is not None and cifar.splits:
            return _Cifar(cifar)
    return None


def source_splits(path: str | os.PathLike) -> tuple[str, ...]:
    """The names of the splits `path` defines ("train", "val", "test" of a prepared folder; "train", "test" of
    CIFAR, a Keras .npz or an IDX folder with both files); () for a single set."""
    source = find_split_source(path)
    return source.splits if source else ()


def _options(in_chans: int, allow_empty: bool, label_mode: str) -> OpenOptions:
    if in_chans not in (1, 3):
        raise UsageError(f"in_chans must be 1 or 3, got {in_chans}")
    if label_mode not in LABEL_MODES:
        raise UsageError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
    return OpenOptions(in_chans, allow_empty, label_mode)


def open_splits(
    path: str | os.PathLike,
    names: Sequence[str],
    *,
    in_chans: int = 3,
    allow_empty: bool = False,
    label_mode: str = "fine",
) -> dict[str, ImageDataset]:
    """{name: ImageDataset} for the splits `names` of a source that defines splits (read in one pass where the
    files allow, e.g. one pass over a CIFAR archive). DataError for a single set or a split it does not have."""
    options = _options(in_chans, allow_empty, label_mode)
    source = _require_source(Path(path))
    missing = [n for n in names if n not in source.splits]
    if missing:
        raise DataError(f"{path} has no {missing[0]} split ({source.kind} with {', '.join(source.splits)})")
    return source.open_splits(list(names), options)


def _require_source(path: Path) -> SplitSource:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    source = find_split_source(path)
    if source is None:
        raise DataError(f"{path} is one set of images without train/test splits")
    return source


def open_dataset(
    source: str | os.PathLike,
    *,
    in_chans: int = 3,
    allow_empty: bool = False,
    split: str | None = None,
    label_mode: str = "fine",
) -> ImageDataset:
    """Open any source classicnets reads as one ImageDataset (a source with splits needs `split`).

    `in_chans` (1 or 3) is how image files are decoded (grayscale or RGB); `label_mode` picks CIFAR-100's fine or
    coarse labels. A missing path, an empty folder, a folder without class subfolders or an empty class folder
    (unless `allow_empty`) raises DataError.
    """
    options = _options(in_chans, allow_empty, label_mode)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    splits = find_split_source(path)
    if splits is not None:
        if split is None:
            names = ", ".join(splits.splits)
            if isinstance(splits, _PreparedFolder):
                raise DataError(f"{path} is a prepared folder with splits {names}; open {path / 'train'} "
                                "(or another split)")  # fmt: skip
            raise DataError(f"{path} is {splits.kind} with splits {names}; pick one (split='train', --split test)")
        return open_splits(path, [split], in_chans=in_chans, allow_empty=allow_empty, label_mode=label_mode)[split]
    if split is not None:
        raise DataError(f"{path} is one set of images without splits; drop the split ({split!r})")
    return _open_single(path, options)


def _open_single(path: Path, options: OpenOptions) -> ImageDataset:
    cifar = None if path.is_dir() else find_cifar(path)  # a FIFO named like a batch is refused when read
    if cifar is not None:
        return cifar.open(label_mode=options.label_mode)[""]
    if path.is_file():
        _fine_only("not CIFAR-100", options)
        if is_idx_name(path.name):
            return open_idx(path)
        if is_image_file(path.name):
            raise DataError(f"{path} is one image, not a data set; pass the folder that holds the class folders")
        if is_archive_name(path.name):
            raise DataError(f"{path}: an archive without CIFAR's files; unpack it and pass the folder")
        return open_list_file(path, in_chans=options.in_chans)
    _fine_only("not CIFAR-100", options)
    idx = find_idx_pair(path)
    if idx is not None:
        return open_idx(idx)
    return open_class_folders(path, in_chans=options.in_chans, allow_empty=options.allow_empty)
