"""What a run folder looks like after a fault at any point of `train`, and that it always continues or says exactly
what to do: a full disk while an epoch's files are written, a failure before the first epoch ends, a damaged
last.pt, the temporary file of a killed write (docs/reliability.md)."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import zipfile

import pytest
import torch

from classicnets.cli import main
from classicnets.errors import UsageError, WeightsError, WriteError
from classicnets.inference.evaluation import evaluate
from classicnets.training.loop import TrainingDiverged, fit
from classicnets.training.trainer import Trainer
from classicnets.weights.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digit_kit):
    """200 real digits (20 per class) as IDX files."""
    return digit_kit.idx(tmp_path_factory.mktemp("digits"), per_class=20)


@pytest.fixture(scope="module")
def whole(digits, tmp_path_factory, quick_fit):
    """2 epochs without any fault."""
    return quick_fit(digits, tmp_path_factory.mktemp("whole") / "run").run_dir


def fill_disk_when_writing(monkeypatch, name: str, *, call: int) -> None:
    """The disk is full when `name` is written for the `call`-th time: its temporary file's fsync fails with ENOSPC
    (where a full disk shows when the data is written back; the file's name is read from /proc)."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            calls.append(fd)
            if len(calls) == call:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_while_writing_best_pt_leaves_a_run_that_resumes(digits, whole, tmp_path, monkeypatch, capsys,
                                                                     assert_same_run):  # fmt: skip
    """The issue's probe: last.pt used to be written first, so --resume said the run "already finished" and
    best.pt did not exist."""
    run = tmp_path / "run"
    fill_disk_when_writing(monkeypatch, "best.pt", call=1)  # epoch 1
    argv = ["train", "--model", "lenet5", "--data", digits, "--config", "lenet5_digits", "--epochs", "2",
            "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--threads", "1", "--quiet"]  # fmt: skip
    assert main([str(a) for a in [*argv, "--out", run]]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: cannot write {run / 'best.pt'}: No space left on device; then continue with: "
        f"classicnets train --resume {run}\n"
    )
    assert sorted(p.name for p in run.iterdir()) == ["classes.json", "command.txt", "config.yaml", "split.json"]
    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(whole, run)
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == load_checkpoint(whole / "best.pt")["epoch"]
    assert evaluate(run / "best.pt", digits, device="cpu").images == 200  # `eval --weights RUN/best.pt` works


@pytest.mark.parametrize("name", ["metrics.csv", "loss.png", "last.pt"])
def test_a_full_disk_at_any_write_of_epoch_2_resumes_to_the_same_weights(digits, whole, tmp_path, monkeypatch, name,
                                                                         quick_fit, assert_same_run):  # fmt: skip
    run = tmp_path / "run"
    fill_disk_when_writing(monkeypatch, name, call=2)
    with pytest.raises(WriteError, match=f"cannot write {run / name}: No space left on device; then continue with"):
        quick_fit(digits, run)
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the epoch before: last.pt is written last
    assert not list(run.glob(".*.tmp"))
    (run / ".last.pt.k2j_9x0a.tmp").write_bytes(b"half")  # what a kill while writing last.pt would leave
    (run / ".my-notes.tmp").write_text("the user's")
    result = fit(resume=run)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert_same_run(whole, run)
    assert sorted(p.name for p in run.glob(".*")) == [".my-notes.tmp"]  # the orphan removed, nothing else


def test_a_run_that_failed_in_epoch_1_is_no_dead_end(digits, tmp_path, monkeypatch, quick_fit):
    run = tmp_path / "run"
    original = Trainer.forward_loss

    def weights_blow_up_at_step_2(self, x, labels):
        logits, loss = original(self, x, labels)
        if self.state.epoch == 0 and self.state.step_in_epoch == 1:
            with torch.no_grad():
                next(self.raw_model.parameters()).fill_(float("inf"))  # as after an update with a huge lr
            loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(Trainer, "forward_loss", weights_blow_up_at_step_2)
    with pytest.raises(TrainingDiverged) as e:
        quick_fit(digits, run)
    assert str(e.value) == (
        "the loss became nan at epoch 1, step 2; stopped. the weights were no longer finite and no epoch had finished, "
        f"so there is no last.pt. Start again with a lower --lr: classicnets train --resume {run} --lr LR."
    )
    assert sorted(p.name for p in run.iterdir()) == ["classes.json", "command.txt", "config.yaml", "split.json"]
    monkeypatch.undo()
    shutil.copytree(run, tmp_path / "again")
    again = quick_fit(digits, tmp_path / "again")  # --out to it: nothing there to lose
    assert [row["epoch"] for row in again.history] == [1, 2]
    result = fit(resume=run, lr=0.001)  # what the message says: it starts again, with the new lr
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert load_checkpoint(run / "last.pt")["config"]["optim"]["lr"] == 0.001
    with pytest.raises(UsageError, match="already holds a run"):
        quick_fit(digits, run)  # once an epoch is committed, never overwritten


def test_a_damaged_last_pt_says_how_to_start_again(digits, whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    last = run / "last.pt"
    with zipfile.ZipFile(last) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(last.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 7] ^= 0x10  # one flipped bit in conv1's weights
    last.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as e:
        fit(resume=run, epochs=3)
    advice = f"to train again from the start: classicnets train --config {run / 'config.yaml'} --out NEW_RUN"
    assert str(e.value).startswith(f"{last}: damaged: ") and str(e.value).endswith(advice)
    redo = fit(config=str(run / "config.yaml"), out=str(tmp_path / "new"), epochs=1)  # the advice works
    assert redo.run_dir == tmp_path / "new" and len(redo.history) == 1


def test_a_run_whose_last_pt_was_removed_is_not_started_again_over_its_results(whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    (run / "last.pt").unlink()  # 2 epochs were committed: not a run that finished no epoch
    best = (run / "best.pt").read_bytes()
    with pytest.raises(UsageError) as e:
        fit(resume=run)
    assert str(e.value) == (
        f"{run}: no last.pt, but metrics.csv records 2 epochs (was last.pt removed?); --resume needs it. Train on "
        f"from the best weights in a new run: --weights {run / 'best.pt'} --out NEW_RUN"
    )
    assert (run / "best.pt").read_bytes() == best
