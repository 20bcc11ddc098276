"""A convolution's kernels as pictures, as Krizhevsky et al. 2012 show AlexNet's in Figure 3: one tile per kernel,
each contrast-stretched on its own (its smallest weight black, its largest white), colour when the layer reads the
three colour channels. For alexnet2012 the 96 conv1 kernels come in the paper's two groups: kernels 1-48 feed
the first half of the grouped conv2 (the paper's GPU 1), kernels 49-96 the second (GPU 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from classicnets.errors import UsageError
from classicnets.inference.layers import conv_layers, find_layer, label_of
from classicnets.models.base import ClassicNet, unwrap_model

log = logging.getLogger(__name__)


@dataclass
class FilterGrid:
    layer: str  # the layer's label (conv1)
    tiles: np.ndarray  # K x h x w x C float in [0, 1], C = 3 (colour) or 1
    groups: list[range]  # kernel indices of each group, in order (one group unless the next layer is grouped)
    note: str = ""  # how the tiles were made, when it is not plain (several input channels averaged)


def filter_grid(model: ClassicNet, layer: str | None = None) -> FilterGrid:
    """The kernels of `layer` (default: the first convolution) as contrast-stretched tiles, split into the groups
    the next convolution reads them in."""
    net = unwrap_model(model)
    convs = conv_layers(net)
    name = find_layer(net, layer) if layer else convs[0].name
    position = next((i for i, c in enumerate(convs) if c.name == name), None)
    if position is None:
        raise UsageError(f"{layer} is not a convolution; convolutions: {', '.join(c.label for c in convs)}")
    weight = cast(nn.Conv2d, convs[position].module).weight.detach().float().cpu()  # K x C_in x h x w
    tiles, note = _tiles(weight, channel_order=net.preprocessing.channel_order if position == 0 else "")
    following = cast(nn.Conv2d, convs[position + 1].module).groups if position + 1 < len(convs) else 1
    groups = _groups(len(tiles), following)
    return FilterGrid(label_of(net, name), tiles, groups, note)


def _tiles(weight: torch.Tensor, *, channel_order: str) -> tuple[np.ndarray, str]:
    """K x h x w x C tiles; a layer reading neither 1 nor 3 channels is shown averaged over its input channels."""
    note = ""
    if weight.shape[1] == 3:
        if channel_order == "BGR":  # Caffe's weights read BGR: show the kernels in the colours they see
            weight = weight.flip(1)
    elif weight.shape[1] != 1:
        note = f"each kernel averaged over its {weight.shape[1]} input channels"
        weight = weight.mean(dim=1, keepdim=True)
    flat = weight.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    span = (high - low).clamp_min(1e-12)[:, None, None, None]
    stretched = (weight - low[:, None, None, None]) / span
    stretched[high == low] = 0.5  # a constant kernel has no contrast to stretch
    return stretched.permute(0, 2, 3, 1).numpy(), note


def _groups(count: int, groups: int) -> list[range]:
    if groups <= 1 or count % groups:
        return [range(count)]
    size = count // groups
    return [range(g * size, (g + 1) * size) for g in range(groups)]


def grid_columns(count: int) -> int:
    """Columns of a near-square grid, wider than tall (48 kernels: 8 x 6)."""
    return max(1, int(np.ceil(np.sqrt(count * 4 / 3))))


def mosaic(tiles: np.ndarray, columns: int, *, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Tiles K x h x w x C laid out row by row, `columns` per row, `pad` pixels of `fill` around each one."""
    count, h, w, c = tiles.shape
    rows = -(-count // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), fill, dtype=np.float32)
    for k in range(count):
        top, left = pad + (k // columns) * (h + pad), pad + (k % columns) * (w + pad)
        out[top : top + h, left : left + w] = tiles[k]
    return out
