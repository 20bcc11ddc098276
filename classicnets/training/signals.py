"""Graceful stop: Ctrl-C (SIGINT) or SIGTERM asks training to finish its current step, save, and exit.

The handler only records the request; the training loop checks it after every step. A second signal of the same
kind stops at once (StopNow, a KeyboardInterrupt), for a user who does not want to wait or a step that cannot end
(a read blocked on a network file system). A SIGTERM after a SIGINT is still a request: torchrun sends one to its
workers after a Ctrl-C reached them all. Exit codes follow the shell's 128 + signal number convention: 130 for
SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)


class StopNow(KeyboardInterrupt):
    """The second SIGINT or SIGTERM: stop at once, without saving; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}")
        self.exit_code = 128 + int(signum)


class StopRequest:
    """Set by a signal handler (or by code, e.g. a callback) to ask the loop to stop after the current step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        if self.signum is None:
            self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to `stop` while the block runs (main thread only), then restore the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread; the caller's own stop still works
        return

    def handler(signum: int, frame: object) -> None:
        if stop.signum == signum:
            raise StopNow(signum)  # the same signal again: stop now (a blocked system call is interrupted too)
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second SIGTERM"
        stop.request(signum)
        # Another handler can raise in the middle of this write: torch's SIGCHLD handler, when the same signal
        # killed a DataLoader worker. Logging would catch that and print "--- Logging error ---" with a traceback;
        # with raiseExceptions off it stays quiet, and the loader reports the dead worker at the next batch, which
        # the loop, the stop being requested, turns into the usual save and exit.
        loud, logging.raiseExceptions = logging.raiseExceptions, False
        try:
            log.warning(
                "%s received: finishing the current step, then saving (%s stops at once)",
                signal.Signals(signum).name,
                again,
            )
        finally:
            logging.raiseExceptions = loud

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
