"""`classicnets train` from the command line: bad input (one line, exit code, nothing written), fine-tuning from a
checkpoint, the progress bar, and Ctrl-C / SIGTERM on a real process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from classicnets.cli import main
from classicnets.models.registry import create_model
from classicnets.weights.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint

FAST = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, digit_kit):
    return digit_kit.folders(tmp_path_factory.mktemp("folders"), per_class=10)


@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory):
    """A 10-class LeNet-5 checkpoint, as a previous run would leave."""
    path = tmp_path_factory.mktemp("ckpt") / "digits10.pt"
    save_checkpoint(path, build_checkpoint(create_model("lenet5"), classes=[str(i) for i in range(10)]))
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def bad_inputs(tmp_path, lenet_checkpoint, folders, digit_kit):
    empty = tmp_path / "empty"
    empty.mkdir()
    one = digit_kit.folders(tmp_path / "one", per_class=3, classes=("3",))
    hole = digit_kit.folders(tmp_path / "hole", per_class=3, classes=("3", "7"))
    (hole / "cats").mkdir()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(lenet_checkpoint.read_bytes()[:3000])
    model = ["--model", "lenet5"]
    return [
        ([*model, "--data", tmp_path / "missing"], 1, "missing: no such file or folder"),
        ([*model, "--data", empty], 1, "empty"),
        ([*model, "--data", one / "3"], 1, ""),  # a folder of images without class folders
        ([*model, "--data", one], 1, "found only one class (3); a classifier needs at least two class folders"),
        ([*model, "--data", hole], 1, "empty class folder"),
        (["--weights", corrupt, "--data", folders], 1, "corrupt.pt: unreadable or truncated"),
        (["--resume", corrupt], 1, "corrupt.pt: unreadable or truncated"),
        ([*model, "--data", folders, "--device", "cuda"], 2, "--device cuda: no CUDA GPU is available"),
        (["--data", folders], 2, "no model: give --model NAME"),
        ([*model, "--data", folders, "--num-classes", "3"], 2, "--num-classes 3 but"),
        ([*model, "--data", folders, "--freeze", "features"], 2, "need starting weights (--weights W)"),
    ]


def test_bad_input_is_one_line_with_its_exit_code_and_writes_nothing(
    capsys, tmp_path, lenet_checkpoint, folders, digit_kit
):
    for argv, code, message in bad_inputs(tmp_path, lenet_checkpoint, folders, digit_kit):
        out_dir = tmp_path / "run"
        got, out, err = run_cli(capsys, "train", *FAST, "--out", out_dir, *argv)  # argv last: its --device wins
        assert (got, out) == (code, ""), (argv, err)
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err
        assert not out_dir.exists(), argv  # checked before the run folder is made


def test_allow_empty_keeps_an_empty_class_folder_as_a_class_in_train_and_eval(capsys, tmp_path, digit_kit):
    hole = digit_kit.folders(tmp_path / "hole", per_class=6, classes=("3", "7"))
    (hole / "cats").mkdir()
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--data", hole, "--out", tmp_path / "refused", *FAST)
    assert code == 1 and f"empty class folder {hole / 'cats'}: add images, remove it, or pass --allow-empty" in err
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--data", hole, "--out", out, "--allow-empty", *FAST)
    assert code == 0, err
    last = load_checkpoint(out / "last.pt")
    assert last["classes"] == ["3", "7", "cats"] and last["config"]["data"]["allow_empty"] is True
    assert run_cli(capsys, "eval", "--weights", out / "best.pt", "--data", hole, "--quiet")[0] == 1  # refused
    code, stdout, err = run_cli(capsys, "eval", "--weights", out / "best.pt", "--data", hole, "--allow-empty",
                                "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["images"] == 12


def test_finetune_replaces_the_head_with_a_message_and_trains(capsys, caplog, tmp_path, lenet_checkpoint, folders):
    out = tmp_path / "ft"
    with caplog.at_level(logging.INFO):
        code, stdout, _ = run_cli(
            capsys, "train", "--weights", lenet_checkpoint, "--num-classes", "2", "--data", folders, "--out", out,
            "--freeze", "features", "--head-lr-mult", "10", "--lr", "0.01", "--optimizer", "sgd", *FAST,
        )  # fmt: skip
    assert code == 0 and f"run folder {out}" in stdout
    assert "replaced the 10-class head with a new 2-class head (classifier.output)" in caplog.text
    start = load_checkpoint(lenet_checkpoint)["state_dict"]
    last = load_checkpoint(out / "last.pt")
    assert last["classes"] == ["3", "7"] and last["model"]["kwargs"]["num_classes"] == 2
    weights = last["state_dict"]
    assert all(torch.equal(weights[k], start[k]) for k in start if k.startswith("features."))  # frozen
    assert not torch.equal(weights["classifier.f6.weight"], start["classifier.f6.weight"])  # trained
    assert weights["classifier.output.weight"].shape == (2, 84)
    groups = last["optimizer"]["param_groups"]
    assert [(g["name"], g["initial_lr"]) for g in groups] == [("pretrained", 0.01), ("new", pytest.approx(0.1))]
    assert last["new_layers"] == ["classifier.output"]


def test_progress_bar_shows_loss_accuracy_speed_and_quiet_hides_it(capsys, tmp_path, folders):
    argv = ["train", "--model", "lenet5", "--data", folders, "--epochs", "1", "--device", "cpu", "--threads", "1"]
    code, out, err = run_cli(capsys, *argv, "--out", tmp_path / "loud")
    assert code == 0
    assert "epoch 1/1:" in err and "loss " in err and "acc " in err and "img/s" in err
    code, out, err = run_cli(capsys, *argv, "--out", tmp_path / "quiet", "--quiet")
    assert code == 0 and "epoch 1/1:" not in err and "img/s" not in err


def start_training(tmp_path, data, out, *extra):
    argv = [sys.executable, "-m", "classicnets", "train", "--model", "lenet5", "--data", str(data), "--out", str(out),
            "--epochs", "200", "--batch-size", "16", "--device", "cpu", "--threads", "1", "--quiet",
            *extra]  # fmt: skip
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True
    )


@pytest.mark.parametrize(
    ("signum", "code"),
    [
        (signal.SIGTERM, 143),  # `kill PID`: the main process only; digits held in memory
        # Ctrl-C in a terminal: the whole process group, DataLoader workers decoding PNG files included
        pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),
    ],
)
def test_a_signal_finishes_the_step_saves_and_exits(tmp_path, signum, code, digit_kit):
    out = tmp_path / "run"
    if signum == signal.SIGTERM:
        proc = start_training(tmp_path, digit_kit.idx(tmp_path / "digits", per_class=20), out)
    else:
        proc = start_training(tmp_path, digit_kit.folders(tmp_path / "pngs", per_class=40), out, "--workers", "2")
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # wait for the first epoch's checkpoint: training is under way
    (os.kill if signum == signal.SIGTERM else os.killpg)(proc.pid, signum)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert time.monotonic() - sent < 30
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in err and f"continue with: classicnets train --resume {out}" in err
    assert "Traceback" not in err
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] >= 1 and ckpt["partial"][3] == 16 * ckpt["step_in_epoch"]  # images of the unfinished epoch
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    done = subprocess.run(
        [sys.executable, "-m", "classicnets", "train", "--resume", str(out), "--epochs", str(ckpt["epoch"] + 1),
         "--quiet"], capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(load_checkpoint(out / "last.pt")["metrics"]) == ckpt["epoch"] + 1
