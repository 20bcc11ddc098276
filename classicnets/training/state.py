"""Where a run stands (`Progress`, saved in last.pt and restored by --resume) and the process settings a run
holds while it trains (deterministic algorithms, CPU threads).

Everything in a checkpoint is tensors, numbers, strings, lists and dicts, so `torch.load(weights_only=True)`
reads it back; the RNG states are saved by classicnets.rng.capture_rng in the same plain form.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

# Keys a resumable checkpoint (last.pt) must hold, besides those of every checkpoint.
RESUME_KEYS = ("config", "epoch", "step_in_epoch", "optimizer", "scheduler", "rng", "metrics")


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms for the duration of a run, restoring the caller's setting afterwards.

    warn_only=True: an op without a deterministic kernel (some CUDA ones) warns instead of failing the run; CPU
    training, the case resume is tested on, uses deterministic kernels throughout.
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    previous_benchmark = torch.backends.cudnn.benchmark
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous_benchmark


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) for the duration of a run (None: leave torch's setting alone)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Progress:
    """Where a run is: the counters and histories saved in last.pt and restored by --resume."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # optimisation steps done in the next, unfinished epoch (0 at an epoch boundary)
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics row per completed epoch
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # MetricSums of the unfinished epoch
    partial_seconds: float = 0.0  # training time already spent in the unfinished epoch
    best: dict[str, float] = field(default_factory=dict)  # {"epoch", "val_top1", "val_loss"} of best.pt

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "metrics": [dict(row) for row in self.history],
            "partial": list(self.partial),
            "partial_seconds": self.partial_seconds,
            "best": dict(self.best),
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> Progress:
        return cls(
            epoch=int(ckpt["epoch"]),
            step_in_epoch=int(ckpt.get("step_in_epoch", 0)),
            global_step=int(ckpt.get("global_step", 0)),
            history=[dict(row) for row in ckpt.get("metrics", [])],
            partial=[float(v) for v in ckpt.get("partial", [0.0] * 4)],
            partial_seconds=float(ckpt.get("partial_seconds", 0.0)),
            best=dict(ckpt.get("best", {})),
        )

    def is_better(self, val_top1: float, val_loss: float) -> bool:
        """Higher validation top-1, or equal top-1 with lower loss."""
        if not self.best:
            return True
        return (val_top1, -val_loss) > (self.best["val_top1"], -self.best["val_loss"])
