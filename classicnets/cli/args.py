"""Argument helpers shared by several commands: the runtime flags of eval and predict, and the checks on the output
file of import and export. Nothing here imports torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from classicnets.choices import PRECISIONS
from classicnets.errors import UsageError


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """--batch-size, --device, --precision, --workers and --quiet, as eval and predict take them."""
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_output_file(src: str, out: str, force: bool) -> None:
    """--out must not be the input, not a folder, and exist only with --force."""
    src_path, out_path = Path(src), Path(out)
    if out_path.exists() and src_path.exists() and out_path.resolve() == src_path.resolve():
        raise UsageError(f"--out {out} is the input file; write the result somewhere else")
    if out_path.is_dir():
        raise UsageError(f"--out {out} is a folder; name the file to write")
    if out_path.exists() and not force:
        raise UsageError(f"--out {out} exists; pass --force to replace it")
