"""`classicnets report RUN`: the run's self-contained HTML report (classicnets.inference.report)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "report",
        parents=[common],
        help="one self-contained HTML page about a training run (train writes it at the end)",
        description="Write RUN/report.html: command, config, data, curves, confusion matrix, most-confused pairs, "
        "misclassified images with Grad-CAM, first-layer kernels and speed per epoch, pictures inline.",
    )
    p.add_argument("run", metavar="RUN", help="a run folder written by `classicnets train`")
    p.add_argument("--out", metavar="HTML", help="where to write it (default: RUN/report.html)")
    p.add_argument("--device", default="cpu", help="for the misclassified images and Grad-CAM (default: cpu)")
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from classicnets.inference.report import write_report

    path = write_report(args.run, out=args.out, device=args.device)
    print(f"report: {path}")
    return 0
