"""`classicnets demo`: the whole job on real digits shipped with the package, in about a minute on a laptop CPU.

classicnets/assets/digits holds 10,000 genuine MNIST digits (the MNIST test set, split per class with seed 0 into
8,000 train / 2,000 test; see assets/digits/README.md). The demo trains LeNet-5 with the lenet5_digits recipe on
the 8,000 (holding 10 % out for validation), evaluates best.pt on the 2,000 it never saw, saves a few of those as
PNG files and predicts them, as a user would with their own images.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from classicnets.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

DEMO_RECIPE = "lenet5_digits"
# Held-out digits written as PNG files and predicted at the end: the first two of every class, so each digit shows.
SAMPLES_PER_CLASS = 2


@dataclass
class DemoResult:
    run_dir: Path
    train_images: int
    test_images: int
    test_data: Path
    epochs: int
    seconds: float
    test_top1: float
    predictions: list  # classicnets.inference.prediction.Prediction
    grid: Path


def digits_dir() -> Path:
    """The shipped digits (train/ and test/ IDX files) on disk."""
    return Path(str(resources.files("classicnets").joinpath("assets/digits")))


def run_demo(*, out: str | None = None, epochs: int | None = None, device: str = "auto", progress: bool = True):
    """Train, evaluate and predict on the shipped digits; returns a DemoResult."""
    from classicnets.config import resolve_config
    from classicnets.data import open_dataset
    from classicnets.inference.evaluation import evaluate
    from classicnets.inference.prediction import predict
    from classicnets.training.loop import fit
    from classicnets.training.run_folder import choose_run_folder
    from classicnets.training.state import cpu_threads

    digits = digits_dir()
    folder = Path(out) if out else choose_run_folder(None, "demo")
    started = time.perf_counter()
    result = fit(
        "lenet5", digits / "train", config=DEMO_RECIPE, out=str(folder), epochs=epochs, device=device, progress=progress
    )
    seconds = time.perf_counter() - started
    test = digits / "test"
    with cpu_threads(resolve_config(DEMO_RECIPE).train.threads):  # as in training (see the recipe)
        report = evaluate(result.best_checkpoint, test, device=device, out=result.run_dir / "eval", progress=progress)
        samples = write_samples(open_dataset(test, in_chans=1), result.run_dir / "samples")
        grid = result.run_dir / "predictions.png"
        predictions = predict(result.best_checkpoint, samples, topk=3, device=device, grid=grid)
    return DemoResult(
        result.run_dir,
        result.train_images,
        report.images,
        test,
        len(result.history),
        seconds,
        report.passes["center"].sums.top1,
        predictions,
        grid,
    )


def write_samples(dataset, folder: Path) -> list[Path]:
    """PNG files of the first SAMPLES_PER_CLASS test digits of every class, named digit_<label>_<index>.png."""
    from PIL import Image

    chosen: dict[int, list[int]] = {}
    for i, label in enumerate(dataset.targets):
        if len(chosen.setdefault(label, [])) < SAMPLES_PER_CLASS:
            chosen[label].append(i)
    paths = []
    for label in sorted(chosen):
        for i in chosen[label]:
            buffer = io.BytesIO()
            Image.fromarray(dataset.images[i].numpy()).save(buffer, format="PNG")
            path = folder / f"digit_{label}_{i:04d}.png"
            atomic_write_bytes(path, buffer.getvalue())
            paths.append(path)
    return paths
