"""`fit`: train a model on a folder of images and write a run folder (see run_folder.py for what it holds).

The loop follows torchvision's references/classification/train.py (train_one_epoch, then evaluate), with what a
long CPU or single-GPU run needs: a checkpoint after every epoch and on Ctrl-C/SIGTERM, an exact --resume
(the loader's order depends only on (seed, epoch) and every RNG state is saved), a stop on a non-finite loss that
keeps the last finite weights, and the runtime's fast path (channels_last, bf16 autocast, optional torch.compile).

Under torchrun (`torchrun --nproc-per-node N -m classicnets train ...`) every process runs this same loop on its
shard; metrics are sums all-reduced over the processes, every stop (signal, NaN, a callback) is agreed on by all
of them at the same step, and all writing goes through RunFolder on process 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classicnets.config import Config, resolve_config
from classicnets.errors import ClassicNetsError, WriteError, first_line
from classicnets.inference.metrics import MetricSums
from classicnets.training.distributed import PeerLost, is_collective_failure
from classicnets.training.run_folder import RunFolder
from classicnets.training.signals import StopRequest, stop_on_signals
from classicnets.training.start import open_resume, start_trainer
from classicnets.training.state import Progress, cpu_threads, deterministic_algorithms
from classicnets.training.trainer import Trainer

log = logging.getLogger(__name__)


class TrainingInterrupted(ClassicNetsError):
    """Ctrl-C or SIGTERM: the step finished, last.pt was saved; exit code 128 + signal number (130 / 143)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TrainingDiverged(ClassicNetsError):
    """The loss became NaN or infinite (exit code 1)."""


@dataclass
class FitResult:
    """What `fit` returns: the run folder, the trained model (last epoch), and the per-epoch metrics."""

    run_dir: Path
    model: nn.Module
    classes: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)  # epoch, val_top1, val_loss of best.pt
    train_images: int = 0
    val_images: int = 0

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"


def fit(
    model: str | None = None,
    data: str | Path | None = None,
    *,
    config: str | Path | dict | Config | None = None,
    resume: str | Path | bool | None = None,
    settings: list[str] | tuple[str, ...] = (),
    progress: bool = False,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    stop: StopRequest | None = None,
    **overrides: Any,
) -> FitResult:
    """Train `model` (a registered name) on `data` and write the run folder; returns a FitResult.

    `config` is a recipe (a path, a shipped recipe's name such as "lenet5_digits", a dict or a Config); keyword
    arguments use the command-line flag names (epochs=, batch_size=, lr=, optimizer=, schedule=, out=, device=,
    precision=, seed=, workers=, weights=, num_classes=, ...) and override the recipe; `settings` takes
    "section.key=value" strings. `resume` continues a run: a run folder or its last.pt (True: the folder given by
    `out`). `progress` shows a progress bar per epoch. `on_epoch_end(row)` is called after each epoch with its
    metrics row (it may call `stop.request()`). Raises TrainingInterrupted on SIGINT/SIGTERM (after saving
    last.pt) and TrainingDiverged on a NaN/inf loss.
    """
    overrides = {"model": model, "data": str(data) if data is not None else None, **overrides}
    if resume:
        trainer = open_resume(resume, overrides=overrides, settings=settings)
    else:
        trainer = start_trainer(resolve_config(config, overrides=overrides, settings=settings))
    return train_epochs(trainer, progress=progress, on_epoch_end=on_epoch_end, stop=stop or StopRequest())


def train_epochs(trainer: Trainer, *, progress: bool, on_epoch_end: Callable | None, stop: StopRequest) -> FitResult:
    """Epochs from where `trainer` stands to config.train.epochs, with checkpoints, logs and plots."""
    cfg, state = trainer.config, trainer.state
    with deterministic_algorithms(cfg.train.deterministic), cpu_threads(cfg.train.threads), stop_on_signals(stop):
        trainer.begin()
        try:
            while state.epoch < cfg.train.epochs:
                if trainer.agree(stop.requested):
                    raise _interrupted(trainer, stop)
                row = _one_epoch(trainer, progress=progress, stop=stop)
                if on_epoch_end is not None:
                    on_epoch_end(dict(row))
            trainer.run_folder.wait_for_writes()  # the last epoch's files, written in the background
        except WriteError as e:  # a full disk, a quota: the folder still resumes (RunFolder.write_epoch)
            raise WriteError(f"{e}; then continue with: classicnets train --resume {trainer.run_folder.path}") from e
        except RuntimeError as e:
            ctx = trainer.ctx
            if not (ctx.enabled and is_collective_failure(e)):
                raise
            if stop.requested:  # torchrun's SIGTERM after another process died: the last finished step is good
                raise _interrupted(trainer, stop, agreed=False) from None
            # Another process died (torchrun stops this one too within seconds): one line, not a traceback.
            raise PeerLost(
                f"process {ctx.rank} of {ctx.world_size} lost contact with the others ({first_line(e)}); "
                "one of them failed or was stopped: its own message says why"
            ) from None
        finally:
            trainer.run_folder.close()
    if cfg.train.report and trainer.run_folder.is_main:  # after the stop handlers: everything is saved by now
        _write_report(trainer)
    best = state.best
    log.info(
        "done: best validation top-1 %.2f%% at epoch %d; run folder %s",
        100 * best.get("val_top1", float("nan")),
        best.get("epoch", 0),
        trainer.run_folder.path,
    )
    data = trainer.data
    return FitResult(
        trainer.run_folder.path,
        trainer.raw_model,
        data.classes,
        list(state.history),
        dict(best),
        len(data.train),
        len(data.val),
    )


def _one_epoch(trainer: Trainer, *, progress: bool, stop: StopRequest) -> dict[str, float]:
    cfg, state = trainer.config, trainer.state
    epoch = state.epoch  # 0-based index of the epoch being trained
    started = time.perf_counter()
    sums = MetricSums(torch.tensor(state.partial, dtype=torch.float64))
    train_seconds = state.partial_seconds
    steps = len(trainer.train_loader)
    if state.step_in_epoch < steps:
        bar = trainer.progress_bar(epoch, enabled=progress)
        try:
            for loss, logits, labels in trainer.train_steps(epoch, start=state.step_in_epoch):
                if not math.isfinite(loss):  # the step was not taken
                    raise _diverged(trainer, loss)
                sums.update(logits, labels, loss)
                state.partial_seconds = train_seconds + (time.perf_counter() - started)
                state.partial = sums.to_list()
                trainer.update_bar(bar, sums, state.partial_seconds)
                trainer.run_folder.writer.raise_if_failed()  # the last epoch's write failed: stop now, not later
                if trainer.agree(stop.requested):
                    raise _interrupted(trainer, stop)
        except (TrainingInterrupted, TrainingDiverged):
            raise
        except Exception:
            # Ctrl-C in a terminal reaches the DataLoader workers too, and a batch being fetched then fails:
            # the state after the last finished step is still good, so save it as for any stop. (Under torchrun
            # the other processes may be gone: no collective operation from here on.)
            if stop.requested:
                raise _interrupted(trainer, stop, agreed=False) from None
            raise
        finally:
            bar.close()
    train_seconds = state.partial_seconds
    train_sums = trainer.reduce(sums)

    val_started = time.perf_counter()
    val = trainer.validate(stop)
    if val is None:  # stopped during validation: the epoch's training is kept, validation runs again on resume
        raise _interrupted(trainer, stop)
    val_seconds = time.perf_counter() - val_started
    val_sums, confusion = val
    row = {
        "epoch": epoch + 1,
        "lr": trainer.current_lr(),
        "train_loss": train_sums.loss,
        "train_acc": train_sums.top1,
        "val_loss": val_sums.loss,
        "val_top1": val_sums.top1,
        "val_top5": val_sums.top5,
        "seconds": train_seconds + (time.perf_counter() - val_started),
        "images_per_s": train_sums.count / train_seconds if train_seconds > 0 else 0.0,
        **trainer.times,  # data_s, compute_s
        "val_s": val_seconds,
    }
    trainer.end_epoch(row, confusion)  # adds save_s (run_folder.TIME_COLUMNS)
    log.info(
        "epoch %d/%d  lr %.3g  train loss %.4f acc %.2f%%  val loss %.4f top-1 %.2f%% top-5 %.2f%%  %.1fs %.0f img/s"
        "  (data %.1fs, compute %.1fs, val %.1fs, save %.1fs)",
        row["epoch"],
        cfg.train.epochs,
        row["lr"],
        row["train_loss"],
        100 * row["train_acc"],
        row["val_loss"],
        100 * row["val_top1"],
        100 * row["val_top5"],
        row["seconds"],
        row["images_per_s"],
        row["data_s"],
        row["compute_s"],
        row["val_s"],
        row["save_s"],
    )
    return row


def _write_report(trainer: Trainer) -> None:
    """report.html. A report that fails is a warning, never a lost run."""
    from classicnets.inference.report import write_report

    folder = trainer.run_folder.path
    try:
        write_report(folder, data=trainer.data, device=str(trainer.device))
    except Exception as e:  # any failure here must leave the finished run as it is
        log.warning("the run is complete, but report.html could not be written (%s); try: classicnets report %s",
                    first_line(e), folder)  # fmt: skip


def _interrupted(trainer: Trainer, stop: StopRequest, *, agreed: bool = True) -> TrainingInterrupted:
    """Save last.pt (unless it holds this state already) and build the error that says how to continue.

    `agreed`: every process reached this point together, so the unfinished epoch's sums can be added up first.
    """
    state = trainer.state
    trainer.run_folder.wait_for_writes()  # an epoch's files still being written in the background land first
    if not trainer.saved_current:
        if agreed:
            _sum_partial(trainer)
        trainer.save_last()
    where = (
        f"after epoch {state.epoch}"
        if state.step_in_epoch == 0
        else f"at epoch {state.epoch + 1}, step {state.step_in_epoch} of {len(trainer.train_loader)}"
    )
    name = stop.signal_name or "a stop request"
    resume = f"classicnets train --resume {trainer.run_folder.path}"
    ctx = trainer.ctx
    if ctx.enabled:
        resume += f" under torchrun with {ctx.world_size} processes" + (
            "" if state.step_in_epoch else " (or another number)"
        )
    return TrainingInterrupted(
        f"stopped by {name} {where}; saved {trainer.run_folder.last}; continue with: {resume}", stop.exit_code
    )


def _diverged(trainer: Trainer, loss: float) -> TrainingDiverged:
    state = trainer.state
    step = state.step_in_epoch + 1  # 1-based number of the step whose loss was not finite
    _sum_partial(trainer)  # every process stops at this step (Trainer.train_steps agrees on it)
    kept = trainer.save_last_if_finite()
    where = f"epoch {state.epoch + 1}, step {step}"
    last, run = trainer.run_folder.last, trainer.run_folder.path
    if kept:
        saved = (
            f"{last} holds the last finite weights (before that step). Try a lower --lr in a new run; "
            f"--weights {last} starts it from these weights"
        )
    elif trainer.saved_at is None:
        saved = (
            f"the weights were no longer finite and no epoch had finished, so there is no last.pt. "
            f"Start again with a lower --lr: classicnets train --resume {run} --lr LR"
        )
    else:
        epochs, steps = trainer.saved_at
        at = f"after epoch {epochs}" + (f", step {steps}" if steps else "")
        saved = (
            f"the weights were no longer finite; {last} keeps those {at}. Try a lower --lr in a new run; "
            f"--weights {last} starts it from them"
        )
    return TrainingDiverged(f"the loss became {loss} at {where}; stopped. {saved}.")


def _sum_partial(trainer: Trainer) -> None:
    """The unfinished epoch's metric sums of all processes, for last.pt (only process 0 keeps them on resume)."""
    state = trainer.state
    if trainer.ctx.enabled:
        state.partial = trainer.reduce(MetricSums(torch.tensor(state.partial, dtype=torch.float64))).to_list()


__all__ = ["FitResult", "Progress", "RunFolder", "TrainingDiverged", "TrainingInterrupted", "fit"]
