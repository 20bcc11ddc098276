"""`evaluate`: top-1, top-5, loss, per-class accuracy, confusion matrix, most-confused pairs and misclassified
images of a trained model on a labelled set; centre crop, and with `ten_crop` the paper's 10-crop beside it
(4 corners + centre and their mirrors, softmax averaged: Krizhevsky et al. 2012, section 4.1).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classicnets.errors import DataError
from classicnets.inference.metrics import ConfusedPair, ConfusionMatrix, MetricSums
from classicnets.models.base import ClassicNet
from classicnets.runtime import (
    autocast,
    limit_threads_for_workers,
    prepare_inference,
    resolve_device,
    to_input_layout,
)

log = logging.getLogger(__name__)

# torchvision's TenCrop order (the data module's too): 4 corners, centre, then the same of the mirror image.
CENTER_CROP_INDEX = 4


@dataclass
class Misclassified:
    file: str
    true: str
    predicted: str
    probability: float  # of the predicted class
    image: Any = field(default=None, repr=False)  # uint8 C x H x W, what the model saw (centre crop)


@dataclass
class EvalPass:
    """Sums and counts of one way of evaluating (centre crop or 10-crop) over a loader."""

    sums: MetricSums
    confusion: ConfusionMatrix
    misclassified: list[Misclassified] = field(default_factory=list)


@dataclass
class EvalSpeed:
    """Where an evaluation's time went: waiting for the loader (decode, resize, crop in the workers or here) and
    computing (normalise, forward, metrics)."""

    images: int = 0
    crops: int = 0  # forward passes: 10 per image with 10-crop
    data_s: float = 0.0
    model_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.data_s + self.model_s

    @property
    def images_per_s(self) -> float:
        return self.images / self.total_s if self.total_s > 0 else 0.0

    @property
    def crops_per_s(self) -> float:
        """Forward throughput: model inputs per second of model time (compare with training's images/s)."""
        return self.crops / self.model_s if self.model_s > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"images": self.images, "crops": self.crops, "data_s": self.data_s, "model_s": self.model_s,
                "images_per_s": self.images_per_s, "crops_per_s": self.crops_per_s}  # fmt: skip

    def describe(self) -> str:
        """'1,234.5 images/s (10-crop: 12,345.0 crops/s of model time); 2.1 s waiting for data, 8.0 s in the model'"""
        crops = f" ({self.crops / max(self.images, 1):g} crops per image: {self.crops_per_s:,.1f} crops/s in the model)"
        return (f"{self.images_per_s:,.1f} images/s{crops if self.crops != self.images else ''}; "
                f"{self.data_s:.2f} s waiting for data, {self.model_s:.2f} s in the model")  # fmt: skip


def _timed(batches: Iterable[Any], speed: EvalSpeed | None) -> Iterator[Any]:
    """The loader's batches, adding the time spent waiting for each to `speed.data_s`."""
    it = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        if speed is not None:
            speed.data_s += time.perf_counter() - start
        yield batch


def load_model(
    weights: str | os.PathLike | ClassicNet, *, model_name: str | None = None, copy: bool = False
) -> ClassicNet:
    """A model ready for inference from a weight file (any format classicnets.weights reads) or a module,
    with `.classes` (index order) and `.preprocessing`. `copy=True` copies a module given, so that casting it for
    inference (runtime.prepare_inference) leaves the caller's model as it was."""
    if isinstance(weights, nn.Module):
        model = deepcopy(weights) if copy else weights
    else:
        from classicnets.weights import load_weights

        model = load_weights(weights, model=model_name)
    model.classes = class_names(model)
    return model.eval()


def class_names(model: ClassicNet) -> list[str]:
    """The model's class names in output order; "0", "1", ... when its weights came without names."""
    classes = getattr(model, "classes", None)
    return list(classes) if classes is not None else [str(i) for i in range(model.num_classes)]


def evaluate_loader(
    model: nn.Module,
    loader: Any,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    precision: str,
    num_classes: int,
    should_stop: Callable[[], bool] | None = None,
    target_map: torch.Tensor | None = None,
    keep_misclassified: int = 0,
    classes: list[str] | None = None,
    progress: bool = False,
    speed: EvalSpeed | None = None,
) -> dict[str, EvalPass] | None:
    """{"center": EvalPass} (plus "ten_crop" when the loader yields N x 10 x C x H x W); None if stopped.

    `target_map[label]` maps the data set's labels to the model's class indices (when the two class lists differ).
    `precision` is the autocast precision ("fp32": none, as for a model from runtime.prepare_inference). With
    `speed`, the time spent waiting for data and computing is added there.
    """
    from tqdm import tqdm

    model.eval()
    passes = {"center": EvalPass(MetricSums(), ConfusionMatrix(num_classes))}
    keep = _Misclassified(keep_misclassified, classes, getattr(loader.dataset, "describe", None))
    with torch.inference_mode(), tqdm(total=len(loader), unit="batch", leave=False, disable=not progress) as bar:
        for images, labels in _timed(loader, speed):
            if should_stop is not None and should_stop():
                return None
            start = time.perf_counter()
            keep.indices = list(getattr(loader, "batch_indices", []))  # dataset indices, unreadable files left out
            labels = labels.to(device)
            if target_map is not None:
                labels = target_map.to(device)[labels]
            x = transform(images.to(device))
            ten = x.dim() == 5
            with autocast(device, precision):
                logits = _forward(model, x.flatten(0, 1) if ten else x, chunk=len(x))
            if ten:
                crops = logits.view(x.shape[0], x.shape[1], -1)
                centre_images = images[:, CENTER_CROP_INDEX]
                _add(passes["center"], crops[:, CENTER_CROP_INDEX], labels, centre_images, keep)
                probs = crops.softmax(dim=-1).mean(dim=1)  # softmax averaged over the 10 crops (paper)
                ten_pass = passes.setdefault("ten_crop", EvalPass(MetricSums(), ConfusionMatrix(num_classes)))
                _add(ten_pass, probs.clamp_min(1e-12).log(), labels, centre_images, keep)
            else:
                _add(passes["center"], logits, labels, images, keep)
            if speed is not None:  # the metrics read numbers back (.item()), so GPU work is finished here
                speed.images, speed.crops = speed.images + len(labels), speed.crops + len(logits)
                speed.model_s += time.perf_counter() - start
            bar.update(1)
    return passes


def _forward(model: nn.Module, x: torch.Tensor, *, chunk: int) -> torch.Tensor:
    """float32 logits of `x`, at most `chunk` inputs per forward: the 10 crops of a batch go through in 10 forwards
    of the batch size, not one 10x larger. One 640-crop AlexNet forward's activations (a 250 MB first layer) are
    fresh memory the kernel must fault in on every batch, and fall out of cache between layers; the 10-crop pass ran
    at half the centre crop's crops/s with a third of its time in the kernel."""
    outputs = [model(to_input_layout(part, model)).float() for part in x.split(max(chunk, 1))]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


@dataclass
class _Misclassified:
    """Which misclassified samples to keep for the picture: the first `limit` of each pass."""

    limit: int
    classes: list[str] | None
    describe: Callable[[int], str] | None
    indices: list[int] = field(default_factory=list)  # dataset indices of the current batch


def _add(p: EvalPass, scores: torch.Tensor, labels: torch.Tensor, images: torch.Tensor, keep: _Misclassified) -> None:
    """Add a batch to a pass; `scores` are logits or log-probabilities (the loss is the same cross-entropy)."""
    loss = nn.functional.cross_entropy(scores, labels)
    p.sums.update(scores, labels, loss)
    predicted = scores.argmax(dim=1)
    p.confusion.update(predicted, labels)
    if not keep.limit or keep.classes is None or len(p.misclassified) >= keep.limit:
        return
    probs = scores.softmax(dim=1)
    for j in (predicted != labels).nonzero().flatten().tolist()[: keep.limit - len(p.misclassified)]:
        file = keep.describe(keep.indices[j]) if (keep.describe and j < len(keep.indices)) else "?"
        p.misclassified.append(
            Misclassified(file, keep.classes[int(labels[j])], keep.classes[int(predicted[j])],
                          float(probs[j, predicted[j]]), images[j].cpu())
        )  # fmt: skip


@dataclass
class EvalReport:
    """What `evaluate` returns; `to_dict()` is what `classicnets eval --json` prints."""

    weights: str
    data: str
    classes: list[str]
    images: int
    passes: dict[str, EvalPass]
    pictures: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"  # what inference ran in (runtime.prepare_inference)
    speed: EvalSpeed = field(default_factory=EvalSpeed)

    def metrics(self, name: str = "center") -> dict[str, Any]:
        p = self.passes[name]
        per_class = p.confusion.per_class_accuracy()
        totals = p.confusion.counts.sum(dim=1).tolist()
        return {
            "top1": p.sums.top1,
            "top5": p.sums.top5,
            "loss": p.sums.loss,
            "per_class": [
                {"class": c, "accuracy": a, "count": int(n)}
                for c, a, n in zip(self.classes, per_class, totals, strict=True)
            ],
            "most_confused": [asdict(pair) for pair in p.confusion.most_confused(self.classes)],
            "confusion_matrix": p.confusion.to_list(),
            "misclassified": [
                {"file": m.file, "true": m.true, "predicted": m.predicted, "probability": m.probability}
                for m in p.misclassified
            ],
        }

    def most_confused(self, name: str = "center", n: int = 10) -> list[ConfusedPair]:
        return self.passes[name].confusion.most_confused(self.classes, n)

    def to_dict(self) -> dict[str, Any]:
        out = {"weights": self.weights, "data": self.data, "images": self.images, "classes": self.classes}
        for name in self.passes:
            out[name] = self.metrics(name)
        out["pictures"] = dict(self.pictures)
        out["precision"] = self.precision
        out["speed"] = self.speed.to_dict()
        return out


def open_eval_data(
    data: str | os.PathLike,
    *,
    in_chans: int,
    split: str | None = None,
    allow_empty: bool = False,
    label_mode: str = "fine",
) -> Any:
    """The test split of a source with splits (else val, or `split`: a prepared folder, CIFAR, a Keras .npz), or any
    other source classicnets.data.open_dataset reads."""
    from classicnets.data import open_dataset, source_splits

    splits = source_splits(data)
    if splits:
        name = split or ("test" if "test" in splits else "val" if "val" in splits else "train")
        if name not in splits:
            raise DataError(f"{data}: has no {name}/ split (it has {', '.join(splits)})")
        log.info("evaluating on the %s split of %s", name, data)
        return open_dataset(data, in_chans=in_chans, allow_empty=allow_empty, split=name, label_mode=label_mode)
    return open_dataset(data, in_chans=in_chans, allow_empty=allow_empty, label_mode=label_mode)


def class_mapping(model_classes: list[str], data_classes: list[str], source: str) -> torch.Tensor | None:
    """Data label -> model class index by name; None when the lists are equal."""
    if list(model_classes) == list(data_classes):
        return None
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        raise DataError(
            f"{source}: classes {', '.join(unknown[:5])} are not among the model's {len(model_classes)} classes "
            f"({', '.join(model_classes[:5])}{', ...' if len(model_classes) > 5 else ''})"
        )
    return torch.tensor([index[c] for c in data_classes], dtype=torch.int64)


def evaluate(
    weights: str | os.PathLike | ClassicNet,
    data: str | os.PathLike,
    *,
    ten_crop: bool = False,
    split: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    workers: int = 0,
    out: str | os.PathLike | None = None,
    misclassified: int = 24,
    progress: bool = False,
    allow_empty: bool = False,
    label_mode: str = "fine",
) -> EvalReport:
    """Evaluate `weights` (a file or a model with .classes and .preprocessing) on the labelled images in `data`.

    Centre crop always; with `ten_crop`, the 10-crop result as well (same images, one pass). With `out`, writes
    confusion_matrix.png, misclassified.png (up to `misclassified` images) and eval.json there.
    """
    dev = resolve_device(device)
    model = load_model(weights, copy=True)
    classes = class_names(model)
    pre = model.preprocessing
    dataset = open_eval_data(
        data, in_chans=pre.input_size[0], split=split, allow_empty=allow_empty, label_mode=label_mode
    )
    target_map = class_mapping(classes, dataset.classes, str(data))
    from classicnets.data import BatchTransform, make_loader

    net, prec = prepare_inference(model, dev, precision)
    # A decode cache that already holds every image (built by training or `prepare --cache`) is read instead of
    # decoding; eval never builds one (a single pass gains nothing from it).
    loader = make_loader(dataset, preprocessing=pre, train=False, batch_size=batch_size, workers=workers,
                         ten_crop=ten_crop, device=dev, cache="auto", build_cache=False)  # fmt: skip
    transform = BatchTransform(pre, train=False, channels_last=bool(getattr(model, "channels_last", False)))
    speed = EvalSpeed()
    with limit_threads_for_workers(dev, workers):
        passes = evaluate_loader(
            net,
            loader,
            transform,
            device=dev,
            precision="fp32",  # no autocast: prepare_inference cast the weights once
            num_classes=len(classes),
            target_map=target_map,
            keep_misclassified=misclassified,
            classes=classes,
            progress=progress,
            speed=speed,
        )
    assert passes is not None  # None only when should_stop asks to stop
    report = EvalReport(
        str(weights) if not isinstance(weights, nn.Module) else getattr(weights, "model_name", "model"),
        str(data),
        classes,
        passes["center"].sums.count,
        passes,
        precision=prec,
        speed=speed,
    )
    if out is not None:
        write_eval_pictures(report, Path(out))
    return report


def write_eval_pictures(report: EvalReport, out: Path) -> None:
    """confusion_matrix.png and misclassified.png of the main pass (10-crop when present), and eval.json."""
    from classicnets.fileio import atomic_write_text
    from classicnets.inference.plots import plot_confusion, plot_image_grid

    name = "ten_crop" if "ten_crop" in report.passes else "center"
    p = report.passes[name]
    label = "10-crop" if name == "ten_crop" else "centre crop"
    report.pictures["confusion_matrix"] = str(out / "confusion_matrix.png")
    plot_confusion(
        p.confusion.to_list(),
        report.classes,
        out / "confusion_matrix.png",
        title=f"Confusion matrix ({label}, top-1 {100 * p.sums.top1:.2f}%)",
    )
    if p.misclassified:
        report.pictures["misclassified"] = str(out / "misclassified.png")
        plot_image_grid(
            [m.image for m in p.misclassified],
            [f"{m.true} → {m.predicted}, {m.probability:.2f}" for m in p.misclassified],
            out / "misclassified.png",
            title=f"Misclassified ({label}): true → predicted, probability",
        )
    report.pictures["json"] = str(out / "eval.json")
    atomic_write_text(out / "eval.json", json.dumps(report.to_dict(), indent=1) + "\n")
