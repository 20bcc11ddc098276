"""`classicnets scan`: every problem file, empty class, hidden entry and duplicate in an image folder."""

from __future__ import annotations

import argparse
import json
import sys

from classicnets.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "scan",
        parents=[common],
        help="list problem files (reason codes), empty classes, hidden entries and duplicates in an image folder",
        description="Decode every image in DIR (a prepared train/val/test folder, class folders, or a flat "
        "folder) and report: ZERO_BYTES, MISSING, UNREADABLE, NOT_AN_IMAGE, TRUNCATED, CORRUPT, TOO_LARGE files; "
        "EMPTY_CLASS folders; exact DUPLICATE files (LEAK when the copies sit in two splits); skipped HIDDEN "
        "entries and IGNORED non-image files. Exit 0; with --strict exit 1 when a problem is found.",
    )
    p.add_argument("dir", metavar="DIR", help="folder to scan")
    p.add_argument("--strict", action="store_true", help="exit 1 when any problem file, empty class or duplicate")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-duplicates", action="store_true", help="skip the duplicate search (no hashing)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="decode in N processes (default: in this one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    from classicnets.data.scan import format_report, scan_folder

    if args.workers < 0:
        raise UsageError("--workers must be >= 0")
    report = scan_folder(args.dir, duplicates=not args.no_duplicates, workers=args.workers,
                         progress=not args.quiet and not args.json and sys.stderr.isatty())  # fmt: skip
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return 1 if args.strict and report.problems else 0
