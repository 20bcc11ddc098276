"""`classicnets bench`: forward and training-step speed, against the machine's measured matmul peak."""

from __future__ import annotations

import argparse
import os

from classicnets.choices import BENCH_MODES, PRECISIONS
from classicnets.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench",
        parents=[common],
        help="time forward and training steps: ms/batch, images/s, GFLOP/s and efficiency vs the matmul peak",
        description="For each batch size: forward (inference) and training step (forward + backward + optimiser "
        "step: `train`'s own step) in ms/batch (mean ± sd after warm-up), images/s, achieved GFLOP/s and efficiency "
        "against this machine's peak for the precision used, which bench measures itself (the faster of MKL's "
        "matmul and oneDNN's convolution). "
        "--baseline times plain PyTorch (eager, fp32, NCHW, nn.LocalResponseNorm) in the same run, interleaved, "
        "and prints the speed-up. In infer mode the default path runs as eval and predict do (weights cast once to "
        "auto's precision), beside the other precision auto could have chosen and, when installed, onnxruntime on "
        "our exported ONNX model, at every batch size.",
    )
    p.add_argument("--model", help="model name (see `classicnets models`; default: the --config recipe's)")
    p.add_argument(
        "--config",
        metavar="YAML",
        help="a training recipe (file or shipped name): the training step uses its optimiser and loss, as `train` "
        "does (default: the paper's SGD, momentum 0.9, weight decay 5e-4)",
    )
    p.add_argument("--batch-size", default="32", metavar="N[,N...]", help="batch sizes, e.g. 1,32,128 (default 32)")
    p.add_argument("--mode", choices=BENCH_MODES, default="both", help="what to time (default both)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto = bf16 where the hardware computes it natively (AVX-512 BF16/AMX CPUs, Ampere+ GPUs), else fp32",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="memory layout of the default path (default: channels_last on CPU and CUDA)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the default path (minutes of compiling)")
    p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed steps first (default 10)")
    p.add_argument("--steps", type=int, default=100, metavar="N", help="timed steps (default 100)")
    p.add_argument("--baseline", action="store_true", help="also time plain PyTorch, interleaved; print the speed-up")
    p.add_argument("--data", metavar="DIR", help="also time the real loader on DIR (class folders or a list file)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="loader processes for --data (default 2)")
    p.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time onnxruntime on our ONNX export beside each infer row (default: when installed)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch and onnxruntime (default: one per core; 1 is often faster on a busy machine)",
    )
    p.add_argument(
        "--peak-seconds", type=float, default=1.5, metavar="S", help="time budget of each matmul peak measurement"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--classes", type=int, metavar="N", help="number of classes (default: the model's own)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fmt.add_argument("--csv", action="store_true", help="print CSV (one line per batch size, mode and path)")
    p.add_argument("--output", metavar="FILE", help="also write the JSON (.json) or CSV (.csv) report to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_bench_command)


def parse_batch_sizes(text: str) -> list[int]:
    """'32,128' -> [32, 128]."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--batch-size {text!r}: expected positive integers like 32 or 1,32,128") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-size {text!r}: expected positive integers like 32 or 1,32,128")
    return sizes


def run_bench_command(args: argparse.Namespace) -> int:
    if args.output and not args.output.endswith((".json", ".csv")):
        raise UsageError(f"--output {args.output!r}: name a .json or .csv file")
    if args.data and not os.path.exists(args.data):
        raise UsageError(f"--data {args.data}: no such file or folder")
    sizes = parse_batch_sizes(args.batch_size)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.onnx and args.mode == "train":
        raise UsageError("--onnx compares inference: use --mode infer or both")
    args.model = args.model or _recipe_model(args.config)
    from classicnets.bench.run import run_bench
    from classicnets.bench.settings import BenchConfig

    tf_benchmark = _print_activations(args, sizes)  # an unknown name fails here, before any timing
    cfg = BenchConfig(
        model=args.model,
        batch_sizes=sizes,
        mode=args.mode,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        warmup=args.warmup,
        steps=args.steps,
        baseline=args.baseline,
        device=args.device,
        num_classes=args.classes,
        onnx=args.onnx,
        data=args.data,
        workers=args.workers,
        peak_budget_s=args.peak_seconds,
        recipe=args.config,
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)  # before any work: the report records torch.get_num_threads()
    try:
        report = run_bench(cfg, quiet=args.quiet)
    finally:
        torch.set_num_threads(threads)
    if args.output:
        from classicnets.fileio import atomic_write_text

        atomic_write_text(args.output, report.to_json() if args.output.endswith(".json") else report.to_csv())
    if args.json:
        print(report.to_json())
    elif args.csv:
        print(report.to_csv(), end="")
    else:
        print(report.format())
        if tf_benchmark:
            print("\n".join(tf_benchmark_lines(report)))
    return 0


def _recipe_model(recipe: str | None) -> str:
    """The model a recipe names, for bench without --model."""
    if recipe is not None:
        from classicnets.config import resolve_config

        name = resolve_config(recipe).model.name
        if name:
            return name
    raise UsageError("bench needs a model: --model NAME (see `classicnets models`) or a --config recipe that names one")


def _print_activations(args: argparse.Namespace, sizes: list[int]) -> bool:
    """For a model without a classifier (TensorFlow's AlexNet benchmark network), print what the benchmark's
    print_activations prints before it times; True when the model is one."""
    from classicnets.models.summary import summarize

    shapes = summarize(args.model)
    if shapes.num_classes:
        return False
    if not (args.json or args.csv):
        for batch in sizes:
            print("\n".join(shapes.print_activations(batch)), flush=True)
    return True


def tf_benchmark_lines(report) -> list[str]:
    """The default path's figures as TensorFlow's AlexNet benchmark prints them (time_tensorflow_run)."""
    names = {"infer": "Forward", "train": "Forward-backward (gradients of sum(pool5 ** 2) / 2, no optimizer step)"}
    return [
        f"batch {r.batch_size}: {names[r.mode]} across {r.n} steps, {r.mean_ms / 1e3:.3f} +/- {r.sd_ms / 1e3:.3f} "
        "sec / batch"
        for r in report.rows
        if r.path == "default"
    ]
