"""What our exported files say about themselves: the model that rebuilds the weights, its preprocessing, its classes.

safetensors headers, ONNX `metadata_props` and TorchScript extra files all hold string -> string maps, so each
value is JSON text. Anyone can read them without classicnets:

    classicnets.format          "classicnets-export"
    classicnets.version         "1"
    classicnets.model           {"name": "alexnet2012", "kwargs": {"lrn": "caffe", "num_classes": 1000}}
    classicnets.preprocessing   {"input_size": [3, 227, 227], "mean": [...], "std": [...], "channel_order": ...}
    classicnets.classes         ["tench, Tinca tinca", ...] or null
"""

from __future__ import annotations

import json
from typing import Any

import torch

from classicnets.errors import UsageError, WeightsError
from classicnets.models.base import ClassicNet
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import create_model

TAG = "classicnets-export"
VERSION = 1
PREFIX = "classicnets."


def build_metadata(model: ClassicNet, classes: list[str] | None) -> dict[str, str]:
    """The string map describing `model` (built by create_model) and its class names."""
    return {
        f"{PREFIX}format": TAG,
        f"{PREFIX}version": str(VERSION),
        f"{PREFIX}model": json.dumps({"name": model.model_name, "kwargs": dict(model.model_kwargs)}, sort_keys=True),
        f"{PREFIX}preprocessing": json.dumps(model.preprocessing.to_dict()),
        f"{PREFIX}classes": json.dumps(list(classes) if classes is not None else None),
    }


def is_ours(metadata: dict[str, str] | None) -> bool:
    return metadata is not None and metadata.get(f"{PREFIX}format") == TAG


def model_from_metadata(metadata: dict[str, str], *, source: str) -> tuple[ClassicNet, list[str] | None]:
    """A freshly built model (random weights) with the preprocessing of the file attached, and its class names."""
    try:
        version = int(metadata.get(f"{PREFIX}version", "0"))
        spec = json.loads(metadata[f"{PREFIX}model"])
        preprocessing = Preprocessing.from_dict(json.loads(metadata[f"{PREFIX}preprocessing"]))
        classes = json.loads(metadata.get(f"{PREFIX}classes", "null"))
        name, kwargs = spec["name"], spec.get("kwargs", {})
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: damaged classicnets metadata ({type(e).__name__}: {e})") from None
    if version > VERSION:
        raise WeightsError(f"{source}: written by a newer classicnets (format version {version} > {VERSION})")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise WeightsError(f"{source}: damaged classicnets metadata (classes is not a list of names)")
    model = empty_model(name, kwargs, source=source)
    model.preprocessing = preprocessing
    return model, classes


def empty_model(name: str, kwargs: dict[str, Any], *, source: str) -> ClassicNet:
    """create_model on the meta device (shapes only; load_state_dict_strict fills in every tensor) for a name and
    arguments read from a file: a bad name or argument is the file's fault."""
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise WeightsError(f"{source}: damaged model description {name!r} {kwargs!r}")
    try:
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except UsageError as e:
        raise WeightsError(f"{source}: cannot rebuild the model it describes: {e}") from None
