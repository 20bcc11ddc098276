"""`classicnets models`: every registered model with its parameters, MACs, FLOPs, input size and paper."""

from __future__ import annotations

import argparse
import json
from typing import Any

from classicnets.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", parents=[common], help="list every model with params, MACs, FLOPs, input size, paper")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    from classicnets.models.registry import get_model_info, list_models
    from classicnets.models.summary import summarize
    from classicnets.tables import format_table

    names = list_models(args.pattern)
    if not names:
        raise UsageError(f"no model matches {args.pattern!r}; try `classicnets models`")
    rows: list[dict[str, Any]] = []
    for name in names:
        info = get_model_info(name)
        s = summarize(name)
        rows.append(
            {
                "name": name,
                "params": s.total_params,
                "macs": s.macs,
                "flops": s.flops,
                "input": "x".join(map(str, info.input_size)),
                "min_input": info.min_size,
                "paper": info.paper,
                "tutorial": info.tutorial,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        (r["name"], f"{r['params']:,}", f"{r['macs'] / 1e9:.3f}G", f"{r['flops'] / 1e9:.3f}G", r["input"],
         r["min_input"], r["tutorial"] or r["paper"])
        for r in rows
    ]  # fmt: skip
    header = ("model", "params", "MACs", "FLOPs", "input", "min", "paper (or the tutorial whose network it is)")
    print(format_table(table, header=header, align="lrrrrrl"))
    print("\nMACs = multiply-adds of conv and linear layers for one image at the default input; FLOPs = 2 x MACs.")
    return 0
