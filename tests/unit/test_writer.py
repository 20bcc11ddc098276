"""The background checkpoint writer: writes land in submission order, one at a time; a failure is raised on the
training thread; a snapshot taken at submit is what lands, whatever the live tensors do afterwards."""

from __future__ import annotations

import errno
import os
import threading

import pytest
import torch

from classicnets.errors import WriteError
from classicnets.fileio import atomic_write_text
from classicnets.training.writer import BackgroundWriter, cpu_copy
from classicnets.weights.checkpoint import load_checkpoint, save_checkpoint


def test_writes_land_in_submission_order_one_at_a_time(tmp_path):
    writer = BackgroundWriter()
    log: list[str] = []
    running = threading.Semaphore(1)  # two jobs at once would find it taken

    def job(name: str):
        def run() -> None:
            assert running.acquire(blocking=False), "two writes ran at once"
            try:
                log.append(f"start {name}")
                atomic_write_text(tmp_path / "last.txt", name)
                log.append(f"end {name}")
            finally:
                running.release()

        return run

    for name in ("a", "b", "c"):
        writer.submit(job(name))
    writer.wait()
    assert log == ["start a", "end a", "start b", "end b", "start c", "end c"]
    assert (tmp_path / "last.txt").read_text() == "c" and not writer.pending


def test_a_failed_write_is_raised_on_the_training_thread_once(tmp_path):
    writer = BackgroundWriter()
    target = tmp_path / "last.pt"

    def full_disk() -> None:
        raise WriteError(f"cannot write {target}: {os.strerror(errno.ENOSPC)}")

    writer.submit(full_disk)
    ran: list[int] = []
    with pytest.raises(WriteError, match=f"cannot write {target}: No space left on device"):
        writer.submit(lambda: ran.append(1))  # the next submit raises it, and does not start its job
    assert ran == []
    writer.wait()  # raised once
    writer.submit(full_disk)
    with pytest.raises(WriteError):
        writer.wait()
    writer.submit(full_disk)
    writer.close()  # logs it instead (a finally block): nothing raised
    writer.raise_if_failed()


def test_the_snapshot_is_what_lands_whatever_the_live_weights_do(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpoint = {"format": "classicnets-checkpoint", "version": 1, "model": {"name": "x", "kwargs": {}},
                  "state_dict": model.state_dict(), "classes": ["a", "b"], "preprocessing": {},
                  "metrics": [{"epoch": 1}]}  # fmt: skip
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    gate = threading.Event()
    writer = BackgroundWriter()
    snapshot = cpu_copy(checkpoint)

    def write() -> None:
        gate.wait(5)  # the training thread changes everything before the write starts
        save_checkpoint(tmp_path / "last.pt", snapshot)

    writer.submit(write)
    with torch.no_grad():
        model.weight.add_(1.0)
        model.bias.zero_()
    checkpoint["metrics"][0]["epoch"] = 99
    checkpoint["classes"].append("c")
    gate.set()
    writer.wait()
    saved = load_checkpoint(tmp_path / "last.pt")
    for key, value in expected.items():
        assert torch.equal(saved["state_dict"][key], value), key
    assert not torch.equal(saved["state_dict"]["weight"], model.weight.detach())
    assert saved["metrics"] == [{"epoch": 1}] and saved["classes"] == ["a", "b"]


def test_cpu_copy_keeps_dtype_shape_and_layout_and_shares_nothing_mutable():
    t = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    value = {"t": t, "list": [t, 1, "s"], "tuple": (t,), "none": None}
    copy = cpu_copy(value)
    assert copy is not value and copy["list"] is not value["list"]
    assert copy["t"].data_ptr() != t.data_ptr() and torch.equal(copy["t"], t)
    assert copy["t"].is_contiguous(memory_format=torch.channels_last) and copy["t"].dtype == t.dtype
    assert copy["list"][1:] == [1, "s"] and isinstance(copy["tuple"], tuple) and copy["none"] is None


def test_cpu_copy_refills_an_earlier_copy_where_it_matches_and_allocates_where_it_does_not():
    live = {"w": torch.randn(3, 4), "m": [torch.ones(2), torch.zeros(5)], "step": 7}
    first = cpu_copy(live)
    live["w"].add_(1.0)
    live["m"][1] = torch.zeros(6)  # a buffer whose shape changed
    second = cpu_copy(live, into=first)
    assert second["w"].data_ptr() == first["w"].data_ptr()  # refilled in place
    assert second["m"][0].data_ptr() == first["m"][0].data_ptr()
    assert second["m"][1].shape == (6,) and second["m"][1].data_ptr() != first["m"][1].data_ptr()
    torch.testing.assert_close(second["w"], live["w"], rtol=0, atol=0)
    assert second["step"] == 7
    live["w"].add_(1.0)  # the refilled copy is still a copy
    assert not torch.equal(second["w"], live["w"])
