"""Pretrained weights by name end to end: `classicnets weights` (table, --json, get), and a name instead of a path in
train, eval, predict, export, create_model and load_weights; downloads come from the local `weights_server`, and the
offline failure of `train --model alexnet --weights imagenet` is checked against a port nothing listens on."""

from __future__ import annotations

import io
import json
import socket
from dataclasses import replace

import pytest
import torch
import yaml

from classicnets import create_model, load_weights
from classicnets.cli import main
from classicnets.errors import UsageError, WeightsError
from classicnets.models.registry import create_model as create_fresh_model
from classicnets.weights.checkpoint import load_checkpoint
from classicnets.weights.known import KNOWN_WEIGHTS

FAST = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "--threads", "1", "--quiet"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def lenet_weights(weights_server, monkeypatch):
    """A 10-class LeNet-5 state dict served as the known weights `lenet5.imagenet` (torchvision's bare format)."""
    state = create_fresh_model("lenet5").state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    known = weights_server.publish(buffer.getvalue(), model="lenet5", file="lenet5-00000000.pth")
    monkeypatch.setitem(KNOWN_WEIGHTS, known.name, known)
    return state


def test_weights_lists_the_table_and_json_with_the_cache_state(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSICNETS_HOME", str(tmp_path))
    code, out, _ = run_cli(capsys, "weights")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["name", "top-1", "%", "top-5", "%", "MiB", "resize/crop", "cached",
                                              "publisher"]  # fmt: skip
    assert lines[2].split() == ["alexnet.imagenet", "56.522", "79.066", "233.1", "256/224", "no", "torchvision"]
    assert lines[3].split() == ["alexnet2012.imagenet", "57.1", "80.2", "232.6", "256/227", "no", "BVLC", "Caffe"]
    assert "resnet101.imagenet_v2   81.886   95.780  170.5      232/224  no      torchvision" in out
    assert len(lines) == 2 + 19 + 3 and f"cache: {tmp_path / 'weights'}" in out
    code, out, _ = run_cli(capsys, "weights", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == list(KNOWN_WEIGHTS)
    assert rows[0] | {"preprocessing": None} == {
        "name": "alexnet.imagenet", "model": "alexnet", "tag": "imagenet",
        "url": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "file": "alexnet-owt-7be5be79.pth",
        "sha256": "7be5be79", "size_mib": 233.087, "size_bytes": None, "format": "torchvision", "top1": 56.522,
        "top5": 79.066, "accuracy_source": "torchvision/models/alexnet.py, alexnet IMAGENET1K_V1 _metrics",
        "decimals": 3,
        "num_params": 61_100_840, "num_classes": 1000, "classes": "ImageNet-1k (shipped)", "preprocessing": None,
        "publisher": "torchvision", "cached": "no", "path": str(tmp_path / "weights" / "alexnet-owt-7be5be79.pth"),
    }  # fmt: skip
    assert rows[1]["preprocessing"]["channel_order"] == "BGR" and rows[1]["size_bytes"] == 243_861_814


def test_weights_get_downloads_checks_and_says_how(capsys, weights_server, lenet_weights, tmp_path):
    code, out, err = run_cli(capsys, "weights", "get", "lenet5.imagenet", "--quiet")
    known = KNOWN_WEIGHTS["lenet5.imagenet"]
    path = tmp_path / "home" / "weights" / "lenet5-00000000.pth"
    assert code == 0, err
    assert out == f"lenet5.imagenet: {path} (0.2 MiB; SHA-256 begins with the published {known.sha256})\n"
    assert "lenet5.imagenet" in run_cli(capsys, "weights")[1].splitlines()[-4]  # listed last, and cached:
    assert run_cli(capsys, "weights")[1].splitlines()[-4].split()[-2] == "yes"
    code, _, err = run_cli(capsys, "weights", "get", "imagenet")
    assert code == 2 and "'imagenet' weights need the network" in err and err.count("\n") == 1


def test_weights_get_loads_a_file_without_a_published_hash_to_check_it(capsys, weights_server, lenet_weights,
                                                                       monkeypatch):  # fmt: skip
    known = KNOWN_WEIGHTS["lenet5.imagenet"]
    size = len(weights_server.files[known.file_name])
    monkeypatch.setitem(KNOWN_WEIGHTS, known.name, replace(known, sha256=None, size_bytes=size))
    code, out, err = run_cli(capsys, "weights", "get", "lenet5.imagenet", "--quiet")
    assert code == 0, err
    assert out.endswith(f"(0.2 MiB; size {size:,} bytes as published (no hash is published); every layer loaded "
                        "with the expected shape)\n")  # fmt: skip
    wrong = io.BytesIO()  # a file of the published size that is not the network: caught by the strict load
    torch.save(create_fresh_model("lenet5", in_chans=3).state_dict(), wrong)
    other = weights_server.publish(wrong.getvalue(), model="lenet5", file="other.pth")
    monkeypatch.setitem(KNOWN_WEIGHTS, "lenet5.imagenet", replace(other, sha256=None, size_bytes=len(wrong.getvalue())))
    code, _, err = run_cli(capsys, "weights", "get", "lenet5.imagenet", "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert "weights/other.pth: C1 (features.c1.weight): expected shape (6, 1, 5, 5), got (6, 3, 5, 5) (lenet5)" in err


def test_train_eval_predict_export_take_a_name_and_download_once(capsys, tmp_path, digit_kit, weights_server,
                                                                  lenet_weights):  # fmt: skip
    folders = digit_kit.folders(tmp_path / "digits", per_class=10)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "lenet5", "--weights", "imagenet", "--num-classes", "2",
                           "--data", folders, "--out", out, "--freeze", "features", *FAST)  # fmt: skip
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["weights"] == "lenet5.imagenet"
    trained = load_checkpoint(out / "last.pt")["state_dict"]
    assert all(torch.equal(trained[k], v) for k, v in lenet_weights.items() if k.startswith("features."))
    assert trained["classifier.output.weight"].shape == (2, 84)

    ten = digit_kit.folders(tmp_path / "ten", per_class=2, classes=tuple("0123456789"))
    code, stdout, err = run_cli(capsys, "eval", "--weights", "lenet5.imagenet", "--data", ten, "--json", "--quiet",
                                "--out", tmp_path / "eval")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["images"] == 20 and json.loads(stdout)["weights"] == "lenet5.imagenet"
    image = next((ten / "3").iterdir())
    code, stdout, err = run_cli(capsys, "predict", image, "--weights", "lenet5.imagenet", "--json", "--topk", "3")
    assert code == 0, err
    answer = json.loads(stdout)
    assert len(answer["top"]) == 3 and sorted(answer["probabilities"]) == list("0123456789")
    code, stdout, err = run_cli(capsys, "export", "--weights", "imagenet", "--model", "lenet5",
                                "--out", tmp_path / "lenet5.safetensors")  # fmt: skip
    assert code == 0 and "reloaded output matches PyTorch" in stdout, err
    assert weights_server.requests == [("lenet5-00000000.pth", None)]  # downloaded once, then from the cache


def test_python_api_takes_a_name(weights_server, lenet_weights):
    model = create_model("lenet5", weights="imagenet", num_classes=3, progress=False)
    assert model.classifier.output.weight.shape == (3, 84) and model.new_layers == ["classifier.output"]
    assert torch.equal(model.features.c1.weight, lenet_weights["features.c1.weight"])
    same = load_weights("imagenet", model="lenet5", progress=False)
    assert same.num_classes == 10
    assert torch.equal(same.classifier.output.weight, lenet_weights["classifier.output.weight"])
    assert create_model("lenet5").classifier.output.weight.shape == (10, 84)  # no weights: the registry's
    with pytest.raises(UsageError, match="'imagenet' weights need the network"):
        load_weights("imagenet")
    with pytest.raises(UsageError, match="activation cannot be set with weights="):
        create_model("lenet5", weights="imagenet", activation="relu")
    with pytest.raises(UsageError, match="lenet5.imagenet is a torchvision file, not caffe-npy"):
        load_weights("lenet5.imagenet", fmt="caffe-npy")


def test_train_offline_says_where_to_fetch_and_how_to_import(capsys, tmp_path, digit_kit, monkeypatch):
    """The issue's done line, `train --model alexnet --weights imagenet --num-classes 2 --data DIR`, without a
    network: the real entry, its URL pointed at a local port nothing listens on."""
    monkeypatch.setenv("CLASSICNETS_HOME", str(tmp_path / "home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/alexnet-owt-7be5be79.pth"
    monkeypatch.setitem(KNOWN_WEIGHTS, "alexnet.imagenet", replace(KNOWN_WEIGHTS["alexnet.imagenet"], url=url))
    folders = digit_kit.folders(tmp_path / "digits", per_class=4, rgb=True)
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--model", "alexnet", "--weights", "imagenet", "--num-classes", "2",
                                "--data", folders, "--out", out, *FAST)  # fmt: skip
    assert (code, stdout) == (1, "")
    assert err == (
        f"error: cannot download alexnet.imagenet: no connection to 127.0.0.1 ([Errno 111] Connection refused); "
        f"fetch {url} elsewhere and run `classicnets import alexnet-owt-7be5be79.pth --from torchvision --model "
        f"alexnet --out alexnet.pt` (then --weights alexnet.pt), or copy alexnet-owt-7be5be79.pth into "
        f"{tmp_path / 'home' / 'weights'}\n"
    )
    assert not out.exists()
    with pytest.raises(WeightsError):
        load_weights("alexnet.imagenet", progress=False)
