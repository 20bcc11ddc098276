"""`classicnets predict`: the top-k classes of images or folders of images, optionally as a picture grid."""

from __future__ import annotations

import argparse
import json

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
    p.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from classicnets.errors import UsageError
    from classicnets.inference.prediction import predict

    if args.gradcam and not args.grid:
        raise UsageError("--gradcam draws the heat maps on the picture grid: add --grid PNG")

    results = predict(
        args.weights,
        args.inputs,
        topk=args.topk,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        grid=args.grid,
        gradcam=args.gradcam,
    )
    if args.json:
        for r in results:
            print(json.dumps(r.to_dict()))
        return 0
    width = min(60, max(len("file"), *(len(r.file) for r in results)))
    print(f"{'file':<{width}}  top-{len(results[0].classes)}")
    for r in results:
        tops = "  ".join(f"{c} {p:.3f}" for c, p in zip(r.classes, r.probabilities, strict=True))
        print(f"{r.file[-width:]:<{width}}  {tops}")
    if args.grid:
        print(f"\npicture: {args.grid}")
    return 0
