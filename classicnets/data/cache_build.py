"""Building the decode cache (cache.py): the files it lacks decoded into rows (in worker processes), the rows
appended to images.u8, the index committed every COMMIT_EVERY rows and at the end. cache.DecodeCache.build holds the
lock and runs a Builder; apart from cache.py only to keep each module short.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from classicnets.data.decode import TOO_LARGE, BadImageError, decode_image
from classicnets.data.transforms import RESAMPLE, center_crop, check_resize, resize_short_side, short_side_size
from classicnets.errors import WriteError, first_line
from classicnets.fileio import atomic_write_text

log = logging.getLogger(__name__)

# Rows decoded between two commits of the index during a build: an interrupted build keeps all but the last
# few hundred images (1,024 rows of 256 x 256 x 3 are 192 MiB).
COMMIT_EVERY = 1024


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


class Builder:
    """One build: decode the missing files, append their rows, commit the index every COMMIT_EVERY rows."""

    def __init__(self, cache: Any, index: dict[str, Any], match: Any, paths: Sequence[str]) -> None:
        """`cache`: the cache.DecodeCache whose lock is held; `match`: its view of `paths` (rows, bad, missing)."""
        self.cache, self.index, self.match = cache, index, match
        self.keys = list(match.missing)
        self.paths = [paths[match.missing[k][0]] for k in self.keys]

    def run(self, workers: int, progress: bool, multiprocessing_context: str | None) -> None:
        from tqdm import tqdm

        c = self.cache
        log.info("decode cache: decoding %d images into %s (%s)", len(self.keys), c.folder,
                 human_size(disk_cost(len(self.keys), c.spec.size, c.spec.channels)))  # fmt: skip
        job = DecodeJob(self.paths, c.spec)
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


class DecodeJob(Dataset):
    """Worker side of a build: (position, row or None, reason code, detail) per file. Picklable (paths and the spec)."""

    def __init__(self, paths: Sequence[str], spec: Any) -> None:  # a cache.CacheSpec
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


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"
