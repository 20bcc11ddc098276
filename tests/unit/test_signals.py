"""Stop requests: the first SIGINT or SIGTERM asks training to stop after its step; the same signal again stops at
once, even a process blocked in a system call."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from classicnets.training.signals import StopNow, StopRequest, stop_on_signals


def test_a_second_sigterm_stops_at_once_with_exit_code_143():
    stop = StopRequest()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_code == 143
        with pytest.raises(StopNow) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs before this returns
    assert e.value.exit_code == 143 and str(e.value) == "stopped at once by a second SIGTERM"
    assert isinstance(e.value, KeyboardInterrupt)


def test_a_sigterm_after_a_ctrl_c_is_still_a_request():
    """torchrun sends its workers a SIGTERM after the terminal's Ctrl-C reached them all: they still save."""
    stop = StopRequest()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGINT"
        with pytest.raises(StopNow) as e:
            os.kill(os.getpid(), signal.SIGINT)
    assert e.value.exit_code == 130


def test_a_second_sigterm_ends_a_read_that_would_block_forever(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: none will
    timers = [threading.Timer(t, os.kill, (os.getpid(), signal.SIGTERM)) for t in (0.5, 1.5)]  # two, not merged
    release = threading.Timer(30, lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))  # if it hangs
    stop = StopRequest()
    try:
        with stop_on_signals(stop), pytest.raises(StopNow):
            for timer in [*timers, release]:
                timer.start()
            open(fifo, "rb")  # noqa: SIM115 - blocked here until the second SIGTERM
    finally:
        release.cancel()
    assert stop.requested  # the first one only asked
