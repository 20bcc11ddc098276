"""`classicnets predict`: the top-k classes of images or folders of images, optionally as a picture grid."""

from __future__ import annotations

import argparse
import json
import sys

from classicnets.choices import RUNTIMES
from classicnets.cli.args import add_runtime_flags


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", parents=[common], help="top-k classes of images or folders; optional picture grid")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", required=True, metavar="W", help="checkpoint, weight file or name (resnet18.imagenet)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--grid", metavar="PNG", help="write the images with 'class, probability' above each")
    p.add_argument("--gradcam", action="store_true", help="draw each image's Grad-CAM map on the grid (needs --grid)")
    p.add_argument("--json", action="store_true", help="JSON lines: file, top-k, every class's probability")
    add_runtime_flags(p)
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="what runs the model: torch, or onnxruntime's CPU provider on our ONNX export (exported once, cached "
        "beside the weights as NAME.<hash>.onnx; docs/evaluation.md says which to use when)",
    )
    p.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from classicnets.errors import UsageError

    if args.gradcam and not args.grid:
        raise UsageError("--gradcam draws the heat maps on the picture grid: add --grid PNG")
    from classicnets.errors import DataError
    from classicnets.inference.prediction import (
        GRID_MAX_IMAGES,
        Prediction,
        PredictStats,
        expand_inputs,
        iter_predictions,
        write_grid,
    )

    files = expand_inputs(args.inputs)
    stats = PredictStats()
    results = iter_predictions(
        args.weights,
        files,
        topk=args.topk,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        gradcam=args.gradcam,
        stats=stats,
        runtime=args.runtime,
    )
    width = min(60, max(len("file"), *(len(str(f)) for f in files)))
    shown: list[Prediction] = []  # the grid's images: the first GRID_MAX_IMAGES only, whatever the folder's size
    for i, r in enumerate(results):  # each line as soon as its batch is through the model
        if args.json:
            print(json.dumps(r.to_dict()), flush=True)
        else:
            if i == 0:
                print(f"{'file':<{width}}  top-{len(r.classes)}")
            tops = "  ".join(f"{c} {p:.3f}" for c, p in zip(r.classes, r.probabilities, strict=True))
            print(f"{r.file[-width:]:<{width}}  {tops}", flush=True)
        if args.grid and len(shown) < GRID_MAX_IMAGES:
            shown.append(r)
    if stats.images == 0:
        raise DataError("none of the images could be read")
    if args.grid:
        write_grid(shown, args.grid, total=stats.images)
    # With --json, standard output is JSON lines only: the speed and picture lines go to stderr.
    notes = sys.stderr if args.json else sys.stdout
    print(f"\nspeed: {stats.describe()}", file=notes)
    if args.grid:
        print(f"picture: {args.grid}", file=notes)
    return 0
