"""`classicnets prepare`: sort a flat folder into class folders and/or split class folders into train/val/test."""

from __future__ import annotations

import argparse
import sys

from classicnets.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "prepare",
        parents=[common],
        help="sort a flat folder by name prefix and/or split class folders into train/val/test",
        description="Sort SRC into DST: --by-prefix turns cat.1.jpg into cat/cat.1.jpg, --split makes "
        "DST/train, DST/val (and DST/test), stratified and the same for the same --seed. Copies by default; "
        "never overwrites or deletes a file in DST; a re-run after an interruption finishes the same plan "
        "(DST/prepare.json).",
    )
    p.add_argument("src", metavar="SRC", help="a flat folder of images, or a folder with one sub-folder per class")
    p.add_argument("dst", metavar="DST", nargs="?",
                   help="output folder (created; existing files are never overwritten); omit it with --cache to "
                   "cache SRC as it is")  # fmt: skip
    p.add_argument("--by-prefix", action="store_true", help="class = file name without its trailing number")
    p.add_argument("--split", metavar="FRACTIONS", help="train,val[,test] fractions adding up to 1, e.g. 0.8,0.1,0.1")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy files (default)")
    mode.add_argument("--link", dest="mode", action="store_const", const="link", help="symlink to SRC instead")
    mode.add_argument("--move", dest="mode", action="store_const", const="move", help="move files out of SRC")
    p.add_argument("--dry-run", action="store_true", help="print the table and what would happen; write nothing")
    p.add_argument("--pca", action="store_true", help="also write DST/pca.json: RGB eigen-decomposition of train")
    p.add_argument("--cache", action="store_true",
                   help="also decode every image of DST once into the decode cache training reads (docs/data.md)")
    p.add_argument("--cache-size", type=int, default=256, metavar="S",
                   help="the models' resize size the cache is for (default 256: S x S x 3 bytes per image)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="--cache: decode in N processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_prepare, mode="copy")


def parse_fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--split {text!r}: expected fractions like 0.8,0.1,0.1") from None
    if len(values) not in (2, 3) or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise UsageError(f"--split {text!r}: give 2 or 3 fractions >= 0 that add up to 1, e.g. 0.8,0.1,0.1")
    return values


def run_prepare(args: argparse.Namespace) -> int:
    if args.workers < 0 or args.cache_size < 1:
        raise UsageError("--workers must be >= 0 and --cache-size at least 1")
    if args.dst is None:
        if not args.cache:
            raise UsageError("prepare needs SRC and DST (or one folder with --cache)")
        return run_cache(args, args.src)
    code = run_sort(args)
    return run_cache(args, args.dst) if args.cache and not args.dry_run else code


def run_cache(args: argparse.Namespace, folder: str) -> int:
    from classicnets.data.cache import build_folder_cache

    cache, paths, rows = build_folder_cache(folder, size=args.cache_size, workers=args.workers,
                                            progress=not args.quiet and sys.stderr.isatty())  # fmt: skip
    size = cache.data_path.stat().st_size if rows.images.shape[0] else 0
    print(f"decode cache of {folder}: {len(rows.rows) - len(rows.bad)} images at {args.cache_size}x{args.cache_size} "
          f"in {cache.folder} ({size / 2**20:.1f} MiB), {len(rows.bad)} could not be decoded")  # fmt: skip
    for index in sorted(rows.bad)[:10]:
        print(f"  not decoded: {cache.key(paths[index])} ({rows.bad[index][0]})")
    return 0


def run_sort(args: argparse.Namespace) -> int:
    from classicnets.data.prepare import format_counts, prepare_dataset

    split = parse_fractions(args.split) if args.split else None
    report = prepare_dataset(args.src, args.dst, by_prefix=args.by_prefix, split=split, seed=args.seed,
                             mode=args.mode, dry_run=args.dry_run, pca=args.pca,
                             progress=not args.quiet and sys.stderr.isatty())  # fmt: skip
    print(format_counts(report))
    verb = {"copy": "copied", "link": "linked", "move": "moved"}[args.mode]
    if args.dry_run:
        verb = f"dry run: would have {verb}"
    line = f"{verb} {report.written} files into {report.dst} ({report.existing} already there"
    print(line + f", {len(report.conflicts)} conflicts, {len(report.missing)} missing)")
    for rel in report.conflicts[:10]:
        print(f"  conflict (a different file is already there, left alone): {rel}")
    if report.pca:
        print(f"PCA of {report.pca['images']} training images: eigval {report.pca['eigval']}")
    if not args.dry_run:
        print(f"next: classicnets scan {report.dst}")
    return 0
