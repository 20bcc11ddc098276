"""What `classicnets bench` is asked to time: BenchConfig, checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from classicnets.choices import BENCH_MODES
from classicnets.errors import UsageError


@dataclass
class BenchConfig:
    """What to time. `channels_last=None` and `precision="auto"` mean the default path's own choice."""

    model: str
    batch_sizes: list[int] = field(default_factory=lambda: [32])
    mode: str = "both"  # infer, train or both
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    warmup: int = 10  # the TensorFlow AlexNet benchmark: 10 untimed steps, then 100 timed
    steps: int = 100
    baseline: bool = False
    device: str = "auto"
    num_classes: int | None = None
    onnx: bool | None = None  # onnxruntime beside each infer row: None = when installed
    data: str | None = None  # a folder or list file: time the real loader feeding the step
    workers: int = 2
    peak_budget_s: float = 1.5
    seed: int = 0
    recipe: str | None = None  # a training recipe (--config): the default path trains with its optimiser and loss

    def validate(self) -> None:
        if self.mode not in BENCH_MODES:
            raise UsageError(f"unknown mode {self.mode!r}; use infer, train or both")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UsageError("batch sizes must be positive integers, e.g. --batch-size 32,128")
        if self.warmup < 0 or self.steps < 1:
            raise UsageError(f"--warmup must be >= 0 and --steps >= 1 (got {self.warmup} and {self.steps})")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if not self.peak_budget_s > 0:
            raise UsageError(f"--peak-seconds must be positive, got {self.peak_budget_s}")
        if self.recipe is not None:
            from classicnets.config import resolve_config

            resolve_config(self.recipe)  # an unknown recipe or a bad key: its one-line UsageError, before any timing

    @property
    def modes(self) -> list[str]:
        return ["infer", "train"] if self.mode == "both" else [self.mode]
