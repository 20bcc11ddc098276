"""Caffe's bvlc_alexnet weights as the TensorFlow fine-tuning tutorials ship them (`bvlc_alexnet.npy`).

The file is a pickled dict `{layer: [weights, biases]}` (some converters write `{layer: {"weights", "biases"}}`)
for conv1..conv5 and fc6..fc8 in TensorFlow layout (docs/facts.md): convolution kernels HWIO, fully connected weights
(in, out), and fc6's rows in the (H, W, C) order in which TensorFlow flattens the 6x6x256 pool5 map.
It fits `alexnet2012` built with Caffe's LRN (`lrn="caffe"`: k=1, alpha=1e-4 divided by n=5, beta=0.75, applied
before pooling) and Caffe's input convention (BGR, 0-255, mean [104, 117, 124] subtracted, no std).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from classicnets.errors import WeightsError
from classicnets.models.preprocessing import CAFFE_BGR_MEAN, Preprocessing
from classicnets.weights.safe_npy import load_pickled_npy

MODEL_NAME = "alexnet2012"
MODEL_KWARGS = {"lrn": "caffe"}
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# Caffe's bvlc_alexnet deploy.prototxt and the TensorFlow port: BGR channel order, pixels 0-255, the BGR mean
# [104, 117, 124] subtracted and no division (std 1), 227x227 crops of images resized to 256 (docs/facts.md).
CAFFE_PREPROCESSING = Preprocessing(
    input_size=(3, 227, 227),
    resize_size=256,
    mean=CAFFE_BGR_MEAN,
    std=(1.0, 1.0, 1.0),
    channel_order="BGR",
    pixel_scale=255.0,
)
# pool5 is 256 x 6 x 6 at a 227x227 input; fc6 sees it flattened (docs/facts.md).
POOL5_SHAPE = (256, 6, 6)


def read_caffe_npy(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (weights, biases)} from a bvlc_alexnet-style .npy, loaded safely, every key and array checked."""
    path = Path(path)
    data = load_pickled_npy(path)
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: holds a {type(data).__name__}, not the dict of layers of bvlc_alexnet.npy")
    layers = {_text(k): v for k, v in data.items()}
    missing = [name for name in LAYERS if name not in layers]
    unknown = sorted(set(layers) - set(LAYERS))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(unknown)}"] if unknown else []
        )
        raise WeightsError(f"{path}: not bvlc_alexnet weights: {'; '.join(parts)} (expected {', '.join(LAYERS)})")
    return {name: _weights_and_biases(path, name, layers[name]) for name in LAYERS}


def _text(key: Any) -> str:
    return key.decode("latin1") if isinstance(key, bytes) else str(key)


def _weights_and_biases(path: Path, name: str, entry: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(entry, dict):  # {"weights": w, "biases": b}, as some converters write
        entry = {_text(k): v for k, v in entry.items()}
        if set(entry) != {"weights", "biases"}:
            raise WeightsError(f"{path}: {name} has keys {sorted(entry)}, expected ['biases', 'weights']")
        pair = (entry["weights"], entry["biases"])
    elif isinstance(entry, list | tuple) and len(entry) == 2:
        pair = tuple(entry)
    else:
        raise WeightsError(f"{path}: {name} must be [weights, biases], got a {type(entry).__name__}")
    for what, array in zip(("weights", "biases"), pair, strict=True):
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise WeightsError(f"{path}: {name} {what} must be a floating-point array, got {kind}")
    return pair


def tf_shape(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The TensorFlow-layout shape of a PyTorch parameter: OIHW -> HWIO, (out, in) -> (in, out), bias unchanged."""
    if len(torch_shape) == 4:
        o, i, h, w = torch_shape
        return (h, w, i, o)
    if len(torch_shape) == 2:
        return (torch_shape[1], torch_shape[0])
    return torch_shape


def to_torch_layout(name: str, weights: np.ndarray) -> torch.Tensor:
    """One layer's weights from TensorFlow layout to PyTorch's (docs/facts.md), as a new float32 tensor."""
    w = torch.from_numpy(_writable_float32(weights))
    if w.dim() == 4:  # HWIO -> OIHW; groups=2 kernels (I = in/2) fit PyTorch's grouped Conv2d as they are
        return w.permute(3, 2, 0, 1).contiguous()
    if name == "fc6":
        # Rows are (H, W, C) positions of pool5, PyTorch flattens (C, H, W). docs/facts.md's
        # w.reshape(6, 6, 256, 4096).transpose(2, 0, 1, 3).reshape(9216, 4096).T, done as a plain 2-D transpose
        # followed by reordering each row (twice as fast on this 151 MB matrix).
        c, h, wd = POOL5_SHAPE
        return w.T.contiguous().view(-1, h * wd, c).transpose(1, 2).reshape(-1, c * h * wd)
    return w.T.contiguous()  # (in, out) -> (out, in)


def caffe_state_dict(
    layers: dict[str, tuple[np.ndarray, np.ndarray]], expected: dict[str, torch.Tensor], *, source: str
) -> dict[str, torch.Tensor]:
    """The alexnet2012 state dict for `layers`, after checking every shape against `expected` (the model's own).

    A wrong shape names the layer and both shapes in TensorFlow layout, the layout of the file.
    """
    state: dict[str, torch.Tensor] = {}
    for name in LAYERS:
        prefix = f"{'features' if name.startswith('conv') else 'classifier'}.{name}"
        for what, array, key in zip(("weights", "biases"), layers[name], ("weight", "bias"), strict=True):
            want = tf_shape(tuple(expected[f"{prefix}.{key}"].shape))
            if tuple(array.shape) != want:
                raise WeightsError(f"{source}: {name} {what}: expected shape {want}, got {tuple(array.shape)}")
            if key == "weight":
                state[f"{prefix}.{key}"] = to_torch_layout(name, array)
            else:
                state[f"{prefix}.{key}"] = torch.from_numpy(np.array(array, dtype=np.float32))
    return state


def _writable_float32(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32, copy=False)
    return array if array.flags.writeable else array.copy()  # torch.from_numpy needs writable memory


def num_classes_of(layers: dict[str, tuple[np.ndarray, np.ndarray]], *, source: str) -> int:
    """fc8's output count: 1000 for bvlc_alexnet, another number for weights fine-tuned on another task."""
    fc8 = layers["fc8"][0]
    if fc8.ndim != 2 or fc8.shape[1] < 1:
        raise WeightsError(f"{source}: fc8 weights: expected shape (4096, classes), got {tuple(fc8.shape)}")
    return int(fc8.shape[1])
