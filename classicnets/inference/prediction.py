"""`predict`: images or folders of images -> the top-k classes with probabilities, using the class names and
preprocessing stored with the weights; optionally the picture the tutorials draw (each image, "class, probability"
above it).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from classicnets.choices import RUNTIMES
from classicnets.errors import DataError, UsageError, first_line
from classicnets.inference.evaluation import class_names, load_model
from classicnets.models.base import ClassicNet
from classicnets.runtime import describe_inference_precision, prepare_inference, resolve_device, to_input_layout

log = logging.getLogger(__name__)

# A grid picture beyond this many images is unreadable (and slow to draw); the rest are left out, with a log line.
GRID_MAX_IMAGES = 64


@dataclass
class Prediction:
    file: str
    classes: list[str]  # the top-k classes, most probable first
    probabilities: list[float]  # their probabilities
    all_probabilities: dict[str, float] = field(repr=False)  # every class (sums to 1)
    image: Any = field(default=None, repr=False)  # uint8 C x H x W, what the model saw
    heatmap: Any = field(default=None, repr=False)  # with gradcam=True: H x W in [0, 1], the top class's Grad-CAM

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "top": [{"class": c, "probability": p} for c, p in zip(self.classes, self.probabilities, strict=True)],
            "probabilities": dict(self.all_probabilities),
        }


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders searched recursively for image files (sorted, hidden entries skipped)."""
    from classicnets.data import is_image_file

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and is_image_file(p.name)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise DataError(f"{path}: no image files in this folder")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    if not files:
        raise UsageError("nothing to predict: give image files or folders")
    return files


@dataclass
class PredictStats:
    """Counts and where the time went: decoding (read, decode, resize, crop) and the model (normalise, forward,
    softmax, top-k). `classicnets predict` prints `describe()` at the end."""

    images: int = 0
    skipped: int = 0
    decode_s: float = 0.0
    model_s: float = 0.0
    precision: str = "fp32"
    runtime: str = "torch"  # or "onnxruntime" (CPU provider, our float32 ONNX export)

    @property
    def images_per_s(self) -> float:
        total = self.decode_s + self.model_s
        return self.images / total if total > 0 else 0.0

    def describe(self) -> str:
        """'120 images, 85.3 images/s: decoding 0.90 s, model 0.51 s (torch, precision bf16 (weights cast once))'
        or '... model 0.62 s (onnxruntime, CPU, precision fp32)'."""

        skipped = f" ({self.skipped} unreadable, skipped)" if self.skipped else ""
        if self.runtime == "torch":
            how = f"torch, precision {describe_inference_precision(self.precision)}"
        else:
            how = f"{self.runtime}, CPU, precision {self.precision}"
        return (
            f"{self.images} images{skipped}, {self.images_per_s:,.1f} images/s: decoding {self.decode_s:.2f} s, "
            f"model {self.model_s:.2f} s ({how})"
        )


def read_images(files: Sequence[Path], geometry: Any) -> list[tuple[str, torch.Tensor]]:
    """(file, uint8 C x H x W as the model sees it: `geometry` is the evaluation ImageTransform) of each readable
    file; an unreadable one is skipped with a warning."""
    from classicnets.data import BadImageError, decode_image
    from classicnets.data.decode import TOO_LARGE

    read = []
    for path in files:
        try:
            img = decode_image(path, mode=geometry.mode, draft_short_side=geometry.draft_short_side)
            read.append((str(path), geometry(img)))
        except BadImageError as e:
            log.warning("skipped %s: %s (%s)", path, e.code, e.detail)
        except MemoryError as e:  # as the loaders: a strip too long to resize (transforms.ResizeTooLarge)
            log.warning("skipped %s: %s (%s)", path, TOO_LARGE, first_line(e))
    return read


def iter_predictions(
    weights: str | os.PathLike | ClassicNet,
    files: Sequence[Path],
    *,
    topk: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    gradcam: bool = False,
    stats: PredictStats | None = None,
    runtime: str = "torch",
) -> Iterator[Prediction]:
    """The predictions of `files` (see `expand_inputs`) in order, each yielded as soon as its batch is through the
    model: nothing is held beyond one batch, so a caller can print the first line long before a large folder is
    done. Unreadable images are skipped with a warning and counted in `stats`, which also receives the decoding
    and model time. With `gradcam`, inference runs in float32 (Grad-CAM's backward wants float32 weights).

    `runtime="onnxruntime"` runs the same model's float32 ONNX export on onnxruntime's CPU provider instead of torch
    (exported once per weight file and cached, see classicnets.inference.onnx_runtime); decoding, normalisation,
    softmax and top-k are the same."""
    if topk < 1:
        raise UsageError(f"--topk must be at least 1, got {topk}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; use {' or '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        _check_onnxruntime_request(device, precision, gradcam)
    from classicnets.data import BatchTransform, ImageTransform
    from classicnets.inference.gradcam import grad_cam

    stats = PredictStats() if stats is None else stats
    stats.runtime = runtime
    dev = resolve_device("cpu" if runtime == "onnxruntime" else device)
    model = load_model(weights, copy=True)
    pre = model.preprocessing
    classes = class_names(model)
    if runtime == "onnxruntime":
        forward, channels_last = _onnxruntime_forward(model, weights), False
        stats.precision = "fp32"
    else:
        net, stats.precision = prepare_inference(model, dev, "fp32" if gradcam else precision)
        forward, channels_last = _torch_forward(net), bool(getattr(model, "channels_last", False))
    k = min(topk, len(classes))
    geometry = ImageTransform(pre, train=False)  # resize + centre crop, as in evaluation
    to_float = BatchTransform(pre, train=False, channels_last=channels_last)
    for start in range(0, len(files), batch_size):
        clock = time.perf_counter()
        batch = files[start : start + batch_size]
        read = read_images(batch, geometry)
        stats.skipped += len(batch) - len(read)
        stats.decode_s += time.perf_counter() - clock
        if not read:
            continue
        clock = time.perf_counter()
        images = torch.stack([image for _, image in read])
        x = to_float(images.to(dev))
        probs = forward(x).float().softmax(dim=1).cpu()
        top = probs.topk(k, dim=1)
        # (gradcam is refused with onnxruntime, so `net`, the torch model, exists whenever it is asked for)
        heat = grad_cam(net, x, top.indices[:, 0].to(dev))[0] if gradcam else [None] * len(read)
        stats.model_s += time.perf_counter() - clock
        stats.images += len(read)
        for i, (name, _) in enumerate(read):
            yield Prediction(
                name,
                [classes[j] for j in top.indices[i].tolist()],
                top.values[i].tolist(),
                dict(zip(classes, probs[i].tolist(), strict=True)),
                images[i],
                heat[i],
            )


def _torch_forward(net: ClassicNet) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(to_input_layout(x, net))

    return forward


def _check_onnxruntime_request(device: str, precision: str, gradcam: bool) -> None:
    """The requests `runtime="onnxruntime"` cannot serve, as one-line UsageErrors, before anything is loaded."""
    from classicnets.inference.onnx_runtime import import_onnxruntime

    if gradcam:
        raise UsageError("--gradcam needs the torch model's gradients: drop --runtime onnxruntime to draw it")
    if device not in ("auto", "cpu"):
        raise UsageError(f"--runtime onnxruntime runs on the CPU (its CPU provider): drop --device {device}")
    if precision not in ("auto", "fp32"):
        raise UsageError(f"--runtime onnxruntime runs our float32 ONNX export: drop --precision {precision}")
    import_onnxruntime("--runtime onnxruntime")


def _onnxruntime_forward(
    model: ClassicNet, weights: str | os.PathLike | ClassicNet
) -> Callable[[torch.Tensor], torch.Tensor]:
    """model's logits from onnxruntime: the graph takes what the torch model takes (the normalised float32 batch,
    N x C x H x W, contiguous), with as many threads as torch has."""
    from classicnets.inference.onnx_runtime import session_for_weights
    from classicnets.weights.load import weights_file

    source = None if isinstance(weights, torch.nn.Module) else weights_file(weights)
    session = session_for_weights(model, source, torch.get_num_threads())

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {"input": x.float().contiguous().numpy()})[0])

    return forward


def predict(
    weights: str | os.PathLike | ClassicNet,
    inputs: Sequence[str | os.PathLike],
    *,
    topk: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    grid: str | os.PathLike | None = None,
    gradcam: bool = False,
    stats: PredictStats | None = None,
    runtime: str = "torch",
) -> list[Prediction]:
    """Classify every image in `inputs` (files or folders) with `weights` (a file or a model with .classes and
    .preprocessing), as a list (`iter_predictions` streams them instead). Unreadable images are skipped with a
    warning. With `grid`, writes the picture there; with `gradcam`, each prediction gets the Grad-CAM map of its
    top class (`.heatmap`), drawn over the grid's images. `runtime`: "torch" or "onnxruntime" (`iter_predictions`)."""
    files = expand_inputs(inputs)
    predictions = list(
        iter_predictions(weights, files, topk=topk, batch_size=batch_size, device=device, precision=precision,
                         gradcam=gradcam, stats=stats, runtime=runtime)
    )  # fmt: skip
    if not predictions:
        raise DataError("none of the images could be read")
    if grid is not None:
        write_grid(predictions, grid)
    return predictions


def write_grid(predictions: Sequence[Prediction], path: str | os.PathLike, *, total: int | None = None) -> None:
    """Each image with "class, probability" of its top class above it: the first GRID_MAX_IMAGES of `predictions`
    (of `total` predicted, when the caller kept only those)."""
    from classicnets.inference.plots import plot_image_grid

    shown = list(predictions[:GRID_MAX_IMAGES])
    total = len(predictions) if total is None else total
    if total > len(shown):
        log.info("the grid shows the first %d of %d images", len(shown), total)
    with_heat = all(p.heatmap is not None for p in shown)
    plot_image_grid(
        [p.image for p in shown],
        [f"{p.classes[0]}, {p.probabilities[0]:.2f}" for p in shown],
        path,
        columns=min(8, len(shown)),
        heat=[p.heatmap for p in shown] if with_heat else None,
        title="Grad-CAM of the predicted class (red: strongest evidence)" if with_heat else None,
    )
