"""`bench` at batch 1 in infer mode: our default path against onnxruntime running our own ONNX export."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from classicnets import runtime
from classicnets.bench.settings import BenchConfig
from classicnets.bench.steps import TimedPath
from classicnets.bench.timing import time_interleaved
from classicnets.errors import UsageError
from classicnets.models.base import unwrap_model

log = logging.getLogger(__name__)


def compare_onnxruntime(
    path: TimedPath, x: torch.Tensor, device: torch.device, cfg: BenchConfig, *, required: bool, quiet: bool
) -> dict[str, Any]:
    """Batch-1 inference: our default path against onnxruntime (CPU provider, as many threads as torch uses)
    running the same weights exported with classicnets.weights.export (torch.onnx's dynamo exporter), interleaved.
    """
    try:
        import onnxruntime
    except ImportError:
        if required:
            raise UsageError("--onnx needs onnxruntime: pip install 'classicnets[onnx]'") from None
        return {"skipped": "onnxruntime is not installed"}
    if device.type != "cpu":
        return {"skipped": f"onnxruntime's CPU provider is compared with CPU runs only (this run is on {device})"}
    from classicnets.weights.export import export

    model = unwrap_model(path.model)
    fp32_copy = copy.deepcopy(model).float()
    fp32_copy.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # torch's stub lacks it
    fp32_copy.eval()
    with tempfile.TemporaryDirectory(prefix="classicnets-bench-") as tmp:
        onnx_file = Path(tmp) / f"{cfg.model}.onnx"
        start = time.perf_counter()
        export(fp32_copy, onnx_file, fmt="onnx", verify=False)
        export_s = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Spinning workers would keep burning the cores for a while after each run, into our interleaved turn;
        # without spinning onnxruntime itself measured as fast or faster here (48 vs 65 ms at load 3, 2 threads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    del fp32_copy
    feed = {"input": x[:1].float().cpu().numpy()}
    ours_input = path.to_input(x[:1])
    grad_off = torch.no_grad if path.info.compiled else torch.inference_mode

    def ours() -> None:
        with grad_off(), runtime.autocast(device, path.info.precision):
            path.model(ours_input)

    def ort() -> None:
        session.run(None, feed)

    stats = time_interleaved({"ours": ours, "ort": ort}, warmup=cfg.warmup, steps=cfg.steps, device=device)
    return {
        "batch_size": 1,
        "onnxruntime_version": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
        "onnxruntime_options": "CPUExecutionProvider, intra_op_num_threads = torch threads, allow_spinning 0",
        "ours_path": path.info.describe(),
        **{f"ours_{k}": v for k, v in stats["ours"].to_ms().items()},
        **{f"onnxruntime_{k}": v for k, v in stats["ort"].to_ms().items()},
        "ratio": stats["ort"].mean / stats["ours"].mean,
        "ratio_median": stats["ort"].median / stats["ours"].median,
        "export": f"classicnets.weights.export (torch.onnx dynamo exporter, fp32, {export_s:.0f} s)",
    }
