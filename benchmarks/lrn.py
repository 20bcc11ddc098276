"""LRN implementations against each other at AlexNet-2012's two LRN layers (batch 32), forward and forward+backward.

Candidates, all with the paper's constants:
  torch     torch.nn.LocalResponseNorm (3-D average pooling over a zero-padded copy of x^2; autograd backward)
  banded    the first classicnets version: window sums as a banded 0/1 matmul over channels, autograd backward
  whole     ours on the whole batch at once (the version before chunking: every temporary batch-sized)
  ours      classicnets.models.lrn.LocalResponseNorm: shifted in-place channel-slice sums, square roots for
            the 0.75 power, a hand-written backward that recomputes the denominators, a few images at a time
            (lrn._CHUNK_BYTES) so the temporaries stay in cache
in fp32 and bf16 (input and gradient in bf16, as under autocast), NCHW and channels_last. Candidates are timed
interleaved (classicnets.bench.timing.time_interleaved); the table gives median ms (min) and the speed-up of `ours` over
`torch`. On a shared machine use --threads 1: single-threaded timings are far less disturbed by other processes.

    .venv/bin/python benchmarks/lrn.py [--steps 7] [--threads N] [--precision fp32,bf16] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import torch

from classicnets.bench.timing import time_interleaved
from classicnets.models import lrn
from classicnets.models.lrn import LocalResponseNorm
from classicnets.runtime import native_bf16

SHAPES = {"norm1": (96, 55, 55), "norm2": (256, 27, 27)}  # AlexNet-2012 at 227x227 input


class BandedMatmulLRN(torch.nn.Module):
    """The first classicnets LRN, kept here as a reference: banded matmul over channels, autograd backward."""

    def __init__(self, size: int, alpha: float, beta: float, k: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(x.shape[1], device=x.device)
        offset = idx[:, None] - idx[None, :]
        band = ((offset >= -(self.size // 2)) & (offset <= (self.size - 1) // 2)).to(x.dtype)
        window_sum = torch.matmul((x * x).movedim(1, -1), band).movedim(-1, 1)
        return x * (window_sum * self.alpha + self.k).pow(-self.beta)


class Upcast(torch.nn.Module):
    """Run a float32-only module on a bf16 input: float32 in, bf16 out (autograd converts the gradient)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


@contextlib.contextmanager
def whole_batch() -> Iterator[None]:
    """LRN's chunking switched off (one chunk holds the whole batch), for the forward and the backward."""
    saved, lrn._CHUNK_BYTES = lrn._CHUNK_BYTES, 2**62
    try:
        yield
    finally:
        lrn._CHUNK_BYTES = saved


def make_step(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, *, backward: bool, whole: bool):
    context = whole_batch if whole else contextlib.nullcontext
    if not backward:

        def forward() -> None:
            with torch.no_grad(), context():
                module(x)

        return forward
    leaf = x.detach().requires_grad_()

    def forward_backward() -> None:
        with context():
            module(leaf).backward(grad)

    return forward_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32,bf16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ours = LocalResponseNorm.preset("paper")
    candidates_by_name = {
        "torch": ours.to_torch(),
        "banded": BandedMatmulLRN(ours.size, ours.effective_alpha, ours.beta, ours.k),
        "whole": ours,
        "ours": ours,
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}; "
          "median ms (min); xN = torch median / ours median, chunks xN = whole median / ours median")  # fmt: skip
    for precision in args.precision.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        for layer, shape in SHAPES.items():
            for layout in ("nchw", "channels_last"):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                # post-ReLU activations of AlexNet's size (tens to hundreds), where the normalisation bites
                x = (torch.rand(args.batch_size, *shape) * 100).to(dtype).contiguous(memory_format=fmt)
                grad = torch.randn_like(x)
                for direction in ("forward", "forward+backward"):
                    steps = {}
                    for name, module in candidates_by_name.items():
                        if name == "banded" and dtype == torch.bfloat16 and not native_bf16(device):
                            continue  # an emulated bf16 matmul (~1 GFLOP/s) would take minutes
                        if name == "torch" and dtype == torch.bfloat16:
                            module = Upcast(module)  # torch's avg_pool3d has no CPU bf16 kernel
                        steps[name] = make_step(module, x, grad, backward=direction != "forward", whole=name == "whole")
                    stats = time_interleaved(steps, warmup=args.warmup, steps=args.steps, device=device)
                    cells = "  ".join(f"{n} {s.median * 1e3:7.1f} ({s.min * 1e3:6.1f})" for n, s in stats.items())
                    speedup = stats["torch"].median / stats["ours"].median
                    chunking = stats["whole"].median / stats["ours"].median
                    print(
                        f"{precision} {layer} {layout:13s} {direction:16s} {cells}  x{speedup:.2f} "
                        f"(chunks x{chunking:.2f})",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
