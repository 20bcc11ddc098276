"""How images become a model's input: `Preprocessing` (size, resize, mean/std, channel order, pixel scale) and the
conventions of the weights classicnets knows (docs/facts.md has the sources)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from classicnets.errors import UsageError

# torchvision's ImageNet statistics, RGB, pixels in [0, 1] (torchvision weight metadata; docs/facts.md).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe's bvlc_alexnet convention: BGR, pixels in [0, 255], mean [104, 117, 124] subtracted, no std (docs/facts.md).
CAFFE_BGR_MEAN = (104.0, 117.0, 124.0)
# MNIST training-set statistics used by the PyTorch MNIST example (pixels in [0, 1]).
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
# CIFAR-10 training-set statistics per channel over all 50,000 x 32 x 32 pixels, RGB in [0, 1] (docs/facts.md); the
# CIFAR models use them for CIFAR-100 too (its own differ by under 0.02).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocessing:
    """How images must be turned into a model's input tensor.

    Pixels are first scaled to [0, pixel_scale] (1.0 for torchvision's convention, 255.0 for Caffe's), put in
    `channel_order`, then normalised as (x - mean) / std. Evaluation resizes the short side to `resize_size`
    (no resize when None) and centre-crops `input_size[1:]`; an image smaller than the crop is padded with zeros
    (so 28x28 digits become LeNet-5's 32x32 input, as LeCun et al. 1998 centred them in a 32x32 field).
    """

    input_size: tuple[int, int, int]  # (channels, height, width)
    resize_size: int | None = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "RGB"  # "RGB", "BGR" or "L" (one channel)
    pixel_scale: float = 1.0
    interpolation: str = "bilinear"

    def with_channels(self, in_chans: int) -> Preprocessing:
        """The same convention for a model with `in_chans` input channels (1 = grayscale)."""
        if in_chans == self.input_size[0]:
            return self
        mean: tuple[float, ...]
        std: tuple[float, ...]
        if in_chans == 1:
            mean, std, order = (sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),), "L"
        elif in_chans == 3 and len(self.mean) == 1:
            mean, std, order = self.mean * 3, self.std * 3, "RGB"
        else:
            raise UsageError(f"in_chans must be 1 or 3, got {in_chans}")
        return replace(self, input_size=(in_chans, *self.input_size[1:]), mean=mean, std=std, channel_order=order)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise UsageError(f"unknown preprocessing keys: {', '.join(sorted(unknown))}")
        d = dict(d)
        for key in ("input_size", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)
