"""The run folder `fit` writes, and the one place that writes it.

    config.yaml           the fully resolved config (itself a valid --config recipe)
    classes.json          class names in label order
    split.json            how the validation set was chosen (folder split, or seed + held-out indices)
    command.txt           the command line of the start and of every resume, one line each, with the time
    metrics.csv           one row per epoch (METRIC_COLUMNS; TIME_COLUMNS say where the epoch's time went)
    last.pt, best.pt      checkpoints (last: everything to resume; best: the best validation top-1, for eval/predict)
    loss.png, accuracy.png, confusion_matrix.png (and confusion.json, its counts: the best epoch's)
    report.html           everything above on one self-contained page (classicnets.inference.report), at the end
    tensorboard/          with train.tensorboard: TensorBoard event files (training/tensorboard.py)

Every write goes through classicnets.fileio (temporary file, flush, fsync, rename), except TensorBoard's event files,
which are append-only logs by design, and only happens on the main process (`is_main`), so under torchrun the other
ranks write nothing.

The order of an epoch's writes is decided in one place, `write_epoch`: best.pt, the plots, metrics.csv and the
TensorBoard events first, last.pt last. last.pt is the commit point: a crash or full disk before it leaves the
previous last.pt (or none, in epoch 1), and --resume trains the epochs after it again, writing the same files
(docs/reliability.md). Not every epoch writes last.pt (train.checkpoint_minutes, Trainer.writes_last): one that does
not leaves the previous one as the commit point. `write_epoch_in_background` runs that same function in a
background thread (training.writer.BackgroundWriter) on a CPU copy of the state, so the next epoch trains while it
writes; every other write (`save`, the start files, `close`) first waits for it, so the order stays the order of
the calls.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classicnets.errors import UsageError
from classicnets.fileio import atomic_write_text, remove_orphans
from classicnets.training.writer import BackgroundWriter
from classicnets.weights.checkpoint import save_checkpoint

log = logging.getLogger(__name__)

# Where an epoch's wall-clock time went, in seconds (appended to metrics.csv after the columns before them):
# data_s   waiting for the loader (next batch, copy to the device, the batch transform)
# compute_s forward + loss + backward + optimiser step
# val_s    validation
# save_s   the stall for the epoch's files: waiting for the previous background write + copying the state
TIME_COLUMNS = ("data_s", "compute_s", "val_s", "save_s")
METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_top5",
    "seconds",
    "images_per_s",
    *TIME_COLUMNS,
)
# Files that mark a folder as holding a run (so a new run never overwrites one).
RUN_MARKERS = ("config.yaml", "last.pt", "best.pt", "metrics.csv")


# What a run writes before its first epoch ends (write_start): a folder holding only these has no results.
START_FILES = ("config.yaml", "classes.json", "split.json", "command.txt")
# Every file name the run folder holds (for the temporary files a killed write of one of them leaves).
RUN_FILES = (*START_FILES, "metrics.csv", "last.pt", "best.pt", "loss.png", "accuracy.png", "confusion_matrix.png",
             "confusion.json", "report.html")  # fmt: skip


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_MARKERS)


def finished_no_epoch(folder: Path) -> bool:
    """A folder `train` left before its first epoch ended: config.yaml, no checkpoint, no metrics."""
    return (folder / "config.yaml").is_file() and not any((folder / n).exists() for n in RUN_MARKERS[1:])


def recorded_epochs(folder: Path) -> int:
    """The epochs metrics.csv records (0 without it)."""
    try:
        with open(folder / "metrics.csv", encoding="utf-8") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)  # less the header
    except OSError:
        return 0


def run_weights(weights: str | os.PathLike) -> str | os.PathLike:
    """`weights` as given (a file, or the name of known weights); for a run folder, its best.pt (last.pt when no
    epoch has finished yet)."""
    folder = Path(weights)
    if not folder.is_dir():
        return weights
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    raise UsageError(f"{folder}: a folder without best.pt or last.pt; give a run folder or a weight file")


def choose_run_folder(out: str | None, model_name: str, *, restart: bool = False) -> Path:
    """`out` if given (refused when it holds a run with results); else runs/<model>, runs/<model>-2, ... (first free).

    A run that finished no epoch (finished_no_epoch) has no results to lose: --out to it starts there again, and so
    does --resume of it (`restart`: whatever its last epoch left, none of it was committed by a last.pt).
    """
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {folder}: exists and is not a folder")
        if restart or finished_no_epoch(folder):
            if holds_run(folder):
                log.warning("%s: the run there finished no epoch (no last.pt); starting it again", folder)
            return folder
        if holds_run(folder):
            raise UsageError(
                f"--out {folder} already holds a run; continue it with --resume {folder} or pick another --out"
            )
        return folder
    base = Path("runs") / model_name
    folder, n = base, 1
    while holds_run(folder):
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


@dataclass
class EpochFiles:
    """What a finished epoch writes (RunFolder.write_epoch decides the order)."""

    last: dict[str, Any] | None  # last.pt: everything --resume needs (None: not this epoch, Trainer.writes_last;
    # its tensors are the live weights: a writer that runs while training goes on must copy them first)
    history: list[dict[str, float]]  # metrics.csv and the curves; the last row is this epoch's
    confusion: list[list[int]]  # this epoch's validation confusion matrix
    classes: list[str]
    best: dict[str, Any] | None = None  # best.pt, when this epoch is the best so far


class RunFolder:
    def __init__(self, path: str | Path, *, is_main: bool = True) -> None:
        self.path = Path(path)
        self.is_main = is_main
        self.tensorboard: Any = None  # a TensorBoardLog while a run with train.tensorboard is going
        self.writer = BackgroundWriter(f"classicnets-writer {self.path.name}")

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def write_start(self, config_yaml: str, classes: list[str], split: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        remove_orphans(self.path, RUN_FILES)  # of writes a kill interrupted
        atomic_write_text(self.path / "config.yaml", config_yaml)
        atomic_write_text(self.path / "classes.json", json.dumps(classes, indent=1) + "\n")
        atomic_write_text(self.path / "split.json", json.dumps(split) + "\n")

    def record_command(self) -> None:
        """Add this process's command line to command.txt (the start, then each resume)."""
        if not self.is_main:
            return
        path = self.path / "command.txt"
        before = path.read_text(encoding="utf-8") if path.is_file() else ""
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
        atomic_write_text(path, f"{before}{when}  {command_line()}\n")

    def write_metrics(self, history: list[dict[str, float]]) -> None:
        if not self.is_main:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in history:  # rows of a run resumed from before TIME_COLUMNS existed lack them: nan
            writer.writerow({k: _fmt(row.get(k, math.nan) if k in TIME_COLUMNS else row[k]) for k in METRIC_COLUMNS})
        atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def write_epoch(self, files: EpochFiles) -> None:
        """Write a finished epoch's files: best.pt and its confusion matrix, metrics.csv, the curves, the TensorBoard
        events, then last.pt.

        last.pt last (when the epoch writes it), because it commits the epoch: whatever stops this half-way (a
        crash, a full disk: every write error names its file) leaves the previous last.pt, from which --resume trains
        the epochs after it again and rewrites every file here. The one function that orders these writes (an
        asynchronous checkpoint writer keeps this order).
        """
        if not self.is_main:
            return
        row = files.history[-1]
        if files.best is not None:
            save_checkpoint(self.best, files.best)
            self.plot_confusion(files.confusion, files.classes, int(row["epoch"]))
        self.write_metrics(files.history)
        self.plot_curves(files.history)
        self.log_epoch(row, files.confusion, files.classes)
        if files.last is not None:
            save_checkpoint(self.last, files.last)

    def write_epoch_in_background(self, files: EpochFiles) -> None:
        """write_epoch in the background writer, once the previous write has finished (raising its error). The
        tensors in `files` must be copies nobody changes (training.writer.cpu_copy): training goes on meanwhile."""
        if self.is_main:
            self.writer.submit(lambda: self.write_epoch(files))

    def wait_for_writes(self) -> None:
        """Return when the background write (if any) has landed; raise its error (a WriteError naming the file)."""
        self.writer.wait()

    def save(self, which: str, checkpoint: dict[str, Any]) -> None:
        """Write `which`.pt now, after any background write (so the newest state lands last)."""
        if self.is_main:
            self.writer.wait()
            save_checkpoint(self.path / f"{which}.pt", checkpoint)

    def plot_curves(self, history: list[dict[str, float]]) -> None:
        if not self.is_main or not history:
            return
        from classicnets.inference.plots import plot_curves

        plot_curves(history, self.path / "loss.png", self.path / "accuracy.png")

    def plot_confusion(self, counts: list[list[int]], classes: list[str], epoch: int) -> None:
        """confusion_matrix.png and its numbers, confusion.json (what the report lists the most-confused pairs from)."""
        if not self.is_main:
            return
        from classicnets.inference.plots import plot_confusion

        title = f"Validation confusion matrix (best epoch, {epoch})"
        plot_confusion(counts, classes, self.path / "confusion_matrix.png", title=title)
        record = {"epoch": epoch, "classes": classes, "counts": counts}
        atomic_write_text(self.path / "confusion.json", json.dumps(record) + "\n")

    def open_tensorboard(self, first_epoch: int) -> None:
        if self.is_main:
            from classicnets.training.tensorboard import TensorBoardLog

            self.tensorboard = TensorBoardLog(self.path / "tensorboard", first_epoch=first_epoch)

    def log_epoch(self, row: dict[str, float], counts: list[list[int]], classes: list[str]) -> None:
        """The epoch's numbers and confusion matrix in TensorBoard (with train.tensorboard)."""
        if self.tensorboard is not None:
            self.tensorboard.log_epoch(row, counts, classes)

    def close(self) -> None:
        """Wait for the background write (its error is logged: the caller raises the one that ended the run), then
        close the TensorBoard log."""
        self.writer.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def command_line() -> str:
    """The command that is running, as a person would type it again: `classicnets ...` for the command (also under
    `python -m classicnets`), `python script.py ...` for a script calling fit(); under torchrun, with its world size."""
    argv = list(sys.argv)
    program = Path(argv[0]).name if argv else "python"
    if program in ("classicnets", "__main__.py"):
        line = shlex.join(["classicnets", *argv[1:]])
    else:
        line = shlex.join(["python", *argv])
    if "WORLD_SIZE" in os.environ:
        line = f"torchrun ({os.environ['WORLD_SIZE']} processes) -m {line}"
    return line


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"
