"""The loader over the decode cache (cache.py): batches gathered from memory-mapped uint8 rows, cropped and flipped
on the whole batch in this process (device_loader.batch_geometry), no DataLoader workers: every core is the model's.

Determinism, as loaders.Loader: the sample order of an epoch is drawn from (seed, epoch) by EpochLoaderBase, and the
crops and flips of batch b from a generator seeded by (seed, epoch, b), so the batches of an epoch depend only on
(seed, epoch): a run resumed mid-epoch sees the same batches as an uninterrupted one. The pixels differ from the
decoding loader's: crops come from the central S x S square of the resized image, the paper's own preprocessing.

Files that failed to decode when the cache was built are left out of their batches with the same rules, log lines
and limits as the decoding loader (epoch_loader.GuardedLoaderBase).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler

from classicnets.data.cache import CachedRows, CacheSpec, CacheTooLarge, DecodeCache, data_root
from classicnets.data.datasets import FileDataset, ImageDataset
from classicnets.data.device_loader import batch_geometry
from classicnets.data.epoch_loader import GuardedLoaderBase
from classicnets.data.transforms import ImageTransform
from classicnets.errors import UsageError
from classicnets.process_env import usable_cores
from classicnets.rng import mix_seed

log = logging.getLogger(__name__)

# The generator streams of mix_seed(seed, epoch, stream, ...): 0 the sample order (epoch_loader), 1 PCA noise
# (batch_transforms), 2 worker seeds (loaders), 3 the in-memory loader's crops; 4 this loader's crops, per batch.
_CROP_STREAM = 4


class CachedLoader(GuardedLoaderBase):
    """Batches of a FileDataset read from its decode cache `cached`. See make_loader."""

    def __init__(self, dataset: ImageDataset, *, cached: CachedRows, **options) -> None:
        super().__init__(dataset, **options)
        self.cached = cached
        self.labels = torch.tensor(dataset.targets, dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.bad_files = []
        batches = list(BatchSampler(self.epoch_indices(), self.batch_size, self.drop_last))
        total = sum(len(b) for b in batches)
        bad = self.cached.bad
        in_row = 0
        for number, batch in enumerate(batches):
            good = []
            for index in batch:
                in_row = in_row + 1 if index in bad else 0
                if index in bad:
                    self._skip_bad(index, *bad[index], in_row, total)
                else:
                    good.append(index)
            if not good and not self.empty_batches:
                continue
            self.batch_indices = good
            yield self._batch(good, number)
        self._report_bad(total)

    def _batch(self, good: list[int], number: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not good:
            return self._no_images().to(self.device), self.labels[:0].to(self.device)
        rows = np.asarray(self.cached.images[self.cached.rows[good]])  # one copy out of the page cache
        # N x C x S x S as a view with channels_last strides; moved as uint8 (a quarter of float's bytes)
        x = torch.from_numpy(rows).movedim(-1, -3).to(self.device, non_blocking=True)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, _CROP_STREAM, number))
        return batch_geometry(x, self.transform, generator), self.labels[good].to(self.device)


def cached_rows(
    dataset: ImageDataset,
    transform: ImageTransform,
    *,
    cache: str,
    build: bool = True,
    workers: int = 0,
    multiprocessing_context: str | None = None,
) -> CachedRows | None:
    """The decode-cache rows for `dataset`, or None to decode as before.

    `cache` (choices.DATA_CACHE): never; always (build what is missing, errors when the cache cannot be used); auto
    (the same, but decode as before when the data or the model does not suit a cache or the disk is too full).
    `build=False` only reads a cache that already holds every file (evaluation).
    """
    if cache == "never":
        return None
    reason = cannot_cache(dataset, transform)
    if reason:
        if cache == "always":
            raise UsageError(f"data.cache=always: {reason}; use data.cache=auto or never")
        return None
    assert isinstance(dataset, FileDataset) and transform.resize_size  # what cannot_cache checked
    spec = CacheSpec(data_root(dataset), int(transform.resize_size), transform.mode, transform.interpolation)
    store = DecodeCache(spec)
    if not build:
        return store.open(dataset.paths)
    try:
        return store.build(dataset.paths, workers=build_workers(workers),
                           multiprocessing_context=multiprocessing_context)  # fmt: skip
    except CacheTooLarge as e:
        if cache == "always":
            raise
        log.warning("%s; decoding the images every epoch instead", e)
        return None


def cannot_cache(dataset: ImageDataset, transform: ImageTransform) -> str | None:
    """Why the decode cache cannot serve this data set and transform, or None when it can."""
    if not isinstance(dataset, FileDataset):
        return f"{dataset.source} is not a set of image files"
    if not transform.resize_size:
        return "the model's preprocessing resizes nothing (resize_size is None), so there is no size to cache at"
    if max(transform.size) > transform.resize_size:
        h, w = transform.size
        return f"the crop {h}x{w} is larger than the resize size {transform.resize_size}"
    return None


def build_workers(workers: int) -> int:
    """Processes that decode a build: every core this process may use (nothing else runs yet), or none when the
    caller asked for none (workers=0: decode in this process)."""
    return max(workers, usable_cores()) if workers else 0
