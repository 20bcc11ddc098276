"""Per-image geometry in the loader workers, on uint8 PIL images: resize, crops, flips, 10-crop.

Pixel scale: everything here stays uint8 0..255 in RGB or L; scaling, channel order, PCA lighting and mean/std
happen per batch on the device (batch_transforms.BatchTransform).

Recipes (train=True):
  paper   resize the short side to preprocessing.resize_size (256), random crop at the model's input size
          (224 or 227), horizontal flip with p=0.5 (Krizhevsky et al. 2012, section 4.1).
  modern  random-resized crop (area 8-100 %, aspect 3/4-4/3) to the input size + flip (Szegedy et al. 2015,
          "Going deeper with convolutions", section 6; torchvision's RandomResizedCrop).
  pad_crop  resize (if the model asks), pad 4 zero pixels on each side, random crop at the input size, flip
          (He et al. 2016, section 4.2, for CIFAR; torchvision's RandomCrop(32, padding=4)).
  none    the evaluation geometry only, never flipped (for digits, where a mirrored 2 is not a 2).
  auto    for these per-image transforms (files), paper; make_loader resolves auto per data set first.
Evaluation (train=False): resize the short side + centre crop, or 10-crop. A crop larger than the image pads
with zeros (LeNet-5's 28x28 digits become 32x32).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from classicnets.choices import AUGMENTATIONS
from classicnets.data.decode import MAX_PIXELS
from classicnets.errors import UsageError
from classicnets.models.preprocessing import Preprocessing

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# torchvision RandomResizedCrop defaults, from Szegedy et al. 2015 (GoogLeNet), section 6.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
# He et al. 2016 ("Deep Residual Learning", section 4.2) on CIFAR-10: "4 pixels are padded on each side, and a 32x32
# crop is randomly sampled from the padded image or its horizontal flip".
PAD_CROP_PADDING = 4


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the short side `size`, aspect kept, long side truncated (as torchvision does)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_short_side(img: Image.Image, size: int, resample: int = Image.Resampling.BILINEAR) -> Image.Image:
    """Resize so the short side is `size`, keeping the aspect ratio."""
    if min(img.size) == size:
        return img
    return img.resize(short_side_size(img.width, img.height, size), resample)


def resized_crop(img: Image.Image, size: int, top: int, left: int, crop_hw: tuple[int, int], resample: int):
    """crop(resize_short_side(img, size), top, left, *crop_hw), resampling only the cropped region.

    Pillow's `box` maps each output pixel to the same source position with the same filter width as the full
    resize would, so the pixels are those of resize-then-crop up to rounding (off by 1 in 0.03 % of the pixels on the
    cats-vs-dogs sample), at 79 % of the work for a 227
    crop of 256 (measured by benchmarks/bench_data.py).
    """
    rw, rh = short_side_size(img.width, img.height, size)
    sx, sy = img.width / rw, img.height / rh
    h, w = crop_hw
    return img.resize((w, h), resample, box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))


def crop(img: Image.Image, top: int, left: int, height: int, width: int) -> Image.Image:
    """A crop; the parts outside the image are zeros (PIL fills them with black)."""
    return img.crop((left, top, left + width, top + height))


def center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre crop to (height, width), zero-padding an image smaller than that (torchvision's CenterCrop)."""
    h, w = size
    top = int(round((img.height - h) / 2.0))
    left = int(round((img.width - w) / 2.0))
    return crop(img, top, left, h, w)


def random_crop(img: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random (height, width) crop; an image smaller than the crop is placed at a random offset in zeros."""
    h, w = size
    top = int(rng.integers(min(0, img.height - h), max(0, img.height - h) + 1))
    left = int(rng.integers(min(0, img.width - w), max(0, img.width - w) + 1))
    return crop(img, top, left, h, w)


def random_pad_crop(img: Image.Image, size: tuple[int, int], pad: int, rng: np.random.Generator) -> Image.Image:
    """A (height, width) crop at a random offset of the image padded with `pad` zeros on each side."""
    h, w = size
    top = int(rng.integers(-pad, img.height - h + pad + 1))
    left = int(rng.integers(-pad, img.width - w + pad + 1))
    return crop(img, top, left, h, w)


def random_resized_box(
    width: int, height: int, rng: np.random.Generator, scale=RRC_SCALE, ratio=RRC_RATIO
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop: torchvision's algorithm (10 tries, then the central crop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: the largest central crop within the ratio range
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def five_crop(img: Image.Image, size: tuple[int, int]) -> list[Image.Image]:
    """Top-left, top-right, bottom-left, bottom-right and centre crops (torchvision's FiveCrop order)."""
    h, w = size
    H, W = img.height, img.width
    if h > H or w > W:
        img = center_crop(img, (max(h, H), max(w, W)))  # pad first, so every corner crop is inside
        H, W = img.height, img.width
    return [crop(img, 0, 0, h, w), crop(img, 0, W - w, h, w), crop(img, H - h, 0, h, w),
            crop(img, H - h, W - w, h, w), center_crop(img, size)]  # fmt: skip


def ten_crop(img: Image.Image, size: tuple[int, int]) -> list[Image.Image]:
    """The five crops of the image, then the five crops of its mirror image (torchvision's TenCrop order)."""
    return five_crop(img, size) + five_crop(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), size)


def resized_ten_crop(img: Image.Image, resize: int, size: tuple[int, int], resample: int) -> list[Image.Image]:
    """ten_crop(resize_short_side(img, resize), size) when the crops lie inside the resized image, resampling only
    the ten crops (resized_crop): a 1 x 100,000 image is never resized whole (256 x 25,600,000 pixels)."""
    rw, rh = short_side_size(img.width, img.height, resize)
    h, w = size
    corners = [(0, 0), (0, rw - w), (rh - h, 0), (rh - h, rw - w)]
    centre = (int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0)))
    # A crop of the mirror image at `left` is the mirror image of the crop at rw - w - left: the corners swap
    # left and right, and the mirror image's centre crop rounds the other way when rw - w is odd.
    mirrored = [(0, rw - w), (0, 0), (rh - h, rw - w), (rh - h, 0), (centre[0], rw - w - centre[1])]
    crops = [resized_crop(img, resize, top, left, size, resample) for top, left in [*corners, centre]]
    flip = Image.Transpose.FLIP_LEFT_RIGHT
    return crops + [resized_crop(img, resize, top, left, size, resample).transpose(flip) for top, left in mirrored]


class ResizeTooLarge(MemoryError):
    """Resizing an image would allocate more than MAX_PIXELS pixels (a long thin strip): the loader skips the file
    as TOO_LARGE."""


def check_resize(width: int, height: int, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_PIXELS:
        raise ResizeTooLarge(
            f"{width}x{height} resized to {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, over the limit of "
            f"{MAX_PIXELS:,}"
        )


class ImageTransform:
    """Decoded PIL image -> uint8 tensor C x H x W (or 10 x C x H x W with ten_crop) at the model's input size.

    Picklable (only numbers and strings), so DataLoader workers can be started with spawn. Random choices come
    from the `rng` passed per call: the loader seeds it from (seed, epoch, sample index).
    """

    def __init__(self, preprocessing: Preprocessing, *, train: bool, recipe: str = "paper", ten_crop: bool = False):
        if recipe not in AUGMENTATIONS:
            raise UsageError(f"unknown recipe {recipe!r}; use one of {', '.join(AUGMENTATIONS)}")
        if ten_crop and train:
            raise UsageError("ten_crop is an evaluation transform; use it with train=False")
        if preprocessing.interpolation not in RESAMPLE:
            raise UsageError(f"unknown interpolation {preprocessing.interpolation!r}; use one of {', '.join(RESAMPLE)}")
        self.size = (int(preprocessing.input_size[1]), int(preprocessing.input_size[2]))
        self.mode = "L" if preprocessing.input_size[0] == 1 else "RGB"
        self.resize_size = preprocessing.resize_size
        self.interpolation = preprocessing.interpolation
        self.resample = RESAMPLE[preprocessing.interpolation]
        # auto: image files are photos, for which the paper's recipe is the default (make_loader resolves auto
        # per data set before it gets here)
        self.recipe = ("paper" if recipe == "auto" else recipe) if train else "none"
        self.ten_crop = ten_crop
        self.pad = PAD_CROP_PADDING

    @property
    def random(self) -> bool:
        """Whether the transform draws random numbers (so needs an rng)."""
        return self.recipe in ("paper", "modern", "pad_crop")

    @property
    def draft_short_side(self) -> int:
        """The short side the decoder must keep at least: the resize target, or the crop size without a resize.
        For the modern recipe a crop of 8 % of the area is then magnified less than from the full photo would
        allow; decoding at >= resize_size is the same trade FFCV makes with its max_resolution."""
        return self.resize_size or max(self.size)

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        """uint8 tensor C x H x W (10 x C x H x W with ten_crop), contiguous and writable."""
        a = np.array(self.apply(img, rng), copy=True)
        return torch.from_numpy(a).movedim(-1, -3).contiguous()

    def apply(self, img: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        """The same as a (possibly read-only) numpy array H x W x C (10 x H x W x C with ten_crop): what loader
        workers use, because the batch is assembled from channel-last arrays without any transposing copy."""
        if img.mode != self.mode:
            img = img.convert(self.mode)
        if self.recipe in ("modern", "pad_crop"):
            return self._crop_and_flip(img, _generator(rng))
        if self.resize_size:
            crops = self._crops_of_resized(img, self.resize_size, rng)
            if crops is not None:
                return crops
            # the short side resized is below the crop, which pads it: the whole image is resized, within limits
            check_resize(img.width, img.height, short_side_size(img.width, img.height, self.resize_size))
            img = resize_short_side(img, self.resize_size, self.resample)
        if self.recipe == "paper":
            rng = _generator(rng)
            return _hwc(_maybe_flip(random_crop(img, self.size, rng), rng))
        if self.ten_crop:
            return np.stack([_hwc(c) for c in ten_crop(img, self.size)])
        return _hwc(center_crop(img, self.size))

    def _crops_of_resized(self, img: Image.Image, resize: int, rng: np.random.Generator | None) -> np.ndarray | None:
        """The crop(s) of the image with its short side resized to `resize`, resampling only the crops
        (resized_crop); None when a crop does not lie inside the resized image."""
        rw, rh = short_side_size(img.width, img.height, resize)
        h, w = self.size
        if rw < w or rh < h:
            return None
        if self.ten_crop:
            return np.stack([_hwc(c) for c in resized_ten_crop(img, resize, self.size, self.resample)])
        if self.recipe == "paper":
            rng = _generator(rng)
            top, left = int(rng.integers(0, rh - h + 1)), int(rng.integers(0, rw - w + 1))
            return _hwc(_maybe_flip(resized_crop(img, resize, top, left, self.size, self.resample), rng))
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        return _hwc(resized_crop(img, resize, top, left, self.size, self.resample))

    def _crop_and_flip(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """The modern recipe's random-resized crop, or pad_crop's crop of the padded (resized) image; then a flip."""
        if self.recipe == "modern":
            top, left, h, w = random_resized_box(img.width, img.height, rng)
            img = img.resize((self.size[1], self.size[0]), self.resample, box=(left, top, left + w, top + h))
        else:
            if self.resize_size:
                check_resize(img.width, img.height, short_side_size(img.width, img.height, self.resize_size))
                img = resize_short_side(img, self.resize_size, self.resample)
            img = random_pad_crop(img, self.size, self.pad, rng)
        return _hwc(_maybe_flip(img, rng))


def _generator(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()  # a caller without a seed gets fresh randomness


def _hwc(img: Image.Image) -> np.ndarray:
    a = np.asarray(img)  # one copy out of Pillow; read-only
    return a[:, :, None] if a.ndim == 2 else a


def _maybe_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img
