"""`train --tensorboard`: each epoch's numbers and validation confusion matrix as TensorBoard events in RUN/tensorboard,
for the workflow of the tutorials the toolkit grew from (`tensorboard --logdir runs`).

Written through torch.utils.tensorboard, which needs the `tensorboard` package: `pip install 'classicnets[tensorboard]'`
(`make test` installs it). Event files are append-only logs (each record carries its own checksum, and readers
skip a torn last record), so unlike every other file of a run they are not written by atomic rename.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from classicnets.errors import UsageError

INSTALL_HINT = "pip install 'classicnets[tensorboard]'"


def check_available() -> None:
    """A UsageError naming the install command when the tensorboard package is missing (checked before a run
    creates its folder)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package: {INSTALL_HINT}") from None


class TensorBoardLog:
    """Scalars per epoch (loss, accuracy, learning rate, images/s) and the confusion matrix as an image."""

    def __init__(self, folder: Path, *, first_epoch: int = 0) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run drops any event logged after its last saved epoch (say, before a crash), so that no epoch
        # appears twice: purge_step is the first step this run will log.
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_epoch + 1 if first_epoch else None)

    def log_epoch(self, row: dict[str, float], counts: list[list[int]], classes: list[str]) -> None:
        from PIL import Image

        from classicnets.inference.plots import plot_confusion

        step = int(row["epoch"])
        scalars = {
            "loss/train": row["train_loss"],
            "loss/validation": row["val_loss"],
            "accuracy/train_top1": row["train_acc"],
            "accuracy/validation_top1": row["val_top1"],
            "accuracy/validation_top5": row["val_top5"],
            "learning_rate": row["lr"],
            "speed/images_per_s": row["images_per_s"],
        }
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        png = plot_confusion(counts, classes, None, title=f"Validation confusion matrix (epoch {step})")
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        self.writer.add_image("confusion_matrix", image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
