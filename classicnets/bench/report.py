"""What `classicnets bench` reports: the machine, the counts, the peaks, one row per (batch, mode, path), and the
same figures as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import classicnets
from classicnets.bench.infer_report import infer_lines
from classicnets.process_env import fast_cpu_env_status
from classicnets.tables import table_lines

# Historical anchors for AlexNet at batch 128 on a Titan X with cuDNN R4 (soumith/convnet-benchmarks, 2016, as
# quoted in issue 6): (forward ms, forward + backward ms), fp32 and fp16. Printed next to GPU results.
TITAN_X_ANCHORS = {"fp32": (27.0, 81.0), "fp16": (25.0, 71.0)}


@dataclass
class PathInfo:
    name: str  # "default", "baseline", or in infer mode the other precision ("fp32", "bf16") and "onnxruntime"
    precision: str
    channels_last: bool
    compiled: bool
    lrn: str
    optimizer: str

    def describe(self) -> str:
        parts = [
            self.precision,
            "channels_last" if self.channels_last else "NCHW",
            "torch.compile" if self.compiled else "eager",
        ]
        if self.lrn != "none":
            parts.append(self.lrn)
        return ", ".join([*parts, self.optimizer])


@dataclass
class ResultRow:
    batch_size: int
    mode: str  # infer (forward) or train (forward + backward + optimizer step)
    path: str
    precision: str
    mean_ms: float
    sd_ms: float
    median_ms: float
    min_ms: float
    n: int
    images_per_s: float  # batch_size / mean time
    flops_per_batch: int
    gflops: float  # flops_per_batch / mean time
    peak_gflops: float = math.nan
    efficiency: float = math.nan  # gflops / peak_gflops
    roofline_ms: float = math.nan  # flops_per_batch / peak: the least time these FLOPs can take at the peak
    speedup: float | None = None  # baseline mean / this mean (default path rows of a run with --baseline)
    note: str = ""  # "measured above peak: peak probe noisy" when gflops exceeded the peak (efficiency is then 1)


@dataclass
class BenchReport:
    model: str
    config: dict[str, Any]
    system: dict[str, Any]
    counts: dict[str, int]
    input_size: list[int] = field(default_factory=list)
    peaks: dict[str, dict] = field(default_factory=dict)
    paths: dict[str, PathInfo] = field(default_factory=dict)
    rows: list[ResultRow] = field(default_factory=list)
    onnx: dict[str, Any] | None = None
    data: list[dict[str, Any]] = field(default_factory=list)

    def finish(self) -> None:
        """Fill in speed-ups and the load average after the run."""
        baseline = {(r.batch_size, r.mode): r for r in self.rows if r.path == "baseline"}
        for r in self.rows:
            if r.path == "default" and (r.batch_size, r.mode) in baseline:
                r.speedup = baseline[(r.batch_size, r.mode)].mean_ms / r.mean_ms
        self.system["load_average_after"] = _loadavg()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": self.input_size,
            "system": self.system,
            "config": self.config,
            "counts": self.counts,
            "peaks": self.peaks,
            "paths": {k: asdict(v) for k, v in self.paths.items()},
            "results": [asdict(r) for r in self.rows],
            "onnxruntime": self.onnx,
            "data": self.data,
        }

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), indent=2)

    def to_csv(self) -> str:
        """One line per (batch, mode, path), with the machine and run in every line so files can be concatenated."""
        context = {
            "model": self.model,
            "device": self.system["device"],
            "cpu": self.system["cpu"],
            "threads": self.system["threads"],
            "torch": self.system["torch"],
            "git": self.system["git_revision"],
        }
        out = io.StringIO()
        writer = None
        for r in self.rows:
            line = context | asdict(r) | {"path_description": self.paths[r.path].describe()}
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(line), lineterminator="\n")
                writer.writeheader()
            writer.writerow({k: _csv_value(v) for k, v in line.items()})
        return out.getvalue()

    def format(self) -> str:
        s, c = self.system, self.counts
        lines = [
            f"classicnets bench: {self.model} on {s['device_name']}, {s['threads']} threads, torch {s['torch']}, "
            f"classicnets {s['classicnets']} (git {s['git_revision'] or 'unknown'})",
            f"load average before/after: {_fmt_load(s['load_average_before'])} / {_fmt_load(s['load_average_after'])}"
            f" ({s['logical_cpus']} logical CPUs; a load above that means other processes shared the machine); "
            + ", ".join(f"{k}={v}" for k, v in s["environment"].items()),
            f"input {'x'.join(map(str, self.input_size))}: parameters {c['params']:,}; per image: "
            f"MACs {c['macs']:,}, FLOPs forward {c['forward_flops']:,}, FLOPs training step {c['train_flops']:,}",
        ]
        for p, pk in self.peaks.items():
            lines.append(_format_peak(p, pk, s["device"]))
        for name, info in self.paths.items():
            lines.append(f"{name} path: {info.describe()}")
        header = ("batch", "mode", "path", "ms/batch mean ± sd", "median", "images/s", "GFLOP/s", "efficiency",
                  "speed-up")  # fmt: skip
        rows = [
            (
                r.batch_size,
                r.mode,
                r.path,
                f"{r.mean_ms:.1f} ± {r.sd_ms:.1f}",
                f"{r.median_ms:.1f}",
                f"{r.images_per_s:.1f}",
                f"{r.gflops:.1f}",
                (f"{r.efficiency:.1%} of {r.precision}" + ("*" if r.note else ""))
                if math.isfinite(r.efficiency)
                else "n/a",
                f"{r.speedup:.2f}x" if r.speedup else "",
            )
            for r in self.rows
        ]
        lines += ["", *table_lines(rows, header=header, align="lll" + "r" * 6)]
        lines.append(
            "infer = forward only (eval, no grad); train = forward + cross-entropy + backward + optimiser step "
            "(train's own step). "
            "images/s = batch / mean; GFLOP/s = counted FLOPs / mean; efficiency = GFLOP/s / peak (at most 100 %)."
        )
        if any(r.note for r in self.rows):
            lines.append(f"* {next(r.note for r in self.rows if r.note)}: efficiency shown as 100 %")
        lines += self._roofline_lines()
        busy = (s["load_average_before"] or [0.0])[0] > 0.5 * (s["logical_cpus"] or 1)
        if busy or any(r.note for r in self.rows):
            lines.append(
                "note: other processes were using the CPUs (load average above, or a step above the peak): "
                "absolute figures are noisy; the interleaved ratios of this run are the figures to trust"
            )
        lines += infer_lines(self.rows, self.onnx)
        for d in self.data:
            lines.append(_format_data(d))
        if s["device"] == "cuda" and self.model == "alexnet":
            (f32, b32), (f16, b16) = TITAN_X_ANCHORS["fp32"], TITAN_X_ANCHORS["fp16"]
            lines.append(
                f"historical anchor, AlexNet batch 128 on a Titan X (cuDNN R4): forward {f32:g} ms, forward+backward "
                f"{b32:g} ms in fp32; {f16:g} / {b16:g} ms in fp16 (our train rows also include the optimizer step)"
            )
        return "\n".join(lines)

    def _roofline_lines(self) -> list[str]:
        """For each default-path row with a baseline: the fastest any path in that precision could be."""
        out = []
        baseline = {(r.batch_size, r.mode): r for r in self.rows if r.path == "baseline"}
        for r in self.rows:
            b = baseline.get((r.batch_size, r.mode))
            if r.path != "default" or b is None or not math.isfinite(r.roofline_ms):
                continue
            out.append(
                f"roofline, batch {r.batch_size} {r.mode}: {r.flops_per_batch / 1e9:.1f} GFLOP at the {r.precision} "
                f"peak take >= {r.roofline_ms:.1f} ms, so no {r.precision} path can beat the baseline by more "
                f"than {b.mean_ms / r.roofline_ms:.2f}x; the default path reaches {r.efficiency:.0%} of that bound"
            )
        return out


def _format_peak(precision: str, peak: dict[str, Any], device_type: str) -> str:
    """'peak fp32: 164.0 GFLOP/s, 1x1 convolution ... (oneDNN) won; torch.mm (...) 82.3' and how it was measured."""
    from classicnets.bench.peaks import describe_kernel

    others = "; ".join(f"{describe_kernel(k, device_type)} {g:.1f}" for k, g in peak.get("by_kernel", {}).items()
                       if k != peak["kernel"])  # fmt: skip
    won = f"{describe_kernel(peak['kernel'], device_type)} won" + (f"; {others}" if others else "")
    return f"peak {precision}: {peak['gflops']:.1f} GFLOP/s, {won} ({peak['method']})"


def _format_data(d: dict[str, Any]) -> str:
    return (
        f"data {d['source']} ({d['images']} images, {d['workers']} workers), batch {d['batch_size']} {d['mode']}: "
        f"{d['mean_ms']:.1f} ± {d['sd_ms']:.1f} ms/batch with the loader ({d['images_per_s']:.1f} images/s), "
        f"of which {d['wait_mean_ms']:.1f} ms waiting for data; synthetic input {d['synthetic_mean_ms']:.1f} ms: "
        f"the loader makes the step {d['slowdown']:.2f}x slower"
    )


def system_info(device: torch.device) -> dict[str, Any]:
    """The machine and software the figures belong to."""
    return {
        "device": device.type,
        "device_name": _device_name(device),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "native_bf16": _native_bf16(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "classicnets": classicnets.__version__,
        "git_revision": git_revision(),
        "environment": fast_cpu_env_status(),
        "load_average_before": _loadavg(),
        "load_average_after": None,
    }


def _native_bf16(device: torch.device) -> bool:
    from classicnets.runtime import native_bf16

    return native_bf16(device)


def cpu_model() -> str:
    """'AMD EPYC 7B13' and the like, from /proc/cpuinfo where it exists."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({cpu_model()})"


def git_revision() -> str | None:
    """The short commit of the classicnets checkout this runs from, '+dirty' with uncommitted changes; None when
    classicnets is installed from a wheel."""
    root = Path(classicnets.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "classicnets"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _fmt_load(load: list[float] | None) -> str:
    return "unknown" if load is None else " ".join(f"{v:.2f}" for v in load)


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
