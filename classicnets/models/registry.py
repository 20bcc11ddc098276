"""Model registry: register_model, create_model, list_models, and what each model expects as input.

Modelled on torchvision's `models/_api.py` and timm's `_registry.py`: a builder function is registered under a
lower-case name together with its input convention, so data loading, checkpoints, `eval` and `predict` can ask the
registry instead of hard-coding sizes and means.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from classicnets.errors import UnknownModelError, UsageError
from classicnets.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    from classicnets.models.base import ClassicNet


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: its builder and what it expects."""

    name: str
    builder: Callable[..., ClassicNet] = field(repr=False)
    family: str
    preprocessing: Preprocessing
    min_size: int  # smallest square input (pixels) the network can process
    paper: str  # citation and link
    description: str = ""
    tutorial: str = ""  # the tutorial whose network this is, when it is one (described, as `models` shows it)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.preprocessing.input_size


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    family: str,
    preprocessing: Preprocessing,
    min_size: int,
    paper: str,
    description: str = "",
    tutorial: str = "",
) -> Callable[[Callable[..., ClassicNet]], Callable[..., ClassicNet]]:
    """Decorator registering a builder `fn(*, num_classes, in_chans, **kwargs) -> ClassicNet` under `name`."""

    def decorator(builder: Callable[..., ClassicNet]) -> Callable[..., ClassicNet]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, builder, family, preprocessing, min_size, paper, description, tutorial)
        return builder

    return decorator


def _load_builtin_models() -> None:
    # The registration cycle (documented in classicnets/models/__init__.py): the family modules import this module
    # to register themselves; importing the package here, on first use, runs them.
    import classicnets.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern (`"resnet*"`), sorted."""
    _load_builtin_models()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_model_info(name: str) -> ModelInfo:
    """The ModelInfo of `name`; an unknown name raises UnknownModelError listing the closest names."""
    _load_builtin_models()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), _REGISTRY, n=4, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(sorted(_REGISTRY))}"
        raise UnknownModelError(f"unknown model {name!r}; {hint}") from None


def create_model(
    name: str, *, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any
) -> ClassicNet:
    """Build a registered model with freshly initialised weights.

    `num_classes` sets the classifier's outputs (default: the model's own, 1000 for ImageNet models, 10 for LeNet-5),
    `in_chans` the input channels (1 for digits, 3 for photos); other keyword arguments go to the model's builder
    (for example `lrn="caffe"` for `alexnet2012`, `aux_logits=True` for `googlenet`). The model's preprocessing is
    attached as `model.preprocessing`, its registered name as `model.model_name` and the keyword arguments that
    rebuild it as `model.model_kwargs`.
    """
    info = get_model_info(name)
    if num_classes is not None:
        if num_classes < 1:
            raise UsageError(f"num_classes must be at least 1, got {num_classes}")
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        if in_chans not in (1, 3):
            raise UsageError(f"in_chans must be 1 or 3, got {in_chans}")
        kwargs["in_chans"] = in_chans
    try:
        model = info.builder(**kwargs)
    except UsageError:
        raise
    except (TypeError, ValueError) as e:  # an unknown keyword for this builder, or a value it does not take
        raise UsageError(f"{name}: {e}") from None
    model.preprocessing = info.preprocessing.with_channels(in_chans or info.input_size[0])
    model.model_name = name
    model.model_kwargs = dict(kwargs)  # what rebuilds this model: create_model(name, **model_kwargs)
    return model
