"""The lines `bench` prints under its table for infer mode: every path's time at each batch size over the default
path's, and how onnxruntime ran. (Rows are bench.report.ResultRow; this module imports nothing of bench, so that
report.py can use it.)"""

from __future__ import annotations

from typing import Any

DEFAULT_PATH = "default"


def infer_lines(rows: list[Any], onnx: dict[str, Any] | None) -> list[str]:
    """One line per infer batch size: each path's median and its time over the default path's."""
    lines = []
    batches = sorted({r.batch_size for r in rows if r.mode == "infer"})
    for batch in batches:
        at = [r for r in rows if r.mode == "infer" and r.batch_size == batch]
        ours = next((r for r in at if r.path == DEFAULT_PATH), None)
        if ours is None or len(at) < 2:
            continue
        parts = [f"{r.path} ({r.precision}) {r.median_ms:.2f} ms" for r in at]
        ratios = [f"{r.path} / default = {r.median_ms / ours.median_ms:.2f}" for r in at if r is not ours]
        lines.append(f"infer batch {batch}, medians: {'; '.join(parts)}; {', '.join(ratios)} (> 1: default is faster)")
    if onnx and onnx.get("skipped"):
        lines.append(f"onnxruntime comparison skipped: {onnx['skipped']}")
    elif onnx:
        lines.append(f"onnxruntime {onnx['onnxruntime_version']} ({onnx['onnxruntime_options']}) on our export: "
                     f"{onnx['export']}")  # fmt: skip
    if lines:
        lines.insert(0, "infer rows: weights cast once (runtime.prepare_inference, as eval and predict run), "
                        "no autocast; train rows: autocast")  # fmt: skip
    return lines
