"""`bench` in infer mode: onnxruntime running our own ONNX export of the same weights, timed at every batch size
interleaved with the default path, as one more row ("onnxruntime")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    from classicnets.inference.onnx_runtime import import_onnxruntime, onnxruntime_session

    try:
        onnxruntime = import_onnxruntime("--onnx")
    except UsageError:
        if required:
            raise
        return {"skipped": "onnxruntime is not installed"}
    if device.type != "cpu":
        return {"skipped": f"onnxruntime's CPU provider is compared with CPU runs only (this run is on {device})"}
    from classicnets.weights.export import export_bytes

    torch.manual_seed(cfg.seed)  # the weights bench._build_paths gives the default path
    model = create_model(cfg.model, num_classes=cfg.num_classes).eval()
    start = time.perf_counter()
    graph, _ = export_bytes(model, fmt="onnx", verify=False)
    export_s = time.perf_counter() - start
    session = onnxruntime_session(graph, torch.get_num_threads())
    info = PathInfo(name=ONNXRUNTIME_PATH, precision="fp32", channels_last=False, compiled=False,
                    lrn="our ONNX export", optimizer="inference only")  # fmt: skip
    details = {
        "onnxruntime_version": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
        "onnxruntime_options": "CPUExecutionProvider, intra_op_num_threads = torch threads, allow_spinning 0",
        "export": f"classicnets.weights.export (torch.onnx dynamo exporter, fp32, {export_s:.0f} s)",
    }
    return OnnxRuntimePath(info, session, details)
