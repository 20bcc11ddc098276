"""`classicnets eval`: top-1/top-5, loss, per-class accuracy, most-confused pairs and pictures of a trained model on
labelled images; with --ten-crop the paper's 10-crop beside the centre crop."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from classicnets.choices import LABEL_MODES, SPLIT_NAMES
from classicnets.cli.args import add_runtime_flags

# How many classes `eval` lists one by one; with more, the lowest ones.
PER_CLASS_LINES = 20


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("eval", parents=[common], help="top-1/top-5, loss, per-class accuracy, confusion matrix")
    p.add_argument(
        "--weights", required=True, metavar="W",
        help="a run's best.pt, any weights with classes, or a known name (alexnet.imagenet)",
    )  # fmt: skip
    p.add_argument(
        "--data", required=True, metavar="DIR", help="labelled images (a prepared folder: its test/ or val/)"
    )
    p.add_argument(
        "--split", choices=SPLIT_NAMES, help="which split of a prepared folder, CIFAR or a .npz (default: test)"
    )
    p.add_argument("--label-mode", choices=LABEL_MODES, default="fine", help="CIFAR-100: fine (100) or coarse (20)")
    p.add_argument("--ten-crop", action="store_true", help="also the paper's 10-crop (softmax averaged), side by side")
    p.add_argument("--allow-empty", action="store_true", help="keep an empty class folder instead of stopping")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--out", metavar="DIR", help="pictures and eval.json (default: eval/ beside the weights)")
    add_runtime_flags(p)
    p.set_defaults(handler=run_eval)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def run_eval(args: argparse.Namespace) -> int:
    from classicnets.inference.evaluation import evaluate
    from classicnets.runtime import describe_inference_precision
    from classicnets.tables import format_table

    out = Path(args.out) if args.out else Path(args.weights).resolve().parent / "eval"
    report = evaluate(
        args.weights,
        args.data,
        ten_crop=args.ten_crop,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        out=out,
        progress=not args.quiet,
        allow_empty=args.allow_empty,
        label_mode=args.label_mode,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    names = list(report.passes)  # "center", maybe "ten_crop"
    titles = {"center": "centre crop", "ten_crop": "10-crop"}
    metrics = {n: report.metrics(n) for n in names}
    print(
        f"weights  {report.weights}\ndata     {report.data} ({report.images:,} images, {len(report.classes)} classes)\n"
        f"speed    {report.speed.describe()}; precision {describe_inference_precision(report.precision)}\n"
    )
    columns = [titles[n] for n in names]
    summary = [
        *([key.replace("top", "top-"), *(_pct(metrics[n][key]) for n in names)] for key in ("top1", "top5")),
        ["loss", *(f"{metrics[n]['loss']:.4f}" for n in names)],
    ]
    print(format_table(summary, header=["", *columns], align="l" + "r" * len(names), rule=""))
    rows = list(zip(*(metrics[n]["per_class"] for n in names), strict=True))
    heading = "per-class accuracy"
    if len(rows) > PER_CLASS_LINES:
        rows = sorted(rows, key=lambda r: (r[0]["accuracy"] is None, r[0]["accuracy"] or 0))[:PER_CLASS_LINES]
        heading += f" (the {PER_CLASS_LINES} lowest of {len(report.classes)} classes)"
    print(f"\n{heading}:")
    per_class = [[r[0]["class"][:20], r[0]["count"], *(_pct(c["accuracy"]) for c in r)] for r in rows]
    header = ["class", "images", *columns]
    print(format_table(per_class, header=header, align="lr" + "r" * len(names), indent="  ", rule=""))
    main = names[-1]
    pairs = metrics[main]["most_confused"]
    print(f"\nmost confused ({titles[main]}, true -> predicted):")
    for pair in pairs:
        share = f"{100 * pair['fraction']:.1f}% of {pair['true']}"
        print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']} ({share})")
    if not pairs:
        print("  none: every image is classified correctly")
    print("\npictures: " + ", ".join(report.pictures.values()))
    return 0
