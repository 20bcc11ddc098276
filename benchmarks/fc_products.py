"""MKL (torch's matmul) or oneDNN for AlexNet's fully connected products on this CPU?

For fc6, fc7 and fc8 (9216->4096, 4096->4096, 4096->1000) at a training batch: the forward product y = x W^T and
the two backward products grad_x = g W and grad_w = g^T x, each as torch's matmul (MKL sgemm) and as oneDNN
(torch.ops.mkldnn._linear_pointwise on transposed views, what classicnets.models.fast_layers.OneDNNLinear runs), timed
interleaved in one process (classicnets.bench.timing.time_interleaved).

    .venv/bin/python benchmarks/fc_products.py [--batch-size 32] [--steps 20]
"""

from __future__ import annotations

import argparse

import torch

from classicnets.bench.timing import time_interleaved

LAYERS = [("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]


def onednn(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a @ b_t^T in oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}; ms, median (min)")
    tensors = [
        (name, torch.randn(args.batch_size, n_in), torch.randn(n_out, n_in), torch.randn(args.batch_size, n_out))
        for name, n_in, n_out in LAYERS
    ]
    with torch.inference_mode():
        candidates = {
            "forward mkl": lambda: [x.mm(w.t()) for _, x, w, _ in tensors],
            "forward onednn": lambda: [onednn(x, w) for _, x, w, _ in tensors],
            "backward mkl": lambda: [(g.mm(w), g.t().mm(x)) for _, x, w, g in tensors],
            "backward onednn": lambda: [(onednn(g, w.t()), onednn(g.t(), x.t())) for _, x, w, g in tensors],
        }
        stats = time_interleaved(candidates, warmup=args.warmup, steps=args.steps, device=torch.device("cpu"))
    for name, s in stats.items():
        print(f"{name:16} {s.median * 1e3:8.1f} ({s.min * 1e3:.1f})")


if __name__ == "__main__":
    main()
