"""`bench` in infer mode: both precisions `auto` chooses between, side by side, and onnxruntime beside them.

The default path's infer row runs what `eval` and `predict` run (runtime.prepare_inference: weights cast once to
auto's choice). The other choice gets a row of its own: "fp32" (oneDNN-packed float32 weights) beside a bf16
default, or "bf16" (weights cast once) beside a float32 default where bf16 is native. Emulated bf16 (a CPU
without AVX-512 BF16/AMX) is left out: its matmuls run about 100x slower, so auto never picks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from classicnets import runtime
from classicnets.bench.infer_report import DEFAULT_PATH
from classicnets.bench.onnx_compare import ONNXRUNTIME_PATH, OnnxRuntimePath
from classicnets.bench.report import PathInfo, ResultRow
from classicnets.bench.steps import TimedPath, infer_step


@dataclass
class InferCandidate:
    """One more infer row: how it runs (info) and its step on this batch."""

    info: PathInfo
    step: Callable[[], None]


def other_precision(path: TimedPath, device: torch.device) -> str | None:
    """The precision auto did not choose for the default path, when it is worth a row: fp32 beside bf16, bf16
    beside fp32 where bf16 is native; None otherwise (compiled paths, emulated bf16, fp16)."""
    if path.info.compiled or path.info.precision not in ("fp32", "bf16"):
        return None
    if path.info.precision == "bf16":
        return "fp32"
    return "bf16" if runtime.native_bf16(device) else None


def infer_candidates(
    default: TimedPath, onnx: OnnxRuntimePath | None, x: torch.Tensor, device: torch.device
) -> list[InferCandidate]:
    """The rows timed beside the default path in infer mode (see the module docstring)."""
    out = []
    other = other_precision(default, device)
    if other is not None:
        info = replace(default.info, name=other, precision=other, optimizer="inference only")
        out.append(InferCandidate(info, infer_step(TimedPath(info, default.model, default.optimizer,
                                                             default.to_input), x, device)))  # fmt: skip
    if onnx is not None:
        out.append(InferCandidate(onnx.info, onnx.step(x)))
    return out


def onnx_summary(onnx: OnnxRuntimePath | dict[str, str] | None, rows: list[ResultRow]) -> dict[str, Any] | None:
    """What the report records about onnxruntime: its settings and, per batch size, onnxruntime's time over the
    default path's (>= 1: ours is no slower); {"skipped": why} or None as given when it did not run."""
    if not isinstance(onnx, OnnxRuntimePath):
        return onnx
    infer = {(r.batch_size, r.path): r for r in rows if r.mode == "infer"}
    by_batch = []
    for (batch, name), ort in sorted(infer.items()):
        ours = infer.get((batch, DEFAULT_PATH))
        if name != ONNXRUNTIME_PATH or ours is None:
            continue
        by_batch.append({
            "batch_size": batch,
            "default_precision": ours.precision,
            "default_median_ms": ours.median_ms,
            "onnxruntime_median_ms": ort.median_ms,
            "ratio": ort.mean_ms / ours.mean_ms,
            "ratio_median": ort.median_ms / ours.median_ms,
        })  # fmt: skip
    return onnx.details | {"by_batch": by_batch}
