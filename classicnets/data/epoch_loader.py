"""What both loaders share (loaders.Loader for files, device_loader.DeviceLoader for in-memory sets): the epoch,
the sample order of an epoch, and the batch count."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from classicnets.data.datasets import ImageDataset
from classicnets.data.transforms import ImageTransform
from classicnets.rng import mix_seed


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
