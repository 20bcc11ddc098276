"""`classicnets summary`: a model layer by layer (output shape, parameters, MACs), then the totals."""

from __future__ import annotations

import argparse
import json
import re

from classicnets.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "summary", parents=[common], help="layer-by-layer output shape, params and MACs of a model, then totals"
    )
    p.add_argument("model", help="model name (see `classicnets models`)")
    p.add_argument("--input", metavar="CxHxW", help="input size, e.g. 3x227x227 (default: the model's own)")
    p.add_argument("--classes", type=int, metavar="N", help="number of classes (default: the model's own)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a builder option (config model.kwargs), e.g. --option groups=1 --option lrn=none for alexnet2012",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_summary)


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'3x227x227' -> (3, 227, 227); '227' or '227x227' -> 3 channels."""
    parts = re.split(r"[x,× ]+", text.strip().lower())
    try:
        dims = [int(p) for p in parts if p]
    except ValueError:
        raise UsageError(f"--input {text!r} is not CxHxW, e.g. 3x227x227") from None
    if len(dims) == 1:
        dims = [3, dims[0], dims[0]]
    elif len(dims) == 2:
        dims = [3, *dims]
    if len(dims) != 3 or min(dims) < 1:
        raise UsageError(f"--input {text!r} is not CxHxW with positive sizes, e.g. 3x227x227")
    return dims[0], dims[1], dims[2]


def run_summary(args: argparse.Namespace) -> int:
    from classicnets.models.registry import get_model_info

    info = get_model_info(args.model)
    size = parse_input_size(args.input) if args.input else info.input_size
    if size[0] not in (1, 3):
        raise UsageError(f"--input has {size[0]} channels; models take 1 (grayscale) or 3 (colour)")
    if min(size[1:]) < info.min_size:
        raise UsageError(
            f"input {size[1]}x{size[2]} is too small for {args.model}: the minimum is {info.min_size}x{info.min_size}"
        )
    import torch

    from classicnets.config.loading import parse_assignment
    from classicnets.models.registry import create_model
    from classicnets.models.summary import summarize

    options = dict(parse_assignment(text) for text in args.option)
    with torch.device("meta"):
        model = create_model(args.model, num_classes=args.classes, in_chans=size[0], **options)
    s = summarize(model, size)
    source = {"paper": info.paper, "tutorial": info.tutorial, "options": options}
    if args.json:
        print(json.dumps(s.to_dict() | source, indent=2))
        return 0
    print(s.format())
    print(f"Paper:                 {info.paper}")
    if info.tutorial:
        print(f"Tutorial:              {info.tutorial}")
    return 0
