"""The decode cache: every image of a folder decoded once, resized and stored as uint8 rows of one memory-mapped file.

Each image is decoded (decode.decode_image: the bad-file guards, EXIF orientation, JPEG draft scaling), its short
side resized to the recipe's resize size S and its central S x S square kept: Krizhevsky et al. 2012, section 2:
"we rescaled the image such that the shorter side was of length 256, and then cropped out the central 256x256
patch". Training then crops, flips and colours whole batches of those rows (cached_loader.CachedLoader), with no
decoding and no worker processes: the cores go to the model. FFCV (Leclerc et al. 2023) is the model for this
design; the rows are raw pixels, not re-encoded JPEGs, so reading one costs a copy, not a decode.

On disk, in one folder per (data root, S, colour mode, interpolation) under fileio.cache_dir():
  images.u8   rows of S x S x C uint8, one after another (192 KiB per image at 256 x 256 x 3)
  index.json  {relative path: [size, mtime_ns, row]} for the decoded files, the same for the files that failed
              with their reason code, and the number of committed rows
  lock        held while a process adds rows, so two processes (torchrun ranks) never build at once

index.json is the commit point: it is replaced atomically (fileio.atomic_write_text) after the rows it names are
written and synced, and rows are only ever appended past the committed ones, so a killed build leaves a cache
whose index is true (the next build truncates the rows nobody committed and carries on). A file whose size or
modification time changed is decoded again into a new row; the rows of unchanged files are reused when files are
added or removed. Rows of changed or removed files stay until the folder is deleted (docs/data.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classicnets import choices
from classicnets.data.cache_build import Builder, disk_cost, human_size
from classicnets.data.folders import find_split_dirs, list_class_folders
from classicnets.errors import DataError, WriteError, first_line
from classicnets.fileio import cache_dir

log = logging.getLogger(__name__)

FORMAT = "classicnets-decode-cache"
VERSION = 1


class CacheTooLarge(DataError):
    """Not enough free disk space for the rows a build would add."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds: the images under `root` at S x S (`size`), in `mode` ("RGB" or "L"), resized with
    `interpolation` (transforms.RESAMPLE)."""

    root: Path
    size: int
    mode: str = "RGB"
    interpolation: str = "bilinear"

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def row_bytes(self) -> int:
        return self.size * self.size * self.channels

    def folder(self) -> Path:
        """cache_dir()/<root name>-<S>[-L]-<hash of the absolute root, S, mode and interpolation>."""
        ident = f"{self.root.resolve()}\0{self.size}\0{self.mode}\0{self.interpolation}"
        digest = hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return cache_dir() / f"{self.root.name or 'root'}-{self.size}{'-L' if self.mode == 'L' else ''}-{digest}"


def data_root(dataset: Any) -> Path:
    """The folder a file dataset's cache is keyed on: a prepared folder for its train/val/test splits (so they share
    one cache), the folder of a list file, else the class-folder tree itself."""
    source = Path(dataset.source).resolve()
    if source.is_file():
        return source.parent
    if source.name in choices.SPLIT_NAMES and find_split_dirs(source.parent):
        return source.parent
    return source


@dataclass
class CachedRows:
    """A dataset's view of a cache: `images` (rows x S x S x C, read-only memmap), `rows[i]` the row of sample i
    (-1 for a file that failed), `bad[i]` = (reason code, detail) of the samples that failed."""

    spec: CacheSpec
    images: np.ndarray
    rows: np.ndarray
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass
class _Match:
    rows: np.ndarray
    bad: dict[int, tuple[str, str]]
    missing: dict[str, list[int]]  # relative key -> the samples with that file, for the files not in the cache
    stats: list[tuple[int, int] | None]


class DecodeCache:
    """The cache folder of one CacheSpec. `open(paths)` reads what is there; `build(paths)` adds what is missing."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        self.folder = spec.folder()
        self.index_path = self.folder / "index.json"
        self.data_path = self.folder / "images.u8"
        self.lock_path = self.folder / "lock"

    def open(self, paths: Sequence[str]) -> CachedRows | None:
        """The rows of `paths` if every file is in the cache unchanged (decoded or known bad), else None."""
        index = self._read_index()
        match = self._match(paths, index)
        return None if match.missing else self._view(index, match)

    def needed_bytes(self, paths: Sequence[str]) -> int:
        """Disk space a build of `paths` would add now."""
        return disk_cost(len(self._match(paths, self._read_index()).missing), self.spec.size, self.spec.channels)

    def build(self, paths: Sequence[str], *, workers: int = 0, progress: bool = False,
              lock_timeout: float | None = None, multiprocessing_context: str | None = None) -> CachedRows:  # fmt: skip
        """Decode the files of `paths` the cache lacks (in `workers` processes) and return the rows of all of them.

        Holds the folder's lock meanwhile; `lock_timeout` (seconds, None: wait) bounds the wait for another
        process's build. Raises CacheTooLarge when the new rows do not fit on the disk.
        """
        with self._lock(lock_timeout):
            index = self._read_index()
            match = self._match(paths, index)
            if match.missing:
                self._check_space(len(match.missing))
                Builder(self, index, match, paths).run(workers, progress, multiprocessing_context)
            return self._view(index, match)

    # --- the index ------------------------------------------------------------------------------------------------

    def _new_index(self) -> dict[str, Any]:
        s = self.spec
        return {"format": FORMAT, "version": VERSION, "root": str(s.root.resolve()), "size": s.size, "mode": s.mode,
                "interpolation": s.interpolation, "rows": 0, "files": {}, "bad": {}}  # fmt: skip

    def _read_index(self) -> dict[str, Any]:
        """The committed index, or a new one when there is none or it does not describe this cache's rows."""
        fresh = self._new_index()
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return fresh
        except (OSError, ValueError) as e:
            log.warning("decode cache %s: unreadable index (%s); starting it again", self.folder, first_line(e))
            return fresh
        same = all(index.get(k) == fresh[k] for k in ("format", "version", "size", "mode", "interpolation"))
        rows = index.get("rows")
        if not same or not isinstance(rows, int) or self._data_size() < rows * self.spec.row_bytes:
            log.warning("decode cache %s does not match its rows; starting it again", self.folder)
            return fresh
        return index

    def _data_size(self) -> int:
        try:
            return self.data_path.stat().st_size
        except OSError:
            return 0

    def _match(self, paths: Sequence[str], index: dict[str, Any]) -> _Match:
        files, bad = index["files"], index["bad"]
        match = _Match(np.full(len(paths), -1, dtype=np.int64), {}, {}, [])
        for i, path in enumerate(paths):
            key, stat = self.key(path), _stat(path)
            match.stats.append(stat)
            entry, failure = files.get(key), bad.get(key)
            if stat is not None and entry is not None and tuple(entry[:2]) == stat:
                match.rows[i] = entry[2]
            elif stat is not None and failure is not None and tuple(failure[:2]) == stat:
                match.bad[i] = (failure[2], failure[3])
            else:
                match.missing.setdefault(key, []).append(i)
        return match

    def key(self, path: str) -> str:
        """The path relative to the data root (absolute when outside it), with / separators."""
        root = str(self.spec.root)
        rel = os.path.relpath(os.path.abspath(path), root)
        return os.path.abspath(path) if rel.startswith("..") else rel.replace(os.sep, "/")

    def _view(self, index: dict[str, Any], match: _Match) -> CachedRows:
        s = self.spec
        shape = (int(index["rows"]), s.size, s.size, s.channels)
        if not shape[0]:  # every file failed: numpy cannot map an empty file
            return CachedRows(s, np.zeros(shape, np.uint8), match.rows, match.bad)
        images = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=shape)
        return CachedRows(s, images, match.rows, match.bad)

    # --- building -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, timeout: float | None) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self._mkdir()
        lock = FileLock(str(self.lock_path))
        try:
            lock.acquire(timeout=0.5 if timeout is None else timeout)
        except Timeout:
            if timeout is not None:
                raise DataError(f"another process is building the decode cache {self.folder} (it holds "
                                f"{self.lock_path}); wait for it, or use data.cache=never") from None  # fmt: skip
            log.info("another process is building the decode cache %s; waiting for it", self.folder)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _mkdir(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create the decode cache {self.folder} ({e.strerror or e}); set "
                             "CLASSICNETS_CACHE to a writable folder, or data.cache=never") from None  # fmt: skip

    def _check_space(self, images: int) -> None:
        s = self.spec
        needed = disk_cost(images, s.size, s.channels)
        free = shutil.disk_usage(self.folder).free
        if needed > free:
            raise CacheTooLarge(
                f"the decode cache needs {human_size(needed)} for {images:,} images ({s.size}x{s.size}x{s.channels} "
                f"bytes each) but {self.folder} has {human_size(free)} free; free some space, point CLASSICNETS_CACHE "
                "at a larger disk, or train with data.cache=never"
            )


def folder_images(root: str | os.PathLike) -> list[str]:
    """Every image of a prepared folder (all its splits) or of a class-folder tree, as training would list them."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (give a prepared folder or class folders)")
    splits = find_split_dirs(root)
    paths = []
    for folder in splits.values() if splits else [root]:
        paths += [str(p) for files in list_class_folders(folder).classes.values() for p in files]
    if not paths:
        raise DataError(f"{root}: no images in class folders to cache")
    return paths


def build_folder_cache(
    root: str | os.PathLike,
    *,
    size: int = 256,
    mode: str = "RGB",
    interpolation: str = "bilinear",
    workers: int = 0,
    progress: bool = False,
) -> tuple[DecodeCache, list[str], CachedRows]:
    """`classicnets prepare --cache`: the decode cache of every image in `root` at `size`, built ahead of training
    (the one training with resize_size=`size` then reads). Returns the cache, the image paths and their rows."""
    paths = folder_images(root)
    cache = DecodeCache(CacheSpec(Path(root).resolve(), size, mode, interpolation))
    return cache, paths, cache.build(paths, workers=workers, progress=progress)


def _stat(path: str) -> tuple[int, int] | None:
    """(size, modification time in ns): what tells a changed file from the one that was decoded."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
