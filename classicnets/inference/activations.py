"""The feature maps one image produces in chosen layers: what each kernel responds to, where."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from classicnets.errors import UsageError
from classicnets.inference.layers import capture_outputs, conv_layers, find_layer, is_map, label_of
from classicnets.models.base import ClassicNet, unwrap_model

# Layers shown when none are named: the convolutions with a map larger than 1x1, at most this many, spread evenly
# from the first to the last (all five of AlexNet's; 6 of VGG-16's 13).
DEFAULT_MAX_LAYERS = 6


@dataclass
class LayerMaps:
    layer: str  # the label (conv1) or dotted name
    maps: np.ndarray  # C x H x W float32: the layer's output for the image (before its activation function)


def default_layers(model: ClassicNet) -> list[str]:
    spatial = [c.name for c in conv_layers(model) if is_map(c)]
    if len(spatial) <= DEFAULT_MAX_LAYERS:
        return spatial
    picks = np.linspace(0, len(spatial) - 1, DEFAULT_MAX_LAYERS).round().astype(int)
    return [spatial[i] for i in picks]


def activation_maps(model: ClassicNet, x: torch.Tensor, layers: Sequence[str] | None = None) -> list[LayerMaps]:
    """The maps of `layers` (paper names or dotted names; default: default_layers) for a normalised image batch of
    one, 1 x C x H x W, in the order given."""
    net = unwrap_model(model)
    names = [find_layer(net, n) for n in layers] if layers else default_layers(net)
    with torch.inference_mode(), capture_outputs(net, names) as outputs:
        net.eval()(x)
    for name in names:
        if outputs[name].dim() != 4:
            raise UsageError(f"layer {label_of(net, name)} outputs a vector, not feature maps; pick a convolution")
    return [LayerMaps(label_of(net, n), outputs[n][0].float().cpu().numpy()) for n in names]
