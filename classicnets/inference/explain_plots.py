"""The pictures of `classicnets show`: kernel grids (the paper's Figure 3), feature maps, nearest neighbours (the
paper's Figure 4). Grad-CAM overlays are image grids with heat maps (plots.plot_image_grid).

Built with matplotlib's object API like plots.py; every function returns the PNG bytes and writes them atomically
to `path` when given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from classicnets.inference.activations import LayerMaps
from classicnets.inference.filters import FilterGrid, grid_columns, mosaic
from classicnets.inference.neighbours import Neighbours
from classicnets.inference.plots import figure, save_figure, show_image

# Feature maps drawn per layer at most (ResNet-50's layer4 has 2,048); AlexNet's widest layer has 384.
MAX_MAPS = 512
# A kernel tile is drawn about this many pixels wide (an 11x11 kernel at 6 px a weight, a 5x5 one at 12), so small
# kernels are not specks and the paper's 96 still fit a page; a panel grows no wider than MAX_PANEL_INCHES.
TILE_PIXELS = 64
MAX_PANEL_INCHES = 7.0
DPI = 100  # plots.figure's


def _show_mosaic(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    ax.set_axis_off()


def plot_filters(grid: FilterGrid, path: str | os.PathLike | None = None) -> bytes:
    """One panel per group, side by side ("group 1 (GPU 1)", "group 2 (GPU 2)" for alexnet2012's conv1)."""
    count, h, w, c = grid.tiles.shape
    per_group = len(grid.groups[0])
    columns = grid_columns(per_group)
    rows = -(-per_group // columns)
    panel_w = min(MAX_PANEL_INCHES, columns * TILE_PIXELS / DPI)
    panel_h = panel_w * rows / columns + 0.3
    fig = figure(max(3.5, panel_w * len(grid.groups) + 0.3 * (len(grid.groups) - 1)), panel_h + 0.6)
    for g, members in enumerate(grid.groups):
        ax = fig.add_subplot(1, len(grid.groups), g + 1)
        _show_mosaic(ax, mosaic(grid.tiles[members.start : members.stop], columns))
        if len(grid.groups) > 1:
            ax.set_title(f"group {g + 1} (GPU {g + 1}): kernels {members.start + 1}-{members.stop}", fontsize=9)
    colour = "colour" if c == 3 else "grayscale"
    text = f"{grid.layer}: {count} kernels {h}x{w}, {colour}, each contrast-stretched"
    fig.suptitle(text + (f"\n({grid.note})" if grid.note else ""), fontsize=10)
    return save_figure(fig, path)


def plot_activations(maps: LayerMaps, image, source: str, path: str | os.PathLike | None = None) -> bytes:
    """The image the model saw, then every map of the layer on one shared scale (black: the layer's lowest
    value, white: its highest), so weak and dead channels look dark."""
    a = maps.maps[:MAX_MAPS]
    low, high = float(a.min()), float(a.max())
    scaled = (a - low) / (high - low) if high > low else np.zeros_like(a)
    columns = grid_columns(len(a))
    tiles = mosaic(scaled[..., None], columns)
    rows = -(-len(a) // columns)
    width = min(10.0, max(3.0, columns * 0.5))
    fig = figure(width + 2.2, max(2.4, width * rows / columns + 0.8))
    spec = fig.add_gridspec(1, 2, width_ratios=(2.0, width))
    show_image(fig.add_subplot(spec[0, 0]), image)
    ax = fig.add_subplot(spec[0, 1])
    _show_mosaic(ax, tiles)
    shown = f"the first {len(a)} of {len(maps.maps)}" if len(a) < len(maps.maps) else f"{len(a)}"
    h, w = maps.maps.shape[-2:]
    fig.suptitle(
        f"{maps.layer} for {Path(source).name}: {shown} maps {h}x{w} (one scale: {low:.3g} black, {high:.3g} white)",
        fontsize=10,
    )
    return save_figure(fig, path)


def plot_neighbours(results: Sequence[Neighbours], feature: str, path: str | os.PathLike | None = None) -> bytes:
    """One row per query: the query, then its nearest training images with their class and distance."""
    k = max(len(r.neighbours) for r in results)
    fig = figure(1.6 * (k + 1), 1.9 * len(results) + 0.5)
    for row, result in enumerate(results):
        ax = fig.add_subplot(len(results), k + 1, row * (k + 1) + 1)
        show_image(ax, result.image)
        ax.set_title(f"query\n{Path(result.file).name[:18]}", fontsize=8, color="tab:blue")
        for j, n in enumerate(result.neighbours):
            ax = fig.add_subplot(len(results), k + 1, row * (k + 1) + j + 2)
            show_image(ax, n.image)
            ax.set_title(f"{n.label[:14]}\nd = {n.distance:.3g}", fontsize=8)
    fig.suptitle(f"Nearest training images by Euclidean distance of {feature}", fontsize=10)
    return save_figure(fig, path)
