"""Checkpoints written while training goes on: `cpu_copy` takes a snapshot of the training state (every tensor
copied to the CPU, every container rebuilt), and `BackgroundWriter` runs the write of that snapshot in a thread.

Why: serialising, hashing (the checkpoint's SHA-256) and fsyncing AlexNet's last.pt (about 0.7-0.9 GB with the
optimiser state) took seconds per epoch with the training step waiting; a copy in memory takes a fraction of that.

The promises of synchronous writes are kept:
- order: at most one write is pending; `submit` first waits for the previous one, so writes land in the order
  they were submitted (an epoch's files, last.pt last, are one job: RunFolder.write_epoch);
- atomicity: the job itself writes through classicnets.fileio (temporary file, fsync, rename), as before;
- bounded memory: one snapshot at most besides the live state;
- errors: a failure in the thread (a full disk: WriteError naming the file) is raised on the training thread at
  the next `submit`, `wait` or `raise_if_failed`, so a run stops with the same one-line error as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def cpu_copy(value: Any, into: Any = None) -> Any:
    """A deep copy of a checkpoint-like value that the caller may go on changing: every tensor copied to the CPU
    (same dtype, shape and memory layout), dicts, lists and tuples rebuilt, other values (numbers, strings, None)
    shared, as they cannot change.

    `into`: an earlier copy of the same structure that nobody reads any more (the previous epoch's, once written):
    its tensors are overwritten in place where shape, dtype and strides match. Fresh memory costs a page fault per
    4 KiB page on first touch; refilling last epoch's buffers made the copy of AlexNet-2012's state with Adam
    (0.7 GB) several times faster than allocating it again (docs/benchmarks.md).
    """
    if isinstance(value, torch.Tensor):
        source = value.detach()
        if (
            isinstance(into, torch.Tensor)
            and into.device.type == "cpu"
            and into.dtype == source.dtype
            and into.shape == source.shape
            and into.stride() == source.stride()
        ):
            return into.copy_(source)
        return source.to("cpu", copy=True)
    if isinstance(value, dict):
        earlier: dict[Any, Any] = into if isinstance(into, dict) else {}
        return {k: cpu_copy(v, earlier.get(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        old = into if isinstance(into, list | tuple) and len(into) == len(value) else [None] * len(value)
        items = [cpu_copy(v, o) for v, o in zip(value, old, strict=True)]
        return items if isinstance(value, list) else tuple(items)
    return value


class BackgroundWriter:
    """Runs one write job at a time in a background thread; see the module docstring for the guarantees."""

    def __init__(self, name: str = "classicnets-writer") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Start `job` in the background once the previous job has finished (raising its error, if it failed).
        `job` must only touch data nobody changes meanwhile (a cpu_copy snapshot)."""
        self.wait()
        # A daemon thread: a second Ctrl-C (StopNow) may end the process during a write; the write is atomic, so
        # that leaves the previous file (and a temporary file the next write removes).
        thread = threading.Thread(target=self._run, args=(job,), name=self.name, daemon=True)
        self._thread = thread
        thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # handed to the training thread (wait / raise_if_failed)
            self._error = e

    @property
    def pending(self) -> bool:
        """True while a job is running."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until the pending job (if any) has finished; raise its error on this thread."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        self._raise_error()

    def raise_if_failed(self) -> None:
        """Raise the error of a job that has already failed, without waiting for a running one."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def close(self) -> None:
        """Wait for the pending job; its error is logged, not raised (for `finally` blocks, where another error
        may already be on its way)."""
        try:
            self.wait()
        except Exception as e:
            log.warning("a background write failed: %s", e)

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error
