"""`classicnets weights`: the pretrained weights classicnets knows by name (table or --json), and `get NAME`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "weights",
        parents=[common],
        help="list the pretrained weights known by name; `weights get NAME` downloads and checks them",
        description="The ImageNet weights classicnets can download by name, with their publisher's accuracy, size "
        "and whether they are in the cache (CLASSICNETS_HOME, else $XDG_CACHE_HOME/classicnets, else "
        "~/.cache/classicnets). Any --weights flag takes a name: `--model alexnet --weights imagenet` or "
        "`--weights alexnet.imagenet`; the file is downloaded once and its SHA-256 checked.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_list)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    get = actions.add_parser(
        "get", parents=[common], help="download weights into the cache and check them", description="Download "
        "known weights into the cache (resuming an interrupted download) and check their SHA-256 (or, where none "
        "is published, their size and every layer's shape); prints where they are.",
    )  # fmt: skip
    get.add_argument("names", nargs="+", metavar="NAME", help="e.g. alexnet.imagenet, resnet50.imagenet_v2")
    get.add_argument("--quiet", action="store_true", help="no progress bar")
    get.set_defaults(handler=run_get)


def run_list(args: argparse.Namespace) -> int:
    from classicnets.tables import format_table
    from classicnets.weights.hub import cache_state, cached_path, weights_dir
    from classicnets.weights.known import list_known_weights

    known = list_known_weights()
    if args.json:
        rows = [{**w.to_dict(), "cached": cache_state(w), "path": str(cached_path(w))} for w in known]
        print(json.dumps(rows, indent=1))
        return 0
    table = [
        (w.name, f"{w.top1:.{w.decimals}f}", f"{w.top5:.{w.decimals}f}", f"{w.size_mib:.1f}",
         f"{w.preprocessing.resize_size}/{w.preprocessing.input_size[-1]}", cache_state(w), w.publisher.split(",")[0])
        for w in known
    ]  # fmt: skip
    header = ("name", "top-1 %", "top-5 %", "MiB", "resize/crop", "cached", "publisher")
    print(format_table(table, header=header, align="lrrrrll"))
    print(
        f"\nImageNet-1k validation accuracy as published (single centre crop); cache: {weights_dir()}\n"
        "use: classicnets train --model alexnet --weights imagenet --data DIR  (or --weights alexnet.imagenet)"
    )
    return 0


def run_get(args: argparse.Namespace) -> int:
    from classicnets.weights.pretrained import get_weights

    for name in args.names:
        got = get_weights(name, progress=not args.quiet)
        size = got.path.stat().st_size / 2**20
        print(f"{got.known.name}: {got.path} ({size:.1f} MiB; {got.checked})")
    return 0
