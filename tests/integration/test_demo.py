"""The demo: real digits shipped in the package, and `classicnets demo` (train, evaluate, predict) end to end."""

from __future__ import annotations

import re

import numpy as np
import pytest

from classicnets.cli import main

# classicnets/assets/digits/README.md: the MNIST test set split per class with seed 0.
TRAIN_PER_CLASS = [784, 908, 826, 808, 786, 714, 766, 822, 779, 807]
TEST_PER_CLASS = [196, 227, 206, 202, 196, 178, 192, 206, 195, 202]


def test_shipped_digits_are_the_documented_split(digit_kit):
    train_images, train_labels = digit_kit.shipped("train")
    test_images, test_labels = digit_kit.shipped("test")
    assert train_images.shape == (8000, 28, 28) and test_images.shape == (2000, 28, 28)
    assert np.bincount(train_labels).tolist() == TRAIN_PER_CLASS
    assert np.bincount(test_labels).tolist() == TEST_PER_CLASS
    # no digit is in both: compare the raw bytes of every image
    assert not {img.tobytes() for img in train_images} & {img.tobytes() for img in test_images}


def run_demo(capsys, tmp_path, *extra):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--quiet", "--device", "cpu", *extra])
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy on 2,000 held-out digits: ([\d.]+)%", out).group(1))
    return code, out, accuracy


def test_demo_writes_the_run_folder_pictures_and_predictions(capsys, tmp_path, is_png):
    code, out, accuracy = run_demo(capsys, tmp_path, "--epochs", "1")
    run = tmp_path / "demo"
    assert code == 0 and accuracy >= 90.0  # one epoch of the recipe already gets most digits right
    assert "LeNet-5 trained on 7,199 digits (lenet5_digits recipe, 1 epoch," in out
    for name in ("loss.png", "accuracy.png", "confusion_matrix.png", "predictions.png", "eval/confusion_matrix.png"):
        assert is_png(run / name), name
    assert {"best.pt", "last.pt", "metrics.csv", "config.yaml", "classes.json"} <= {p.name for p in run.iterdir()}
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert len(samples) == 20 and samples[0] == "digit_0_0001.png"
    predicted = re.findall(r"digit_(\d)_\d{4}\.png\s+-> (\d)", out)
    assert len(predicted) == 20 and sum(t == p for t, p in predicted) >= 16


@pytest.mark.slow
def test_full_demo_reaches_the_issues_accuracy(capsys, tmp_path):
    """Issue 4: the demo reaches >= 97 % on held-out digits; acceptance 1: LeNet-5 on the MNIST test set split
    8k/2k reaches >= 98 % (the shipped digits are that split)."""
    code, _, accuracy = run_demo(capsys, tmp_path)
    assert code == 0 and accuracy >= 98.0
