"""Which form of a grouped convolution trains fastest here? AlexNet-2012's conv2, conv4 and conv5 (groups=2).

Forms, each forward + backward (input and weight gradients) at batch 32, fp32 and bf16 autocast, NCHW and
channels_last: `groups2` = nn.Conv2d(groups=2); `split` = two convolutions on the channel halves, concatenated;
`dense` = one groups=1 convolution with a block-diagonal weight (twice the FLOPs, for reference).
All candidates are timed interleaved in one process (classicnets.bench.timing.time_interleaved).

    .venv/bin/python benchmarks/grouped_conv.py [--steps 5] [--precision fp32,bf16] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from classicnets.bench.timing import time_interleaved

# AlexNet-2012 grouped layers: (name, in channels, out channels, kernel, padding, input size) at 227x227 input.
LAYERS = [("conv2", 96, 256, 5, 2, 27), ("conv4", 384, 384, 3, 1, 13), ("conv5", 384, 256, 3, 1, 13)]


def split_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    xs, ws, bs = x.chunk(2, dim=1), weight.chunk(2, dim=0), bias.chunk(2, dim=0)
    return torch.cat([F.conv2d(xi, wi, bi, padding=padding) for xi, wi, bi in zip(xs, ws, bs, strict=True)], dim=1)


def dense_weight(weight: torch.Tensor) -> torch.Tensor:
    out_c, in_half = weight.shape[:2]
    full = weight.new_zeros(out_c, 2 * in_half, *weight.shape[2:])
    full[: out_c // 2, :in_half] = weight[: out_c // 2]
    full[out_c // 2 :, in_half:] = weight[out_c // 2 :]
    return full


def make_step(conv, amp):
    def step() -> None:
        with amp:
            y = conv()
        y.float().sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32,bf16")
    args = parser.parse_args()
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per forward+backward, median (min)")
    for precision in args.precision.split(","):
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        for name, cin, cout, k, pad, size in LAYERS:
            weight = (torch.randn(cout, cin // 2, k, k) * 0.01).requires_grad_()
            bias = torch.zeros(cout, requires_grad=True)
            dense = dense_weight(weight.detach()).requires_grad_()
            candidates = {}
            for layout in ("nchw", "cl"):
                fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
                x = torch.randn(args.batch_size, cin, size, size).contiguous(memory_format=fmt).requires_grad_()
                w = weight.detach().contiguous(memory_format=fmt).requires_grad_()
                wd = dense.detach().contiguous(memory_format=fmt).requires_grad_()
                forms = {
                    "groups2": lambda x=x, w=w, b=bias, p=pad: F.conv2d(x, w, b, padding=p, groups=2),
                    "split": lambda x=x, w=w, b=bias, p=pad: split_conv(x, w, b, p),
                    "dense": lambda x=x, wd=wd, b=bias, p=pad: F.conv2d(x, wd, b, padding=p),
                }
                for form, fn in forms.items():
                    candidates[f"{form}/{layout}"] = make_step(fn, amp)
            stats = time_interleaved(candidates, warmup=args.warmup, steps=args.steps, device=device)
            base = stats["groups2/nchw"].median
            cells = "  ".join(
                f"{c} {s.median * 1e3:.0f} ({s.min * 1e3:.0f}) x{base / s.median:.2f}" for c, s in stats.items()
            )
            print(f"{precision} {name}: {cells}", flush=True)


if __name__ == "__main__":
    main()
