"""The machine's measured peak for a precision, sampled before, between and after the timed steps, and the
efficiency of a path against it.

Two kernels are timed and the faster one is the peak, because no single library is fastest everywhere: a square
`torch.mm` (MKL's sgemm for fp32 on x86 CPU builds, oneDNN for bf16, cuBLAS on a GPU) and a 1x1 convolution in
channels_last (oneDNN on a CPU, cuDNN on a GPU), which is a matrix product of (rows x Cin) by (Cin x Cout) run by
the convolution library the models' layers use. On AMD CPUs MKL's sgemm reaches about half the FMA rate oneDNN
does, so a peak taken from torch.mm alone was too low: efficiencies above 100 % and roofline bounds below what the
convolutions already achieved. Both figures are reported, with the one that won.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from classicnets.bench.timing import Stats, synchronize

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The convolution probe's rows: a batch of 4 at 32 x 32 = 4,096 output pixels, each a dot product of Cin values
# for each of Cout channels (2 x rows x Cin x Cout FLOPs); Cin = Cout grows through CONV_CHANNELS.
CONV_ROWS = (4, 32, 32)
CONV_CHANNELS = (128, 256, 512, 1024)
MM_SIZES = (512, 1024, 2048)
# What each kernel is, per device type, for the report.
KERNELS = {
    "mm": {"cpu": "torch.mm (MKL sgemm for fp32, oneDNN for bf16)", "cuda": "torch.mm (cuBLAS)"},
    "conv": {"cpu": "1x1 convolution, channels_last (oneDNN)", "cuda": "1x1 convolution, channels_last (cuDNN)"},
}


@dataclass
class Peak:
    """The best throughput measured for one dtype, and how it was measured."""

    precision: str
    gflops: float
    size: int  # n of the n x n @ n x n product, or the channels of the 1x1 convolution, that reached it
    repeats: int
    method: str
    kernel: str = "mm"  # which kernel reached it: "mm" (torch.mm) or "conv" (1x1 convolution)
    by_kernel: dict[str, float] = field(default_factory=dict)  # the best GFLOP/s of each kernel timed

    def to_dict(self) -> dict:
        return asdict(self)


def _fastest(
    run: Callable[[int], Callable[[], object]],
    flops_of: Callable[[int], float],
    sizes: tuple[int, ...],
    device: torch.device,
    budget_s: float,
) -> tuple[float, int, int]:
    """(best FLOP/s, its size, products timed): for each size in order, while the budget lasts, one untimed
    warm-up call (thread pool, kernel selection, caches), then timed calls; the best single call counts. Stops
    before a size whose calls would overrun the budget (an emulated dtype, bf16 on a CPU without AVX-512 BF16,
    runs at about 1 GFLOP/s, so it never takes long)."""
    best, best_size, repeats = 0.0, sizes[0], 0
    deadline = time.perf_counter() + budget_s
    for i, size in enumerate(sizes):
        op = run(size)
        start = time.perf_counter()
        op()
        synchronize(device)
        warm = elapsed = time.perf_counter() - start
        while True:
            start = time.perf_counter()
            op()
            synchronize(device)
            elapsed = time.perf_counter() - start
            repeats += 1
            if flops_of(size) / elapsed > best:
                best, best_size = flops_of(size) / elapsed, size
            if time.perf_counter() + elapsed > deadline:
                break
        # The next size costs flops ratio x more per call: skip it if its warm-up and one call would overrun.
        if i + 1 < len(sizes):
            growth = flops_of(sizes[i + 1]) / flops_of(size)
            if time.perf_counter() + growth * max(warm, elapsed) * 2 > deadline:
                break
    return best, best_size, repeats


def _mm(precision: str, device: torch.device) -> Callable[[int], Callable[[], object]]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[precision]

    def make(n: int) -> Callable[[], object]:
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        return lambda: torch.mm(a, b)

    return make


def _conv(precision: str, device: torch.device) -> Callable[[int], Callable[[], object]]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[precision]
    batch, height, width = CONV_ROWS

    def make(channels: int) -> Callable[[], object]:
        x = torch.randn(batch, channels, height, width, generator=generator)
        w = torch.randn(channels, channels, 1, 1, generator=generator)
        x = x.to(device=device, dtype=dtype, memory_format=torch.channels_last)
        w = w.to(device=device, dtype=dtype, memory_format=torch.channels_last)
        return lambda: F.conv2d(x, w)

    return make


def conv_flops(channels: int) -> float:
    """2 x rows x Cin x Cout FLOPs of the 1x1 convolution probe."""
    return 2.0 * math.prod(CONV_ROWS) * channels * channels


def measure_matmul_peak(
    precision: str, device: torch.device, *, budget_s: float = 1.5, sizes: tuple[int, ...] = MM_SIZES
) -> Peak:
    """The fastest n x n @ n x n torch.mm (2 n^3 FLOPs) we can time, n in `sizes` within `budget_s`."""
    best, n, repeats = _fastest(_mm(precision, device), lambda s: 2.0 * s**3, sizes, device, budget_s)
    log.debug("matmul peak %s: %.1f GFLOP/s", precision, best / 1e9)
    method = f"{', '.join(map(str, sizes))} within {budget_s:g} s"
    return Peak(precision, best / 1e9, n, repeats, method, "mm", {"mm": best / 1e9})


def measure_conv_peak(
    precision: str, device: torch.device, *, budget_s: float = 1.5, channels: tuple[int, ...] = CONV_CHANNELS
) -> Peak:
    """The fastest 1x1 convolution in channels_last (CONV_ROWS output pixels, Cin = Cout in `channels`)."""
    best, c, repeats = _fastest(_conv(precision, device), conv_flops, channels, device, budget_s)
    log.debug("convolution peak %s: %.1f GFLOP/s", precision, best / 1e9)
    method = f"channels {', '.join(map(str, channels))} within {budget_s:g} s"
    return Peak(precision, best / 1e9, c, repeats, method, "conv", {"conv": best / 1e9})


def measure_peak(precision: str, device: torch.device, *, budget_s: float = 1.5) -> Peak:
    """The machine's peak for `precision`: the faster of measure_matmul_peak and measure_conv_peak (half of
    `budget_s` each); `by_kernel` keeps both."""
    mm = measure_matmul_peak(precision, device, budget_s=budget_s / 2)
    conv = measure_conv_peak(precision, device, budget_s=budget_s / 2)
    best = max(mm, conv, key=lambda p: p.gflops)
    return Peak(precision, best.gflops, best.size, mm.repeats + conv.repeats, f"{mm.method}; {conv.method}",
                best.kernel, {"mm": mm.gflops, "conv": conv.gflops})  # fmt: skip


class PeakProbe:
    """One call of the kernel that won the peak before the run, to time between the benchmark's steps, so that
    the peak is also sampled under whatever load the steps see (on a shared machine a peak measured only before
    and after can miss it either way): a 1024 x 1024 torch.mm or the 512-channel 1x1 convolution."""

    def __init__(self, precision: str, device: torch.device, kernel: str = "mm") -> None:
        self.precision, self.kernel = precision, kernel
        if kernel == "conv":
            self.size, self.flops = 512, conv_flops(512)
            self.op = _conv(precision, device)(self.size)
        else:
            self.size, self.flops = 1024, 2.0 * 1024**3
            self.op = _mm(precision, device)(self.size)

    def __call__(self) -> None:
        self.op()

    def peak(self, stats: Stats) -> Peak:
        gflops = self.flops / stats.min / 1e9
        return Peak(self.precision, gflops, self.size, stats.n, "between the steps", self.kernel, {self.kernel: gflops})


def best_peak(before: Peak, after: Peak, probes: list[Peak]) -> Peak:
    """The highest of the measurements of one precision's peak, with a method saying where each came from and
    each kernel's best."""
    best = max([before, after, *probes], key=lambda p: p.gflops)
    by_kernel: dict[str, float] = {}
    for p in (before, after, *probes):
        for kernel, gflops in p.by_kernel.items():
            by_kernel[kernel] = max(by_kernel.get(kernel, 0.0), gflops)
    parts = [f"{before.gflops:.1f} GFLOP/s before the run", f"{after.gflops:.1f} after"]
    if probes:
        probe = max(probes, key=lambda p: p.gflops)
        parts.append(f"{probe.gflops:.1f} in {sum(p.repeats for p in probes)} calls between the timed steps")
    kernels = ", ".join(f"{k} {g:.1f}" for k, g in by_kernel.items())
    method = (
        f"the best of torch.mm in {best.precision} (n x n @ n x n, 2 n^3 FLOPs) and a 1x1 convolution (2 x rows x "
        f"Cin x Cout FLOPs), won by {best.kernel} (size {best.size}; {before.method}): {', '.join(parts)}; "
        f"best of each: {kernels}"
    )
    return Peak(best.precision, best.gflops, best.size, before.repeats + after.repeats, method, best.kernel, by_kernel)


def describe_kernel(kernel: str, device_type: str) -> str:
    """'torch.mm (MKL sgemm ...)' and the like, for a kernel key and a device type."""
    return KERNELS[kernel].get(device_type, KERNELS[kernel]["cpu"])


def efficiency(achieved_gflops: float, peak: Peak | None) -> float:
    """achieved / peak, or NaN when no peak was measured (not clamped: see run._set_efficiency)."""
    if peak is None or peak.gflops <= 0:
        return math.nan
    return achieved_gflops / peak.gflops
