"""Caffe bvlc_alexnet.npy import, checked without the real 233 MB file.

The test writes files in the exact format (a pickled {layer: [weights, biases]} dict saved with np.save, TensorFlow
layout) with random weights, and compares our imported model with an independent NumPy forward pass written here
the way TensorFlow computes it: NHWC activations, HWIO kernels, grouped convolutions by splitting channels,
tf.nn.local_response_normalization's formula, fc6 reading pool5 flattened in (H, W, C) order, and a BGR, 0-255,
mean-subtracted input.
"""

from __future__ import annotations

import logging
import pickle
import struct

import numpy as np
import numpy.lib.format as npy_format
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from classicnets.errors import WeightsError
from classicnets.models.registry import create_model
from classicnets.weights import load_weights
from classicnets.weights.caffe import read_caffe_npy
from classicnets.weights.safe_npy import load_pickled_npy

# bvlc_alexnet.npy shapes in TensorFlow layout (docs/facts.md): HWIO kernels, (in, out) fully connected weights.
TF_SHAPES = {
    "conv1": (11, 11, 3, 96),
    "conv2": (5, 5, 48, 256),
    "conv3": (3, 3, 256, 384),
    "conv4": (3, 3, 192, 384),
    "conv5": (3, 3, 192, 256),
    "fc6": (9216, 4096),
    "fc7": (4096, 4096),
    "fc8": (4096, 1000),
}
BGR_MEAN = np.array([104.0, 117.0, 124.0])  # docs/facts.md: Caffe's input convention


def random_layers(num_classes: int = 1000, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random weights in TensorFlow layout. He-scaled kernels keep activations around 100, so both LRNs change
    their input by roughly 20-30 % (the test would notice a wrong LRN); fc8 is scaled to give logits of a few units."""
    rng = np.random.default_rng(seed)
    layers = {}
    for name, shape in TF_SHAPES.items():
        shape = (*shape[:-1], num_classes) if name == "fc8" else shape
        fan_in = int(np.prod(shape[:-1]))
        std = 0.02 / np.sqrt(fan_in) if name == "fc8" else np.sqrt(2.0 / fan_in)
        # uniform in [-a, a] with a = std * sqrt(3) has that std, and draws several times faster than a normal
        w = (rng.random(shape, dtype=np.float32) * 2 - 1) * np.float32(std * np.sqrt(3))
        b = (rng.random(shape[-1], dtype=np.float32) * 2 - 1) * np.float32(0.1)
        layers[name] = [w, b]
    return layers


# ---------------------------------------------------------------- the independent NumPy (TensorFlow) reference
def conv_nhwc(x: np.ndarray, w: np.ndarray, b: np.ndarray, *, stride: int, pad: int, groups: int = 1) -> np.ndarray:
    """One image (H, W, C), kernel (kh, kw, C / groups, out); groups as in the TF port: split, convolve, concat."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    outputs = []
    for xg, wg in zip(np.split(x, groups, axis=2), np.split(w, groups, axis=3), strict=True):
        windows = sliding_window_view(xg, (kh, kw), axis=(0, 1))[::stride, ::stride]  # Ho, Wo, C, kh, kw
        outputs.append(np.tensordot(windows, wg, axes=([3, 4, 2], [0, 1, 2])))
    return np.concatenate(outputs, axis=2) + b


def lrn_tf(x: np.ndarray, depth_radius: int = 2, bias: float = 1.0, alpha: float = 2e-5, beta: float = 0.75):
    """tf.nn.local_response_normalization: x / (bias + alpha * sum of squares over c +- depth_radius) ** beta,
    with the TensorFlow port's bvlc_alexnet constants (alpha NOT divided by the window size)."""
    channels = x.shape[-1]
    squares = np.pad(x * x, ((0, 0), (0, 0), (depth_radius, depth_radius)))
    window_sum = sum(squares[..., i : i + channels] for i in range(2 * depth_radius + 1))
    return x / (bias + alpha * window_sum) ** beta


def max_pool_valid(x: np.ndarray) -> np.ndarray:
    return sliding_window_view(x, (3, 3), axis=(0, 1))[::2, ::2].max(axis=(3, 4))  # 3x3, stride 2, VALID


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def reference_forward(layers: dict[str, list[np.ndarray]], image_bgr: np.ndarray) -> np.ndarray:
    """bvlc_alexnet in float64: conv -> ReLU -> LRN -> pool (Caffe's order; CaffeNet and the TF port pool first)."""
    p = {name: [a.astype(np.float64) for a in wb] for name, wb in layers.items()}
    x = image_bgr.astype(np.float64) - BGR_MEAN  # 227 x 227 x 3, BGR, 0-255, mean subtracted
    x = max_pool_valid(lrn_tf(relu(conv_nhwc(x, *p["conv1"], stride=4, pad=0))))  # VALID: 27 x 27 x 96
    x = max_pool_valid(lrn_tf(relu(conv_nhwc(x, *p["conv2"], stride=1, pad=2, groups=2))))  # SAME: 13 x 13 x 256
    x = relu(conv_nhwc(x, *p["conv3"], stride=1, pad=1))
    x = relu(conv_nhwc(x, *p["conv4"], stride=1, pad=1, groups=2))
    x = max_pool_valid(relu(conv_nhwc(x, *p["conv5"], stride=1, pad=1, groups=2)))  # 6 x 6 x 256
    x = x.reshape(-1)  # TensorFlow flattens NHWC: (H, W, C) order
    x = relu(x @ p["fc6"][0] + p["fc6"][1])
    x = relu(x @ p["fc7"][0] + p["fc7"][1])
    return x @ p["fc8"][0] + p["fc8"][1]


def model_input(model: torch.nn.Module, image_rgb: np.ndarray) -> torch.Tensor:
    """What our data pipeline feeds the model, built from the preprocessing the import attached to it."""
    pre = model.preprocessing
    x = torch.from_numpy(image_rgb.astype(np.float32) / 255.0 * pre.pixel_scale)  # H, W, RGB
    if pre.channel_order == "BGR":
        x = x.flip(-1)
    x = (x - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    return x.permute(2, 0, 1).unsqueeze(0).contiguous()


@pytest.fixture(scope="module")
def caffe_file(tmp_path_factory):
    layers = random_layers()
    path = tmp_path_factory.mktemp("caffe") / "bvlc_alexnet.npy"
    np.save(path, layers)  # exactly how the TensorFlow port's file was written: a pickled dict inside an .npy
    return path, layers


@pytest.fixture(scope="module")
def imported(caffe_file):
    return load_weights(caffe_file[0]).eval()


def test_imported_alexnet_matches_the_tensorflow_reference_forward(caffe_file, imported):
    _, layers = caffe_file
    image = np.random.default_rng(1).integers(0, 256, size=(227, 227, 3), dtype=np.uint8)  # RGB
    expected = reference_forward(layers, image[..., ::-1])
    with torch.no_grad():
        logits = imported(model_input(imported, image))[0].double().numpy()
    assert logits.shape == (1000,)
    assert np.abs(expected).max() > 1.0  # real logits, so the tolerance below is a real test
    assert np.abs(logits - expected).max() < 1e-4

    # The reference is sharp enough to catch the two classic mistakes: the paper's LRN instead of Caffe's, and
    # fc6 transposed without reordering pool5 from (H, W, C) to (C, H, W).
    naive = dict(imported.state_dict(), **{"classifier.fc6.weight": torch.from_numpy(layers["fc6"][0].T.copy())})
    with torch.device("meta"):  # shapes only: the weights come from the state dicts (assign=True)
        wrong_lrn, naive_fc6 = create_model("alexnet2012", lrn="paper"), create_model("alexnet2012", lrn="caffe")
    wrong_lrn.load_state_dict(imported.state_dict(), assign=True)
    naive_fc6.load_state_dict(naive, assign=True)
    wrong_lrn.eval(), naive_fc6.eval()
    with torch.no_grad():
        for wrong in (wrong_lrn, naive_fc6):
            assert np.abs(wrong(model_input(imported, image))[0].double().numpy() - expected).max() > 1e-2


def test_import_attaches_caffe_conventions(imported):
    assert imported.model_name == "alexnet2012" and imported.model_kwargs == {"num_classes": 1000, "lrn": "caffe"}
    norm = imported.features.norm1
    assert (norm.size, norm.alpha, norm.beta, norm.k, norm.alpha_over_size) == (5, 1e-4, 0.75, 1.0, True)
    pre = imported.preprocessing
    assert (pre.channel_order, pre.pixel_scale, pre.mean, pre.std) == ("BGR", 255.0, (104, 117, 124), (1, 1, 1))
    assert pre.input_size == (3, 227, 227) and pre.resize_size == 256
    assert len(imported.classes) == 1000
    assert imported.classes[0] == "tench, Tinca tinca" and imported.classes[999].startswith("toilet tissue")
    assert imported.new_layers == []


def test_dict_of_dicts_variant_reads_the_same_arrays(tmp_path):
    layers = {name: [np.full((2, 2), i, np.float32), np.full(2, -i, np.float32)] for i, name in enumerate(TF_SHAPES)}
    np.save(tmp_path / "lists.npy", layers)
    np.save(tmp_path / "dicts.npy", {name: {"weights": w, "biases": b} for name, (w, b) in layers.items()})
    lists, dicts = read_caffe_npy(tmp_path / "lists.npy"), read_caffe_npy(tmp_path / "dicts.npy")
    assert list(lists) == list(dicts) == list(TF_SHAPES)
    for name, (w, b) in layers.items():
        for got in (lists[name], dicts[name]):
            assert np.array_equal(got[0], w) and np.array_equal(got[1], b)


def _write_object_npy(path, obj, pickler) -> None:
    array = np.empty((), dtype=object)
    array[()] = obj
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickler(f).dump(array)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote its `str` (SHORT_BINSTRING / BINSTRING), as in the original file."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(
            pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj
        )
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


@pytest.mark.parametrize("protocol", [2, 3, 4, 5, "python2"])
def test_every_pickle_protocol_and_python2_files_load(tmp_path, protocol):
    small = {"conv1": [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float64)], "fc8": ({"x": 1},)}
    path = tmp_path / "w.npy"
    if protocol == "python2":
        # Python 2's numpy: str keys and array data as py2 strings, globals in numpy.core.multiarray.
        py2 = {name.encode(): value for name, value in small.items()}
        _write_object_npy(path, py2, lambda f: _Python2Pickler(f, protocol=2))
        raw = path.read_bytes().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        assert b"numpy.core.multiarray\n_reconstruct" in raw
        path.write_bytes(raw)
    else:
        _write_object_npy(path, small, lambda f: pickle.Pickler(f, protocol=protocol))
    loaded = load_pickled_npy(path)
    assert sorted(loaded) == ["conv1", "fc8"]
    w, b = loaded["conv1"]
    assert w.dtype == np.float32 and w.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert b.dtype == np.float64 and b.tolist() == [1, 1, 1]
    assert loaded["fc8"][0] in ({"x": 1}, {b"x": 1})


def test_a_fine_tuned_npy_with_other_classes_and_a_new_head(tmp_path, caffe_file, caplog):
    layers = dict(caffe_file[1])
    rng = np.random.default_rng(2)
    layers["fc8"] = [rng.standard_normal((4096, 2), dtype=np.float32), np.zeros(2, np.float32)]  # cats vs dogs
    path = tmp_path / "cats_dogs.npy"
    np.save(path, layers)
    with caplog.at_level(logging.INFO, logger="classicnets.weights"):
        model = load_weights(path, num_classes=5)
    assert "replaced the 2-class head with a new 5-class head" in caplog.text
    assert model.classifier.fc8.weight.shape == (5, 4096) and model.model_kwargs["num_classes"] == 5
    assert model.classes is None and model.new_layers == ["classifier.fc8"]
    assert torch.equal(model.classifier.fc7.weight, torch.from_numpy(layers["fc7"][0].T))


def _small_layers(**override):
    """Correct conv1; the other layers tiny, since the check stops at the first wrong layer."""
    layers = {name: [np.zeros((1, 1), np.float32), np.zeros(1, np.float32)] for name in TF_SHAPES}
    layers["conv1"] = [np.zeros(TF_SHAPES["conv1"], np.float32), np.zeros(96, np.float32)]
    layers["fc8"] = [np.zeros((1, 1000), np.float32), np.zeros(1000, np.float32)]
    layers.update(override)
    return layers


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"conv2": [np.zeros((5, 5, 96, 256), np.float32), np.zeros(256, np.float32)]},
            r"conv2 weights: expected shape \(5, 5, 48, 256\), got \(5, 5, 96, 256\)",
        ),
        (
            {"conv1": [np.zeros(TF_SHAPES["conv1"], np.float32), np.zeros(95, np.float32)]},
            r"conv1 biases: expected shape \(96,\), got \(95,\)",
        ),
        ({"conv1": [np.zeros(TF_SHAPES["conv1"], np.int64), np.zeros(96)]}, "conv1 weights must be a floating"),
        ({"fc8": [np.zeros(4096, np.float32), np.zeros(10, np.float32)]}, r"fc8 weights: expected shape"),
        ({"fc7": [np.zeros((1, 1), np.float32)]}, r"fc7 must be \[weights, biases\]"),
        ({"prob": [np.zeros(1), np.zeros(1)]}, "not bvlc_alexnet weights: unexpected prob"),
    ],
)
def test_wrong_layers_name_the_layer_and_shapes(tmp_path, override, message):
    path = tmp_path / "bad.npy"
    np.save(path, _small_layers(**override))
    with pytest.raises(WeightsError, match=message) as info:
        load_weights(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_layer_plain_array_and_wrong_model_are_refused(tmp_path):
    layers = _small_layers()
    del layers["fc7"]
    np.save(tmp_path / "missing.npy", layers)
    with pytest.raises(WeightsError, match="missing fc7"):
        load_weights(tmp_path / "missing.npy")
    np.save(tmp_path / "plain.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(WeightsError, match=r"holds a plain float32 array of shape \(3, 4\)"):
        load_weights(tmp_path / "plain.npy")
    np.save(tmp_path / "ok.npy", _small_layers())
    with pytest.raises(WeightsError, match="fit alexnet2012 .*, not alexnet$"):
        load_weights(tmp_path / "ok.npy", model="alexnet")
