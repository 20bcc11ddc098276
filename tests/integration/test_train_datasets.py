"""Training on the seeds' data sets end to end: real digits through a Keras .npz and an MNIST-style IDX folder (the
same data either way, the same run), and the command line on CIFAR archives (train, then eval on the test split)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from classicnets.cli import main
from classicnets.training.loop import fit


def val_top1(run_dir) -> list[float]:
    return [float(r["val_top1"]) for r in csv.DictReader((run_dir / "metrics.csv").open())]


def test_real_digits_train_through_keras_npz_and_idx_files_to_a_real_accuracy(tmp_path, digit_kit):
    """The 10,000 real MNIST digits shipped with classicnets (8,000 train, 2,000 test) as Keras' mnist.npz and as
    a folder with train-* and t10k-* IDX files: both train LeNet-5 identically, to the same test accuracy."""
    x_train, y_train = digit_kit.shipped("train")
    x_test, y_test = digit_kit.shipped("test")
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    idx = digit_kit.write_idx(tmp_path / "mnist", "train", x_train, y_train)
    digit_kit.write_idx(idx, "t10k", x_test, y_test)
    settings = {"config": "lenet5_digits", "epochs": 3, "device": "cpu", "precision": "fp32", "threads": 1}
    runs = {name: fit("lenet5", data, out=str(tmp_path / f"run_{name}"), **settings).run_dir
            for name, data in (("npz", npz), ("idx", idx))}  # fmt: skip
    accuracies = {name: val_top1(run) for name, run in runs.items()}
    assert accuracies["npz"] == accuracies["idx"]  # the same images and labels in the same order: the same run
    assert accuracies["npz"][-1] >= 0.96  # measured: 96.95 % of the 2,000 held-out digits after 3 epochs
    split = json.loads((runs["npz"] / "split.json").read_text())
    assert split == {"method": "splits", "source": str(npz), "train": "train", "val": "test"}
    config = yaml.safe_load((runs["idx"] / "config.yaml").read_text())
    assert config["data"]["augment"] == "none"  # the recipe's; auto would pick none for digits too


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


FAST = ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--threads", "2", "--quiet"]


def test_cli_trains_resnet18_cifar_on_the_downloaded_archive_and_evaluates_its_test_batch(tmp_path, capsys, cifar_kit):
    archive = cifar_kit.archive(cifar_kit.cifar10_python(tmp_path / "src", per_batch=8, test=6),
                                tmp_path / "cifar-10-python.tar.gz")  # fmt: skip
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--config", "resnet18_cifar10_short", "--data", archive, "--out", run,
                             *FAST)  # fmt: skip
    assert code == 0, err
    assert json.loads((run / "classes.json").read_text()) == cifar_kit.NAMES10
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["model"]["name"], config["data"]["augment"]) == ("resnet18_cifar", "pad_crop")
    code, out, err = run_cli(capsys, "eval", "--weights", run / "best.pt", "--data", archive, "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 6 and report["classes"] == cifar_kit.NAMES10  # CIFAR's test batch


@pytest.mark.parametrize("version", ["python", "binary"])
def test_cli_cifar100_coarse_labels_for_train_and_eval(tmp_path, capsys, cifar_kit, version):
    folder = getattr(cifar_kit, f"cifar100_{version}")(tmp_path, train=8, test=4)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "vgg11_cifar", "--data", folder, "--label-mode", "coarse",
                           "--out", run, *FAST)  # fmt: skip
    assert code == 0, err
    assert json.loads((run / "classes.json").read_text()) == cifar_kit.names100("coarse")
    code, out, err = run_cli(capsys, "eval", "--weights", run / "best.pt", "--data", folder, "--label-mode", "coarse",
                             "--json", "--quiet")  # fmt: skip
    assert code == 0, err and json.loads(out)["images"] == 4
    code, _, err = run_cli(capsys, "eval", "--weights", run / "best.pt", "--data", folder, "--quiet")
    assert code == 1 and "classes fine0, fine1, fine2, fine3, fine4 are not among the model's 20 classes" in err


def test_cli_trains_the_tf2_tutorials_resnet18_with_its_recipe(tmp_path, capsys, cifar_kit):
    folder = cifar_kit.cifar100_python(tmp_path, train=8, test=4)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--config", "resnet18_keras_cifar100", "--data", folder, "--out", run,
                           *FAST)  # fmt: skip
    assert code == 0, err
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["model"]["name"], config["optim"]["name"], config["optim"]["lr"]) == ("resnet18_keras_cifar", "adam",
                                                                                        0.001)  # fmt: skip
    assert len(json.loads((run / "classes.json").read_text())) == 100
