"""Plain PyTorch state dicts (torchvision's `.pth` files and our own): unwrap, clean keys, check strictly, load.

torchvision's checkpoints are bare `{key: tensor}` dicts whose keys our models keep unchanged (`features.0.weight`,
`layer1.0.conv1.weight`, `fc.bias`). Training scripts often save them wrapped (`{"model": sd}`, `{"state_dict": sd}`)
and with the prefixes that DistributedDataParallel (`module.`) and torch.compile (`_orig_mod.`) add.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from classicnets.errors import WeightsError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model")  # torchvision's references/classification saves {"model": sd, ...}
PREFIXES = ("module.", "_orig_mod.")
# BatchNorm buffers that older checkpoints (before PyTorch 0.4.1) lack; BatchNorm fills them in when absent.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_SHOW = 4  # key names shown in a message before "and N more"


def unwrap_state_dict(data: Any, *, source: str) -> dict[str, torch.Tensor]:
    """The `{key: tensor}` dict inside `data`, with `module.` / `_orig_mod.` prefixes stripped."""
    if isinstance(data, dict):
        for key in WRAPPER_KEYS:
            inner = data.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                data = inner
                break
    if not isinstance(data, dict) or not data:
        raise WeightsError(f"{source}: not a state dict (expected a dict of tensors, got {_describe(data)})")
    bad = [str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{source}: not a state dict: {_names(bad)} are not tensors")
    clean: dict[str, torch.Tensor] = {}
    for key, value in data.items():
        name = key
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        if name in clean:
            raise WeightsError(f"{source}: key {name!r} appears twice once prefixes are stripped")
        clean[name] = value
    return clean


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Every key of `model` present (except optional BatchNorm counters), none extra, every shape equal.

    A mismatch raises one WeightsError line naming the keys, or the layer with its expected and actual shapes.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    name = getattr(model, "model_name", type(model).__name__)
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unexpected {_names(unexpected)}"] if unexpected else []
        )
        raise WeightsError(f"{source}: the weights do not fit {name}: {'; '.join(parts)}")
    for key, value in state.items():
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            raise WeightsError(
                f"{source}: {_layer_label(model, key)}: expected shape {want}, got {tuple(value.shape)} ({name})"
            )
        if not (value.is_floating_point() or key.endswith(OPTIONAL_SUFFIXES)):
            raise WeightsError(f"{source}: {key}: expected floating-point values, got {value.dtype}")


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """check_state_dict, then make the file's tensors the model's parameters and buffers (cast to the model's
    dtype, not copied otherwise), so `model` may be built on the meta device: no time spent on an initialisation
    the weights overwrite, and no second copy of 100+ MB in memory."""
    check_state_dict(model, state, source=source)
    full = {}
    for key, ref in model.state_dict().items():
        value = state.get(key)
        if value is None:  # an optional BatchNorm counter; what BatchNorm fills in for old checkpoints
            value = torch.zeros((), dtype=ref.dtype)
        full[key] = value.to(dtype=ref.dtype).contiguous()
    try:
        model.load_state_dict(full, strict=True, assign=True)
    except RuntimeError as e:  # check_state_dict should have caught it; keep the promise of one line anyway
        raise WeightsError(f"{source}: {str(e).strip().splitlines()[-1].strip()[:200]}") from None
    unloaded = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unloaded:  # a tensor outside the state dict (a non-persistent buffer): a bug in the model, not the file
        raise RuntimeError(f"{', '.join(unloaded)} of {type(model).__name__} are not in its state dict")


def _layer_label(model: nn.Module, key: str) -> str:
    """'conv1 (features.0.weight)' where the model names its layers as the paper does, else the key."""
    module_name = key.rpartition(".")[0]
    for paper, dotted in getattr(model, "layer_names", {}).items():
        if dotted == module_name:
            return f"{paper} ({key})"
    return key


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def _describe(data: Any) -> str:
    if isinstance(data, dict):
        return "an empty dict" if not data else f"a dict with keys {_names([str(k) for k in data])}"
    return f"a {type(data).__name__}"
