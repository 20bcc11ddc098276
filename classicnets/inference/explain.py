"""See inside a trained model: `classicnets show filters|activations|gradcam|neighbours`, and the same in Python.

    show_filters(weights, layer=None, out=None)            the paper's Figure 3: the first layer's kernels
    show_activations(weights, image, layers=None, out=None) the feature maps of chosen layers for one image
    show_gradcam(weights, images, class_name=None, ...)    Grad-CAM heat maps over the images (Selvaraju et al. 2017)
    show_neighbours(weights, images, data=..., k=5, ...)   the paper's Figure 4: nearest training images by fc7

`weights` is any weight file classicnets reads, a run folder (its best.pt) or a model with .classes and
.preprocessing. Each function returns its numbers and, given `out`, writes the picture as a PNG.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from classicnets.errors import UsageError
from classicnets.inference.activations import LayerMaps, activation_maps
from classicnets.inference.evaluation import class_names, load_model
from classicnets.inference.filters import FilterGrid, filter_grid
from classicnets.inference.gradcam import grad_cam
from classicnets.inference.layers import feature_label, find_layer
from classicnets.inference.neighbours import Neighbour, Neighbours, dataset_features, nearest, query_features
from classicnets.inference.prediction import expand_inputs, read_images
from classicnets.models.base import ClassicNet
from classicnets.runtime import prepare_model, resolve_device, to_input_layout

log = logging.getLogger(__name__)

WeightsLike = str | os.PathLike | ClassicNet


@dataclass
class CamResult:
    file: str
    class_name: str  # the class explained: the predicted one, or the one asked for
    probability: float  # of that class
    heatmap: Any = field(repr=False)  # H x W float tensor in [0, 1], the size of the model's input
    image: Any = field(repr=False)  # uint8 C x H x W, what the model saw


@dataclass
class _Loaded:
    model: ClassicNet  # on the device, in eval mode
    device: torch.device
    classes: list[str]


def _load(weights: WeightsLike, device: str = "cpu") -> _Loaded:
    if not isinstance(weights, torch.nn.Module):
        from classicnets.training.run_folder import run_weights

        weights = run_weights(weights)
    model = load_model(weights)
    dev = resolve_device(device)
    prepare_model(model, dev)
    return _Loaded(model.eval(), dev, class_names(model))


def _read(loaded: _Loaded, images: Sequence[str | os.PathLike]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(files, uint8 N x C x H x W, normalised input on the device) of the readable images."""
    from classicnets.data import BatchTransform, ImageTransform
    from classicnets.errors import DataError

    pre = loaded.model.preprocessing
    read = read_images(expand_inputs(images), ImageTransform(pre, train=False))
    if not read:
        raise DataError("none of the images could be read")
    pixels = torch.stack([image for _, image in read])
    to_float = BatchTransform(pre, train=False, channels_last=bool(getattr(loaded.model, "channels_last", False)))
    x = to_input_layout(to_float(pixels.to(loaded.device)), loaded.model)
    return [name for name, _ in read], pixels, x


def show_filters(weights: WeightsLike, *, layer: str | None = None, out: str | os.PathLike | None = None) -> FilterGrid:
    """The kernels of `layer` (default: the first convolution), one contrast-stretched tile each, in the groups the
    next layer reads them in (alexnet2012's two GPUs); the picture written to `out` when given."""
    grid = filter_grid(_load(weights).model, layer)
    if out is not None:
        from classicnets.inference.explain_plots import plot_filters

        plot_filters(grid, out)
    return grid


def show_activations(
    weights: WeightsLike,
    image: str | os.PathLike,
    *,
    layers: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
) -> dict[str, LayerMaps]:
    """The feature maps of `layers` (paper or dotted names; default: the convolutions, at most 6) for one image.
    With `out` (a folder), writes activations_<layer>.png there for each layer. Returns {layer: LayerMaps}."""
    loaded = _load(weights, device)
    files, pixels, x = _read(loaded, [image])
    if len(files) != 1:
        raise UsageError(f"{image}: give one image file")
    found = activation_maps(loaded.model, x, layers)
    if out is not None:
        from classicnets.inference.explain_plots import plot_activations

        for maps in found:
            plot_activations(maps, pixels[0], files[0], Path(out) / f"activations_{maps.layer}.png")
    return {maps.layer: maps for maps in found}


def show_gradcam(
    weights: WeightsLike,
    images: Sequence[str | os.PathLike],
    *,
    class_name: str | None = None,
    layer: str | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 32,
) -> list[CamResult]:
    """Grad-CAM maps of the predicted class (or `class_name`) for each image, on `layer` (default: the last
    convolution; inference.layers.gradcam_layer); the images with their maps drawn over them written to `out`."""
    loaded = _load(weights, device)
    target = None
    if class_name is not None:
        if class_name not in loaded.classes:
            shown = ", ".join(loaded.classes[:10]) + (", ..." if len(loaded.classes) > 10 else "")
            raise UsageError(f"--class {class_name}: not one of the model's {len(loaded.classes)} classes ({shown})")
        target = loaded.classes.index(class_name)
    name = find_layer(loaded.model, layer) if layer else None
    files, pixels, x = _read(loaded, images)
    results: list[CamResult] = []
    for start in range(0, len(files), batch_size):
        batch = x[start : start + batch_size]
        classes = None if target is None else torch.full((len(batch),), target, dtype=torch.int64)
        maps, logits = grad_cam(loaded.model, batch, classes, layer=name)
        probs = logits.softmax(dim=1).cpu()
        chosen = probs.argmax(dim=1) if target is None else torch.full((len(batch),), target)
        for i, c in enumerate(chosen.tolist()):
            j = start + i
            results.append(CamResult(files[j], loaded.classes[c], float(probs[i, c]), maps[i], pixels[j]))
    if out is not None:
        from classicnets.inference.plots import plot_image_grid

        plot_image_grid(
            [r.image for r in results],
            [f"{r.class_name}, {r.probability:.2f}" for r in results],
            out,
            columns=min(6, len(results)),
            heat=[r.heatmap for r in results],
            title=f"Grad-CAM of {'the class ' + class_name if class_name else 'the predicted class'}, probability",
        )
    return results


def show_neighbours(
    weights: WeightsLike,
    images: Sequence[str | os.PathLike],
    *,
    data: str | os.PathLike | None = None,
    k: int = 5,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> list[Neighbours]:
    """For each image, the `k` training images nearest to it in the features the classifier reads (fc7 for
    AlexNet), with their Euclidean distances. `data`: the training images (a prepared folder's train/, class
    folders, a list file or IDX); without it, the training split of the run `weights` names."""
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    loaded = _load(weights, device)
    dataset = _training_images(weights, data, loaded.model.preprocessing.input_size[0])
    features = dataset_features(
        loaded.model, dataset, device=loaded.device, batch_size=batch_size, workers=workers, cache_dir=cache_dir,
        progress=progress,
    )  # fmt: skip
    files, pixels, x = _read(loaded, images)
    distances, indices = nearest(query_features(loaded.model, x), features, k)
    from classicnets.data import ImageTransform

    geometry = ImageTransform(loaded.model.preprocessing, train=False)
    results = []
    for q, file in enumerate(files):
        found = [
            Neighbour(i, dataset.describe(i), dataset.classes[dataset.targets[i]], float(d), geometry(dataset.load(i)))
            for d, i in zip(distances[q].tolist(), indices[q].tolist(), strict=True)
        ]
        results.append(Neighbours(file, found, pixels[q]))
    if out is not None:
        from classicnets.inference.explain_plots import plot_neighbours

        plot_neighbours(results, feature_label(loaded.model), out)
    return results


def _training_images(weights: WeightsLike, data: str | os.PathLike | None, in_chans: int) -> Any:
    """`data` (the train split of a source with splits: a prepared folder, CIFAR, a Keras .npz; or any source
    open_dataset reads), else the run's training split."""
    from classicnets.data import open_dataset, source_splits

    if data is not None:
        return open_dataset(data, in_chans=in_chans, split="train" if "train" in source_splits(data) else None)
    if isinstance(weights, torch.nn.Module) or not Path(weights).is_dir():
        raise UsageError("--data DIR is needed (the training images), unless WEIGHTS is a run folder")
    from classicnets.training.setup import open_run_data

    return open_run_data(Path(weights)).train
