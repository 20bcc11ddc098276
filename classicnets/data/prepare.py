"""`classicnets prepare`: sort a flat download into class folders and/or split class folders into train/val/test.

Safety rules: SRC is only read (unless --move), an existing file in DST is never overwritten or deleted (a
different file already at a destination is reported as a conflict and left alone), every copy is atomic and keeps
its source's permissions and time stamp, and the plan (which file goes where) is written to DST/prepare.json before
any file is touched, so a re-run after an interruption finishes the same plan instead of drawing a new split
(which, after a partial --move, would mix test images into train). Nothing outside SRC and DST is touched: --move
refuses a SRC whose class folders lead outside it (symlinks), and a plan whose entries leave SRC or DST (`..`, an
absolute path, a symlinked folder in DST) is refused before any file is placed. Only regular files are planned
(a FIFO or a device named like an image is skipped with a warning).
"""

from __future__ import annotations

import errno
import filecmp
import json
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from classicnets.choices import PREPARE_MODES
from classicnets.data.datasets import FileDataset
from classicnets.data.folders import (
    SPLIT_NAMES,
    FolderListing,
    find_split_dirs,
    list_class_folders,
    stratified_split,
)
from classicnets.errors import DataError, UsageError
from classicnets.fileio import atomic_open, atomic_write_text, open_regular, remove_orphans
from classicnets.tables import format_table

log = logging.getLogger(__name__)

PLAN_FILE = "prepare.json"
PCA_FILE = "pca.json"
# "cat.5000.jpg" -> "cat", "american_bulldog_10.jpg" -> "american_bulldog", "IMG-0042.png" -> "IMG"
_TRAILING_NUMBER = re.compile(r"^(.*?)[._\- ]*\d+$")


def class_from_name(filename: str) -> str:
    """The class a flat-folder file name encodes: its stem without a trailing number, else the part before the
    first dot (Kaggle "Dogs vs. Cats": cat.5000.jpg; Oxford-IIIT Pets: american_bulldog_10.jpg)."""
    stem = os.path.splitext(filename)[0]
    match = _TRAILING_NUMBER.match(stem)
    if match and match.group(1):
        return match.group(1)
    return stem.split(".")[0] or stem


@dataclass
class PrepareReport:
    src: str
    dst: str
    mode: str
    dry_run: bool
    splits: list[str]  # [""] when not splitting
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> split -> files
    written: int = 0  # files copied/linked/moved by this run (or that would be, with dry_run)
    existing: int = 0  # already at their destination (an earlier, interrupted run)
    conflicts: list[str] = field(default_factory=list)  # a different file sits at the destination: left alone
    missing: list[str] = field(default_factory=list)  # in the plan but gone from SRC and not in DST
    pca: dict | None = None


def prepare_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    by_prefix: bool = False,
    split: list[float] | None = None,
    seed: int = 0,
    mode: str = "copy",
    dry_run: bool = False,
    pca: bool = False,
    progress: bool = False,
) -> PrepareReport:
    """Sort and/or split SRC into DST. See the module docstring for the safety rules."""
    src, dst = Path(src).absolute(), Path(dst).absolute()
    _check_request(src, dst, by_prefix=by_prefix, split=split, mode=mode)
    splits = list(SPLIT_NAMES[: len(split)]) if split else [""]
    settings = {"src": str(src), "by_prefix": by_prefix, "split": split, "seed": seed}
    plan = _load_plan(dst, settings, splits) or _make_plan(src, by_prefix, split, seed, splits)
    if mode == "move":
        _check_move_stays_in(src, plan)
    if not dry_run:
        atomic_write_text(dst / PLAN_FILE, json.dumps({**settings, "files": plan}, indent=1) + "\n")
    report = PrepareReport(str(src), str(dst), mode, dry_run, splits)
    for rel_dst in plan:
        split_name, label = _split_and_class(rel_dst, split is not None)
        report.counts.setdefault(label, {s: 0 for s in splits})[split_name] += 1
    placer = _Placer(dst, plan, mode, dry_run, report)
    for rel_dst, rel_src in tqdm(plan.items(), disable=not progress, desc=mode, unit="file"):
        placer.place(src / rel_src, rel_dst)
    if report.conflicts:
        log.warning("%d destinations already hold a different file and were left alone (first: %s)",
                    len(report.conflicts), report.conflicts[0])  # fmt: skip
    if pca:
        report.pca = _pca(src, dst, plan, dry_run)
    return report


def _check_request(src: Path, dst: Path, *, by_prefix: bool, split: list[float] | None, mode: str) -> None:
    if mode not in PREPARE_MODES:
        raise UsageError(f"unknown mode {mode!r}; use copy, link or move")
    if split is not None and len(split) not in (2, 3):
        raise UsageError("--split takes 2 or 3 fractions: train,val or train,val,test (e.g. 0.8,0.1,0.1)")
    if not by_prefix and split is None:
        raise UsageError("nothing to do: pass --by-prefix to sort a flat folder, --split to split, or both")
    if not src.is_dir():
        raise DataError(f"{src}: no such folder")
    if dst.resolve().is_relative_to(src.resolve()) or src.resolve().is_relative_to(dst.resolve()):
        raise UsageError(f"DST {dst} and SRC {src} must not be inside one another; choose a separate DST")
    splits = find_split_dirs(src)
    if splits:
        raise DataError(f"{src} is already split into {', '.join(splits)}; nothing to prepare")


def _make_plan(src: Path, by_prefix: bool, split: list[float] | None, seed: int, splits: list[str]) -> dict[str, str]:
    """{destination relative to DST: source relative to SRC}, in a stable order."""
    listing = list_class_folders(src)
    items = _items_by_prefix(src, listing) if by_prefix else _items_in_class_folders(src, listing)
    rel_src = dict(items)
    keys = list(rel_src)  # (class, path inside the class), sorted
    classes = sorted({c for c, _ in keys})
    if split is None:
        return {f"{c}/{inner}": rel_src[(c, inner)] for c, inner in keys}
    parts = stratified_split([classes.index(c) for c, _ in keys], split, seed=seed)
    plan = {}
    for split_name, indices in zip(splits, parts, strict=True):
        for i in indices:
            c, inner = keys[i]
            plan[f"{split_name}/{c}/{inner}"] = rel_src[(c, inner)]
    return dict(sorted(plan.items(), key=lambda kv: (SPLIT_NAMES.index(kv[0].split("/")[0]), kv[0])))


def _items_by_prefix(src: Path, listing: FolderListing) -> list[tuple[tuple[str, str], str]]:
    """((class from the name, file name), path in SRC) for the images at SRC's top level."""
    if not listing.loose_images:
        raise DataError(f"{src}: no images at its top level to sort by name prefix (is it already sorted?)")
    if listing.classes:
        log.warning("--by-prefix sorts the %d images at the top of %s; its %d sub-folders are ignored",
                    len(listing.loose_images), src, len(listing.classes))  # fmt: skip
    return sorted(((class_from_name(p.name), p.name), p.name) for p in _regular_files(listing.loose_images))


def _items_in_class_folders(src: Path, listing: FolderListing) -> list[tuple[tuple[str, str], str]]:
    """((class, path inside its class folder), path in SRC) for every image in SRC's class folders."""
    if not listing.classes:
        hint = " (flat folder of cat.1.jpg-style names? add --by-prefix)" if listing.loose_images else ""
        raise DataError(f"{src}: no class folders to split{hint}")
    for name in listing.empty_classes:
        log.warning("class folder %s is empty; it will not appear in DST", src / name)
    items = []
    for name, files in listing.classes.items():
        for p in _regular_files(files):
            inner = p.relative_to(src / name).as_posix()
            items.append(((name, inner), f"{name}/{inner}"))
    return items


def _regular_files(paths: list[Path]) -> list[Path]:
    """The paths that are regular files (after links); the others (a FIFO, a device, a dangling link) are skipped
    with one warning: copying them would hang, read forever or fail half-way."""
    kept: list[Path] = []
    skipped: list[Path] = []
    for p in paths:
        try:
            (kept if stat.S_ISREG(p.stat().st_mode) else skipped).append(p)
        except OSError:
            skipped.append(p)
    if skipped:
        log.warning("skipped %d entries that are not regular files (first: %s)", len(skipped), skipped[0])
    return kept


def _check_move_stays_in(src: Path, plan: dict[str, str]) -> None:
    """--move removes each source file's name from its folder: every such folder must really be inside SRC."""
    root = os.path.realpath(src)
    seen: dict[str, str] = {}
    for rel_src in plan.values():
        folder = os.path.dirname(os.path.join(src, rel_src))
        real = seen.setdefault(folder, os.path.realpath(folder))
        if not _inside(real, root):
            raise UsageError(
                f"--move would remove files outside SRC: {folder} leads to {real}; copy (the default) or --link "
                "instead, or move that folder into SRC first"
            )


def _load_plan(dst: Path, settings: dict, splits: list[str]) -> dict[str, str] | None:
    path = dst / PLAN_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        files = saved["files"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path} is not a plan written by classicnets prepare; choose another DST") from None
    old = {k: saved.get(k) for k in settings}
    if old != settings:
        diff = ", ".join(f"{k}={old[k]!r} (now {settings[k]!r})" for k in settings if old[k] != settings[k])
        raise DataError(f"{dst} was prepared with other settings ({diff}); use a new DST or the same settings")
    bad = _bad_plan_entry(files, splits)
    if bad is not None:
        raise DataError(f"{path} is damaged or was edited ({bad}); prepare into a new DST")
    log.info("continuing the plan in %s (%d files)", path, len(files))
    return files


def _bad_plan_entry(files: object, splits: list[str]) -> str | None:
    """What is wrong with a loaded plan's {DST path: SRC path}, or None: every path must be relative and stay inside
    its folder, and a destination must be split/class/file (class/file when not splitting)."""
    if not isinstance(files, dict):
        return "no table of files"
    for rel_dst, rel_src in files.items():
        for rel in (rel_dst, rel_src):
            if not isinstance(rel, str) or not _stays_inside(rel):
                return f"entry {rel!r} leaves its folder"
        parts = rel_dst.split("/")
        if len(parts) < (3 if splits != [""] else 2) or (splits != [""] and parts[0] not in splits):
            return f"entry {rel_dst!r} is not {'split/' if splits != [''] else ''}class/file"
    return None


def _stays_inside(rel: str) -> bool:
    """A relative POSIX path without `..`, `.` or empty parts: it names something inside the folder it is joined to."""
    parts = rel.replace(os.sep, "/").split("/")  # on Windows a backslash separates too
    return bool(rel) and not PurePosixPath(rel).is_absolute() and all(p not in ("", ".", "..") for p in parts)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _split_and_class(rel_dst: str, has_split: bool) -> tuple[str, str]:
    parts = rel_dst.split("/")
    return (parts[0], parts[1]) if has_split else ("", parts[0])


class _Placer:
    """Puts planned files into DST: copies, links or moves one file, never overwriting, never outside DST."""

    def __init__(self, dst: Path, plan: dict[str, str], mode: str, dry_run: bool, report: PrepareReport) -> None:
        self.dst, self.mode, self.dry_run, self.report = dst, mode, dry_run, report
        self.root = os.path.realpath(dst)
        self.checked: set[Path] = set()  # destination folders checked to lie in DST and cleaned of orphans
        self.names: dict[str, set[str]] = {}  # folder in DST -> the file names the plan puts there
        for rel_dst in plan:
            folder, _, name = rel_dst.rpartition("/")
            self.names.setdefault(folder, set()).add(name)

    def place(self, src: Path, rel_dst: str) -> None:
        dst, mode, report = self.dst / rel_dst, self.mode, self.report
        if os.path.lexists(dst):
            if _same_file(src, dst, mode):
                report.existing += 1
                if mode == "move" and os.path.lexists(src) and not self.dry_run:
                    os.unlink(src)  # the interrupted run placed it but did not get to remove the source
            else:
                report.conflicts.append(rel_dst)
            return
        if not os.path.lexists(src):
            report.missing.append(rel_dst)
            return
        report.written += 1
        if self.dry_run:
            return
        self._enter(dst.parent)
        if mode == "link":
            os.symlink(src.resolve(), dst)  # fails rather than replace: never overwrites
        elif mode == "move":
            try:
                os.link(src, dst)  # a hard link fails if dst exists (no overwrite), then drop the source name
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                    raise
                _copy(src, dst)  # another file system: copy atomically, then remove the source
            os.unlink(src)
        else:
            _copy(src, dst)

    def _enter(self, folder: Path) -> None:
        """Before the first file goes into `folder`: it must lie inside DST (no symlinked folder leading out), and
        the temporary files a killed copy left there are removed (once per folder, not once per file)."""
        if folder in self.checked:
            return
        real = os.path.realpath(folder)
        if not _inside(real, self.root):
            raise DataError(f"{folder} leads outside DST (to {real}); remove that link or prepare into a new DST")
        folder.mkdir(parents=True, exist_ok=True)
        remove_orphans(folder, self.names.get(folder.relative_to(self.dst).as_posix(), set()))
        self.checked.add(folder)


def _copy(src: Path, dst: Path) -> None:
    try:
        fin = open_regular(src)
    except OSError as e:
        raise DataError(f"cannot read {src}: {e.strerror or e}") from None
    with fin:
        st = os.fstat(fin.fileno())
        with atomic_open(dst, "wb", permissions=stat.S_IMODE(st.st_mode), clean_orphans=False) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: a re-run recognises the copy cheaply


def _same_file(src: Path, dst: Path, mode: str) -> bool:
    """Is dst what this plan would have put there? (After a --move the source is gone: dst is then taken.)"""
    if not os.path.lexists(src):
        return mode == "move"
    if os.path.islink(dst):
        return os.path.realpath(dst) == os.path.realpath(src)
    try:
        a, b = src.stat(), dst.stat()
    except OSError:
        return False
    if a.st_size != b.st_size:
        return False
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) or a.st_mtime_ns == b.st_mtime_ns:
        return True
    return filecmp.cmp(src, dst, shallow=False)


def _pca(src: Path, dst: Path, plan: dict[str, str], dry_run: bool) -> dict:
    from classicnets.data.pca import pca_from_dataset

    train = [k for k in plan if k.startswith("train/")] or list(plan)
    paths = [str((src / plan[k]) if dry_run else (dst / k)) for k in train]
    eigval, eigvec = pca_from_dataset(FileDataset([(p, 0) for p in paths], ["all"], source=str(dst)))
    result = {"eigval": [round(v, 6) for v in eigval.tolist()],
              "eigvec": [[round(v, 6) for v in row] for row in eigvec.tolist()],
              "images": len(paths), "convention": "RGB, pixels in [0, 1]; eigvec[:, i] is eigenvector i"}  # fmt: skip
    if not dry_run:
        atomic_write_text(dst / PCA_FILE, json.dumps(result, indent=1) + "\n")
    return result


def format_counts(report: PrepareReport) -> str:
    """The table of files per class and split that `prepare` prints, with a total row."""
    splits = report.splits
    several = len(splits) > 1
    header = ["class", *(s or "files" for s in splits), *(["total"] if several else [])]
    rows = []
    totals = dict.fromkeys(splits, 0)
    for label, by_split in [*sorted(report.counts.items()), ("total", totals)]:
        counts = [by_split[s] for s in splits]
        if label != "total":
            for s in splits:
                totals[s] += by_split[s]
        rows.append([label, *counts, *([sum(counts)] if several else [])])
    return format_table(rows, header=header, align="l" + "r" * (len(header) - 1), rule="")
