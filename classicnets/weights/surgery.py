"""Fine-tuning surgery: re-initialise named layers, freeze the rest, and give new layers their own learning rate.

This is what the TensorFlow AlexNet fine-tuning tutorials do with `skip_layer = ['fc8', 'fc7']` (train those from
scratch, load the rest) and what Caffe's fine-tuning recipe does with a 10x `lr_mult` on the new fc8.
Layers are named as in the paper where the model knows those names (`model.layer_names`: conv1 ... fc8 for the
AlexNets) or by their dotted module names (`features`, `layer4`, `classifier.6`, `fc`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from classicnets.errors import UsageError
from classicnets.models.alexnet import AlexNet2012
from classicnets.models.base import ClassicNet, unwrap_model

log = logging.getLogger(__name__)

# AlexNet 2012 paper, section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7, 0 elsewhere.
PAPER_INIT_STD = 0.01
PAPER_BIAS_ONE = frozenset({"conv2", "conv4", "conv5", "fc6", "fc7"})


def resolve_layer(model: nn.Module, name: str) -> str:
    """The dotted module name for a paper layer name (`fc8`) or a dotted module name (`classifier.6`)."""
    model = unwrap_model(model)
    paper = getattr(model, "layer_names", {})
    if name in paper:
        return paper[name]
    if name:
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            pass
    valid = [*paper, *(n for n, _ in model.named_children() if n not in paper)]
    raise UsageError(
        f"unknown layer {name!r} for {getattr(model, 'model_name', type(model).__name__)}; valid names: "
        f"{', '.join(valid)} (or any dotted module name, e.g. {_example(model)})"
    )


def _example(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if "." in n and any(True for _ in m.parameters(recurse=False))]
    return names[0] if names else "features"


def _split(names: str | Iterable[str] | None) -> list[str]:
    """'fc7,fc8' or ['fc7', 'fc8'] -> ['fc7', 'fc8']."""
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    return [n.strip() for n in names if n and n.strip()]


def _in_layer(param_name: str, layer: str) -> bool:
    return param_name == layer or param_name.startswith(layer + ".")


def finetune_surgery(
    model: nn.Module,
    *,
    skip_layers: str | Sequence[str] = (),
    freeze: str | Sequence[str] | None = None,
    freeze_until: str | None = None,
) -> dict[str, list[str]]:
    """Re-initialise `skip_layers`, freeze the layers named by `freeze` (prefixes such as "features") and every
    parameter registered up to and including `freeze_until`'s, in place.

    Returns {"reinitialised": dotted layer names, "frozen": dotted names of the modules whose parameters were
    frozen, "new_layers": every freshly initialised layer (these plus a head replaced by load_weights)};
    `model.new_layers` is updated for param_groups. Unknown layer names raise UsageError listing the valid ones.
    """
    net = unwrap_model(model)
    reinit = [resolve_layer(net, n) for n in _split(skip_layers)]
    freeze_names = [resolve_layer(net, n) for n in _split(freeze)]
    until = resolve_layer(net, freeze_until) if freeze_until else None

    for dotted in reinit:
        _reinitialise(net, dotted)

    params = list(net.named_parameters())
    to_freeze = {name for name, _ in params if any(_in_layer(name, f) for f in freeze_names)}
    if until is not None:
        last = max((i for i, (name, _) in enumerate(params) if _in_layer(name, until)), default=None)
        if last is None:
            raise UsageError(f"--freeze-until {freeze_until}: that layer has no parameters")
        to_freeze |= {name for name, _ in params[: last + 1]}
    new_layers = list(dict.fromkeys([*getattr(net, "new_layers", []), *reinit]))
    clash = sorted({n for n in new_layers for p in to_freeze if _in_layer(p, n)})
    if clash:
        raise UsageError(f"{', '.join(clash)} would be both new and frozen; freeze fewer layers")
    if to_freeze and len(to_freeze) == len(params):
        raise UsageError("that freezes every layer, leaving nothing to train; freeze fewer layers")

    frozen_modules: list[str] = []
    for name, p in params:
        if name in to_freeze:
            p.requires_grad_(False)
            frozen_modules.append(name.rpartition(".")[0])
    frozen_modules = list(dict.fromkeys(frozen_modules))
    net.new_layers = new_layers
    if reinit:
        log.info("re-initialised %s", ", ".join(reinit))
    if frozen_modules:
        log.info("froze %d parameter tensors in %s", len(to_freeze), _summarise(frozen_modules))
    return {"reinitialised": reinit, "frozen": frozen_modules, "new_layers": new_layers}


def _summarise(names: list[str], show: int = 6) -> str:
    return ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")


def _reinitialise(net: ClassicNet, dotted: str) -> None:
    """Fresh weights for one layer, drawn the way the model initialises that layer."""
    module = net.get_submodule(dotted)
    if not any(True for _ in module.parameters()):
        raise UsageError(f"layer {dotted} has no weights to re-initialise")
    heads = {getattr(net, "head", None), *getattr(net, "extra_heads", ())}
    paper_names = {v: k for k, v in getattr(net, "layer_names", {}).items()}
    if dotted in heads and isinstance(module, nn.Linear) and hasattr(net, "_init_new_head"):
        net._init_new_head(module)  # the model's own rule for a new classifier
    elif isinstance(net, AlexNet2012) and getattr(net, "model_kwargs", {}).get("init", "paper") == "paper":
        for name, m in module.named_modules(prefix=dotted):
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.normal_(m.weight, 0.0, PAPER_INIT_STD)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 1.0 if paper_names.get(name) in PAPER_BIAS_ONE else 0.0)
    else:  # PyTorch's default initialisation of each sub-layer
        for m in module.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()


def param_groups(
    model: nn.Module, *, lr: float, head_lr_mult: float = 1.0, new_layers: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: pretrained layers at `lr`, new layers at `lr * head_lr_mult`.

    New layers are `new_layers` (paper or dotted names) plus `model.new_layers` (set by load_weights when it
    replaced the head and by finetune_surgery); when there are none and `head_lr_mult` is not 1, the head is the new
    layer (Caffe's fine-tuning recipe: lr_mult 10 on fc8). Frozen parameters are left out. Each group carries a
    "name" ("pretrained" or "new"); empty groups are omitted.
    """
    if lr <= 0 or head_lr_mult <= 0:
        raise UsageError(f"learning rate and head_lr_mult must be positive, got lr={lr}, head_lr_mult={head_lr_mult}")
    net = unwrap_model(model)
    new = list(dict.fromkeys([*(resolve_layer(net, n) for n in _split(new_layers)), *getattr(net, "new_layers", [])]))
    if not new and head_lr_mult != 1.0:
        new = [n for n in (net.head, *getattr(net, "extra_heads", ())) if _exists(net, n)]
        log.info("no new layers: %s gets the %gx learning rate", ", ".join(new), head_lr_mult)
    pretrained: list[nn.Parameter] = []
    fresh: list[nn.Parameter] = []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (fresh if any(_in_layer(name, n) for n in new) else pretrained).append(p)
    groups = []
    if pretrained:
        groups.append({"params": pretrained, "lr": lr, "name": "pretrained"})
    if fresh:
        groups.append({"params": fresh, "lr": lr * head_lr_mult, "name": "new"})
    if not groups:
        raise UsageError("every parameter is frozen: nothing to train")
    return groups


def _exists(net: nn.Module, name: str) -> bool:
    try:
        return net.get_submodule(name) is not None
    except AttributeError:
        return False
