"""`classicnets report RUN`: one self-contained HTML file about a training run (report.html in the run folder), which
`train` also writes at the end of every run.

It gathers what the run folder holds (config.yaml, command.txt, metrics.csv, split.json, confusion.json and the
pictures) and adds what needs the model: the first layer's kernels and the misclassified validation images with
the Grad-CAM map of the class the model chose. Every picture is inlined as a data: URI, so the file opens from disk
with no network and can be mailed or archived alone. A part that cannot be made (the data folder moved away, no
best.pt yet) is left out with a line saying why; the rest of the report is still written.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from classicnets.errors import ClassicNetsError, UsageError, first_line
from classicnets.fileio import atomic_write_text
from classicnets.inference.report_html import RunContents, render_report

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
# Misclassified validation images shown (with Grad-CAM), and how many validation images are searched for them at
# most (evenly spaced over the set, so every class is visited): the report stays a few seconds of work at the end
# of a run, whatever the size of the validation set.
MISCLASSIFIED_SHOWN = 12
MAX_SCANNED_IMAGES = 2048
# Most-confused pairs listed.
MOST_CONFUSED = 10


def write_report(
    run: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    data: Any = None,
    device: str = "cpu",
) -> Path:
    """Write the HTML report of the run folder `run` to `out` (default RUN/report.html) and return its path.

    `data` (a training.setup.TrainingData) spares reopening the run's data when the caller has it open.
    """
    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"{run_dir}: not a run folder (no config.yaml); give a folder `classicnets train` wrote")
    contents = gather(run_dir, data=data, device=device)
    path = Path(out) if out is not None else run_dir / REPORT_NAME
    atomic_write_text(path, render_report(contents))
    log.info("report: %s", path)
    return path


def gather(run_dir: Path, *, data: Any = None, device: str = "cpu") -> RunContents:
    import yaml

    c = RunContents(run_dir)
    c.config_yaml = (run_dir / "config.yaml").read_text(encoding="utf-8")
    c.config = yaml.safe_load(c.config_yaml) or {}
    c.classes = _json(run_dir / "classes.json", [])
    c.split = _json(run_dir / "split.json", {})
    c.confusion = _json(run_dir / "confusion.json", None)
    c.commands = _lines(run_dir / "command.txt")
    c.metrics = _metrics(run_dir / "metrics.csv")
    for name in ("loss", "accuracy", "confusion_matrix"):
        if (run_dir / f"{name}.png").is_file():
            c.pictures[name] = (run_dir / f"{name}.png").read_bytes()
    if c.confusion is not None:
        from classicnets.inference.metrics import ConfusionMatrix

        counts = torch.tensor(c.confusion["counts"], dtype=torch.int64)
        c.most_confused = ConfusionMatrix(len(counts), counts).most_confused(c.confusion["classes"], MOST_CONFUSED)
    model = functools.cache(lambda: _load_best(run_dir))  # loaded once, by the first part that needs it
    _try(c, "the data table and the misclassified examples", lambda: _add_data(c, model, data, device))
    _try(c, "the first layer's kernels", lambda: _add_filters(c, model()))
    return c


def _try(c: RunContents, what: str, step) -> None:
    """Run one part of the report; a failure leaves that part out with a note, never the whole report."""
    try:
        step()
    except (ClassicNetsError, OSError, ValueError, RuntimeError) as e:
        log.warning("report: left out %s (%s)", what, first_line(e))
        c.notes.append(f"Left out {what}: {first_line(e)}")


def _json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def _metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _load_best(run_dir: Path) -> Any:
    from classicnets.inference.evaluation import load_model
    from classicnets.training.run_folder import run_weights

    return load_model(run_weights(run_dir))


def _add_filters(c: RunContents, model: Any) -> None:
    from classicnets.inference.explain_plots import plot_filters
    from classicnets.inference.filters import filter_grid

    c.pictures["filters"] = plot_filters(filter_grid(model))


def _add_data(c: RunContents, model: Callable[[], Any], data: Any, device: str) -> None:
    from classicnets.training.setup import open_run_data

    if data is None:
        data = open_run_data(c.run_dir)
    c.class_counts = {"train": data.train.class_counts(), "val": data.val.class_counts()}
    _add_misclassified(c, model(), data.val, device)


def _add_misclassified(c: RunContents, model: Any, val: Any, device: str) -> None:
    """The first MISCLASSIFIED_SHOWN misclassified images among up to MAX_SCANNED_IMAGES validation images, each
    with the Grad-CAM map of the (wrong) class the model chose: where it saw that class."""
    from classicnets.data import BatchTransform, make_loader
    from classicnets.inference.evaluation import class_names, evaluate_loader
    from classicnets.inference.gradcam import grad_cam
    from classicnets.inference.plots import plot_image_grid
    from classicnets.runtime import prepare_model, resolve_device

    dev = resolve_device(device)
    net = prepare_model(model, dev)
    classes = class_names(model)
    if len(val) > MAX_SCANNED_IMAGES:
        step = len(val) / MAX_SCANNED_IMAGES
        val = val.subset([int(i * step) for i in range(MAX_SCANNED_IMAGES)])
    pre = model.preprocessing
    loader = make_loader(val, preprocessing=pre, train=False, batch_size=64, device=dev)
    transform = BatchTransform(pre, train=False, channels_last=bool(getattr(model, "channels_last", False)))
    passes = evaluate_loader(
        net, loader, transform, device=dev, precision="fp32", num_classes=len(classes),
        keep_misclassified=MISCLASSIFIED_SHOWN, classes=classes,
    )  # fmt: skip
    assert passes is not None
    found = passes["center"].misclassified
    c.scanned, c.misclassified = len(val), found
    if not found:
        return
    x = transform(torch.stack([m.image for m in found]).to(dev))
    predicted = torch.tensor([classes.index(m.predicted) for m in found], device=dev)
    heat, _ = grad_cam(net, x, predicted)
    c.pictures["misclassified"] = plot_image_grid(
        [m.image for m in found],
        [f"{m.true} → {m.predicted}, {m.probability:.2f}" for m in found],
        None,
        columns=min(6, len(found)),
        heat=list(heat),
        title="true → predicted, probability; Grad-CAM of the predicted class",
    )
