"""`train --tensorboard`: every epoch's scalars and confusion matrix, read back from the event files; a resumed run
adds its epochs once; without the package, one line before any folder is made."""

from __future__ import annotations

import csv
import io
import sys

import pytest
import yaml
from PIL import Image

from classicnets.cli import main
from classicnets.errors import UsageError
from classicnets.training.loop import fit

SCALARS = {
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "accuracy/train_top1": "train_acc",
    "accuracy/validation_top1": "val_top1",
    "accuracy/validation_top5": "val_top5",
    "learning_rate": "lr",
    "speed/images_per_s": "images_per_s",
}


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_scalars_and_confusion_matrix_per_epoch_and_once_after_resume(digit_kit, tmp_path, quick_fit):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra: pip install 'classicnets[tensorboard]'")
    data = digit_kit.idx(tmp_path / "digits", per_class=10)
    run = quick_fit(data, tmp_path / "run", tensorboard=True, report=False).run_dir
    logged = events(run / "tensorboard")
    assert set(logged.Tags()["scalars"]) == set(SCALARS) and logged.Tags()["images"] == ["confusion_matrix"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for tag, column in SCALARS.items():
        values = [(e.step, e.value) for e in logged.Scalars(tag)]
        assert values == [(int(r["epoch"]), pytest.approx(float(r[column]), rel=1e-5)) for r in rows], tag
    pictures = logged.Images("confusion_matrix")
    assert [p.step for p in pictures] == [1, 2]
    decoded = Image.open(io.BytesIO(pictures[1].encoded_image_string))
    assert decoded.format == "PNG" and (decoded.width, decoded.height) == (pictures[1].width, pictures[1].height)
    assert decoded.width > 300

    fit(resume=str(run), epochs=3)  # the saved config keeps train.tensorboard on
    logged = events(run / "tensorboard")
    assert [e.step for e in logged.Scalars("loss/train")] == [1, 2, 3]
    assert [p.step for p in logged.Images("confusion_matrix")] == [1, 2, 3]


def test_the_flags_set_the_config_keys(capsys):
    assert main(["train", "--model", "lenet5", "--data", "x", "--tensorboard", "--no-report", "--print-config"]) == 0
    train = yaml.safe_load(capsys.readouterr().out)["train"]
    assert train["tensorboard"] is True and train["report"] is False
    assert main(["train", "--model", "lenet5", "--data", "x", "--print-config"]) == 0
    train = yaml.safe_load(capsys.readouterr().out)["train"]
    assert train["tensorboard"] is False and train["report"] is True  # the defaults


def test_without_the_package_the_run_stops_before_making_its_folder(digit_kit, tmp_path, monkeypatch, quick_fit):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what a missing package looks like
    data = digit_kit.idx(tmp_path / "digits", per_class=10)
    with pytest.raises(UsageError, match=r"--tensorboard needs the tensorboard package: pip install 'classicnets\["):
        quick_fit(data, tmp_path / "run", epochs=1, tensorboard=True)
    assert not (tmp_path / "run").exists()
