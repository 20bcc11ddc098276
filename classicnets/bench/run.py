"""`classicnets bench`: forward and training-step speed of a model, against the machine's measured limit.

For each batch size it times the default path (what `train`, `eval` and `predict` run: for training the Trainer's
own step, classicnets.training.step.prepare_training: runtime.prepare_model, autocast, the recipe's optimiser with
its fused step, loss, scaler) and, with `baseline=True`, in the same process and interleaved with it, the plain
PyTorch a user would write: eager, float32, NCHW, torch.nn.LocalResponseNorm, grouped nn.Conv2d and
torch.optim.SGD's default step. The training step is forward + cross-entropy + backward + optimiser step (without
--config: SGD, momentum 0.9, weight decay 5e-4, the paper's optimiser). Figures: ms per batch (mean ± sd, median,
min), images/s = batch / mean time, achieved GFLOP/s = counted FLOPs / mean time, efficiency = achieved / the peak
measured for the path's precision (classicnets.bench.peaks: the faster of torch.mm and a oneDNN 1x1
convolution), at most 100 %. In infer mode, beside the default path (weights cast once, as `eval` and `predict`
run), the precision auto did not choose and onnxruntime on our exported model, at every batch size
(infer_paths.py, onnx_compare.py). Optional: the real data loader feeding the step (data_feed.py).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict

import torch

from classicnets import runtime
from classicnets.bench.flops import count_flops
from classicnets.bench.infer_paths import infer_candidates, onnx_summary
from classicnets.bench.onnx_compare import OnnxRuntimePath, onnxruntime_path
from classicnets.bench.peaks import Peak, PeakProbe, best_peak, efficiency, measure_peak
from classicnets.bench.report import BenchReport, PathInfo, ResultRow, system_info
from classicnets.bench.settings import BenchConfig
from classicnets.bench.steps import (
    TimedPath,
    bench_model_kwargs,
    build_baseline_path,
    build_default_path,
    timed_step,
)
from classicnets.bench.timing import Stats, time_interleaved
from classicnets.models.base import unwrap_model
from classicnets.models.registry import create_model, get_model_info

log = logging.getLogger(__name__)

ABOVE_PEAK_NOTE = "measured above peak: peak probe noisy"


def _set_mode(paths: list[TimedPath], mode: str) -> None:
    for p in paths:
        p.model.train(mode == "train")


@contextlib.contextmanager
def _progress(total: int, quiet: bool, desc: str) -> Iterator[Callable[[], None] | None]:
    if quiet:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="step", leave=False) as bar:
        yield lambda: bar.update(1)


def run_bench(cfg: BenchConfig, *, quiet: bool = True) -> BenchReport:
    """Time `cfg.model` as configured and return every figure (see BenchReport for the JSON/CSV/table forms)."""
    cfg.validate()
    device = runtime.resolve_device(cfg.device)
    precision = runtime.resolve_precision(cfg.precision, device)
    info = get_model_info(cfg.model)
    input_size = info.input_size
    counts = count_flops(cfg.model, input_size, cfg.num_classes)
    report = BenchReport(model=cfg.model, config=asdict(cfg), system=system_info(device), counts=counts.to_dict())
    report.input_size = list(input_size)

    # The path's precision, fp32 (the baseline's) and bf16 always: whether bf16 is native shows in its peak.
    needed = {precision, "fp32"} | ({"bf16"} if device.type in ("cpu", "cuda") else set())
    peaks_before = {p: measure_peak(p, device, budget_s=cfg.peak_budget_s) for p in sorted(needed)}
    # Probed between the steps too (with the kernel that won before), for the precisions the paths use, unless
    # emulated (a 1024 product would take seconds): the peak then sees the same load as the steps it is compared with.
    probes = {
        p: PeakProbe(p, device, peaks_before[p].kernel)
        for p in {precision} | ({"fp32"} if cfg.baseline else set())
        if p == "fp32" or runtime.native_bf16(device) or device.type == "cuda"
    }
    probed: dict[str, list[Peak]] = {p: [] for p in probes}

    onnx = _onnxruntime(cfg, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    for batch in cfg.batch_sizes:
        paths = _build_paths(cfg, device, precision)
        report.paths = {p.info.name: p.info for p in paths}
        x = torch.randn(batch, *input_size, generator=generator).to(device)
        y = _labels(paths[0], cfg, batch, generator, device)
        for p in paths if y is None else []:  # TensorFlow's benchmark takes no optimizer step
            p.info.optimizer = "no optimizer: train = gradients of sum(out ** 2) / 2"
        for mode in cfg.modes:
            _set_mode(paths, mode)
            steps = {p.info.name: timed_step(p, mode, x, y, device) for p in paths}
            ort = onnx if isinstance(onnx, OnnxRuntimePath) else None
            extra = infer_candidates(paths[0], ort, x, device) if mode == "infer" else []
            steps |= {c.info.name: c.step for c in extra}
            report.paths |= {c.info.name: c.info for c in extra}
            steps |= {f"peak probe {p}": probe for p, probe in probes.items()}
            total = (cfg.warmup + cfg.steps) * len(steps)
            with _progress(total, quiet, f"{cfg.model} {mode} batch {batch}") as tick:
                stats = time_interleaved(steps, warmup=cfg.warmup, steps=cfg.steps, device=device, progress=tick)
            for precision_name, probe in probes.items():
                probed[precision_name].append(probe.peak(stats[f"peak probe {precision_name}"]))
            flops = batch * (counts.forward_flops if mode == "infer" else counts.train_flops)
            for path_info in [p.info for p in paths] + [c.info for c in extra]:
                report.rows.append(_row(batch, mode, path_info, stats[path_info.name], flops, peaks_before))
            del extra
        if cfg.data:
            from classicnets.bench.data_feed import time_data_loader

            report.data.append(time_data_loader(paths[0], cfg, batch, device, quiet=quiet))
        del paths, steps
        gc.collect()

    # Measured again after the timings: the peak is the best of before, between and after, so a burst of load
    # from other processes during one measurement cannot make efficiency exceed 1.
    peaks: dict[str, Peak] = {}
    for name, before in peaks_before.items():
        after = measure_peak(name, device, budget_s=cfg.peak_budget_s)
        peaks[name] = best_peak(before, after, probed.get(name, []))
    report.peaks = {name: peak.to_dict() for name, peak in peaks.items()}
    report.onnx = onnx_summary(onnx, report.rows)
    for row in report.rows:
        _set_efficiency(row, peaks)
    report.finish()
    return report


def _onnxruntime(cfg: BenchConfig, device: torch.device) -> OnnxRuntimePath | dict[str, str] | None:
    """The onnxruntime row's session (built once: exporting takes seconds), {"skipped": why}, or None when not
    asked (--no-onnx, or no infer mode)."""
    if cfg.onnx is False or "infer" not in cfg.modes:
        return None
    return onnxruntime_path(cfg, device, required=cfg.onnx is True)


def _labels(path: TimedPath, cfg: BenchConfig, batch: int, generator: torch.Generator, device: torch.device):
    """Random labels for the training step; None for a model without a classifier, whose backward is on
    sum(x ** 2) / 2 of its output (TensorFlow's AlexNet benchmark; steps.l2_loss_step), without an optimizer."""
    model = unwrap_model(path.model)
    if not model.has_classifier:
        return None
    num_classes = cfg.num_classes or model.num_classes
    return torch.randint(0, num_classes, (batch,), generator=generator).to(device)


def _build_paths(cfg: BenchConfig, device: torch.device, precision: str) -> list[TimedPath]:
    """The default path and, with cfg.baseline, the baseline, starting from the same weights (same arithmetic)."""
    torch.manual_seed(cfg.seed)
    kwargs = bench_model_kwargs(cfg)
    base = create_model(cfg.model, num_classes=cfg.num_classes, **kwargs)
    paths = []
    if cfg.baseline:
        baseline_model = create_model(cfg.model, num_classes=cfg.num_classes, **kwargs)
        baseline_model.load_state_dict(base.state_dict())
        paths.append(build_baseline_path(baseline_model, device))
    return [build_default_path(base, device, cfg, precision), *paths]


def _row(batch: int, mode: str, path: PathInfo, stats: Stats, flops: int, peaks: dict[str, Peak]) -> ResultRow:
    gflops = flops / stats.mean / 1e9
    row = ResultRow(
        batch_size=batch,
        mode=mode,
        path=path.name,
        precision=path.precision,
        **stats.to_ms(),
        images_per_s=batch / stats.mean,
        flops_per_batch=flops,
        gflops=gflops,
    )
    _set_efficiency(row, peaks)
    return row


def _set_efficiency(row: ResultRow, peaks: dict[str, Peak]) -> None:
    """Efficiency against the peak, at most 1: a step measured faster than the peak means the peak measurement
    was unlucky (load from other processes), which the row's note says."""
    peak = peaks.get(row.precision)
    row.peak_gflops = peak.gflops if peak else math.nan
    raw = efficiency(row.gflops, peak)
    row.efficiency = min(raw, 1.0) if math.isfinite(raw) else raw
    row.note = ABOVE_PEAK_NOTE if raw > 1 else ""
    # The roofline: no implementation of these FLOPs in this precision can take less time on this machine.
    row.roofline_ms = row.flops_per_batch / (peak.gflops * 1e9) * 1e3 if peak and peak.gflops > 0 else math.nan
