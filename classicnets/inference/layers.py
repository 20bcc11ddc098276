"""Finding a model's layers for the pictures: by the paper's name (`conv1`, `fc7`) or a dotted module name, in the
order the forward pass runs them, with their output shapes; the layer Grad-CAM looks at; the features the
classifier reads (the paper's "last hidden layer").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from classicnets.errors import UsageError
from classicnets.models.base import ClassicNet, unwrap_model

# What may follow a convolution before its map is final: normalisation, then the activation function.
NORMS = (nn.BatchNorm2d, nn.LocalResponseNorm)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


@dataclass(frozen=True)
class Layer:
    name: str  # dotted module name (features.conv1)
    label: str  # the paper's name when the model has one (conv1), else the dotted name
    module: nn.Module
    output_shape: tuple[int, ...]  # C x H x W of one image at the model's input size


def paper_labels(model: ClassicNet) -> dict[str, str]:
    """Dotted module name -> the paper's layer name, for the models that know them (the AlexNets)."""
    return {dotted: paper for paper, dotted in getattr(unwrap_model(model), "layer_names", {}).items()}


def label_of(model: ClassicNet, name: str) -> str:
    return paper_labels(model).get(name, name)


def find_layer(model: ClassicNet, name: str) -> str:
    """The dotted module name of `name` (a paper name such as conv1 or a dotted module name); a UsageError names
    the valid ones."""
    from classicnets.weights.surgery import resolve_layer

    return resolve_layer(model, name)


def forward_order(model: ClassicNet) -> list[Layer]:
    """Every leaf module (one without children) in the order the forward pass first runs it, with its output
    shape for one image at the model's input size (one probe forward pass on zeros)."""
    net = unwrap_model(model)
    names: dict[nn.Module, str] = {m: n for n, m in net.named_modules() if n and not any(True for _ in m.children())}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            shapes.setdefault(names[module], tuple(output.shape[1:]))

    with _hooks([m.register_forward_hook(record) for m in names]), torch.no_grad():
        net(_probe_input(net))
    labels = paper_labels(net)
    modules = dict(net.named_modules())
    return [Layer(n, labels.get(n, n), modules[n], shape) for n, shape in shapes.items()]


def conv_layers(model: ClassicNet) -> list[Layer]:
    """Every nn.Conv2d in forward order, with its output shape (forward_order)."""
    return [layer for layer in forward_order(model) if isinstance(layer.module, nn.Conv2d)]


def gradcam_layer(model: ClassicNet) -> str:
    """The layer Grad-CAM looks at by default: the model's own choice (`cam_layer`: the last block of ResNet and
    GoogLeNet), else the last convolution whose map is larger than 1x1 (conv5 of AlexNet; C3 of LeNet-5, whose
    C5 map is 1x1 and could not show where anything is), taken after its activation function (and a BatchNorm
    between them) when one follows: Grad-CAM's own code reads Caffe's conv5 / relu5_3 blobs, which Caffe's in-place
    ReLU has already rectified (Selvaraju et al. 2017, https://github.com/ramprs/grad-cam)."""
    net = unwrap_model(model)
    if getattr(net, "cam_layer", None):
        return str(net.cam_layer)
    order = forward_order(net)
    spatial = [i for i, layer in enumerate(order) if isinstance(layer.module, nn.Conv2d) and is_map(layer)]
    if not spatial:
        raise UsageError(f"{type(net).__name__} has no convolution with a map larger than 1x1 for Grad-CAM")
    conv = order[spatial[-1]]
    for layer in order[spatial[-1] + 1 :]:
        if layer.output_shape != conv.output_shape or not isinstance(layer.module, NORMS + ACTIVATIONS):
            break
        if isinstance(layer.module, ACTIVATIONS):
            return layer.name
    return conv.name


def is_map(layer: Layer) -> bool:
    """A map larger than 1x1: something Grad-CAM can localise in."""
    return len(layer.output_shape) == 3 and layer.output_shape[-1] * layer.output_shape[-2] > 1


def feature_label(model: ClassicNet) -> str:
    """What the classifier reads, named as a reader knows it: the last hidden fully connected layer before the
    head (fc7 for AlexNet, F6 for LeNet-5), else the pooled convolutional features (ResNet, GoogLeNet)."""
    net = unwrap_model(model)
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and not n.startswith("aux")]
    before_head = linears[: linears.index(net.head)] if net.head in linears else []
    return label_of(net, before_head[-1]) if before_head else "pooled features"


@contextlib.contextmanager
def _hooks(handles: Sequence[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _probe_input(net: ClassicNet) -> torch.Tensor:
    parameter = next(net.parameters())
    size = tuple(net.preprocessing.input_size)
    return torch.zeros((1, *size), device=parameter.device, dtype=torch.float32)


@contextlib.contextmanager
def capture_outputs(
    model: nn.Module, names: Sequence[str], *, keep_graph: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, each forward pass fills {name: output of that module}. The output is kept as computed:
    a later in-place ReLU changes the module's result, not the tensor kept here. With `keep_graph` the kept
    tensor stays in the autograd graph (Grad-CAM differentiates the class score with respect to it)."""
    net = unwrap_model(model)
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def keep(_module: nn.Module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise UsageError(f"layer {name} does not output a feature map")
            outputs[name] = output if keep_graph else output.detach()
            return output.clone()  # what the next layer gets (and may change in place)

        return keep

    handles = [net.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    with _hooks(handles):
        yield outputs


@contextlib.contextmanager
def capture_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, each forward pass appends what the classifier head reads (N x D), detached."""
    net = unwrap_model(model)
    found: list[torch.Tensor] = []

    def keep(_module: nn.Module, inputs) -> None:
        found.append(inputs[0].detach().flatten(1))

    with _hooks([net.get_classifier().register_forward_pre_hook(keep)]):
        yield found
