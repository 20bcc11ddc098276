"""What a classicnets checkpoint holds, written atomically and read without running code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so `torch.load(weights_only=True)`
reads it (the loader refuses anything else; we never fall back to an unsafe load):

    format          "classicnets-checkpoint"
    version         1
    model           {"name": registered model name, "kwargs": builder keyword arguments (num_classes, in_chans, ...)}
    state_dict      the model's weights
    classes         class names, index order
    preprocessing   Preprocessing.to_dict(): input size, resize, mean/std, channel order, pixel scale
    # optional, written by training (classicnets.training.loop; last.pt has them all, best.pt the first four):
    config          the run's resolved config (Config.to_dict(): plain YAML-like values)
    epoch           completed epochs
    metrics         one dict per completed epoch (the rows of metrics.csv)
    best            {"epoch", "val_top1", "val_loss"} of the best epoch so far
    step_in_epoch   optimisation steps done in the unfinished epoch (0 at an epoch boundary)
    global_step     optimisation steps done in all
    partial         [loss_sum, top1, top5, count] of the unfinished epoch; partial_seconds its time
    optimizer       optimizer.state_dict() (param groups keep "initial_lr", the schedule's base)
    scheduler       LRSchedule.state_dict(): {"best_error", "bad_epochs", "decays"}
    scaler          GradScaler.state_dict() for fp16, else None
    rng             {"torch": ByteTensor, "python": [version, [ints], gauss], "numpy": ["MT19937", [ints], pos,
                    has_gauss, cached], "cuda": [ByteTensor, ...]}: plain lists, as weights_only refuses numpy
    new_layers      layers trained from scratch while fine-tuning (their param group), for --resume
    digest          "sha256:<hex>" of everything above (tensor bytes, dtypes, shapes, every other value), checked
                    on load: a flipped bit in the file is refused instead of giving wrong numbers. Files written
                    before the digest existed load without the check.

`eval` and `predict` need nothing but this file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classicnets.errors import WeightsError, first_line
from classicnets.fileio import atomic_write_bytes
from classicnets.models.base import ClassicNet, unwrap_model
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import create_model

FORMAT = "classicnets-checkpoint"
VERSION = 1
DIGEST_KEY = "digest"
REQUIRED_KEYS = ("model", "state_dict", "classes", "preprocessing")


def build_checkpoint(
    model: nn.Module, *, classes: list[str], state_dict: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The checkpoint dict for `model` (built by create_model) plus any training state in `extra`; `state_dict`: a
    copy of the model's weights to store instead of the live ones (a background write, training.writer)."""
    model = unwrap_model(model)  # DistributedDataParallel, torch.compile
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model.model_name, "kwargs": dict(model.model_kwargs)},
        "state_dict": model.state_dict() if state_dict is None else state_dict,
        "classes": list(classes),
        "preprocessing": model.preprocessing.to_dict(),
        **extra,
    }


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Serialise in memory with its digest, then write atomically (temporary file, flush, fsync, rename)."""
    buffer = io.BytesIO()
    torch.save({**checkpoint, DIGEST_KEY: content_digest(checkpoint)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a classicnets checkpoint safely (weights_only=True), with one-line errors for every bad file."""
    path = Path(path)
    return validate_checkpoint(safe_torch_load(path), str(path))


def validate_checkpoint(data: Any, source: str) -> dict[str, Any]:
    """`data` read from `source` if it is a whole, undamaged classicnets checkpoint; else one WeightsError line."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise WeightsError(f"{source}: not a classicnets checkpoint (use `classicnets import` for other weight files)")
    stored = data.pop(DIGEST_KEY, None)
    if stored is not None and stored != content_digest(data):
        raise WeightsError(
            f"{source}: damaged: its contents no longer match the checksum stored when it was written (a bad disk, "
            "copy or download); use another copy of the file"
        )
    version = data.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise WeightsError(f"{source}: checkpoint version {version!r} is newer than this classicnets supports")
    missing = set(REQUIRED_KEYS) - set(data)
    if missing:
        raise WeightsError(f"{source}: checkpoint lacks {', '.join(sorted(missing))}")
    return data


def content_digest(checkpoint: dict[str, Any]) -> str:
    """SHA-256 over a checkpoint's values in order: every tensor's dtype, shape and bytes, every other value's repr."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in checkpoint.items() if k != DIGEST_KEY})
    return f"sha256:{h.hexdigest()}"


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:  # numbers, strings, None, bools: repr round-trips them exactly
        h.update(f"V{type(value).__name__}:{value!r}".encode())


def safe_torch_load(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True on the CPU; any failure becomes one WeightsError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused: the file contains Python objects that could run code ({first_line(e)}); "
            "only plain tensors and containers are loaded"
        ) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable or truncated weight file ({first_line(e)})") from None


def model_from_checkpoint(checkpoint: dict[str, Any]) -> ClassicNet:
    """Rebuild the model of a checkpoint and load its weights strictly; preprocessing and classes attached."""
    spec = checkpoint["model"]
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as e:
        raise WeightsError(f"checkpoint weights do not fit {spec['name']}: {first_line(e)}") from None
    model.preprocessing = Preprocessing.from_dict(checkpoint["preprocessing"])  # may differ (Caffe BGR weights)
    model.classes = list(checkpoint["classes"])
    return model
