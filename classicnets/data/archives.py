"""Reading files out of a `.tar.gz` as downloaded, in place: nothing is extracted, so no member can land outside a
target folder, and links are refused instead of followed.

The CIFAR archives (`cifar-10-python.tar.gz`, ...) are read this way: one sequential pass over the archive takes
the wanted members into memory and skips everything else.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Collection
from pathlib import Path

from classicnets.errors import DataError
from classicnets.fileio import open_regular

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# The largest member read into memory: CIFAR-100's python `train` is 155 MB; a member claiming more than this is
# not one of the files we read (and reading it could exhaust memory).
MAX_MEMBER_BYTES = 512 * 2**20
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def member_name(name: str) -> str:
    """A member's name without a leading "./" (tar files made with `tar -C dir .` have it)."""
    return name[2:] if name.startswith("./") else name


def first_member_names(path: Path, limit: int = 4) -> list[str]:
    """The names of the first `limit` members (cheap: only the start of the archive is decompressed)."""
    names: list[str] = []
    try:
        with open_regular(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                names.append(member_name(member.name))
                if len(names) >= limit:
                    break
    except _ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: not a readable tar archive ({e}); download it again") from None
    return names


def read_members(path: Path, wanted: Collection[str]) -> dict[str, bytes]:
    """{name: bytes} of the regular-file members named in `wanted`, in one pass. A wanted name that is a link,
    a device or a folder in the archive, larger than MAX_MEMBER_BYTES, or absent is a DataError naming it."""
    found: dict[str, bytes] = {}
    try:
        with open_regular(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                name = member_name(member.name)
                if name not in wanted or name in found:
                    continue
                _check_member(path, member)
                extracted = tar.extractfile(member)
                if extracted is None:  # pragma: no cover - _check_member let only regular files through
                    raise DataError(f"{path}: cannot read {name}")
                found[name] = extracted.read()
                if len(found) == len(wanted):
                    break
    except _ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: broken or truncated archive ({e}); download it again") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(f"{path}: the archive has no {missing[0]}; is it the complete download?")
    return found


def _check_member(path: Path, member: tarfile.TarInfo) -> None:
    if member.issym() or member.islnk():
        raise DataError(f"{path}: {member.name} is a link in the archive (to {member.linkname}); refusing it")
    if not member.isfile():
        raise DataError(f"{path}: {member.name} is not a regular file in the archive; refusing it")
    if member.size > MAX_MEMBER_BYTES:
        raise DataError(f"{path}: {member.name} claims {member.size:,} bytes, more than any file classicnets reads")
