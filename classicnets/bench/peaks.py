"""The machine's measured matmul peak for a precision, sampled before, between and after the timed steps, and
the efficiency of a path against it."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import torch

from classicnets.bench.timing import Stats, synchronize

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Peak:
    """The best matmul throughput measured for one dtype, and how it was measured."""

    precision: str
    gflops: float
    size: int  # n of the n x n @ n x n product that reached it
    repeats: int
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def measure_matmul_peak(
    precision: str, device: torch.device, *, budget_s: float = 1.5, sizes: tuple[int, ...] = (512, 1024, 2048)
) -> Peak:
    """The machine's matmul peak for `precision`: the fastest n x n @ n x n product (2 n^3 FLOPs) we can time.

    For each n in `sizes` (in order, while the time budget lasts): one untimed warm-up product, then repeated
    timed products; the peak is the highest FLOP rate of any single product. Square matmuls of these sizes run
    at the BLAS library's best (MKL/oneDNN on CPU, cuBLAS on GPU), which is the practical upper bound for
    convolutions and fully connected layers, whose FLOPs are the same multiply-adds. Stops early when a dtype is
    emulated and slow (bf16 on a CPU without AVX-512 BF16 runs at about 1 GFLOP/s), so it never takes long.
    """
    dtype = DTYPES[precision]
    generator = torch.Generator(device="cpu").manual_seed(0)
    best, best_n, repeats = 0.0, sizes[0], 0
    deadline = time.perf_counter() + budget_s
    for n in sizes:
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        start = time.perf_counter()
        torch.mm(a, b)  # warm-up: thread pool, kernel selection, caches
        synchronize(device)
        warm = time.perf_counter() - start
        flops = 2.0 * n**3
        while True:
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            elapsed = time.perf_counter() - start
            repeats += 1
            if flops / elapsed > best:
                best, best_n = flops / elapsed, n
            if time.perf_counter() + elapsed > deadline:
                break
        # The next size costs 8x more per product: skip it if even its warm-up would overrun the budget.
        if time.perf_counter() + 8 * max(warm, elapsed) * 2 > deadline:
            break
    method = f"{', '.join(map(str, sizes))} within {budget_s:g} s"
    log.debug("matmul peak %s: %.1f GFLOP/s", precision, best / 1e9)
    return Peak(precision, best / 1e9, best_n, repeats, method)


class PeakProbe:
    """One n x n matmul to time between the benchmark's steps, so that the peak is also sampled under whatever
    load the steps see (on a shared machine a peak measured only before and after can miss it either way)."""

    def __init__(self, precision: str, device: torch.device, n: int = 1024) -> None:
        generator = torch.Generator(device="cpu").manual_seed(1)
        dtype = DTYPES[precision]
        self.precision, self.n = precision, n
        self.a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        self.b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)

    def __call__(self) -> None:
        torch.mm(self.a, self.b)

    def peak(self, stats: Stats) -> Peak:
        return Peak(self.precision, 2.0 * self.n**3 / stats.min / 1e9, self.n, stats.n, "between the steps")


def best_peak(before: Peak, after: Peak, probes: list[Peak]) -> Peak:
    """The highest of the measurements of one precision's peak, with a method saying where each came from."""
    best = max([before, after, *probes], key=lambda p: p.gflops)
    parts = [f"{before.gflops:.1f} GFLOP/s before the run", f"{after.gflops:.1f} after"]
    if probes:
        probe = max(probes, key=lambda p: p.gflops)
        parts.append(f"{probe.gflops:.1f} in {sum(p.repeats for p in probes)} products between the timed steps")
    method = (
        f"the best single n x n @ n x n torch.mm in {best.precision} (2 n^3 FLOPs, n = {best.size}; sizes "
        f"{before.method}): {', '.join(parts)}"
    )
    return Peak(best.precision, best.gflops, best.size, before.repeats + after.repeats, method)


def efficiency(achieved_gflops: float, peak: Peak | None) -> float:
    """achieved / peak, or NaN when no peak was measured."""
    if peak is None or peak.gflops <= 0:
        return math.nan
    return achieved_gflops / peak.gflops
