"""Nearest neighbours in the classifier's feature space, Figure 4 of Krizhevsky et al. 2012 (section 6.1): for a
query image, the training images whose feature vectors at the last hidden layer (fc7 for AlexNet) are closest in
Euclidean distance. The features of a data set are computed once and cached per model and data folder.

The cache (`features/` in $CLASSICNETS_HOME, else $XDG_CACHE_HOME/classicnets, else ~/.cache/classicnets) holds one
.npz per (model weights, preprocessing, data source); it records a fingerprint of the data (every file's path, size and
modification time, or the pixels of an in-memory set) and is recomputed when that changes. Features are computed in
float32 (no reduced precision: distances between near-identical images must stay exact).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classicnets.fileio import atomic_write_bytes
from classicnets.inference.layers import capture_features
from classicnets.models.base import ClassicNet, unwrap_model
from classicnets.runtime import to_input_layout

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the file layout or the way features are computed changes


@dataclass
class Neighbour:
    index: int  # in the data set
    file: str  # where it comes from (a path, or "train-images.idx#12")
    label: str  # its class
    distance: float  # Euclidean, in feature space
    image: Any = field(default=None, repr=False)  # uint8 C x H x W, as the model sees it


@dataclass
class Neighbours:
    file: str  # the query image
    neighbours: list[Neighbour]  # nearest first
    image: Any = field(default=None, repr=False)


def default_cache_dir() -> Path:
    """`features/` in classicnets' cache, beside the downloaded weights (weights.hub.cache_dir)."""
    from classicnets.weights.hub import cache_dir

    return cache_dir() / "features"


def model_hash(model: ClassicNet) -> str:
    """SHA-256 of the model's name and every tensor of its state dict (names, dtypes, shapes and values)."""
    net = unwrap_model(model)
    h = hashlib.sha256(str(getattr(net, "model_name", type(net).__name__)).encode())
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(dataset: Any) -> str:
    """SHA-256 of what the data set holds: classes, labels and, per file, its path, size and modification time
    (the pixels themselves for an in-memory set such as IDX digits)."""
    h = hashlib.sha256(json.dumps([str(dataset.source), list(dataset.classes), list(dataset.targets)]).encode())
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        for path in paths:
            try:
                st = os.stat(path)
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}\0missing\n".encode())
    else:
        h.update(dataset.images.contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_path(model: ClassicNet, dataset: Any, cache_dir: str | os.PathLike | None) -> Path:
    net = unwrap_model(model)
    source = os.path.abspath(str(dataset.source))
    key = json.dumps([CACHE_VERSION, model_hash(net), net.preprocessing.to_dict(), source, len(dataset)])
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def dataset_features(
    model: ClassicNet,
    dataset: Any,
    *,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """N x D float32 features of every image of `dataset` (a row of NaN for a file that cannot be read), from the
    cache when it holds this model and this data unchanged, else computed and cached."""
    path = cache_path(model, dataset, cache_dir)
    fingerprint = data_fingerprint(dataset)
    cached = _read_cache(path, fingerprint, len(dataset))
    if cached is not None:
        log.info("features of %s from the cache %s", dataset.source, path)
        return cached
    features = _compute(model, dataset, device=device, batch_size=batch_size, workers=workers, progress=progress)
    buffer = io.BytesIO()
    np.savez(buffer, features=features.numpy(), fingerprint=np.array(fingerprint))
    atomic_write_bytes(path, buffer.getvalue())
    log.info("cached the features of %d images in %s", len(dataset), path)
    return features


def _read_cache(path: Path, fingerprint: str, count: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint or data["features"].shape[0] != count:
                log.info("the data changed since %s was cached: computing the features again", path)
                return None
            return torch.from_numpy(np.array(data["features"], dtype=np.float32))
    except (OSError, ValueError, KeyError) as e:  # a damaged cache file is recomputed, never trusted
        log.warning("ignored the feature cache %s (%s)", path, e)
        return None


def _compute(model: ClassicNet, dataset: Any, *, device, batch_size: int, workers: int, progress: bool) -> torch.Tensor:
    from tqdm import tqdm

    from classicnets.data import BatchTransform, make_loader

    net = unwrap_model(model)
    pre = net.preprocessing
    loader = make_loader(dataset, preprocessing=pre, train=False, batch_size=batch_size, workers=workers, device=device)
    transform = BatchTransform(pre, train=False, channels_last=bool(getattr(net, "channels_last", False)))
    rows: torch.Tensor | None = None
    with torch.inference_mode(), capture_features(net) as found, tqdm(
        total=len(loader), unit="batch", leave=False, disable=not progress, desc="features"
    ) as bar:
        for images, _labels in loader:
            net(to_input_layout(transform(images), net))
            batch = found.pop().float().cpu()
            if rows is None:
                rows = torch.full((len(dataset), batch.shape[1]), float("nan"))
            rows[torch.tensor(loader.batch_indices)] = batch
            bar.update(1)
    assert rows is not None  # make_loader refuses an empty data set
    return rows


def query_features(model: ClassicNet, x: torch.Tensor) -> torch.Tensor:
    """Features (N x D, float32, CPU) of a normalised batch, computed as dataset_features computes them."""
    net = unwrap_model(model)
    with torch.inference_mode(), capture_features(net) as found:
        net(to_input_layout(x, net))
    return found[0].float().cpu()


def nearest(queries: torch.Tensor, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices), each Q x k, nearest first. Distances are computed directly (not through the
    |a|^2 + |b|^2 - 2ab expansion, which loses the exact 0 of an image and itself to rounding)."""
    distances = torch.cdist(queries[None], features[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
    distances = torch.nan_to_num(distances, nan=float("inf"))  # unreadable files are never anyone's neighbour
    k = min(k, features.shape[0])
    found = distances.topk(k, dim=1, largest=False)
    return found.values, found.indices
