"""`classicnets scan`: every problem in an image folder before training meets it.

Finds files that do not decode (with the same decoder and reason codes as the training guard), empty class
folders, skipped hidden entries and non-image files, and exact duplicates (same bytes, by SHA-256), flagging
duplicates that sit in two splits of a prepared folder (train/test leakage inflates test accuracy).
Works on a prepared folder (train/val/test), a class-per-folder tree, or a flat folder of images.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from classicnets.data.decode import MISSING, UNREADABLE, BadImageError, decode_image
from classicnets.data.folders import find_split_dirs, is_hidden, list_class_folders
from classicnets.errors import DataError
from classicnets.fileio import open_regular

EMPTY_CLASS = "EMPTY_CLASS"
DUPLICATE = "DUPLICATE"  # the same bytes twice in one split (or in an unsplit folder)
LEAK = "LEAK"  # the same bytes in two splits: a test image the model also trains on
HIDDEN = "HIDDEN"  # skipped, not a problem
IGNORED = "IGNORED"  # a file without an image extension inside a class folder: skipped, not a problem

# Decoding at a small draft size still reads every byte of a JPEG (so truncation shows) at a fraction of the cost.
_SCAN_DRAFT = 32
_CHUNK = 16  # files per task when scanning with several processes


@dataclass
class BadFile:
    path: str  # relative to the scanned folder
    code: str
    detail: str


@dataclass
class DuplicateGroup:
    paths: list[str]
    code: str  # DUPLICATE or LEAK
    splits: list[str]  # the splits the copies sit in (empty for an unsplit folder)
    classes: list[str]  # the classes they are labelled as (more than one: a labelling conflict too)


@dataclass
class ScanReport:
    root: str
    layout: str  # "splits", "classes" or "flat"
    images: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split ("" unsplit) -> class -> readable images
    bad_files: list[BadFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        """Bad files + empty classes + duplicate groups: what `--strict` fails on (skipped entries are not)."""
        return len(self.bad_files) + len(self.empty_classes) + len(self.duplicates)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = self.problems
        return d


@dataclass
class _Entry:
    path: Path
    split: str
    label: str


def scan_folder(root: str | os.PathLike, *, duplicates: bool = True, workers: int = 0, progress: bool = False):
    """Scan `root` and return a ScanReport. `workers` > 1 decodes in that many processes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder" if not root.exists() else f"{root} is not a folder")
    entries, report = _collect(root)
    rel = {e.path: _relative(e.path, root) for e in entries}
    paths = [str(e.path) for e in entries]
    check = functools.partial(check_file, digest=duplicates)
    if workers > 1 and len(paths) > _CHUNK:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(check, paths, chunksize=_CHUNK), total=len(paths),
                                disable=not progress, desc="scan", unit="img"))  # fmt: skip
    else:
        results = [check(p) for p in tqdm(paths, disable=not progress, desc="scan", unit="img")]
    by_digest: dict[str, list[_Entry]] = defaultdict(list)
    for entry, (code, detail, digest) in zip(entries, results, strict=True):
        counts = report.counts.setdefault(entry.split, {})
        counts.setdefault(entry.label, 0)
        if code:
            report.bad_files.append(BadFile(rel[entry.path], code, detail))
        else:
            counts[entry.label] += 1
        if digest and duplicates:
            by_digest[digest].append(entry)
    for group in by_digest.values():
        if len(group) > 1:
            splits = sorted({e.split for e in group if e.split}, key=_split_order)
            report.duplicates.append(DuplicateGroup(
                [rel[e.path] for e in group], LEAK if len(splits) > 1 else DUPLICATE, splits,
                sorted({e.label for e in group}),
            ))  # fmt: skip
    report.duplicates.sort(key=lambda g: g.paths)
    report.images = len(entries)
    return report


def _collect(root: Path) -> tuple[list[_Entry], ScanReport]:
    splits = find_split_dirs(root)
    entries: list[_Entry] = []
    if splits:
        report = ScanReport(str(root), "splits")
        report.hidden += [_relative(p, root) for p in sorted(root.iterdir()) if is_hidden(p.name)]
        parts = list(splits.items())
    else:
        report = ScanReport(str(root), "")
        parts = [("", root)]
    for split, folder in parts:
        listing = list_class_folders(folder)
        report.layout = report.layout or ("classes" if listing.classes else "flat")
        report.hidden += [_relative(p, root) for p in listing.hidden]
        report.ignored += [_relative(p, root) for p in listing.ignored]
        if report.layout != "flat":
            report.ignored += [_relative(p, root) for p in listing.loose_images]  # images outside class folders
        if report.layout == "flat":
            entries += [_Entry(p, split, "") for p in listing.loose_images]
            continue
        for name, files in listing.classes.items():
            report.counts.setdefault(split, {})[name] = 0
            if not files:
                report.empty_classes.append(_relative(folder / name, root))
            entries += [_Entry(p, split, name) for p in files]
    if not entries and not report.empty_classes:
        raise DataError(f"{root} holds no images (expected class folders, train/val/test, or image files)")
    return entries, report


def check_file(path: str, *, digest: bool = True) -> tuple[str | None, str, str | None]:
    """(reason code or None, detail, SHA-256 of the bytes or None) for one file; `digest=False` skips the hash."""
    try:
        decode_image(path, draft_short_side=_SCAN_DRAFT)
    except BadImageError as e:
        return e.code, e.detail, _sha256(path) if digest and e.code not in (MISSING, UNREADABLE) else None
    return None, "", _sha256(path) if digest else None


def _sha256(path: str) -> str | None:
    """The file's SHA-256 (None when empty or unreadable); only regular files are read (fileio.open_regular)."""
    try:
        with open_regular(path) as f:
            h = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest() if f.tell() > 0 else None
    except OSError:
        return None


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) + ("/" if path.is_dir() and not path.is_symlink() else "")


def _split_order(name: str) -> int:
    return ("train", "val", "test").index(name) if name in ("train", "val", "test") else 3


def format_report(report: ScanReport) -> str:
    """The human-readable report `classicnets scan` prints."""
    classes = {c for counts in report.counts.values() for c in counts}
    where = {"splits": f"splits {', '.join(report.counts)}", "classes": f"{len(classes)} classes",
             "flat": "no class folders"}[report.layout]  # fmt: skip
    lines = [f"scanned {report.root}: {report.images} image files, {where}"]

    def section(title: str, rows: list[tuple[str, str, str]]) -> None:
        if rows:
            lines.append(f"{title} ({len(rows)}):")
            lines.extend(f"  {code:<13} {path}" + (f"  ({detail})" if detail else "") for code, path, detail in rows)

    section("problem files", [(b.code, b.path, b.detail) for b in report.bad_files])
    section("empty classes", [(EMPTY_CLASS, p, "no images") for p in report.empty_classes])
    section("exact duplicates", [(g.code, " = ".join(g.paths), _dup_detail(g)) for g in report.duplicates])
    section("skipped, not problems", [(HIDDEN, p, "hidden") for p in report.hidden]
            + [(IGNORED, p, "not an image file") for p in report.ignored])  # fmt: skip
    leaks = sum(g.code == LEAK for g in report.duplicates)
    ok = report.images - len(report.bad_files)
    lines.append(
        f"summary: {len(report.bad_files)} problem files, {len(report.empty_classes)} empty classes, "
        f"{len(report.duplicates)} duplicate groups ({leaks} across splits), {len(report.hidden)} hidden entries "
        f"skipped; {ok} of {report.images} images readable"
    )
    return "\n".join(lines)


def _dup_detail(group: DuplicateGroup) -> str:
    parts = []
    if group.code == LEAK:
        parts.append(f"in {' and '.join(group.splits)}")
    if len(group.classes) > 1:
        parts.append(f"labelled {' and '.join(group.classes)}")
    return ", ".join(parts)
