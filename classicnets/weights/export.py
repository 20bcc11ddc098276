"""export: a model -> safetensors, ONNX or TorchScript, with its preprocessing and class names inside the file.

- safetensors: the state dict, bit for bit, plus metadata.py's description; `load_weights` reads it back.
- ONNX (opset 18, torch.onnx's dynamo exporter): input "input" (N x C x H x W float32, N dynamic), output "logits";
  checked with onnx.checker (full check) and, where onnxruntime is installed, run and compared with PyTorch.
- TorchScript: torch.jit.trace in eval mode (PyTorch marks torch.jit deprecated in favour of torch.export, but
  TorchScript is still what C++ libtorch and older serving stacks load); the description is the extra file
  "classicnets.json".
Every file is built and checked in memory, then written atomically, so a failed export leaves no file behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from classicnets.choices import EXPORT_FORMATS
from classicnets.errors import UsageError, WeightsError
from classicnets.fileio import atomic_write_bytes
from classicnets.models.base import ClassicNet, unwrap_model
from classicnets.models.preprocessing import Preprocessing
from classicnets.weights.metadata import build_metadata

log = logging.getLogger(__name__)

SUFFIXES = {".safetensors": "safetensors", ".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript"}
# Opset 18 (ONNX 1.13, 2022): supported by onnxruntime >= 1.14 and what torch.onnx's dynamo exporter targets.
ONNX_OPSET = 18
VERIFY_BATCHES = (1, 2)  # a second batch size shows the batch dimension really is dynamic
# A verified export whose outputs differ from PyTorch's by more than this (relative to the largest logit, at least
# 1) is refused: float32 kernels differ by rounding only, about 1e-6 relative on these networks.
VERIFY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportResult:
    """What export wrote and how closely the exported model reproduces PyTorch's outputs."""

    path: Path
    fmt: str
    size_bytes: int
    max_abs_diff: float | None  # over VERIFY_BATCHES random inputs; None when not verified (no onnxruntime)


def format_from_suffix(path: str | os.PathLike) -> str:
    """The export format a file name asks for (.safetensors, .onnx, .ts/.torchscript)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"cannot tell the export format from {Path(path).name!r}; pass one of {EXPORT_FORMATS}")
    return SUFFIXES[suffix]


def export(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    fmt: str,
    classes: list[str] | None = None,
    verify: bool = True,
    opset: int = ONNX_OPSET,
) -> ExportResult:
    """Write `model` (built by create_model or load_weights) to `path` as safetensors, onnx or torchscript.

    `classes` defaults to `model.classes`. The model's preprocessing and class names go into the file. With
    `verify` the bytes to be written are loaded back and run on random inputs at batch sizes 1 and 2 (ONNX: after
    onnx.checker's full check, with onnxruntime where installed); a mismatch raises WeightsError and nothing is
    written.
    """
    data, diff = export_bytes(model, fmt=fmt, classes=classes, verify=verify, opset=opset)
    atomic_write_bytes(path, data)
    log.info("wrote %s (%s, %.1f MB)", path, fmt, len(data) / 1e6)
    return ExportResult(Path(path), fmt, len(data), diff)


def export_bytes(
    model: nn.Module,
    *,
    fmt: str,
    classes: list[str] | None = None,
    verify: bool = True,
    opset: int = ONNX_OPSET,
) -> tuple[bytes, float | None]:
    """What `export` writes, in memory, and its max abs difference from PyTorch (None when not verified); for a
    caller that picks where to write only once the bytes exist (predict's ONNX cache: beside the weights, else the
    user's cache, else nowhere)."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if opset < 17:
        raise UsageError(f"ONNX opset {opset} is too old; use 17 or newer")
    net = unwrap_model(model)
    if not all(hasattr(net, a) for a in ("model_name", "model_kwargs", "preprocessing")):
        raise UsageError("export needs a model built by create_model or load_weights (it records how to rebuild it)")
    if classes is None:
        classes = getattr(net, "classes", None)
    if classes is not None and len(classes) != net.num_classes:
        raise UsageError(f"{len(classes)} class names for a model with {net.num_classes} outputs")
    metadata = build_metadata(net, classes)
    with _cpu_eval(net) as cpu_net:
        if fmt == "safetensors":
            data, diff = _safetensors_bytes(cpu_net, metadata, verify)
        elif fmt == "onnx":
            data, diff = _onnx_bytes(cpu_net, metadata, opset, verify)
        else:
            data, diff = _torchscript_bytes(cpu_net, metadata, verify)
    return data, diff


@contextlib.contextmanager
def _cpu_eval(net: ClassicNet) -> Iterator[ClassicNet]:
    """The model in eval mode on the CPU in float32 (a copy when it lives elsewhere); its mode is restored after."""
    params = list(net.parameters())
    on_cpu_fp32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    target = net if on_cpu_fp32 else copy.deepcopy(net).to("cpu", torch.float32)
    was_training = net.training
    target.eval()
    try:
        yield target
    finally:
        net.train(was_training)


def example_batch(preprocessing: Preprocessing, n: int, *, seed: int = 0) -> torch.Tensor:
    """n random images normalised as the model expects (uniform pixels in [0, pixel_scale], then (x - mean) / std)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, *preprocessing.input_size, generator=generator) * preprocessing.pixel_scale
    mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _check_close(name: str, reference: torch.Tensor, output: torch.Tensor) -> float:
    diff = float((reference - output).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    if not diff <= VERIFY_TOLERANCE * scale:  # also catches NaN
        raise WeightsError(f"{name} export does not reproduce PyTorch: max abs difference {diff:.3g}; nothing written")
    return diff


def _safetensors_bytes(net: ClassicNet, metadata: dict[str, str], verify: bool) -> tuple[bytes, float | None]:
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import save as save_safetensors

    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    data = save_safetensors(tensors, metadata=metadata)
    if not verify:
        return data, None
    back = load_safetensors(data)
    same = back.keys() == tensors.keys() and all(
        back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items()
    )
    if not same:
        raise WeightsError("safetensors export does not round-trip bit-exactly; nothing written")
    return data, 0.0


# Loggers of the exporters that report every optimisation pass at INFO level.
_CHATTY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter (optimiser passes, deprecation notes, 'torchvision is not installed')."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _onnx_bytes(net: ClassicNet, metadata: dict[str, str], opset: int, verify: bool) -> tuple[bytes, float | None]:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as e:
        raise UsageError(f"ONNX export needs onnx and onnxscript ({e}); pip install 'classicnets[onnx]'") from None
    example = example_batch(net.preprocessing, 2)  # batch 2: torch.export would specialise a batch of 1
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    assert program is not None  # torch.onnx.export(dynamo=True) returns the program
    proto = program.model_proto
    proto.doc_string = f"classicnets {net.model_name}: input N x {'x'.join(map(str, net.preprocessing.input_size))}"
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if not verify:
        return proto.SerializeToString(), None
    onnx.checker.check_model(proto, full_check=True)  # structure, types and shapes of every node
    data = proto.SerializeToString()
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed: the ONNX file was checked but not run")
        return data, None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    diffs = []
    for n in VERIFY_BATCHES:
        x = example_batch(net.preprocessing, n, seed=n)
        with torch.no_grad():
            reference = net(x)
        output = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
        diffs.append(_check_close("ONNX", reference, output))
    return data, max(diffs)


def _torchscript_bytes(net: ClassicNet, metadata: dict[str, str], verify: bool) -> tuple[bytes, float | None]:
    example = example_batch(net.preprocessing, 2)
    with _quiet_exporter(), torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
    buffer = io.BytesIO()
    with _quiet_exporter():
        torch.jit.save(traced, buffer, _extra_files={"classicnets.json": json.dumps(metadata)})
    data = buffer.getvalue()
    if not verify:
        return data, None
    with _quiet_exporter():
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    diffs = []
    for n in VERIFY_BATCHES:
        x = example_batch(net.preprocessing, n, seed=n)
        with torch.no_grad():
            diffs.append(_check_close("TorchScript", net(x), loaded(x)))
    return data, max(diffs)
