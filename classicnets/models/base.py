"""What every classicnets model shares: the input-size check and a replaceable classifier head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from classicnets.errors import InputSizeError

if TYPE_CHECKING:
    from classicnets.models.preprocessing import Preprocessing


class ClassicNet(nn.Module):
    """Base class of the built-in models.

    Subclasses set `min_input_size` (the smallest square input, in pixels, the layers can reduce without running
    out of pixels) and `head` (the dotted name of the final nn.Linear). They either define `features`, `avgpool`
    and `classifier` and use the forward below, or write their own forward that starts with `self.check_input(x)`,
    so a too-small image fails with one clear line instead of a shape error deep inside a layer.
    """

    min_input_size: int = 1
    head: str = "classifier"
    # False for a feature extractor without a classifier (alexnet_tf_benchmark): it cannot be trained, and `bench`
    # times its backward on sum(x ** 2) / 2 of its output, as TensorFlow's AlexNet benchmark does.
    has_classifier: bool = True
    # Extra heads replaced together with the main one (GoogLeNet's auxiliary classifiers).
    extra_heads: tuple[str, ...] = ()
    # The paper's layer names -> dotted module names, for fine-tuning flags (--skip-layers fc8, --freeze-until conv5).
    layer_names: dict[str, str] = {}
    # The layer Grad-CAM looks at by default (inference/layers.py): None = the last convolution with a map larger
    # than 1x1; models whose last stage is a block of several convolutions name the block.
    cam_layer: str | None = None
    # Set on every instance by create_model and the weight loaders (declared here so code and type checkers know):
    preprocessing: Preprocessing  # how images become this model's input
    model_name: str  # the registered name that rebuilds it: create_model(model_name, **model_kwargs)
    model_kwargs: dict[str, Any]
    classes: list[str] | None  # class names in output order, when the weights come with them
    new_layers: list[str]  # layers trained from scratch while fine-tuning (their own param group)
    channels_last: bool  # the memory layout runtime.prepare_model chose
    inference_dtype: torch.dtype  # the dtype runtime.prepare_inference cast the weights to once

    def forward(self, x: torch.Tensor) -> Any:
        # The torchvision shape shared by LeNet, AlexNet and VGG; GoogLeNet and ResNet override it.
        self.check_input(x)
        x = self.avgpool(self.features(x))  # N x C x h x w
        return self.classifier(torch.flatten(x, 1))  # N x num_classes

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise InputSizeError(f"{type(self).__name__} expects a batch N x C x H x W, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h < self.min_input_size or w < self.min_input_size:
            raise InputSizeError(
                f"input {h}x{w} is too small for {type(self).__name__}: "
                f"the minimum is {self.min_input_size}x{self.min_input_size}"
            )

    @property
    def num_classes(self) -> int:
        return self.get_classifier().out_features

    def get_classifier(self) -> nn.Linear:
        return cast(nn.Linear, self.get_submodule(self.head))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer (and any auxiliary heads) by freshly initialised ones with `num_classes` outputs."""
        for name in (self.head, *self.extra_heads):
            try:
                old = cast(nn.Linear, self.get_submodule(name))
            except AttributeError:  # an optional head that is switched off (aux1 = None)
                continue
            new = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
            self._init_new_head(new)
            parent_name, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent_name) if parent_name else self, child, new)
        if hasattr(self, "model_kwargs"):  # set by create_model; keeps checkpoints rebuildable
            self.model_kwargs["num_classes"] = num_classes

    def _init_new_head(self, layer: nn.Linear) -> None:
        """How a replaced head is initialised; models override this to follow their paper's init."""
        nn.init.normal_(layer.weight, 0.0, 0.01)
        nn.init.zeros_(layer.bias)

    # Submodules of the torchvision shape (a model with its own forward may lack them).
    features: nn.Module
    avgpool: nn.Module
    classifier: nn.Module


def is_tracing() -> bool:
    """True while torch.compile, torch.export (and so the ONNX exporter) or torch.jit trace the model."""
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    )


def unwrap_model(model: nn.Module) -> ClassicNet:
    """The classicnets model itself inside the wrappers training may add: DistributedDataParallel (`.module`) and
    torch.compile (`._orig_mod`), in either order. (A module without wrappers comes back as it is.)"""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = cast(nn.Module, model._orig_mod)
        else:
            return cast(ClassicNet, model)
