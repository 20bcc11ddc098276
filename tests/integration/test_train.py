"""fit(): the run folder and checkpoints it writes, bit-identical resume on CPU, stops on signals and on NaN loss."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch
import yaml

from classicnets.config import resolve_config
from classicnets.errors import UsageError, WeightsError
from classicnets.rng import capture_rng, restore_rng
from classicnets.training.loop import TrainingDiverged, TrainingInterrupted, fit
from classicnets.training.run_folder import METRIC_COLUMNS
from classicnets.training.signals import StopRequest
from classicnets.training.trainer import Trainer
from classicnets.weights.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digit_kit):
    """200 real digits (20 per class) as IDX files: the in-memory loader."""
    return digit_kit.idx(tmp_path_factory.mktemp("digits"), per_class=20)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, digit_kit):
    """48 RGB PNG digits in class folders (3/, 7/): decoded by DataLoader workers, random crops, flips, PCA noise."""
    return digit_kit.folders(tmp_path_factory.mktemp("photos"), per_class=24, rgb=True)


@pytest.fixture(scope="module")
def finished_run(digits, tmp_path_factory, quick_fit):
    return quick_fit(digits, tmp_path_factory.mktemp("run") / "run")


def test_run_folder_holds_everything_the_issue_lists(finished_run, digits, is_png):
    run = finished_run.run_dir
    assert sorted(p.name for p in run.iterdir()) == [
        "accuracy.png", "best.pt", "classes.json", "command.txt", "config.yaml", "confusion.json",
        "confusion_matrix.png", "last.pt", "loss.png", "metrics.csv", "report.html", "split.json",
    ]  # fmt: skip
    assert all(is_png(run / name) for name in ("accuracy.png", "loss.png", "confusion_matrix.png"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert tuple(rows[0]) == METRIC_COLUMNS == (
        "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "seconds", "images_per_s",
        "data_s", "compute_s", "val_s", "save_s",
    )  # fmt: skip
    for r in rows:  # where each epoch's time went: parts of it, none negative
        data_s, compute_s, val_s, save_s = (float(r[k]) for k in ("data_s", "compute_s", "val_s", "save_s"))
        assert min(data_s, compute_s, val_s, save_s) >= 0 and compute_s > 0
        assert data_s + compute_s + val_s <= float(r["seconds"])
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("train_acc", "val_top1", "val_top5"))
    assert (run / "classes.json").read_text().split() == ["["] + [f'"{i}",' for i in range(9)] + ['"9"', "]"]
    split = yaml.safe_load((run / "split.json").read_text())
    assert split["method"] == "stratified" and split["seed"] == 0 and split["train_count"] == 180
    assert len(split["val_indices"]) == 20  # 10 % of every class: 2 of each 20
    config = resolve_config(yaml.safe_load((run / "config.yaml").read_text()))  # a valid recipe again
    assert (config.model.name, config.model.num_classes, config.model.in_chans) == ("lenet5", 10, 1)
    assert (config.train.device, config.train.precision, config.train.out) == ("cpu", "fp32", str(run))
    assert config.data.path == str(digits.resolve())


def test_last_pt_holds_the_training_state_and_loads_weights_only(finished_run):
    last = load_checkpoint(finished_run.last_checkpoint)
    assert {"model", "state_dict", "classes", "preprocessing", "optimizer", "scheduler", "scaler", "rng", "config",
            "epoch", "step_in_epoch", "global_step", "metrics", "best"} <= set(last)  # fmt: skip
    assert (last["epoch"], last["step_in_epoch"], last["global_step"]) == (2, 0, 2 * (180 // 32))
    assert last["model"] == {"name": "lenet5", "kwargs": {"num_classes": 10, "activation": "relu", "pool": "max"}}
    assert last["preprocessing"]["input_size"] == (1, 32, 32) and last["classes"] == [str(i) for i in range(10)]
    rng = last["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["python"][1], list)
    assert isinstance(rng["numpy"][1], list) and len(rng["numpy"][1]) == 624
    assert len(last["optimizer"]["state"]) == 10  # Adam moments for every weight and bias
    assert [row["epoch"] for row in last["metrics"]] == [1, 2]
    raw = torch.load(finished_run.last_checkpoint, weights_only=True)  # the plain safe loader reads it too
    assert raw["format"] == "classicnets-checkpoint"
    best = load_checkpoint(finished_run.best_checkpoint)
    assert "optimizer" not in best and best["epoch"] == finished_run.best["epoch"]


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (expected[0].tolist(), *expected[1:])


RANDOM_RUN = {
    "epochs": 3, "batch_size": 8, "workers": 2,
    "settings": ["data.augment=paper", "data.pca_std=0.1", "model.in_chans=3"],
}  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(photos, tmp_path_factory, quick_fit):
    """3 epochs with random crops, flips and PCA noise, batches decoded by 2 worker processes."""
    return quick_fit(photos, tmp_path_factory.mktemp("whole") / "run", **RANDOM_RUN).run_dir


def test_resume_after_two_epochs_is_bit_identical(photos, uninterrupted, tmp_path, quick_fit, assert_same_run):
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted) as e:
        quick_fit(photos, tmp_path / "run", stop=stop, on_epoch_end=lambda row: row["epoch"] == 2 and stop.request(),
              **RANDOM_RUN)  # fmt: skip
    assert e.value.exit_code == 143 and "after epoch 2" in str(e.value)
    assert f"--resume {tmp_path / 'run'}" in str(e.value)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2
    result = fit(resume=tmp_path / "run")
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert_same_run(uninterrupted, tmp_path / "run")
    assert len((tmp_path / "run" / "command.txt").read_text().splitlines()) == 2  # the start and the resume


# 1e-9 minutes: the time since the previous last.pt is always longer, so every epoch writes one (the clock's branch)
@pytest.mark.parametrize("minutes, epochs_with_last", [(10, [1, 3]), (0, [1, 2, 3]), (1e-9, [1, 2, 3])])
def test_last_pt_is_written_after_the_first_and_final_epoch_and_every_checkpoint_minutes(
    digits, tmp_path, monkeypatch, quick_fit, minutes, epochs_with_last
):
    import classicnets.training.run_folder as run_folder

    written: list[tuple[str, int]] = []
    save = run_folder.save_checkpoint

    def recording_save(path, checkpoint):
        written.append((path.name, checkpoint["epoch"]))
        save(path, checkpoint)

    monkeypatch.setattr(run_folder, "save_checkpoint", recording_save)
    quick_fit(digits, tmp_path / "run", epochs=3, checkpoint_minutes=minutes)
    assert [epoch for name, epoch in written if name == "last.pt"] == epochs_with_last
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 3


def test_a_crash_between_checkpoints_resumes_from_the_last_one_to_the_same_weights(
    photos, uninterrupted, tmp_path, quick_fit, assert_same_run
):
    """A crash (not a stop: nothing is saved) after epoch 2, which wrote no last.pt (checkpoint_minutes): the
    folder's metrics.csv records 2 epochs, last.pt holds epoch 1, and --resume trains epochs 2 and 3 again."""
    run = tmp_path / "run"

    def crash(row):
        if row["epoch"] == 2:
            raise MemoryError("the machine ran out of memory")

    with pytest.raises(MemoryError):
        quick_fit(photos, run, on_epoch_end=crash, **RANDOM_RUN)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2  # the header and two epochs
    result = fit(resume=run)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert_same_run(uninterrupted, run)


def test_resume_from_the_middle_of_an_epoch_is_bit_identical(
    photos, uninterrupted, tmp_path, monkeypatch, quick_fit, assert_same_run
):
    stop = StopRequest()
    original = Trainer.train_steps

    def stop_at_step_2_of_epoch_2(self, epoch, *, start=0):
        for item in original(self, epoch, start=start):
            if epoch == 1 and self.state.step_in_epoch == 2:
                stop.request()  # as a signal arriving during step 2 would
            yield item

    monkeypatch.setattr(Trainer, "train_steps", stop_at_step_2_of_epoch_2)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM at epoch 2, step 2 of 5; saved"):
        quick_fit(photos, tmp_path / "run", stop=stop, **RANDOM_RUN)
    monkeypatch.setattr(Trainer, "train_steps", original)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 2)
    fit(resume=tmp_path / "run")
    assert_same_run(uninterrupted, tmp_path / "run")


def test_resume_refuses_other_settings_and_best_pt(finished_run, tmp_path):
    with pytest.raises(UsageError, match=r"cannot change optim.lr when resuming \(the run has 0.002, asked 0.5\)"):
        fit(resume=finished_run.run_dir, lr=0.5)
    with pytest.raises(WeightsError, match="best.pt: holds no training state"):
        fit(resume=finished_run.best_checkpoint)
    with pytest.raises(UsageError, match="already finished its 2 epochs; ask for more with --epochs N"):
        fit(resume=finished_run.run_dir)


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_finite_weights(digits, tmp_path, monkeypatch, quick_fit):
    original = Trainer.forward_loss

    def nan_at_epoch_2_step_3(self, x, labels):
        logits, loss = original(self, x, labels)
        if self.state.epoch == 1 and self.state.step_in_epoch == 2:
            loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(Trainer, "forward_loss", nan_at_epoch_2_step_3)
    with pytest.raises(TrainingDiverged) as e:
        quick_fit(digits, tmp_path / "run", epochs=3, batch_size=16)
    assert str(e.value).startswith("the loss became nan at epoch 2, step 3; stopped.")
    assert "last.pt holds the last finite weights (before that step)" in str(e.value)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 2)
    assert all(torch.isfinite(w).all() for w in ckpt["state_dict"].values())


def test_a_real_divergence_is_caught(digits, tmp_path, quick_fit):
    with pytest.raises(TrainingDiverged, match=r"the loss became (nan|inf) at epoch 1, step \d+; stopped"):
        quick_fit(digits, tmp_path / "run", optimizer="sgd", lr=1e12, epochs=1)


def test_out_folder_is_never_overwritten_and_default_names_are_numbered(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = fit("lenet5", digits, epochs=1, device="cpu")
    second = fit("lenet5", digits, epochs=1, device="cpu")
    assert (str(first.run_dir), str(second.run_dir)) == ("runs/lenet5", "runs/lenet5-2")
    with pytest.raises(UsageError, match="--out runs/lenet5 already holds a run; continue it with --resume"):
        fit("lenet5", digits, epochs=1, out="runs/lenet5")


def test_frozen_batchnorm_keeps_its_running_statistics():
    from torch import nn

    from classicnets.training.trainer import keep_frozen_norms_fixed

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).train()
    for p in net[1].parameters():
        p.requires_grad_(False)
    keep_frozen_norms_fixed(net)
    before = (net[1].running_mean.clone(), net[3].running_mean.clone())
    net(torch.randn(2, 3, 8, 8) + 5)
    assert (net[1].training, net[3].training) == (False, True)
    assert torch.equal(net[1].running_mean, before[0]) and not torch.equal(net[3].running_mean, before[1])


def test_print_config_of_a_run_being_resumed(finished_run, capsys):
    from classicnets.cli import main

    code = main(["train", "--resume", str(finished_run.run_dir), "--epochs", "4", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0 and printed["train"]["epochs"] == 4 and printed["train"]["out"] == str(finished_run.run_dir)
    assert printed["model"]["num_classes"] == 10  # the run's resolved config, not the defaults
