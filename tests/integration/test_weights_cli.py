"""`classicnets import` and `classicnets export` end to end: files written, what is printed, exit codes."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from classicnets.cli import main
from classicnets.models.registry import create_model
from classicnets.weights import load_weights
from classicnets.weights.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_import_caffe_npy_writes_a_checkpoint_with_caffe_conventions(tmp_path, capsys):
    rng = np.random.default_rng(0)
    shapes = {"conv1": (11, 11, 3, 96), "conv2": (5, 5, 48, 256), "conv3": (3, 3, 256, 384), "conv4": (3, 3, 192, 384),
              "conv5": (3, 3, 192, 256), "fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}  # fmt: skip
    layers = {
        n: [rng.random(s, dtype=np.float32) - 0.5, rng.random(s[-1], dtype=np.float32)] for n, s in shapes.items()
    }
    np.save(tmp_path / "bvlc_alexnet.npy", layers)
    code, out, err = run_cli(
        capsys, "import", "--from", "caffe-npy", tmp_path / "bvlc_alexnet.npy", "--model", "alexnet2012",
        "--out", tmp_path / "alexnet_caffe.pt",
    )  # fmt: skip
    assert code == 0, err
    assert out == (
        f"wrote {tmp_path / 'alexnet_caffe.pt'}: alexnet2012, 60,965,224 parameters, 1000 classes; "
        "input BGR 3x227x227, pixels 0-255, mean [104.0, 117.0, 124.0], std [1.0, 1.0, 1.0]\n"
    )
    ckpt = load_checkpoint(tmp_path / "alexnet_caffe.pt")
    assert ckpt["model"] == {"name": "alexnet2012", "kwargs": {"num_classes": 1000, "lrn": "caffe"}}
    assert ckpt["preprocessing"]["channel_order"] == "BGR" and ckpt["classes"][0] == "tench, Tinca tinca"
    assert ckpt["imported_from"] == "bvlc_alexnet.npy"
    expected = torch.from_numpy(layers["conv1"][0]).permute(3, 2, 0, 1)
    assert torch.equal(ckpt["state_dict"]["features.conv1.weight"], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alexnet_caffe.pt", "bvlc_alexnet.npy"]  # no temp files


@pytest.fixture
def torchvision_resnet(tmp_path):
    state = {f"module.{k}": v for k, v in create_model("resnet18", num_classes=3).state_dict().items()}
    torch.save(state, tmp_path / "resnet18.pth")
    return tmp_path / "resnet18.pth"


def test_import_torchvision_with_class_names_then_export_safetensors(tmp_path, capsys, torchvision_resnet):
    (tmp_path / "classes.txt").write_text("cat\ndog\nfox\n")
    code, out, err = run_cli(
        capsys, "import", torchvision_resnet, "--model", "resnet18", "--out", tmp_path / "r18.pt",
        "--classes", tmp_path / "classes.txt",
    )  # fmt: skip
    assert code == 0, err
    assert "resnet18, 11,178,051 parameters, 3 classes; input RGB 3x224x224" in out
    assert load_checkpoint(tmp_path / "r18.pt")["classes"] == ["cat", "dog", "fox"]

    code, out, err = run_cli(capsys, "export", "--weights", tmp_path / "r18.pt", "--out", tmp_path / "r18.safetensors")
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'r18.safetensors'} (safetensors, 44.")
    assert "reloaded output matches PyTorch to max abs 0 at batch sizes 1 and 2" in out
    model = load_weights(tmp_path / "r18.safetensors")
    assert model.classes == ["cat", "dog", "fox"] and model.num_classes == 3


def test_import_usage_errors_exit_2_with_one_line(tmp_path, capsys, torchvision_resnet):
    code, _, err = run_cli(capsys, "import", torchvision_resnet, "--out", tmp_path / "w.pt")
    assert code == 2 and err.count("\n") == 1 and "does not say which network" in err
    (tmp_path / "w.pt").write_bytes(b"precious")
    code, _, err = run_cli(capsys, "import", torchvision_resnet, "--model", "resnet18", "--out", tmp_path / "w.pt")
    assert code == 2 and err == f"error: --out {tmp_path / 'w.pt'} exists; pass --force to replace it\n"
    assert (tmp_path / "w.pt").read_bytes() == b"precious"
    code, _, err = run_cli(capsys, "import", torchvision_resnet, "--model", "resnet18", "--out", torchvision_resnet)
    assert code == 2 and "is the input file" in err
    (tmp_path / "two.txt").write_text("a\nb\n")
    code, _, err = run_cli(
        capsys, "import", torchvision_resnet, "--model", "resnet18", "--out", tmp_path / "x.pt", "--classes",
        tmp_path / "two.txt",
    )  # fmt: skip
    assert code == 2 and "has 2 names for 3 classes" in err and not (tmp_path / "x.pt").exists()
    code, out, err = run_cli(
        capsys, "import", torchvision_resnet, "--model", "resnet18", "--out", tmp_path / "w.pt", "--force",
        "--num-classes", "5",
    )  # fmt: skip
    assert code == 0 and "5 classes (unnamed: pass --classes FILE to name them)" in out
    assert load_checkpoint(tmp_path / "w.pt")["classes"] == ["0", "1", "2", "3", "4"]


class _Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_a_malicious_file_fails_with_one_line_and_exit_1(tmp_path, capsys):
    torch.save({"fc.weight": _Exploit(tmp_path / "pwned")}, tmp_path / "evil.pth", pickle_module=pickle)
    code, out, err = run_cli(capsys, "import", tmp_path / "evil.pth", "--model", "resnet18", "--out", tmp_path / "w.pt")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'evil.pth'}: refused: the file contains Python objects")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "w.pt").exists()


def test_export_onnx_and_torchscript_from_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'classicnets[onnx]')")
    save_checkpoint(tmp_path / "lenet.pt", build_checkpoint(create_model("lenet5"), classes=list("0123456789")))
    code, out, err = run_cli(capsys, "export", "--weights", tmp_path / "lenet.pt", "--out", tmp_path / "lenet.onnx")
    assert code == 0, err
    assert "(onnx, 0.3 MB); reloaded output matches PyTorch to max abs" in out
    code, out, err = run_cli(
        capsys, "export", "--weights", tmp_path / "lenet.pt", "--out", tmp_path / "lenet.bin", "--format",
        "torchscript", "--no-verify",
    )  # fmt: skip
    assert code == 0 and out.endswith("(torchscript, 0.3 MB); not run against PyTorch\n")
    code, _, err = run_cli(capsys, "export", "--weights", tmp_path / "lenet.pt", "--out", tmp_path / "lenet.bin")
    assert code == 2 and "cannot tell the export format from 'lenet.bin'" in err
