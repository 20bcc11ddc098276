"""The in-memory loader: a small decoded set (MNIST-style digits, CIFAR) kept as one uint8 tensor on the device.

Batches are gathered, cropped and flipped on the device (airbench's approach): no workers, no decoding, no copies
from the host per step. Same interface as loaders.Loader; `bad_files` is always empty (nothing is decoded).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from classicnets.data import batch_transforms as bt
from classicnets.data.datasets import InMemoryDataset
from classicnets.data.epoch_loader import EpochLoaderBase
from classicnets.data.transforms import ImageTransform
from classicnets.rng import mix_seed

# ITU-R BT.601 luma weights, what PIL's convert("L") uses, for colour sets fed to a 1-channel model.
_LUMA = (0.299, 0.587, 0.114)


class DeviceLoader(EpochLoaderBase):
    """Batches of an InMemoryDataset, augmented on `device`. See make_loader."""

    def __init__(self, dataset: InMemoryDataset, **options):
        super().__init__(dataset, **options)
        images = dataset.images
        self.images = (images.unsqueeze(1) if images.dim() == 3 else images).to(self.device)  # N x C x H x W
        self.labels = torch.tensor(dataset.targets, dtype=torch.int64, device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.bad_files = []
        t = self.transform
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 3))
        order = torch.tensor(self.epoch_indices(), dtype=torch.long)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                break
            self.batch_indices = index.tolist()
            index = index.to(self.device)
            x = self._channels(self.images[index], 1 if t.mode == "L" else 3)
            yield batch_geometry(x, t, generator), self.labels[index]

    @staticmethod
    def _channels(x: torch.Tensor, channels: int) -> torch.Tensor:
        if x.shape[1] == channels:
            return x
        if channels == 3:
            return x.expand(-1, 3, -1, -1).contiguous()
        weights = torch.tensor(_LUMA, device=x.device)[None, :, None, None]
        return (x.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)


def batch_geometry(x: torch.Tensor, t: ImageTransform, generator: torch.Generator) -> torch.Tensor:
    """The transform's crops and flips, on the whole uint8 batch (transforms.ImageTransform describes the recipes).

    Shared with cached_loader.CachedLoader, whose rows are already resized (the resize is then a no-op)."""
    if t.recipe == "modern":
        return bt.random_flip_batch(bt.random_resized_crop_batch(x, t.size, generator), generator)
    if t.resize_size:
        x = bt.resize_short_side_batch(x, t.resize_size, t.interpolation)
    if t.recipe == "paper":
        return bt.random_flip_batch(bt.random_crop_batch(x, t.size, generator), generator)
    if t.recipe == "pad_crop":
        return bt.random_flip_batch(bt.random_pad_crop_batch(x, t.size, t.pad, generator), generator)
    if t.ten_crop:
        return bt.ten_crop_batch(x, t.size)
    return bt.center_crop_batch(x, t.size)
