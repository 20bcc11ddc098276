"""Honest timing, after airbench and the TensorFlow AlexNet benchmark: some warm-up iterations that are not timed
(first calls allocate, pick kernels and fill caches), then every iteration timed separately, reported as mean,
standard deviation, median and minimum. Candidates compared with each other are interleaved (A, B, A, B, ...) so
that a burst of load from other processes on a shared machine hits all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class Stats:
    """Seconds per call over the timed iterations."""

    mean: float
    sd: float
    median: float
    min: float
    n: int

    @classmethod
    def of(cls, seconds: list[float]) -> Stats:
        if not seconds:
            raise ValueError("no timings")
        sd = statistics.stdev(seconds) if len(seconds) > 1 else 0.0
        return cls(statistics.fmean(seconds), sd, statistics.median(seconds), min(seconds), len(seconds))

    def to_ms(self) -> dict[str, Any]:
        return {f"{k}_ms": v * 1e3 for k, v in asdict(self).items() if k != "n"} | {"n": self.n}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock time covers the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    steps: int,
    device: torch.device,
    progress: Callable[[], None] | None = None,
) -> dict[str, Stats]:
    """Time each callable `steps` times after `warmup` untimed calls, interleaving the candidates round by round."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
            if progress:
                progress()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(steps):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
            if progress:
                progress()
    return {name: Stats.of(s) for name, s in seconds.items()}
