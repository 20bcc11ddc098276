"""Per-batch work on the device: uint8 -> float, PCA lighting noise, channel order, pixel scale, mean/std.

Also the batch versions of the crop/flip geometry, used by the in-memory (digits) loader that never leaves
the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from classicnets.models.preprocessing import Preprocessing
from classicnets.rng import mix_seed

# ImageNet RGB eigen-decomposition in common use (fb.resnet.torch, timm; docs/facts.md), pixels in [0, 1].
# eigvec[:, i] (a column) is the i-th eigenvector, as numpy.linalg.eigh returns them.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# Krizhevsky et al. 2012, section 4.1: alpha_i ~ N(0, 0.1).
PAPER_PCA_STD = 0.1


def lighting(x: torch.Tensor, alpha: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor) -> torch.Tensor:
    """AlexNet's PCA colour noise: add sum_i alpha_i * eigval_i * eigvec[:, i] to every pixel of each image.

    x: float N x 3 x H x W (RGB); alpha: N x 3. alpha = 0 returns x unchanged (the noise is exactly zero).
    """
    return x + lighting_noise(alpha, eigval, eigvec)[:, :, None, None].to(x.dtype)


def lighting_noise(alpha: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor) -> torch.Tensor:
    """N x 3 RGB offsets: row n = sum_i alpha[n, i] * eigval[i] * eigvec[:, i]."""
    return (alpha * eigval) @ eigvec.T


class BatchTransform:
    """uint8 batch on the device -> normalised float batch, in this order: PCA lighting (train and pca_std > 0,
    RGB in [0, 1]), RGB -> BGR when the model wants BGR, pixel scale (x255 for Caffe's convention),
    (x - mean) / std, memory format. Accepts N x C x H x W and N x 10 x C x H x W (10-crop).

    The lighting noise is drawn from a generator reset by `set_epoch(epoch)` from (seed, epoch), so the batches of
    an epoch get the same noise in a resumed run as in an uninterrupted one.
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        *,
        train: bool,
        pca_std: float = 0.0,
        eigval: Sequence[float] | torch.Tensor | None = None,
        eigvec: Sequence[Sequence[float]] | torch.Tensor | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ):
        channels = preprocessing.input_size[0]
        self.bgr = preprocessing.channel_order == "BGR"
        self.pca_std = float(pca_std) if (train and channels == 3) else 0.0
        self.eigval = torch.as_tensor(IMAGENET_EIGVAL if eigval is None else eigval, dtype=torch.float32)
        self.eigvec = torch.as_tensor(IMAGENET_EIGVEC if eigvec is None else eigvec, dtype=torch.float32)
        if self.eigval.shape != (3,) or self.eigvec.shape != (3, 3):
            shapes = f"{tuple(self.eigval.shape)} and {tuple(self.eigvec.shape)}"
            raise ValueError(f"eigval must have shape (3,) and eigvec (3, 3), got {shapes}")
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32)
        std = torch.tensor(preprocessing.std, dtype=torch.float32)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"preprocessing has {channels} channels but {len(mean)} means and {len(std)} stds")
        # (x / 255 * pixel_scale - mean) / std folded into one multiply-add per channel
        self.scale = (preprocessing.pixel_scale / 255.0) / std
        self.shift = -mean / std
        self.channels_last = channels_last
        self.dtype = dtype
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Restart the lighting-noise stream from (seed, epoch)."""
        self.generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 1))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        shape = batch.shape
        x = batch.reshape(-1, *shape[-3:]) if batch.dim() == 5 else batch
        device = x.device
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(torch.float32, memory_format=layout)  # one pass: a new float tensor in the wanted layout
        if self.pca_std > 0:
            n_images = shape[0]  # one draw per image: the 10 crops of an image share it
            alpha = torch.randn(n_images, 3, generator=self.generator) * self.pca_std
            if batch.dim() == 5:
                alpha = alpha.repeat_interleave(shape[1], dim=0)
            noise = lighting_noise(alpha, self.eigval, self.eigvec).mul_(255.0)  # [0, 1] units -> 0..255
            x.add_(noise.to(device)[:, :, None, None])
        if self.bgr:
            x = x.flip(1).contiguous(memory_format=layout)
        x.mul_(self.scale.to(device)[:, None, None]).add_(self.shift.to(device)[:, None, None])
        x = x.to(self.dtype)
        return x.reshape(*shape[:-3], *x.shape[-3:]) if batch.dim() == 5 else x


# ---- batch geometry for the in-memory loader (uint8 N x C x H x W on any device) ----


def resize_short_side_batch(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize every image (all the same size) so the short side is `size`; antialiased, rounded back to uint8."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    new = (int(size * h / w), size) if w < h else (size, int(size * w / h))
    mode = mode if mode in ("bilinear", "bicubic", "nearest") else "bilinear"
    y = F.interpolate(x.float(), size=new, mode=mode, antialias=mode != "nearest", align_corners=None)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def crop_batch(x: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-image crops at (tops[n], lefts[n]); offsets may be negative or run past the edge (zeros there)."""
    h, w = size
    H, W = x.shape[-2:]
    pad_y = max(0, int(-tops.min()), int(tops.max()) + h - H)
    pad_x = max(0, int(-lefts.min()), int(lefts.max()) + w - W)
    xp = F.pad(x, (pad_x, pad_x, pad_y, pad_y)) if pad_x or pad_y else x
    rows = (tops.to(x.device) + pad_y)[:, None] + torch.arange(h, device=x.device)  # N x h
    cols = (lefts.to(x.device) + pad_x)[:, None] + torch.arange(w, device=x.device)  # N x w
    n = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return xp[n, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()  # N x h x w x C -> NCHW


def center_crop_batch(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre crop (or zero-pad) every image to (height, width), same offsets as transforms.center_crop."""
    H, W = x.shape[-2:]
    top, left = int(round((H - size[0]) / 2.0)), int(round((W - size[1]) / 2.0))
    n = x.shape[0]
    return crop_batch(x, torch.full((n,), top), torch.full((n,), left), size)


def random_crop_batch(x: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Random crops (random placement in zeros for images smaller than the crop), as transforms.random_crop."""
    H, W = x.shape[-2:]
    n = x.shape[0]
    tops = torch.randint(min(0, H - size[0]), max(0, H - size[0]) + 1, (n,), generator=generator)
    lefts = torch.randint(min(0, W - size[1]), max(0, W - size[1]) + 1, (n,), generator=generator)
    return crop_batch(x, tops, lefts, size)


def random_pad_crop_batch(x: torch.Tensor, size: tuple[int, int], pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops of every image padded with `pad` zeros on each side, as transforms.random_pad_crop."""
    H, W = x.shape[-2:]
    n = x.shape[0]
    tops = torch.randint(-pad, H - size[0] + pad + 1, (n,), generator=generator)
    lefts = torch.randint(-pad, W - size[1] + pad + 1, (n,), generator=generator)
    return crop_batch(x, tops, lefts, size)


def random_flip_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_resized_crop_batch(
    x: torch.Tensor, size: tuple[int, int], generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """Random-resized crops by bilinear sampling (affine grids). Boxes as torchvision draws them, clipped to the
    image instead of retried (fine for the small, same-size images this loader holds)."""
    n, _, H, W = x.shape
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator) * H * W
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(1, W)
    h = torch.sqrt(area / aspect).clamp(1, H)
    left = torch.rand(n, generator=generator) * (W - w)
    top = torch.rand(n, generator=generator) * (H - h)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w / W, (2 * left + w) / W - 1  # output [-1, 1] -> the box, align_corners=False
    theta[:, 1, 1], theta[:, 1, 2] = h / H, (2 * top + h) / H - 1
    grid = F.affine_grid(theta.to(x.device), [n, x.shape[1], size[0], size[1]], align_corners=False)
    y = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def ten_crop_batch(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x C x H x W -> N x 10 x C x h x w in transforms.ten_crop's order (five crops, then five of the mirror)."""
    h, w = size
    H, W = x.shape[-2:]
    if h > H or w > W:
        x = center_crop_batch(x, (max(h, H), max(w, W)))
        H, W = x.shape[-2:]

    def five(y: torch.Tensor) -> list[torch.Tensor]:
        return [y[..., :h, :w], y[..., :h, W - w :], y[..., H - h :, :w], y[..., H - h :, W - w :],
                center_crop_batch(y, size)]  # fmt: skip

    return torch.stack(five(x) + five(x.flip(-1)), dim=1)
