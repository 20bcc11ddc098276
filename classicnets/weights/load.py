"""load_weights: any weight file we know -> a ready model with its preprocessing and class names attached.

Formats (told apart by their first bytes when fmt="auto"):
- "classicnets": our checkpoint (classicnets/checkpoint.py), a torch zip read with weights_only=True;
- "torchvision": a bare or wrapped torchvision state dict (.pth), also a torch zip, so the two are told apart
  after the safe load by the checkpoint's "format" field; the file does not name its network, `model` must;
- "caffe-npy": bvlc_alexnet.npy (caffe.py), through the restricted unpickler;
- "safetensors": our export (metadata names the model) or a plain state dict (then `model` must name it).

Instead of a path, a known name (classicnets/weights/known.py): "alexnet.imagenet", or "imagenet" with `model`;
the file is downloaded into the cache and checked first (classicnets/weights/hub.py), then read as above.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classicnets.choices import IMPORT_FORMATS
from classicnets.errors import UsageError, WeightsError, first_line
from classicnets.models.base import ClassicNet
from classicnets.models.preprocessing import Preprocessing
from classicnets.weights import caffe
from classicnets.weights.checkpoint import FORMAT as CHECKPOINT_FORMAT
from classicnets.weights.checkpoint import load_checkpoint, safe_torch_load, validate_checkpoint
from classicnets.weights.hub import cached_path, fetch_weights, sha256_of, weights_dir
from classicnets.weights.known import KnownWeights, find_known_weights
from classicnets.weights.metadata import empty_model, is_ours, model_from_metadata
from classicnets.weights.state_dicts import load_state_dict_strict, unwrap_state_dict

log = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000
# torch.hub's naming convention, which torchvision's weight files follow (alexnet-owt-7be5be79.pth): NAME-<the first
# 8 or more hex digits of the file's SHA-256>.EXT, checked by torch.hub.load_state_dict_from_url(check_hash=True)
# (torch.hub.HASH_REGEX is r"-([a-f0-9]*)\."; we ask for at least the 8 digits the convention names).
HUB_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


@functools.cache
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files("classicnets").joinpath("assets/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == IMAGENET_CLASSES, f"the shipped ImageNet class list has {len(names)} names"
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in synset order (0 tench ... 999 toilet tissue), shipped with the package."""
    return list(_imagenet_classes())


def detect_format(path: str | os.PathLike) -> str:
    """The kind of file at `path` from its first bytes: "caffe-npy", "safetensors" or "torch" (checkpoint or .pth)."""
    path = Path(path)
    _check_file(path)
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"\x93NUMPY"):
        return "caffe-npy"
    if head.startswith(b"PK\x03\x04"):
        if _is_torchscript(path):
            raise WeightsError(
                f"{path}: a TorchScript export: run it with torch.jit.load; to load weights, use the checkpoint "
                "or .safetensors file it was exported from"
            )
        return "torch"
    if head[:1] == b"\x80":  # torch.save's legacy (non-zip) format starts with a pickle protocol marker
        return "torch"
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return "safetensors"
    if path.suffix.lower() == ".onnx":
        raise WeightsError(f"{path}: an ONNX export is for inference runtimes; load the checkpoint it came from")
    raise WeightsError(
        f"{path}: not a weight file classicnets can read (expected a classicnets checkpoint, a torchvision .pth, "
        "bvlc_alexnet .npy or .safetensors)"
    )


def load_weights(
    path: str | os.PathLike,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    fmt: str = "auto",
    progress: bool = True,
) -> ClassicNet:
    """Build the model that `path` holds weights for and load them strictly.

    `path` is a file or the name of known pretrained weights ("alexnet.imagenet", or "imagenet" with `model`:
    `classicnets weights` lists them), downloaded into the cache and checked on first use (a progress bar unless
    `progress=False`); an existing file of the same name wins.
    `fmt`: "auto" (detect), "classicnets", "caffe-npy", "torchvision" or "safetensors". `model` names the network;
    it is required for torchvision state dicts (they do not say which network they belong to) and checked against
    the file otherwise. The model comes back with `.preprocessing` (Caffe's BGR/0-255/mean convention for
    bvlc_alexnet.npy, torchvision's for torchvision files, the stored one for our files), `.classes` (the ImageNet
    names for 1000-class ImageNet weights, else what the file stores, else None), `.model_name`, `.model_kwargs`
    and `.new_layers` (dotted names of freshly initialised layers). When `num_classes` differs from the file's
    class count the head is replaced by a new one (logged) and `.classes` becomes None.
    Any problem with the file raises WeightsError, one line naming the file (and layer, with both shapes).
    """
    if fmt not in IMPORT_FORMATS:
        raise UsageError(f"unknown weight format {fmt!r}; choose one of {', '.join(IMPORT_FORMATS)}")
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"num_classes must be at least 1, got {num_classes}")
    known = find_known_weights(path, model)
    if known is not None:
        net = _load_known(known, fmt=fmt, progress=progress)
    else:
        net = _load_file(Path(path), model, fmt)
    net.new_layers = []
    if num_classes is not None and num_classes != net.num_classes:
        replace_head(net, num_classes)
    return net


def weights_file(path: str | os.PathLike, *, model: str | None = None) -> Path:
    """The file `load_weights(path, model=model)` reads: `path` itself, or for a known name its file in the weights
    cache (call after load_weights, which downloads it)."""
    known = find_known_weights(path, model)
    return Path(path) if known is None else cached_path(known)


def _load_known(known: KnownWeights, *, fmt: str, progress: bool) -> ClassicNet:
    if fmt not in ("auto", known.fmt):
        raise UsageError(f"{known.name} is a {known.fmt} file, not {fmt}")
    path = fetch_weights(known, progress=progress)  # checked against the published SHA-256 (once, hub.py)
    net = _load_file(path, known.model, known.fmt)
    net.preprocessing = known.preprocessing  # the publisher's (torchvision's V2 ResNets resize to 232, not 256)
    return net


def _load_file(path: Path, model: str | None, fmt: str) -> ClassicNet:
    """The model in one weight file. Our checkpoints check their own digest; a foreign file has none inside, so a
    name in torch.hub's form is checked (check_hash_in_name), except in the weights cache, whose files hub.py checks
    against the published table."""
    _check_file(path)
    source = str(path)
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "classicnets":
        return _from_checkpoint(load_checkpoint(path), model, source=source)
    data = safe_torch_load(path) if kind in ("torch", "torchvision") else None
    if kind == "torch" and isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(validate_checkpoint(data, source), model, source=source)
    if not path.resolve().is_relative_to(weights_dir().resolve()):
        check_hash_in_name(path)
    if kind == "caffe-npy":
        return _load_caffe(path, model)
    if kind == "safetensors":
        return _load_safetensors(path, model)
    return _from_state_dict(unwrap_state_dict(data, source=source), model, source=source, torchvision=True)


def check_hash_in_name(path: Path) -> None:
    """Foreign weight files carry no checksum of their own; a name in torch.hub's NAME-<sha256 prefix>.EXT form does:
    a file whose SHA-256 does not begin with those digits is damaged (or was renamed)."""
    match = HUB_HASH_IN_NAME.search(path.name)
    if match is None:
        return
    digest, expected = sha256_of(path), match[1]
    if not digest.startswith(expected):
        raise WeightsError(
            f"{path}: damaged: its SHA-256 begins {digest[: len(expected)]}, not {expected} as its name says "
            "(torch.hub's NAME-<sha256 prefix>.pth convention); download it again, or rename it if that part of "
            "the name is not a checksum"
        )
    log.debug("%s: SHA-256 matches the %s in its name", path, expected)


def replace_head(net: ClassicNet, num_classes: int) -> None:
    """A new, freshly initialised head with `num_classes` outputs; the old class names no longer apply."""
    old = net.num_classes
    net.reset_classifier(num_classes)
    log.info("replaced the %d-class head with a new %d-class head (%s)", old, num_classes, net.head)
    net.classes = None
    heads = [name for name in (net.head, *net.extra_heads) if _has_submodule(net, name)]
    net.new_layers = [*getattr(net, "new_layers", []), *heads]


def _load_caffe(path: Path, model: str | None) -> ClassicNet:
    if model not in (None, caffe.MODEL_NAME):
        raise WeightsError(f"{path}: Caffe bvlc_alexnet weights fit {caffe.MODEL_NAME} (the 2012 layout), not {model}")
    layers = caffe.read_caffe_npy(path)
    num_classes = caffe.num_classes_of(layers, source=str(path))
    net = empty_model(caffe.MODEL_NAME, {"num_classes": num_classes, **caffe.MODEL_KWARGS}, source=str(path))
    state = caffe.caffe_state_dict(layers, net.state_dict(), source=str(path))
    load_state_dict_strict(net, state, source=str(path))
    net.preprocessing = caffe.CAFFE_PREPROCESSING
    net.classes = imagenet_classes() if num_classes == IMAGENET_CLASSES else None
    log.info("loaded Caffe bvlc_alexnet weights from %s (%d classes, BGR 0-255 input)", path, num_classes)
    return net


def _load_safetensors(path: Path, model: str | None) -> ClassicNet:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # SafetensorError, OSError, ... on truncated or garbled files
        raise WeightsError(f"{path}: unreadable or truncated safetensors file ({first_line(e)})") from None
    if not is_ours(metadata):
        return _from_state_dict(unwrap_state_dict(state, source=str(path)), model, source=str(path))
    net, classes = model_from_metadata(metadata, source=str(path))
    if model is not None and model != net.model_name:
        raise WeightsError(f"{path}: holds {net.model_name} weights, not {model}")
    load_state_dict_strict(net, state, source=str(path))
    net.classes = classes
    return net


def _from_checkpoint(ckpt: dict[str, Any], model: str | None, *, source: str) -> ClassicNet:
    spec = ckpt["model"]
    if not isinstance(spec, dict) or "name" not in spec:
        raise WeightsError(f"{source}: damaged checkpoint (no model name)")
    if model is not None and model != spec["name"]:
        raise WeightsError(f"{source}: holds {spec['name']} weights, not {model}")
    net = empty_model(spec["name"], dict(spec.get("kwargs", {})), source=source)
    load_state_dict_strict(net, unwrap_state_dict(ckpt["state_dict"], source=source), source=source)
    try:
        net.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    except (UsageError, TypeError) as e:
        raise WeightsError(f"{source}: damaged preprocessing in the checkpoint ({e})") from None
    net.classes = list(ckpt["classes"]) or None
    return net


def _from_state_dict(
    state: dict[str, torch.Tensor], model: str | None, *, source: str, torchvision: bool = False
) -> ClassicNet:
    """A model named by the caller for a bare state dict; its head follows the file's class count."""
    if model is None:
        raise UsageError(
            f"{source}: a plain state dict does not say which network it belongs to; name it "
            "(--model alexnet, vgg16, resnet50, googlenet ...)"
        )
    kwargs: dict[str, Any] = {}
    if torchvision and model == "googlenet":
        # torchvision's googlenet builder does the same when it loads its weights: they were trained on inputs in
        # [-1, 1] (transform_input=True), and the auxiliary heads are dropped unless asked for.
        kwargs["transform_input"] = True
        aux = [k for k in state if k.startswith(("aux1.", "aux2."))]
        if aux:
            state = {k: v for k, v in state.items() if k not in set(aux)}
            log.info("dropped the %d auxiliary-head tensors of the googlenet weights (as torchvision does)", len(aux))
    net = empty_model(model, kwargs, source=source)
    head = state.get(f"{net.head}.weight")
    if head is not None and head.dim() == 2 and head.shape[0] != net.num_classes:
        net.reset_classifier(int(head.shape[0]))  # the file's class count; loaded over below
    load_state_dict_strict(net, state, source=source)
    net.classes = imagenet_classes() if net.num_classes == IMAGENET_CLASSES else None
    return net


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or n.split("/", 1)[-1].startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _has_submodule(net: nn.Module, name: str) -> bool:
    try:
        return net.get_submodule(name) is not None
    except AttributeError:
        return False
