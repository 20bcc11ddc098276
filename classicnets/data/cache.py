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
from torch.utils.data import DataLoader, Dataset

from classicnets import choices
from classicnets.data.decode import TOO_LARGE, BadImageError, decode_image
from classicnets.data.folders import find_split_dirs, list_class_folders
from classicnets.data.transforms import RESAMPLE, center_crop, check_resize, resize_short_side, short_side_size
from classicnets.errors import DataError, WriteError, first_line
from classicnets.fileio import atomic_write_text, cache_dir

log = logging.getLogger(__name__)

FORMAT = "classicnets-decode-cache"
VERSION = 1
# Rows decoded between two commits of the index during a build: an interrupted build keeps all but the last
# few hundred images (1,024 rows of 256 x 256 x 3 are 192 MiB).
COMMIT_EVERY = 1024


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


def disk_cost(images: int, size: int, channels: int = 3) -> int:
    """Bytes the rows of `images` images take: S x S x C each (256 x 256 x 3 = 196,608 bytes = 192 KiB)."""
    return images * size * size * channels


def decode_row(path: str | os.PathLike, size: int, mode: str = "RGB", interpolation: str = "bilinear") -> np.ndarray:
    """One cache row: the image decoded, its short side resized to `size`, the central size x size square as an
    H x W x C uint8 array. Raises BadImageError, or MemoryError for a strip too long to resize (TOO_LARGE)."""
    img = decode_image(path, mode=mode, draft_short_side=size)
    check_resize(img.width, img.height, short_side_size(img.width, img.height, size))
    img = center_crop(resize_short_side(img, size, RESAMPLE[interpolation]), (size, size))
    a = np.asarray(img)
    return a[:, :, None] if a.ndim == 2 else a


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
                _Builder(self, index, match, paths).run(workers, progress, multiprocessing_context)
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
                f"the decode cache needs {_size(needed)} for {images:,} images ({s.size}x{s.size}x{s.channels} "
                f"bytes each) but {self.folder} has {_size(free)} free; free some space, point CLASSICNETS_CACHE "
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


class _Builder:
    """One build: decode the missing files, append their rows, commit the index every COMMIT_EVERY rows."""

    def __init__(self, cache: DecodeCache, index: dict[str, Any], match: _Match, paths: Sequence[str]) -> None:
        self.cache, self.index, self.match = cache, index, match
        self.keys = list(match.missing)
        self.paths = [paths[match.missing[k][0]] for k in self.keys]

    def run(self, workers: int, progress: bool, multiprocessing_context: str | None) -> None:
        from tqdm import tqdm

        c = self.cache
        log.info("decode cache: decoding %d images into %s (%s)", len(self.keys), c.folder,
                 _size(disk_cost(len(self.keys), c.spec.size, c.spec.channels)))  # fmt: skip
        job = _DecodeJob(self.paths, c.spec)
        loader = DataLoader(job, batch_size=None, num_workers=workers, collate_fn=_as_is,
                            multiprocessing_context=multiprocessing_context if workers else None)  # fmt: skip
        try:
            with open(c.data_path, "ab+") as f:
                f.truncate(self.index["rows"] * c.spec.row_bytes)  # rows a killed build wrote but never committed
                f.seek(0, os.SEEK_END)
                for done, (j, row, code, detail) in enumerate(tqdm(loader, total=len(job), unit="img",
                                                                   disable=not progress, desc="decode cache"), 1):
                    self._add(f, j, row, code, detail)
                    if done % COMMIT_EVERY == 0:
                        self._commit(f)
                self._commit(f)
        except OSError as e:
            raise WriteError(f"cannot write the decode cache {c.data_path}: {e.strerror or e}") from e
        if self.index["bad"]:
            log.warning("decode cache: %d files could not be decoded (first: %s); `classicnets scan` lists them",
                        len(self.index["bad"]), next(iter(self.index["bad"])))  # fmt: skip

    def _add(self, f, j: int, row: np.ndarray | None, code: str | None, detail: str | None) -> None:
        key = self.keys[j]
        samples = self.match.missing[key]
        stat = self.match.stats[samples[0]]
        if row is None:
            if stat is not None:  # a file that is not there has no size or time to key it on: tried again next time
                self.index["bad"][key] = [*stat, code, detail]
            for i in samples:
                self.match.bad[i] = (str(code), str(detail))
            return
        f.write(np.ascontiguousarray(row).tobytes())
        number = self.index["rows"]
        self.index["rows"] = number + 1
        self.index["files"][key] = [*stat, number] if stat is not None else None
        self.index["bad"].pop(key, None)
        self.match.rows[samples] = number

    def _commit(self, f) -> None:
        f.flush()
        os.fsync(f.fileno())
        index = dict(self.index, files={k: v for k, v in self.index["files"].items() if v is not None})
        atomic_write_text(self.cache.index_path, json.dumps(index, separators=(",", ":")))


class _DecodeJob(Dataset):
    """Worker side of a build: (position, row or None, reason code, detail) per file. Picklable (paths and the spec)."""

    def __init__(self, paths: Sequence[str], spec: CacheSpec) -> None:
        self.paths, self.spec = list(paths), spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, j: int) -> tuple[int, np.ndarray | None, str | None, str | None]:
        s = self.spec
        try:
            return j, decode_row(self.paths[j], s.size, s.mode, s.interpolation), None, None
        except BadImageError as e:
            return j, None, e.code, e.detail
        except MemoryError as e:  # a strip too long to resize (transforms.ResizeTooLarge), or memory running out
            return j, None, TOO_LARGE, first_line(e)


def _as_is(item: Any) -> Any:
    """The DataLoader's collate function for one item: keep the numpy row (the default would make it a tensor)."""
    return item


def _stat(path: str) -> tuple[int, int] | None:
    """(size, modification time in ns): what tells a changed file from the one that was decoded."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"
