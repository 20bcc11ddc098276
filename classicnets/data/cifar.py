"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html) as in-memory data sets,
in both distributions the CIFAR page offers, unpacked or as the `.tar.gz` downloaded (read in place).

The layouts, as the CIFAR page describes them:
- python version: `cifar-10-batches-py/` holds `data_batch_1` ... `data_batch_5`, `test_batch` and `batches.meta`;
  `cifar-100-python/` holds `train`, `test` and `meta`. Each batch is a pickled dict: `data`, a uint8 array
  N x 3072 whose rows are 1024 red, then 1024 green, then 1024 blue values (each a 32x32 image, row by row);
  `labels` (CIFAR-10) or `fine_labels` and `coarse_labels` (CIFAR-100), lists of ints. The meta file holds
  `label_names`, or `fine_label_names` and `coarse_label_names`. The pickles are read by a restricted unpickler
  that rebuilds only dicts, lists, strings, ints and uint8 arrays: any other object is refused before it is built.
- binary version: `cifar-10-batches-bin/` holds `data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin` and
  `batches.meta.txt` (one class name a line); each record is 1 label byte then 3072 pixel bytes in the order above.
  `cifar-100-binary/` holds `train.bin`, `test.bin`, `coarse_label_names.txt` and `fine_label_names.txt`; each
  record is 1 coarse label byte, 1 fine label byte, then the 3072 pixel bytes.

The train/test splits are the files': the five training batches (or `train`) in order, then `test_batch` (`test`).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric

from classicnets.data.archives import first_member_names, is_archive_name, read_members
from classicnets.data.datasets import InMemoryDataset
from classicnets.errors import DataError, UsageError
from classicnets.fileio import open_regular
from classicnets.safe_pickle import latin1_encode, load_allowlisted

SIDE = 32
PIXELS = 3 * SIDE * SIDE  # 3,072 bytes per image
PICKLE_MAGIC = 0x80  # the PROTO opcode every protocol-2+ pickle starts with (the CIFAR files are protocol 2)
# He et al. 2016, section 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the
# padded image or its horizontal flip": the augmentation CIFAR sets get unless another is asked for.
CIFAR_AUGMENT = "pad_crop"


@dataclass(frozen=True)
class CifarLayout:
    folder: str  # the folder inside the archive (and the usual name of the unpacked one)
    title: str
    splits: dict[str, tuple[str, ...]] = field(hash=False)  # split -> its batch files, in order
    meta: tuple[str, ...]  # the files with the class names
    binary: bool
    hundred: bool  # CIFAR-100: fine and coarse labels

    @property
    def files(self) -> tuple[str, ...]:
        return (*(name for names in self.splits.values() for name in names), *self.meta)


_TRAIN10 = tuple(f"data_batch_{i}" for i in range(1, 6))
LAYOUTS = (
    CifarLayout("cifar-10-batches-py", "CIFAR-10 (python version)", {"train": _TRAIN10, "test": ("test_batch",)},
                ("batches.meta",), binary=False, hundred=False),
    CifarLayout("cifar-10-batches-bin", "CIFAR-10 (binary version)",
                {"train": tuple(f"{n}.bin" for n in _TRAIN10), "test": ("test_batch.bin",)},
                ("batches.meta.txt",), binary=True, hundred=False),
    CifarLayout("cifar-100-python", "CIFAR-100 (python version)", {"train": ("train",), "test": ("test",)},
                ("meta",), binary=False, hundred=True),
    CifarLayout("cifar-100-binary", "CIFAR-100 (binary version)", {"train": ("train.bin",), "test": ("test.bin",)},
                ("coarse_label_names.txt", "fine_label_names.txt"), binary=True, hundred=True),
)  # fmt: skip


# ---- the restricted unpickler: dicts, lists, str/bytes, ints and uint8 arrays only ----


def _uint8_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if spec not in ("u1", "|u1", "uint8"):
        raise pickle.UnpicklingError(f"refused numpy dtype {spec!r} (CIFAR arrays are uint8)")
    return np.dtype(spec, align, copy)


# numpy 1.x names its pickling helpers `numpy.core.*`, numpy 2 `numpy._core.*`: both map to the same functions.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _uint8_dtype,
    ("_codecs", "encode"): latin1_encode,  # bytes pickled by Python 3 at protocol 2
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer  # type: ignore[attr-defined]


def unpickle_batch(raw: bytes, where: str) -> dict[str, Any]:
    """The dict pickled in a CIFAR python file, keys as str; refused with one line if it asks for anything else."""
    # The CIFAR files are Python 2 pickles, read with Latin-1 strings (load_allowlisted).
    obj = load_allowlisted(
        io.BytesIO(raw),
        _ALLOWED,
        where=where,
        error=DataError,
        refused="the pickle asks for more than a CIFAR batch holds ({message}); only dicts, lists, strings, ints "
        "and uint8 arrays are loaded",
        corrupt="not a readable CIFAR batch",
    )
    if not isinstance(obj, dict):
        raise DataError(f"{where}: holds a {type(obj).__name__}, not the dict a CIFAR batch is")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


# ---- reading a layout's files ----


def _python_batch(raw: bytes, where: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle_batch(raw, where)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", None)
        raise DataError(f"{where}: 'data' must be a uint8 array N x {PIXELS}, got {type(data).__name__} {shape}")
    if not isinstance(labels, list) or not all(isinstance(v, int) for v in labels) or len(labels) != len(data):
        raise DataError(f"{where}: {label_key!r} must be a list of {len(data)} ints")
    return data, np.asarray(labels, dtype=np.int64)


def _binary_batch(raw: bytes, where: str, label_offset: int, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + PIXELS
    if not raw or len(raw) % record:
        raise DataError(f"{where}: {len(raw):,} bytes is not a whole number of {record}-byte records; truncated?")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return rows[:, label_bytes:], rows[:, label_offset].astype(np.int64)


def _names_from_meta(layout: CifarLayout, files: dict[str, bytes], mode: str) -> list[str]:
    if layout.binary:
        name = f"{mode}_label_names.txt" if layout.hundred else "batches.meta.txt"
        text = files[name].decode("utf-8", errors="replace")
        return [line.strip() for line in text.splitlines() if line.strip()]
    meta = unpickle_batch(files[layout.meta[0]], layout.meta[0])
    key = f"{mode}_label_names" if layout.hundred else "label_names"
    names = meta.get(key)
    if not isinstance(names, list) or not all(isinstance(n, str | bytes) for n in names):
        raise DataError(f"{layout.meta[0]}: {key!r} must be a list of class names")
    return [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names]


def _read_split(layout: CifarLayout, files: dict[str, bytes], names: Sequence[str], mode: str):
    images, labels = [], []
    for name in names:
        if layout.binary:
            # CIFAR-100 records: coarse label byte, fine label byte; CIFAR-10: one label byte
            offset = (1 if mode == "fine" else 0) if layout.hundred else 0
            data, y = _binary_batch(files[name], name, offset, 2 if layout.hundred else 1)
        else:
            data, y = _python_batch(files[name], name, f"{mode}_labels" if layout.hundred else "labels")
        images.append(data)
        labels.append(y)
    return np.concatenate(images).reshape(-1, 3, SIDE, SIDE), np.concatenate(labels)


# ---- where the files are: a folder, one batch file, or an archive ----


@dataclass
class CifarSource:
    """CIFAR files found at `path`: a layout's folder, one of its batch files, or its archive."""

    path: Path
    layout: CifarLayout
    only: str | None = None  # a single batch file: its name (the source is then that one set)
    archive: bool = False

    @property
    def splits(self) -> tuple[str, ...]:
        return () if self.only else tuple(self.layout.splits)

    def open(self, splits: Sequence[str] = (), *, label_mode: str = "fine") -> dict[str, InMemoryDataset]:
        """{split: InMemoryDataset} for `splits` (for a single batch file: {"": its set})."""
        if label_mode not in ("fine", "coarse"):
            raise UsageError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
        if label_mode == "coarse" and not self.layout.hundred:
            raise UsageError(f"{self.path}: coarse labels are CIFAR-100's; {self.layout.title} has one label set")
        wanted = {"": (self.only,)} if self.only else {s: self.layout.splits[s] for s in splits}
        files = self._read([*(n for names in wanted.values() for n in names), *self.layout.meta])
        classes = _names_from_meta(self.layout, files, label_mode)
        out = {}
        for split, names in wanted.items():
            images, labels = _read_split(self.layout, files, names, label_mode)
            if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
                raise DataError(f"{self.path}: labels run to {labels.max()} but the meta file names {len(classes)}")
            out[split] = InMemoryDataset(
                torch.from_numpy(np.ascontiguousarray(images)), labels.tolist(), classes, source=str(self.path),
                name=names[0] if self.only else f"{self.layout.folder}/{split}", augment=CIFAR_AUGMENT,
            )  # fmt: skip
        return out

    def _read(self, names: Sequence[str]) -> dict[str, bytes]:
        if self.archive:
            members = read_members(self.path, {f"{self.layout.folder}/{n}" for n in names})
            return {n: members[f"{self.layout.folder}/{n}"] for n in names}
        folder = self.path.parent if self.only else self.path
        try:
            return {n: _read_regular(folder / n) for n in names}
        except OSError as e:
            raise DataError(f"cannot read {e.filename}: {e.strerror or e}") from None


def _read_regular(path: Path) -> bytes:
    with open_regular(path) as f:  # a FIFO or a device named like a batch is refused, not read (fileio)
        return f.read()


def _is_pickle(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            return f.read(1) == bytes([PICKLE_MAGIC])
    except OSError:
        return False


def _layout_in(folder: Path) -> CifarLayout | None:
    """The layout whose files `folder` holds (DataError when only some are there), None when it holds none."""
    for layout in LAYOUTS:
        present = [n for n in layout.files if (folder / n).is_file()]
        generic = layout.hundred and not layout.binary  # train, test, meta: names any folder could have
        if not present or (generic and not all(_is_pickle(folder / n) for n in present)):
            continue
        missing = [n for n in layout.files if n not in present]
        if missing:
            raise DataError(f"{folder} looks like {layout.title} but has no {missing[0]}; is the download complete?")
        return layout
    return None


def find_cifar(path: Path) -> CifarSource | None:
    """The CIFAR files at `path` (a layout's folder, one of its batch files, or its archive), None if not CIFAR."""
    if path.is_dir():
        layout = _layout_in(path)
        return CifarSource(path, layout) if layout else None
    if is_archive_name(path.name):
        tops = {name.split("/", 1)[0] for name in first_member_names(path)}
        layout = next((lay for lay in LAYOUTS if lay.folder in tops), None)
        return CifarSource(path, layout, archive=True) if layout else None
    for layout in LAYOUTS:
        if any(path.name in names for names in layout.splits.values()) and all(
            (path.parent / m).is_file() for m in layout.meta
        ):
            if layout.hundred and not layout.binary and not _is_pickle(path):
                continue
            return CifarSource(path, layout, only=path.name)
    return None
