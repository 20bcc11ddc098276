"""Known weights on disk: the cache folder, a checked download that resumes when cut, one download per machine.

    cache_dir()             CLASSICNETS_HOME, else $XDG_CACHE_HOME/classicnets, else ~/.cache/classicnets
    fetch_weights(known)    the file in <cache>/weights/, downloaded and checked first when it is not there yet
    cache_state(known)      "yes", "unchecked", "partial 40%" or "no", for `classicnets weights`

The download keeps the shape of torch.hub.download_url_to_file (torch 2.13, torch/hub.py): 128 KiB reads, a tqdm bar
in bytes, the file's SHA-256 compared with the published hex digits (torch.hub's check: the digest must begin with
them), a temporary file renamed into place only once checked. It cannot be called as it is: it writes to a random
`<file>.<uuid>.partial` name and deletes it on any error, so nothing is left to resume, and it sends no Range
header. What is added here:

- a fixed `<file>.partial` per file and an HTTP Range request for the bytes still missing (a server that ignores
  the range answers 200 and the download restarts); a connection that breaks is resumed up to ATTEMPTS times;
- a lock per file (`<file>.lock`, filelock), so processes of one machine (torchrun ranks) download it once: the
  others wait, then find it checked;
- a record of the check (`<file>.checked`: size, modification time, SHA-256), so a cached file is hashed once, and
  a file copied into the cache by hand is used once its hash matches;
- one-line errors: no network (with the URL and the `classicnets import` command for a file fetched elsewhere),
  HTTP errors, a wrong hash (the download is removed), a full disk, a file in the cache that is not the published one.

Nothing half-written is ever taken for weights: only a checked file gets the final name. A broken connection or
Ctrl-C leaves `<file>.partial` for the next try to resume; every other failure leaves nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from classicnets import __version__
from classicnets.errors import WeightsError, first_line
from classicnets.fileio import atomic_write_text
from classicnets.weights.known import KnownWeights

log = logging.getLogger(__name__)

CHUNK = 128 * 1024  # bytes per read, as torch.hub's READ_DATA_CHUNK
TIMEOUT_S = 60  # a connection that sends nothing for a minute counts as broken (and is resumed)
ATTEMPTS = 3  # tries per download when the connection breaks, each resuming where the last stopped
RETRY_WAIT_S = 2.0  # seconds before the second try, twice that before the third
MIB = 1024 * 1024
USER_AGENT = f"classicnets/{__version__}"


class _ConnectionBroke(Exception):
    """The transfer stopped before the last byte (connection reset, timeout, server closed early)."""


def cache_dir() -> Path:
    """CLASSICNETS_HOME, else $XDG_CACHE_HOME/classicnets, else ~/.cache/classicnets (the XDG base-directory rule)."""
    home = os.environ.get("CLASSICNETS_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "classicnets"


def weights_dir() -> Path:
    return cache_dir() / "weights"


def cached_path(known: KnownWeights) -> Path:
    return weights_dir() / known.file_name


def expected_bytes(known: KnownWeights) -> int:
    return known.size_bytes if known.size_bytes is not None else round(known.size_mib * MIB)


def cache_state(known: KnownWeights) -> str:
    """"yes" (checked), "unchecked" (there, hashed on first use), "partial N%" (an interrupted download) or "no"."""
    path = cached_path(known)
    if path.is_file():
        return "yes" if _read_record(path) is not None else "unchecked"
    partial = _partial(path)
    if partial.is_file():
        return f"partial {min(99, 100 * partial.stat().st_size // max(1, expected_bytes(known)))}%"
    return "no"


def fetch_weights(known: KnownWeights, *, progress: bool = True) -> Path:
    """The checked file of `known` in the cache, downloaded first when it is not there (see the module docstring)."""
    path = cached_path(known)
    if path.is_file():
        return _checked_cache_file(known, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = first_line(e)
        raise WeightsError(f"cannot create the weights cache {path.parent} ({reason}); set CLASSICNETS_HOME") from None
    with _download_lock(path, known):
        if path.is_file():  # another process downloaded it while this one waited
            return _checked_cache_file(known, path)
        _download_with_retries(known, _partial(path), progress=progress)
        digest = _check_download(known, _partial(path))
        os.replace(_partial(path), path)
        _write_record(path, digest)
    log.info("%s: downloaded and checked, %s", known.name, path)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def how_checked(known: KnownWeights) -> str:
    if known.sha256 is not None:
        return f"SHA-256 begins with the published {known.sha256}"
    return f"size {known.size_bytes:,} bytes as published (no hash is published)"


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".checked")


def _read_record(path: Path) -> str | None:
    """The SHA-256 recorded when `path` was checked, if the file has not changed since (same size and mtime)."""
    try:
        record = json.loads(_record_path(path).read_text(encoding="utf-8"))
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or [record.get("size"), record.get("mtime_ns")] != [stat.st_size, stat.st_mtime_ns]:
        return None
    return str(record.get("sha256"))


def _write_record(path: Path, digest: str) -> None:
    stat = path.stat()
    record = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    atomic_write_text(_record_path(path), json.dumps(record) + "\n")


def _mismatch(known: KnownWeights, path: Path, digest: str) -> str | None:
    """Why the file at `path` (with this SHA-256) is not the published one, or None when it is."""
    size = path.stat().st_size
    if known.size_bytes is not None and size != known.size_bytes:
        return f"it has {size:,} bytes, the published file {known.size_bytes:,}"
    if known.sha256 is not None and not digest.startswith(known.sha256):
        return f"its SHA-256 {digest[:16]}... does not begin with the published {known.sha256}"
    return None


def _checked_cache_file(known: KnownWeights, path: Path) -> Path:
    """A file already in the cache (downloaded earlier, or copied by hand): hashed once, then trusted by its record."""
    if _read_record(path) is not None:
        return path
    log.info("%s: checking %s (first use)", known.name, path)
    digest = sha256_of(path)
    problem = _mismatch(known, path, digest)
    if problem is not None:
        raise WeightsError(
            f"{path} is in the cache but is not {known.name}: {problem}; delete it and run "
            f"`classicnets weights get {known.name}`"
        )
    _write_record(path, digest)
    return path


def _check_download(known: KnownWeights, partial: Path) -> str:
    digest = sha256_of(partial)
    problem = _mismatch(known, partial, digest)
    if problem is not None:
        partial.unlink()
        raise WeightsError(f"download of {known.name} from {known.url} is damaged, {problem}; removed it, try again")
    return digest


@contextlib.contextmanager
def _download_lock(path: Path, known: KnownWeights) -> Iterator[None]:
    """One download of a file per machine: processes that find it being downloaded wait for it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path.with_name(path.name + ".lock")))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        log.info("%s: another process is downloading it; waiting for it to finish", known.name)
        lock.acquire()
    except OSError as e:  # a read-only cache folder
        raise WeightsError(f"cannot lock {lock.lock_file} ({first_line(e)}); set CLASSICNETS_HOME") from None
    try:
        yield
    finally:
        lock.release()


def _download_with_retries(known: KnownWeights, partial: Path, *, progress: bool) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _download_once(known, partial, progress=progress)
            return
        except _ConnectionBroke as e:
            have = partial.stat().st_size / MIB if partial.exists() else 0.0
            if attempt == ATTEMPTS:
                raise WeightsError(
                    f"cannot download {known.name}: the connection broke {ATTEMPTS} times (the last at "
                    f"{have:.1f} of {known.size_mib:.1f} MiB: {e}); run the command again to resume from {partial}"
                ) from None
            log.warning("%s: the connection broke at %.1f MiB (%s); resuming (try %d of %d)",
                        known.name, have, e, attempt + 1, ATTEMPTS)  # fmt: skip
            time.sleep(RETRY_WAIT_S * attempt)


def _download_once(known: KnownWeights, partial: Path, *, progress: bool) -> None:
    """Fetch the bytes `partial` still lacks (all of them when it is absent or the server ignores the range)."""
    have = partial.stat().st_size if partial.exists() else 0
    with _open_url(known, partial, have) as response:
        resumed = have > 0 and response.status == 206 and _range_start(response) == have
        if have and not resumed:
            log.info("%s: the server sent the whole file instead of the missing part; starting again", known.name)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        _check_free_space(known, partial, (total or expected_bytes(known)) - have)
        _stream(known, response, partial, have=have, total=total, progress=progress)
    size = partial.stat().st_size
    if total is not None and size < total:
        raise _ConnectionBroke(f"the server stopped sending at byte {size:,} of {total:,}")


@contextlib.contextmanager
def _open_url(known: KnownWeights, partial: Path, have: int) -> Iterator[http.client.HTTPResponse]:
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
    request = urllib.request.Request(known.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range is past the file's end: the partial file is stale
            partial.unlink()
            with _open_url(known, partial, 0) as response:
                yield response
            return
        partial.unlink(missing_ok=True)
        raise WeightsError(_http_message(known, e.code, e.reason)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise WeightsError(offline_message(known, first_line(reason if isinstance(reason, Exception) else e))) from None
    with response:
        yield response


def offline_message(known: KnownWeights, reason: str) -> str:
    host = urlsplit(known.url).hostname
    command = f"classicnets import {known.file_name} --from {known.fmt} --model {known.model} --out {known.model}.pt"
    return (
        f"cannot download {known.name}: no connection to {host} ({reason}); fetch {known.url} elsewhere and run "
        f"`{command}` (then --weights {known.model}.pt), or copy {known.file_name} into {weights_dir()}"
    )


def _http_message(known: KnownWeights, code: int, reason: object) -> str:
    advice = (
        "the server failed; try again later"
        if code >= 500
        else f"the file may have moved; fetch it elsewhere and run `classicnets import {known.file_name} "
        f"--from {known.fmt} --model {known.model} --out {known.model}.pt`"
    )
    return f"cannot download {known.name}: {known.url} answered HTTP {code} {reason}; {advice}"


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """The first byte of a 206 answer ("Content-Range: bytes 1000-1999/2000" -> 1000)."""
    value = response.headers.get("Content-Range", "")
    unit, _, span = value.partition(" ")
    start = span.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _check_free_space(known: KnownWeights, partial: Path, needed: int) -> None:
    free = shutil.disk_usage(partial.parent).free
    if needed > free:
        partial.unlink(missing_ok=True)
        raise WeightsError(_full_disk_message(known, partial.parent, needed))


def _full_disk_message(known: KnownWeights, folder: Path, needed: int) -> str:
    free = shutil.disk_usage(folder).free
    return (
        f"cannot download {known.name}: it needs {needed / MIB:.1f} MiB and {folder} has {free / MIB:.1f} MiB free; "
        "free some space or set CLASSICNETS_HOME to a folder on a larger disk"
    )


def _stream(
    known: KnownWeights, response: http.client.HTTPResponse, partial: Path, *, have: int, total: int | None,
    progress: bool,
) -> None:  # fmt: skip
    from tqdm import tqdm

    try:
        with partial.open("ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
            desc=known.file_name,
        ) as bar:  # fmt: skip
            while block := _read(response):
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # writing (reading raises _ConnectionBroke): a full disk, a read-only folder
        partial.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WeightsError(_full_disk_message(known, partial.parent, expected_bytes(known))) from None
        raise WeightsError(f"cannot write {partial} ({first_line(e)})") from None


def _read(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read(CHUNK)
    except (http.client.HTTPException, OSError) as e:  # IncompleteRead, connection reset, timeout
        raise _ConnectionBroke(first_line(e)) from None
