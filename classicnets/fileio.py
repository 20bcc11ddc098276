"""Files we write land atomically: written to a temporary name in the same folder, flushed, synced, renamed.

A crash, Ctrl-C or full disk leaves either the old file or the new one, never half of either. What a kill can leave
is the temporary file itself (`.NAME.XXXXXXXX.tmp`, the name `tempfile.mkstemp` gives it): the next write of NAME in
that folder removes such orphans, and only files of exactly that pattern for that NAME.

Reading: `open_regular` opens a file only if it is a regular file, without blocking, so a FIFO or a link to a device
named like an image (`x.png` -> /dev/zero) is refused instead of hanging the reader.

A write that fails (disk full, quota, read-only file system, permission denied) raises WriteError, one line naming
the file. Permissions: a new file gets what `open()` would give it (0666 less the umask); a replaced file keeps its
mode; `permissions` sets it explicitly (`prepare` copies keep the source file's mode).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import tempfile
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from classicnets.errors import WriteError

log = logging.getLogger(__name__)

# tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") names: 8 characters of tempfile._RandomNameSequence
# ("abcdefghijklmnopqrstuvwxyz0123456789_") between them.
_ORPHAN = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
_umask_lock = threading.Lock()


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    permissions: int | None = None,
    clean_orphans: bool = True,
) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on success it replaces `path`, on error it is removed.

    `clean_orphans`: first remove temporary files an earlier, killed write of `path` left (one folder listing; a
    caller writing thousands of files into one folder lists it once itself, with remove_orphans).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if clean_orphans:
            remove_orphans(path.parent, {path.name})
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path) if permissions is None else permissions)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # Errors of the writes to `f` (they carry no file name), of the sync, chmod and rename name `path`; an
        # error the caller's own code raised inside the block (reading another file) is the caller's to report.
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
        raise


class NotRegularFile(OSError):
    """A FIFO, device, socket or folder where a file was expected (errno EISDIR for a folder, else EINVAL)."""


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open `path` for reading in binary mode if it is a regular file (after following links); else NotRegularFile.

    Opened with O_NONBLOCK, so a FIFO without a writer cannot block the open, and checked with fstat on the open
    descriptor, so the file cannot be swapped between the check and the read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise NotRegularFile(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")
            raise NotRegularFile(errno.EINVAL, f"{kind}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _mode_for(path: Path) -> int:
    """The permission bits of the file about to replace `path`: its own mode if it exists, else 0666 - umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """This process's umask (from /proc on Linux, which reads it without changing it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    with _umask_lock:  # elsewhere the only way to read it is to set it, and set it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def remove_orphans(folder: str | os.PathLike, names: Collection[str]) -> list[Path]:
    """Remove the temporary files (`.NAME.XXXXXXXX.tmp`) a killed atomic write of one of `names` left in `folder`.

    Only regular files of exactly that pattern, only in `folder` itself; returns what was removed.
    """
    removed: list[Path] = []
    try:
        with os.scandir(os.fspath(folder)) as entries:
            orphans = [e for e in entries if _is_orphan(e, names)]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in orphans:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    if removed:
        log.info("removed %d temporary file(s) an interrupted write left: %s", len(removed), removed[0])
    return removed


def _is_orphan(entry: os.DirEntry, names: Collection[str]) -> bool:
    match = _ORPHAN.match(entry.name)
    return match is not None and match["name"] in names and entry.is_file(follow_symlinks=False)


def cache_dir() -> Path:
    """Where classicnets keeps what it can rebuild (decoded images): $CLASSICNETS_CACHE, else
    $CLASSICNETS_HOME/decoded, else $XDG_CACHE_HOME/classicnets/decoded, else ~/.cache/classicnets/decoded (the XDG
    base-directory rule, as for downloaded weights)."""
    explicit = os.environ.get("CLASSICNETS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("CLASSICNETS_HOME")
    if home:
        return Path(home).expanduser() / "decoded"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "classicnets" / "decoded"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
