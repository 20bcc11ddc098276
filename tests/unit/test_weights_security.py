"""Weight files come from strangers: loading one must never run code, and a damaged one gives a one-line error.

Each malicious file carries a pickle that would create a marker file when unpickled by the normal `pickle` module;
the control test proves the payloads work, the others that our loaders refuse them and the marker never appears.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from classicnets.errors import UsageError, WeightsError
from classicnets.models.registry import create_model
from classicnets.weights import export, load_weights


class ShellPayload:
    """Unpickling this runs `touch MARKER` through os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class EvalPayload:
    """Unpickling this evaluates Python source that creates the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


def _npy_payloads(marker):
    """Three .npy files in the bvlc_alexnet format, each hiding a payload somewhere else."""
    weights = [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)]
    return {
        "value.npy": {"conv1": weights, "fc8": ShellPayload(marker)},
        "nested.npy": {"conv1": [weights[0], [np.array([EvalPayload(marker)], dtype=object)]]},
        "key.npy": {ShellPayload(marker): weights},
    }


def test_control_the_payloads_do_run_under_plain_pickle(tmp_path):
    for cls in (ShellPayload, EvalPayload):
        marker = tmp_path / f"control-{cls.__name__}"
        pickle.loads(pickle.dumps(cls(marker)))
        assert marker.exists()
    np.save(tmp_path / "control.npy", {"conv1": ShellPayload(tmp_path / "control-npy")})
    np.load(tmp_path / "control.npy", allow_pickle=True)  # what the TensorFlow tutorials do
    assert (tmp_path / "control-npy").exists()


@pytest.mark.parametrize("name", ["value.npy", "nested.npy", "key.npy"])
def test_malicious_npy_is_refused_and_no_code_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    np.save(tmp_path / name, _npy_payloads(marker)[name])
    with pytest.raises(WeightsError, match=f"{name}: refused: the pickle inside asks for code") as info:
        load_weights(tmp_path / name)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["auto", "torchvision", "classicnets"])
def test_malicious_pth_is_refused_and_no_code_runs(tmp_path, fmt):
    marker = tmp_path / "pwned"
    state = dict(create_model("lenet5").state_dict())
    state["features.0.weight"] = ShellPayload(marker)
    torch.save(state, tmp_path / "evil.pth", pickle_module=pickle)
    with pytest.raises(WeightsError, match="evil.pth: refused: the file contains Python objects") as info:
        load_weights(tmp_path / "evil.pth", model="lenet5", fmt=fmt)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_there_is_no_fallback_to_an_unsafe_load(tmp_path, monkeypatch):
    """Every load path is spied on: torch.load only ever with weights_only=True, np.load never with pickles."""
    calls = []
    real_torch_load, real_np_load = torch.load, np.load

    def spy_torch_load(*args, **kwargs):
        calls.append(("torch.load", kwargs.get("weights_only")))
        return real_torch_load(*args, **kwargs)

    def spy_np_load(*args, **kwargs):
        calls.append(("np.load", kwargs.get("allow_pickle", False)))
        return real_np_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_torch_load)
    monkeypatch.setattr(np, "load", spy_np_load)
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", _npy_payloads(marker)["value.npy"])
    torch.save({"w": ShellPayload(marker)}, tmp_path / "evil.pth", pickle_module=pickle)
    for name, model in (("evil.npy", None), ("evil.pth", "lenet5")):
        with pytest.raises(WeightsError, match="refused"):
            load_weights(tmp_path / name, model=model)
    assert ("torch.load", True) in calls
    assert all(call in (("torch.load", True), ("np.load", False)) for call in calls), calls
    assert not marker.exists()


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    """A small valid file of each format we read."""
    folder = tmp_path_factory.mktemp("good")
    model = create_model("lenet5")
    torch.save(model.state_dict(), folder / "lenet.pth")
    export(model, folder / "lenet.safetensors", fmt="safetensors")
    layers = {n: [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)] for n in ("conv1", "conv2", "fc8")}
    np.save(folder / "caffe.npy", layers)
    return folder


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("lenet.pth", "unreadable or truncated weight file"),
        ("lenet.safetensors", "unreadable or truncated safetensors file"),
        ("caffe.npy", "truncated or corrupt pickle"),
    ],
)
def test_truncated_files_give_one_line_errors(tmp_path, good_files, name, message):
    data = (good_files / name).read_bytes()
    for cut in (len(data) // 2, len(data) - 3):
        (tmp_path / name).write_bytes(data[:cut])
        with pytest.raises(WeightsError, match=message) as info:
            load_weights(tmp_path / name, model=None if name.endswith(".npy") else "lenet5")
        assert "\n" not in str(info.value) and str(tmp_path / name) in str(info.value)


@pytest.mark.parametrize("name", ["lenet.pth", "lenet.safetensors", "caffe.npy"])
def test_garbled_files_give_one_line_errors(tmp_path, good_files, name):
    """The first 64 bytes kept (so the format is still recognised), the rest replaced by random bytes."""
    data = (good_files / name).read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, len(data) - 64, dtype=np.uint8).tobytes()
    (tmp_path / name).write_bytes(data[:64] + noise)
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path / name, model=None if name.endswith(".npy") else "lenet5")
    assert "\n" not in str(info.value) and str(tmp_path / name) in str(info.value)


def test_files_that_are_not_weights(tmp_path):
    cases = {
        "empty.pt": (b"", "the file is empty"),
        "noise.bin": (bytes(range(256)) * 4, "not a weight file classicnets can read"),
        "photo.jpg": (b"\xff\xd8\xff\xe0" + bytes(100), "not a weight file classicnets can read"),
        "broken.npy": (b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage", "not a readable .npy file"),
        "model.onnx": (b"\x08\x09\x12\x07pytorch" + bytes(20), "an ONNX export is for inference runtimes"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match=message) as info:
            load_weights(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="missing.pth: no such file"):
        load_weights(tmp_path / "missing.pth", model="lenet5")
    with pytest.raises(UsageError, match="num_classes must be at least 1"):
        load_weights(tmp_path / "noise.bin", num_classes=0)
