"""The one Dataset interface: images on disk (FileDataset) or in memory (InMemoryDataset), class names sorted.

Both are plain picklable objects (paths and ints, or one uint8 tensor), so DataLoader workers started with
`spawn` get a cheap copy. Decoding is `load(i)`; augmentation lives in transforms.py and loaders.py.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from classicnets.data.decode import decode_image


class ImageDataset(Dataset):
    """Labelled images. `classes` are the class names (index = label), `targets` the label of every sample."""

    classes: list[str]
    targets: list[int]
    source: str
    in_chans: int
    # The training augmentation `augment: auto` picks for this set (choices.AUGMENTATIONS): the paper's crops and
    # flips for photos; in-memory sets say their own (none for digits and clothes, pad_crop for CIFAR).
    augment: str = "paper"

    def __len__(self) -> int:
        return len(self.targets)

    def describe(self, index: int) -> str:
        """Where sample `index` comes from: its file path, or "name.idx#123" for in-memory sets."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """The samples at `indices`, same classes (so labels keep their meaning)."""
        raise NotImplementedError

    def load(self, index: int, *, mode: str | None = None, draft_short_side: int | None = None) -> Image.Image:
        """Sample `index` as a PIL image in `mode` ("RGB" or "L"; default from in_chans). May raise BadImageError."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """(uint8 tensor C x H x W at full resolution, label). A bad file raises BadImageError."""
        img = self.load(index)
        return pil_to_tensor(img), self.targets[index]

    def class_counts(self) -> dict[str, int]:
        """Samples per class name, every class listed (0 for an allowed empty class)."""
        counts = Counter(self.targets)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def _mode(self, mode: str | None) -> str:
        return mode or ("L" if self.in_chans == 1 else "RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {len(self)} samples, {len(self.classes)} classes)"


class FileDataset(ImageDataset):
    """Image files with labels: from a class-per-folder tree or a list file."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], *, source: str, in_chans: int = 3):
        self.paths = [str(p) for p, _ in samples]
        self.targets = [int(t) for _, t in samples]
        self.classes = list(classes)
        self.source = str(source)
        self.in_chans = in_chans

    def describe(self, index: int) -> str:
        return self.paths[index]

    def subset(self, indices: Sequence[int]) -> FileDataset:
        samples = [(self.paths[i], self.targets[i]) for i in indices]
        return FileDataset(samples, self.classes, source=self.source, in_chans=self.in_chans)

    def load(self, index: int, *, mode: str | None = None, draft_short_side: int | None = None) -> Image.Image:
        return decode_image(self.paths[index], mode=self._mode(mode), draft_short_side=draft_short_side)


class InMemoryDataset(ImageDataset):
    """Images already decoded into one uint8 tensor N x H x W (grayscale) or N x C x H x W (IDX digits, CIFAR).

    `name` is what describe() shows before "#index" (default: the source's file name); `augment` the training
    augmentation `auto` resolves to for this set (default none: a mirrored digit is not the same digit).
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: Sequence[int],
        classes: Sequence[str],
        *,
        source: str,
        origin: Sequence[int] | None = None,
        name: str | None = None,
        augment: str = "none",
    ):
        if images.dtype != torch.uint8 or images.dim() not in (3, 4):
            shape = tuple(images.shape)
            raise ValueError(f"images must be a uint8 N x H x W or N x C x H x W tensor, got {images.dtype} {shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.source = str(source)
        self.in_chans = 1 if images.dim() == 3 else images.shape[1]
        self.name = name or os.path.basename(self.source)
        self.augment = augment
        # Each sample's index in the source file: a subset (a validation split) still names its images as the
        # file numbers them.
        self.origin = list(origin) if origin is not None else None

    def describe(self, index: int) -> str:
        return f"{self.name}#{self.origin[index] if self.origin is not None else index}"

    def subset(self, indices: Sequence[int]) -> InMemoryDataset:
        index = torch.as_tensor(list(indices), dtype=torch.long).tolist()
        origin = [self.origin[i] for i in index] if self.origin is not None else index
        return InMemoryDataset(
            self.images[index], [self.targets[i] for i in index], self.classes, source=self.source, origin=origin,
            name=self.name, augment=self.augment,
        )  # fmt: skip

    def load(self, index: int, *, mode: str | None = None, draft_short_side: int | None = None) -> Image.Image:
        a = self.images[index].cpu().numpy()
        img = Image.fromarray(a if a.ndim == 2 else (a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)))
        return img.convert(self._mode(mode))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        return (x.unsqueeze(0) if x.dim() == 2 else x), self.targets[index]


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image in L or RGB as a uint8 tensor C x H x W (a copy: the tensor owns its memory)."""
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        return torch.from_numpy(a if a.flags.writeable else a.copy()).unsqueeze(0)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # HWC -> CHW copies
