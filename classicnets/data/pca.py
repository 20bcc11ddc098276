"""The RGB eigen-decomposition of a data set, for AlexNet's PCA lighting noise on the user's own photos.

Krizhevsky et al. 2012, section 4.1: "p_i and lambda_i are the i-th eigenvector and eigenvalue of the 3x3
covariance matrix of RGB pixel values". We compute exactly that, pixels in [0, 1], from a sample of images
decoded at a reduced size (the covariance of colours barely depends on resolution).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from classicnets.data.datasets import ImageDataset
from classicnets.data.decode import BadImageError

log = logging.getLogger(__name__)

# Decoding at a 64-pixel short side keeps 4,096+ pixels per image: plenty for a 3x3 covariance, and cheap.
_PCA_SHORT_SIDE = 64


def pca_from_dataset(dataset: ImageDataset, *, samples: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigval (3,), eigvec (3, 3)) of the RGB covariance of up to `samples` images (a seeded random subset).

    Eigenvalues are sorted largest first; eigvec[:, i] is the i-th eigenvector (sign made so its largest-magnitude
    entry is negative, as in the ImageNet constants; the noise is symmetric, so the sign does not matter).
    Bad files are skipped. Values are for RGB pixels in [0, 1].
    """
    n = len(dataset)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(n, size=min(samples, n), replace=False).tolist())
    total = np.zeros(3)
    outer = np.zeros((3, 3))
    count = 0
    for i in chosen:
        try:
            img = dataset.load(i, mode="RGB", draft_short_side=_PCA_SHORT_SIDE)
        except BadImageError as e:
            log.warning("pca: skipped %s (%s)", e.path, e.code)
            continue
        if min(img.size) > _PCA_SHORT_SIDE:
            img.thumbnail((_PCA_SHORT_SIDE * img.width // min(img.size) + 1,) * 2, Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0
        total += pixels.sum(0)
        outer += pixels.T @ pixels
        count += len(pixels)
    if count == 0:
        from classicnets.errors import DataError

        raise DataError(f"{dataset.source}: no readable image to compute the colour PCA from")
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    eigval, eigvec = eigval[::-1].clip(min=0), eigvec[:, ::-1]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(0), range(3)])
    eigvec = eigvec * -signs
    return torch.tensor(eigval.copy(), dtype=torch.float32), torch.tensor(eigvec.copy(), dtype=torch.float32)
