"""make_loader: batches of uint8 images with labels, deterministic per (seed, epoch), guarded against bad files.

Determinism: shuffling is a permutation drawn from (seed, epoch); each sample's augmentation from its own
generator seeded by (seed, epoch, sample index). So the batches of epoch e depend only on (seed, epoch), not on
the number of workers, which worker decoded what, or on the epochs before (what bit-identical resume needs).
Workers are also seeded from (seed, epoch, worker id), for any library that uses the global generators.

Bad files: decoding happens inside a guard. A file that fails (BadImageError, or memory running out on a file
that passed the decoder's size check) is left out of its batch (so that batch is smaller; a batch with no good
sample is skipped, or with `empty_batches` yielded with 0 images, so that under torchrun every process can agree
to skip that step), logged once with its reason, and listed in `loader.bad_files`. Too many
failures end the epoch with a DataError: more than `max_bad_fraction` of the epoch's samples, or
`max_bad_in_row` consecutive samples (a sign of a wrong path or a broken disk, not of a few bad photos).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from classicnets.choices import DATA_CACHE
from classicnets.data.cached_loader import CachedLoader, cached_rows
from classicnets.data.datasets import ImageDataset, InMemoryDataset
from classicnets.data.decode import TOO_LARGE, BadImageError
from classicnets.data.device_loader import DeviceLoader
from classicnets.data.epoch_loader import EpochLoaderBase, GuardedLoaderBase
from classicnets.data.transforms import ImageTransform
from classicnets.errors import DataError, UsageError, first_line
from classicnets.models.preprocessing import Preprocessing
from classicnets.rng import mix_seed

log = logging.getLogger(__name__)


def make_loader(
    dataset: ImageDataset,
    *,
    preprocessing: Preprocessing,
    train: bool,
    batch_size: int,
    recipe: str = "auto",
    workers: int = 0,
    seed: int = 0,
    shuffle: bool | None = None,
    drop_last: bool = False,
    ten_crop: bool = False,
    max_bad_fraction: float = 0.01,
    max_bad_in_row: int = 20,
    sampler: Sampler | None = None,
    device: str | torch.device = "cpu",
    multiprocessing_context: str | None = None,
    empty_batches: bool = False,
    cache: str = "never",
    build_cache: bool = True,
) -> EpochLoaderBase:
    """A loader yielding (uint8 images N x C x H x W on `device`, int64 labels), see docs/data.md.

    `shuffle` defaults to `train`. `recipe` is the training augmentation (choices.AUGMENTATIONS); "auto" takes the
    data set's own (`dataset.augment`: paper for image files, pad_crop for CIFAR, none for digits and clothes).
    In-memory datasets (IDX digits, CIFAR, Keras .npz) get a loader that keeps the whole set on `device` and
    crops/flips there (no workers, no decoding); file datasets use DataLoader workers, started with
    `multiprocessing_context` ("fork", "spawn", "forkserver"; default: the platform's). `empty_batches`: a batch
    whose every file failed is yielded with 0 images instead of being left out (training under torchrun).
    `cache` (choices.DATA_CACHE, default never): read image files from the decode cache (cache.py), building what
    it lacks with `workers` processes unless `build_cache` is False (then only a cache holding every file is used);
    a cached loader starts no workers (cached_loader.CachedLoader).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    if not 0.0 <= max_bad_fraction <= 1.0 or max_bad_in_row < 1:
        raise UsageError("max_bad_fraction must be in [0, 1] and max_bad_in_row at least 1")
    if len(dataset) == 0:
        raise DataError(f"{dataset.source}: no samples to load")
    shuffle = train if shuffle is None else shuffle
    if recipe == "auto":
        recipe = dataset.augment
        if train:
            log.info("augmentation: %s (auto, for %s)", recipe, dataset.source)
    transform = ImageTransform(preprocessing, train=train, recipe=recipe, ten_crop=ten_crop)
    options = dict(batch_size=batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last, sampler=sampler,
                   device=torch.device(device))  # fmt: skip
    if isinstance(dataset, InMemoryDataset):
        return DeviceLoader(dataset, transform=transform, **options)
    guard = dict(max_bad_fraction=max_bad_fraction, max_bad_in_row=max_bad_in_row, empty_batches=empty_batches)
    if cache not in DATA_CACHE:
        raise UsageError(f"unknown cache mode {cache!r}; use one of {', '.join(DATA_CACHE)}")
    rows = cached_rows(dataset, transform, cache=cache, build=build_cache, workers=workers,
                       multiprocessing_context=multiprocessing_context)  # fmt: skip
    if rows is not None:
        return CachedLoader(dataset, cached=rows, transform=transform, **guard, **options)
    return Loader(dataset, transform=transform, workers=workers, multiprocessing_context=multiprocessing_context,
                  **guard, **options)  # fmt: skip


class Loader(GuardedLoaderBase):
    """Image files through DataLoader workers, with the bad-file guard. See make_loader."""

    def __init__(self, dataset, *, transform, workers, multiprocessing_context=None, **options):
        super().__init__(dataset, transform=transform, **options)
        self.workers = workers
        self.multiprocessing_context = multiprocessing_context

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.bad_files = []
        batches = list(BatchSampler(self.epoch_indices(), self.batch_size, self.drop_last))
        total = sum(len(b) for b in batches)
        samples = _GuardedSamples(self.dataset, self.transform, self.seed, self.epoch)
        loader = DataLoader(
            samples,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=collate_guarded,
            worker_init_fn=WorkerSeeder(self.seed, self.epoch) if self.workers else None,
            pin_memory=self.device.type == "cuda",
            multiprocessing_context=self.multiprocessing_context if self.workers else None,
        )
        in_row = 0
        for images, labels, failures, sample_indices in loader:
            oks = [index is None for index, _, _ in failures]
            for index, code, detail in failures:
                in_row = in_row + 1 if index is not None else 0
                if index is not None:
                    self._skip_bad(index, code, detail, in_row, total)
            if images is None:
                if not self.empty_batches:
                    continue
                images = self._no_images()
            self.batch_indices = [i for i, ok in zip(sample_indices, oks, strict=True) if ok]
            non_blocking = self.device.type == "cuda"
            yield images.to(self.device, non_blocking=non_blocking), labels.to(self.device, non_blocking=non_blocking)
        self._report_bad(total)


class _GuardedSamples(Dataset):
    """Worker side: decode + transform one sample; a bad file becomes a failure record instead of an exception.

    Holds only picklable things (the dataset's paths, the transform's numbers), so spawn-started workers work.
    """

    def __init__(self, dataset: ImageDataset, transform: ImageTransform, seed: int, epoch: int):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, index]) if self.transform.random else None
        try:
            img = self.dataset.load(index, mode=self.transform.mode, draft_short_side=self.transform.draft_short_side)
            return self.transform.apply(img, rng), self.dataset.targets[index], index, None, None
        except BadImageError as e:
            return None, self.dataset.targets[index], index, e.code, e.detail
        except MemoryError as e:  # a strip too long to resize (transforms.ResizeTooLarge), or memory running out
            return None, self.dataset.targets[index], index, TOO_LARGE, first_line(e)


def collate_guarded(items: list[tuple[Any, ...]]) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple], list[int]]:
    """Stack the good samples; return (images or None, labels, outcome per sample, dataset index per sample).

    The outcome list has (None, None, None) for a good sample and (index, code, detail) for a bad one, so the
    main process can count failures in a row across the batch.
    """
    good = [item for item in items if item[0] is not None]
    outcomes = [(None, None, None) if item[0] is not None else (item[2], item[3], item[4]) for item in items]
    labels = torch.tensor([item[1] for item in good], dtype=torch.int64)
    images = None
    if good:
        # One copy, by numpy, of channel-last arrays into the batch; the N x C x H x W result is a view with
        # channels_last strides (the layout convolutions prefer). Not torch.stack: on uint8 it goes through
        # OpenMP, whose threads spin-wait for a core on a busy machine (1 s instead of 10 ms measured here).
        images = torch.from_numpy(np.stack([item[0] for item in good])).movedim(-1, -3)
    return images, labels, outcomes, [item[2] for item in items]


class WorkerSeeder:
    """worker_init_fn: seed Python's, numpy's and torch's global generators from (seed, epoch, worker id)."""

    def __init__(self, seed: int, epoch: int):
        self.seed, self.epoch = seed, epoch

    def __call__(self, worker_id: int) -> None:
        s = mix_seed(self.seed, self.epoch, 2, worker_id)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
