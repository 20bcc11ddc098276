"""`bench` in infer mode: onnxruntime running our own ONNX export of the same weights, timed at every batch size
interleaved with the default path, as one more row ("onnxruntime")."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from classicnets.bench.report import PathInfo
from classicnets.bench.settings import BenchConfig
from classicnets.errors import UsageError
from classicnets.models.registry import create_model

log = logging.getLogger(__name__)

ONNXRUNTIME_PATH = "onnxruntime"


@dataclass
class OnnxRuntimePath:
    """An onnxruntime session on our exported model: its row's PathInfo and what the report records about it."""

    info: PathInfo
    session: Any
    details: dict[str, Any]

    def step(self, x: torch.Tensor) -> Callable[[], None]:
        feed = {"input": x.float().cpu().numpy()}

        def run() -> None:
            self.session.run(None, feed)

        return run


def onnxruntime_path(cfg: BenchConfig, device: torch.device, *, required: bool) -> OnnxRuntimePath | dict[str, str]:
    """onnxruntime's CPU provider (as many threads as torch uses) on the model exported with
    classicnets.weights.export (torch.onnx's dynamo exporter, float32, batch dimension dynamic), from the weights
    the default path starts with (same seed); or {"skipped": why}."""
    try:
        import onnxruntime
    except ImportError:
        if required:
            raise UsageError("--onnx needs onnxruntime: pip install 'classicnets[onnx]'") from None
        return {"skipped": "onnxruntime is not installed"}
    if device.type != "cpu":
        return {"skipped": f"onnxruntime's CPU provider is compared with CPU runs only (this run is on {device})"}
    from classicnets.weights.export import export

    torch.manual_seed(cfg.seed)  # the weights bench._build_paths gives the default path
    model = create_model(cfg.model, num_classes=cfg.num_classes).eval()
    with tempfile.TemporaryDirectory(prefix="classicnets-bench-") as tmp:
        onnx_file = Path(tmp) / f"{cfg.model}.onnx"
        start = time.perf_counter()
        export(model, onnx_file, fmt="onnx", verify=False)
        export_s = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Spinning workers would keep burning the cores for a while after each run, into our interleaved turn;
        # without spinning onnxruntime itself measured as fast or faster here (48 vs 65 ms at load 3, 2 threads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    info = PathInfo(name=ONNXRUNTIME_PATH, precision="fp32", channels_last=False, compiled=False,
                    lrn="our ONNX export", optimizer="inference only")  # fmt: skip
    details = {
        "onnxruntime_version": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
        "onnxruntime_options": "CPUExecutionProvider, intra_op_num_threads = torch threads, allow_spinning 0",
        "export": f"classicnets.weights.export (torch.onnx dynamo exporter, fp32, {export_s:.0f} s)",
    }
    return OnnxRuntimePath(info, session, details)
