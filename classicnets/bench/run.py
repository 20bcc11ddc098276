"""`classicnets bench`: forward and training-step speed of a model, against the machine's measured limit.

For each batch size it times the default path (what `train`, `eval` and `predict` run: runtime.prepare_model,
runtime.autocast, the fused optimizer step) and, with `baseline=True`, in the same process and interleaved with it,
the plain PyTorch a user would write: eager, float32, NCHW, torch.nn.LocalResponseNorm, grouped nn.Conv2d and
torch.optim.SGD's default step. The training step is forward + cross-entropy + backward + SGD step (momentum 0.9,
weight decay 5e-4: the paper's optimiser). Figures: ms per batch (mean ± sd, median, min), images/s = batch /
mean time, achieved GFLOP/s = counted FLOPs / mean time, efficiency = achieved / the matmul peak measured for the
path's precision (classicnets.peak). Optional: onnxruntime on our exported model at batch 1 (bench_extras) and
the real data loader feeding the step.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from classicnets import runtime
from classicnets.bench_report import BenchReport, PathInfo, ResultRow, system_info
from classicnets.errors import UsageError
from classicnets.models.layers import use_torch_lrn
from classicnets.peak import Peak, PeakProbe, Stats, best_peak, efficiency, measure_matmul_peak, time_interleaved
from classicnets.registry import create_model, get_model_info
from classicnets.summary import layer_macs

log = logging.getLogger(__name__)

MODES = ("infer", "train", "both")
# The paper's optimiser (Krizhevsky et al. 2012, section 5); the lr is small so that 100 steps on random data stay
# finite (NaNs and denormals would time different arithmetic).
SGD_OPTIONS = {"lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4}


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
    onnx: bool | None = None  # onnxruntime at batch 1: None = when installed and batch 1 is timed in infer mode
    data: str | None = None  # a folder or list file: time the real loader feeding the step
    workers: int = 2
    peak_budget_s: float = 1.5
    seed: int = 0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; use infer, train or both")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UsageError("batch sizes must be positive integers, e.g. --batch-size 32,128")
        if self.warmup < 0 or self.steps < 1:
            raise UsageError(f"--warmup must be >= 0 and --steps >= 1 (got {self.warmup} and {self.steps})")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if not self.peak_budget_s > 0:
            raise UsageError(f"--peak-seconds must be positive, got {self.peak_budget_s}")

    @property
    def modes(self) -> list[str]:
        return ["infer", "train"] if self.mode == "both" else [self.mode]


@dataclass
class FlopCount:
    """Per image. MACs are conv + linear multiply-adds (summary.py's convention); FLOPs = 2 x MACs.

    The training step counts the forward, the weight gradients (as many FLOPs as the forward) and the input
    gradients of every layer whose input needs one (all but the first convolution): the FLOPs a framework must
    spend, whatever kernels it picks. FlopCounterMode would double-count grouped convolutions' input gradients.
    """

    params: int
    macs: int
    forward_flops: int
    train_flops: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_flops(name: str, input_size: tuple[int, int, int], num_classes: int | None) -> FlopCount:
    """Parameters, MACs and FLOPs of one image through `name`, counted on the meta device (nothing computed)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=input_size[0])
    model.train()
    forward = 0
    input_grads = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal forward, input_grads
        if not isinstance(output, torch.Tensor):
            return
        macs = layer_macs(module, output)
        forward += macs
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].requires_grad:
            input_grads += macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        model(torch.zeros(1, *input_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return FlopCount(params, forward, 2 * forward, 2 * (2 * forward + input_grads))


@dataclass
class Path:
    """One way of running the model: built, placed and stepped."""

    info: PathInfo
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    to_input: Callable[[torch.Tensor], torch.Tensor]


def build_default_path(base: nn.Module, device: torch.device, cfg: BenchConfig, precision: str) -> Path:
    model = runtime.prepare_model(base, device, channels_last=cfg.channels_last, compile=cfg.compile)
    plain = getattr(model, "_orig_mod", model)
    options = runtime.fast_optimizer_options(device)
    optimizer = torch.optim.SGD(plain.parameters(), **SGD_OPTIONS, **options)
    info = PathInfo(
        name="default",
        precision=precision,
        channels_last=bool(plain.channels_last),
        compiled=cfg.compile,
        lrn="classicnets.LocalResponseNorm" if _has_lrn(plain) else "none",
        optimizer="SGD(fused)" if options.get("fused") else "SGD",
    )
    return Path(info, model, optimizer, lambda x: runtime.to_input_layout(x, model))


def build_baseline_path(base: nn.Module, device: torch.device) -> Path:
    """What a user writes from the PyTorch tutorials: the same weights, eager, fp32, NCHW, torch's LRN."""
    model = use_torch_lrn(base).to(device)
    optimizer = torch.optim.SGD(model.parameters(), **SGD_OPTIONS)
    info = PathInfo(
        name="baseline",
        precision="fp32",
        channels_last=False,
        compiled=False,
        lrn="torch.nn.LocalResponseNorm"
        if any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
        else "none",
        optimizer="SGD",
    )
    return Path(info, model, optimizer, lambda x: x)


def _has_lrn(model: nn.Module) -> bool:
    return any(type(m).__name__ == "LocalResponseNorm" for m in model.modules())


def infer_step(path: Path, x: torch.Tensor, device: torch.device) -> Callable[[], None]:
    x = path.to_input(x)
    # no_grad rather than inference_mode: compiled models may not be called in inference mode after training.
    grad_off = torch.no_grad if path.info.compiled else torch.inference_mode

    def step() -> None:
        with grad_off(), runtime.autocast(device, path.info.precision):
            path.model(x)

    return step


def train_step(path: Path, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Callable[[], None]:
    x = path.to_input(x)

    def step() -> None:
        path.optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(device, path.info.precision):
            loss = F.cross_entropy(path.model(x), y)
        loss.backward()
        path.optimizer.step()

    return step


def _set_mode(paths: list[Path], mode: str) -> None:
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
    peaks_before = {p: measure_matmul_peak(p, device, budget_s=cfg.peak_budget_s) for p in sorted(needed)}
    # Probed between the steps too, for the precisions the paths use, unless emulated (a 1024 product would take
    # seconds): the peak then sees the same load as the steps it is compared with.
    probes = {
        p: PeakProbe(p, device)
        for p in {precision} | ({"fp32"} if cfg.baseline else set())
        if p == "fp32" or runtime.native_bf16(device) or device.type == "cuda"
    }
    probed: dict[str, list[Peak]] = {p: [] for p in probes}

    generator = torch.Generator().manual_seed(cfg.seed)
    for batch in cfg.batch_sizes:
        torch.manual_seed(cfg.seed)
        base = create_model(cfg.model, num_classes=cfg.num_classes)
        baseline_model = None
        if cfg.baseline:
            baseline_model = create_model(cfg.model, num_classes=cfg.num_classes)
            baseline_model.load_state_dict(base.state_dict())  # the same weights, so the same arithmetic
        paths = [build_default_path(base, device, cfg, precision)]
        if baseline_model is not None:
            paths.append(build_baseline_path(baseline_model, device))
        report.paths = {p.info.name: p.info for p in paths}
        x = torch.randn(batch, *input_size, generator=generator).to(device)
        num_classes = cfg.num_classes or base.num_classes
        y = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
        for mode in cfg.modes:
            _set_mode(paths, mode)
            steps = {
                p.info.name: infer_step(p, x, device) if mode == "infer" else train_step(p, x, y, device) for p in paths
            }
            steps |= {f"peak probe {p}": probe for p, probe in probes.items()}
            total = (cfg.warmup + cfg.steps) * len(steps)
            with _progress(total, quiet, f"{cfg.model} {mode} batch {batch}") as tick:
                stats = time_interleaved(steps, warmup=cfg.warmup, steps=cfg.steps, device=device, progress=tick)
            for p, probe in probes.items():
                probed[p].append(probe.peak(stats[f"peak probe {p}"]))
            flops = batch * (counts.forward_flops if mode == "infer" else counts.train_flops)
            for p in paths:
                report.rows.append(_row(batch, mode, p.info, stats[p.info.name], flops, peaks_before))
        if cfg.onnx is not False and "infer" in cfg.modes and batch == 1:
            from classicnets.bench_extras import compare_onnxruntime

            _set_mode(paths, "infer")
            report.onnx = compare_onnxruntime(paths[0], x, device, cfg, required=cfg.onnx is True, quiet=quiet)
        if cfg.data:
            from classicnets.bench_extras import time_data_loader

            report.data.append(time_data_loader(paths[0], cfg, batch, device, quiet=quiet))
        del paths, base, baseline_model, steps
        gc.collect()

    # Measured again after the timings: the peak is the best of before, between and after, so a burst of load
    # from other processes during one measurement cannot make efficiency exceed 1.
    peaks = {}
    for p, before in peaks_before.items():
        after = measure_matmul_peak(p, device, budget_s=cfg.peak_budget_s)
        peaks[p] = best_peak(before, after, probed.get(p, []))
    report.peaks = {p: pk.to_dict() for p, pk in peaks.items()}
    for row in report.rows:
        _set_efficiency(row, peaks)
    report.finish()
    return report


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
    peak = peaks.get(row.precision)
    row.peak_gflops = peak.gflops if peak else math.nan
    row.efficiency = efficiency(row.gflops, peak)
    # The roofline: no implementation of these FLOPs in this precision can take less time on this machine.
    row.roofline_ms = row.flops_per_batch / (peak.gflops * 1e9) * 1e3 if peak and peak.gflops > 0 else math.nan
