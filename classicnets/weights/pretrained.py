"""Pretrained weights by name for Python users: `create_model(name, weights="imagenet")` and `get_weights(name)`.

`create_model` here is the public one (`from classicnets import create_model`): the registry's builder
(classicnets/models/registry.py), plus `weights=`. It lives in weights/ because loading weights needs the registry;
the registry importing the loaders back would be a second import cycle (tests/unit/test_layout.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classicnets.errors import UsageError
from classicnets.models.base import ClassicNet
from classicnets.models.registry import create_model as create_fresh_model
from classicnets.weights.hub import fetch_weights, how_checked
from classicnets.weights.known import KnownWeights, find_known_weights
from classicnets.weights.load import load_weights


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> ClassicNet:
    """Build a registered model, freshly initialised, or with `weights` loaded strictly.

    `weights`: a known name ("imagenet", "imagenet_v2" or the full "resnet50.imagenet"; `classicnets weights` lists
    them), downloaded into the cache and checked on first use, or a weight file of this network. With weights the
    head keeps the file's classes (ImageNet's 1000 names) unless `num_classes` asks for a new head of another size;
    the architecture comes from the weights, so builder keyword arguments are refused. Without weights this is the
    registry's create_model (classicnets.models.registry.create_model): see there for `in_chans` and `**kwargs`.
    """
    if weights is None:
        return create_fresh_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if kwargs:
        keys = ", ".join(sorted(kwargs))
        raise UsageError(f"{name}: {keys} cannot be set with weights=: the weights fix the architecture")
    model = load_weights(weights, model=name, num_classes=num_classes, progress=progress)
    if in_chans is not None and in_chans != model.preprocessing.input_size[0]:
        channels = model.preprocessing.input_size[0]
        raise UsageError(f"{name}: weights {weights} take {channels}-channel input, not in_chans={in_chans}")
    return model


@dataclass(frozen=True)
class FetchedWeights:
    """Known weights in the cache, and how they were checked."""

    known: KnownWeights
    path: Path
    checked: str  # e.g. "SHA-256 begins with the published 7be5be79"


def get_weights(name: str, *, progress: bool = True) -> FetchedWeights:
    """Download (or find in the cache) the known weights `name` and check them; `classicnets weights get NAME`.

    Files without a published hash (bvlc_alexnet.npy) are also loaded, strictly and shape by shape, as their check.
    """
    known = find_known_weights(name)
    if known is None:
        raise UsageError(f"{name} names a file; give the name of known weights, e.g. alexnet.imagenet")
    path = fetch_weights(known, progress=progress)
    checked = how_checked(known)
    if known.sha256 is None:
        load_weights(path, model=known.model, fmt=known.fmt)
        checked += "; every layer loaded with the expected shape"
    return FetchedWeights(known, path, checked)

