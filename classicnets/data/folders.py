"""Image files on disk: class-per-folder trees, list files, prepared folders (train/, val/, test/) and stratified
splits. `sources.open_dataset` decides which kind of source a path is.

A class-per-folder tree is `root/<class>/**/<image>`: extensions are matched case-insensitively, hidden entries
(`.DS_Store`, `.ipynb_checkpoints/`, macOS `__MACOSX/`) are skipped with one warning, a folder reached twice through
symlinks is visited once (so a symlink loop cannot hang the walk), and class names are sorted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classicnets import choices
from classicnets.config.schema import MAX_CLASSES
from classicnets.data.datasets import FileDataset
from classicnets.data.decode import is_image_file
from classicnets.errors import DataError, UsageError

log = logging.getLogger(__name__)

SPLIT_NAMES = choices.SPLIT_NAMES  # what `classicnets prepare --split` writes


def is_hidden(name: str) -> bool:
    """Hidden by Unix convention, or the folder macOS's zip tool adds (`__MACOSX`)."""
    return name.startswith(".") or name == "__MACOSX"


@dataclass
class FolderListing:
    """What a class-per-folder tree holds, including what was skipped and why."""

    root: Path
    classes: dict[str, list[Path]] = field(default_factory=dict)  # class name -> image paths (sorted)
    hidden: list[Path] = field(default_factory=list)  # hidden files and folders, not descended into
    ignored: list[Path] = field(default_factory=list)  # files without an image extension inside class folders
    loose_images: list[Path] = field(default_factory=list)  # images at the top level, outside any class folder
    revisited: list[Path] = field(default_factory=list)  # folders reached a second time through a symlink

    @property
    def empty_classes(self) -> list[str]:
        return [name for name, files in self.classes.items() if not files]


def list_class_folders(root: str | os.PathLike) -> FolderListing:
    """Walk `root/<class>/...` once, following symlinks but never into a folder already visited."""
    root = Path(root)
    listing = FolderListing(root)
    visited: set[tuple[int, int]] = {_key(root)}
    class_dirs = []
    for entry in _scandir(root):
        if is_hidden(entry.name):
            listing.hidden.append(Path(entry.path))
        elif _is_dir(entry):
            class_dirs.append(entry)
        elif is_image_file(entry.name):
            listing.loose_images.append(Path(entry.path))
    for entry in sorted(class_dirs, key=lambda e: e.name):
        files: list[Path] = []
        _walk_class(Path(entry.path), files, listing, visited)
        listing.classes[entry.name] = sorted(files, key=lambda p: str(p))
    return listing


def _walk_class(folder: Path, files: list[Path], listing: FolderListing, visited: set[tuple[int, int]]) -> None:
    stack = [folder]
    while stack:
        current = stack.pop()
        key = _key(current)
        if key in visited:
            listing.revisited.append(current)
            continue
        visited.add(key)
        for entry in _scandir(current):
            if is_hidden(entry.name):
                listing.hidden.append(Path(entry.path))
            elif _is_dir(entry):
                stack.append(Path(entry.path))
            elif is_image_file(entry.name):
                files.append(Path(entry.path))  # dangling links included: the loader reports them as MISSING
            elif entry.is_file():
                listing.ignored.append(Path(entry.path))


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read folder {folder}: {e.strerror or e}") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; False for a dangling or looping link
    except OSError:
        return False


def _key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def find_split_dirs(root: str | os.PathLike) -> dict[str, Path] | None:
    """{"train": root/train, "val": root/val, "test": root/test} for a prepared folder (those present), else None.

    A prepared folder needs `train` plus `val` or `test`.
    """
    root = Path(root)
    found = {name: root / name for name in SPLIT_NAMES if (root / name).is_dir()}
    if "train" in found and len(found) >= 2:
        return found
    return None


def open_class_folders(root: Path, *, in_chans: int = 3, allow_empty: bool = False) -> FileDataset:
    listing = list_class_folders(root)
    if not listing.classes:
        if listing.loose_images:
            raise DataError(
                f"{root} holds {len(listing.loose_images)} images but no class folders; sort them first, e.g. "
                f"`classicnets prepare {root} DST --by-prefix` for names like cat.1.jpg"
            )
        raise DataError(f"{root} is empty: expected one folder per class with images inside (root/cat/1.jpg)")
    for name in listing.empty_classes:
        if not allow_empty:
            raise DataError(f"empty class folder {root / name}: add images, remove it, or pass --allow-empty")
        log.warning("class folder %s is empty (allowed)", root / name)
    if not any(listing.classes.values()):
        raise DataError(f"{root}: no images in any class folder ({', '.join(listing.classes)})")
    _warn_skipped(listing)
    classes = list(listing.classes)
    samples = [(str(p), label) for label, name in enumerate(classes) for p in listing.classes[name]]
    return FileDataset(samples, classes, source=str(root), in_chans=in_chans)


def _warn_skipped(listing: FolderListing) -> None:
    def some(paths: list[Path]) -> str:
        shown = ", ".join(str(p.relative_to(listing.root)) for p in paths[:3])
        return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")

    for paths, what in [
        (listing.hidden, f"hidden entries in {listing.root}"),
        (listing.ignored, "files that are not images"),
        (listing.loose_images, "images outside class folders"),
        (listing.revisited, "folders reached a second time through symlinks"),
    ]:
        if paths:
            log.warning("ignored %d %s: %s", len(paths), what, some(paths))


def open_list_file(path: Path, *, in_chans: int = 3) -> FileDataset:
    """A list file: `relative/path label` per line (label an int or a class name), paths relative to the file.

    Blank lines and lines starting with `#` are skipped; a path may contain spaces (the label is the last field).
    Integer labels are class indices (class names "0", "1", ...); names are sorted into indices.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text list file ('relative/path label' per line)") from None
    entries: list[tuple[str, str]] = []
    linenos: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}")
        entries.append((parts[0], parts[1]))
        linenos.append(lineno)
    if not entries:
        raise DataError(f"{path}: the list file has no entries ('relative/path label' per line)")
    labels = [label for _, label in entries]
    numeric = [label.isdecimal() for label in labels]
    if all(numeric):
        largest = max(range(len(labels)), key=lambda i: int(labels[i]))
        if int(labels[largest]) >= MAX_CLASSES:
            raise DataError(
                f"{path}:{linenos[largest]}: label {labels[largest]} is past the limit of {MAX_CLASSES:,} classes "
                "(integer labels are class indices 0, 1, 2, ...)"
            )
        n_classes = int(labels[largest]) + 1
        classes = [str(i) for i in range(n_classes)]  # index order: label i is class i
        targets = [int(label) for label in labels]
    elif any(numeric):
        raise DataError(f"{path}: labels mix class indices and class names; use one kind")
    else:
        classes = sorted(set(labels))
        targets = [classes.index(label) for label in labels]
    base = path.parent
    samples = [(str(base / rel), t) for (rel, _), t in zip(entries, targets, strict=True)]
    missing = [p for p, _ in samples if not os.path.lexists(p)]
    if missing:
        log.warning("%d of %d files in %s do not exist (first: %s); they will be skipped as MISSING",
                    len(missing), len(samples), path, missing[0])  # fmt: skip
    return FileDataset(samples, classes, source=str(path), in_chans=in_chans)


def stratified_split(targets: Sequence[int], fractions: Sequence[float], *, seed: int) -> list[list[int]]:
    """Split sample indices into len(fractions) parts holding those fractions of every class.

    Deterministic for a seed: each class is shuffled by its own generator (seed, label), then cut by the
    largest-remainder rule, so 600 images at 0.8/0.1/0.1 give exactly 480/60/60. Indices come back sorted.
    """
    fractions = [float(f) for f in fractions]
    if not fractions or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise UsageError(f"split fractions must be >= 0 and add up to 1, got {','.join(map(str, fractions))}")
    parts: list[list[int]] = [[] for _ in fractions]
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    for label, indices in sorted(by_class.items()):
        rng = np.random.default_rng([seed, label])
        shuffled = [indices[j] for j in rng.permutation(len(indices))]
        start = 0
        for part, count in zip(parts, split_counts(len(indices), fractions), strict=True):
            part.extend(shuffled[start : start + count])
            start += count
    return [sorted(p) for p in parts]


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of n * fractions (ties go to the earlier part): the counts add up to n."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r + 1e-9)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts
