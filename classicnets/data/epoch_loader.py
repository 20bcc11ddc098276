"""What the loaders share (loaders.Loader and cached_loader.CachedLoader for files, device_loader.DeviceLoader for
in-memory sets): the epoch, the sample order of an epoch, the batch count; for files, the bad-file limits."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from classicnets.data.datasets import ImageDataset
from classicnets.data.transforms import ImageTransform
from classicnets.errors import DataError
from classicnets.rng import mix_seed

log = logging.getLogger(__name__)


class EpochLoaderBase:
    """What both loaders share: epochs, the sample order of an epoch, len()."""

    def __init__(
        self,
        dataset: ImageDataset,
        *,
        transform: ImageTransform,
        batch_size: int,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        sampler: Sampler[int] | None,
        device: torch.device,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.sampler = sampler
        self.device = device
        self.epoch = 0
        self.bad_files: list[tuple[str, str]] = []
        self.batch_indices: list[int] = []  # dataset indices of the batch yielded last, in order

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffling and augmentation from (seed, epoch); forwarded to a DistributedSampler."""
        self.epoch = int(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def epoch_indices(self) -> list[int]:
        """The sample order of the current epoch (before batching)."""
        if self.sampler is not None:
            return [int(i) for i in self.sampler]
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0))
        return torch.randperm(n, generator=generator).tolist()

    def _num_samples(self) -> int:
        # the samplers classicnets uses (distributed.TrainSampler, ShardSampler) have a length
        return len(self.sampler) if self.sampler is not None else len(self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class GuardedLoaderBase(EpochLoaderBase):
    """What the two file loaders share: bad files left out, logged, listed in `bad_files` and counted against
    `max_bad_fraction` and `max_bad_in_row` (loaders.make_loader describes the rules); `empty_batches`."""

    def __init__(self, dataset: ImageDataset, *, max_bad_fraction: float, max_bad_in_row: int,
                 empty_batches: bool = False, **options) -> None:  # fmt: skip
        super().__init__(dataset, **options)
        self.max_bad_fraction = max_bad_fraction
        self.max_bad_in_row = max_bad_in_row
        self.empty_batches = empty_batches

    def _skip_bad(self, index: int, code: str, detail: str, in_row: int, total: int) -> None:
        """Record sample `index` as skipped; `in_row` counts this failure. Raises DataError past the limits."""
        where = self.dataset.describe(index)
        self.bad_files.append((where, code))
        log.warning("skipped %s: %s (%s)", where, code, detail)
        self._check_limits(in_row, total, where)

    def _report_bad(self, total: int) -> None:
        if self.bad_files:
            log.warning("%d of %d files could not be read this epoch and were skipped; `classicnets scan` lists "
                        "them all", len(self.bad_files), total)  # fmt: skip

    def _no_images(self) -> torch.Tensor:
        """A batch of 0 images of the transform's shape."""
        t = self.transform
        return torch.empty((0, *((10,) if t.ten_crop else ()), 1 if t.mode == "L" else 3, *t.size), dtype=torch.uint8)

    def _check_limits(self, in_row: int, total: int, where: str) -> None:
        bad = len(self.bad_files)
        if in_row >= self.max_bad_in_row:
            raise DataError(
                f"{in_row} files in a row could not be read (last: {where}); is the data path right? "
                f"run `classicnets scan` on the folder (limit: max_bad_in_row={self.max_bad_in_row})"
            )
        if bad > self.max_bad_fraction * total:
            raise DataError(
                f"{bad} of {total} files could not be read, more than {self.max_bad_fraction:.1%} "
                f"(last: {where}); run `classicnets scan` on the folder and fix or remove them "
                f"(or raise max_bad_fraction)"
            )
