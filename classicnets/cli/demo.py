"""`classicnets demo`: train LeNet-5 on the digits shipped with classicnets, evaluate it, predict a few."""

from __future__ import annotations

import argparse
from pathlib import Path

from classicnets.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="train LeNet-5 on the digits shipped with classicnets (~1 min)")
    p.add_argument("--out", metavar="RUN", help="run folder (default: runs/demo, numbered if taken)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from classicnets.demo import DEMO_RECIPE
    from classicnets.demo import run_demo as demo

    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    result = demo(out=args.out, epochs=args.epochs, device=args.device, progress=not args.quiet)
    how = f"{DEMO_RECIPE} recipe, {result.epochs} epoch{'s' if result.epochs != 1 else ''}, {result.seconds:.0f} s"
    print(f"\nLeNet-5 trained on {result.train_images:,} digits ({how})")
    print(f"test accuracy on {result.test_images:,} held-out digits: {100 * result.test_top1:.2f}%\n")
    print("predictions on a few held-out digits (true label in the file name):")
    for p in result.predictions:
        print(f"  {Path(p.file).name:<22} -> {p.classes[0]}  ({p.probabilities[0]:.3f})")
    print(f"\nrun folder {result.run_dir}: report.html (the run on one page), metrics.csv, loss.png, best.pt, ...")
    print(f"test pictures: {result.run_dir / 'eval'}; prediction grid: {result.grid}")
    print(f"next: classicnets eval --weights {result.run_dir / 'best.pt'} --data {result.test_data}")
    return 0
