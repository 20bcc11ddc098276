"""Pictures of a run: loss and accuracy curves, confusion matrix, grids of images with their labels.

Figures are built with matplotlib's object API (`Figure`, Agg canvas), never pyplot, so no global backend or
figure state is touched and nothing needs a display. Every picture is written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from classicnets.fileio import atomic_write_bytes

# Above these class counts the confusion matrix drops the numbers in its cells, then the tick labels:
# they would overlap (about 12 px per cell at the figure sizes below).
ANNOTATE_MAX_CLASSES = 20
TICKS_MAX_CLASSES = 50


# Grad-CAM heat maps drawn over an image: the colour map and opacity of the paper's figures (Selvaraju et al. 2017
# overlay a jet-coloured map on the photo) at an opacity that keeps the photo readable underneath.
HEAT_CMAP = "jet"
HEAT_ALPHA = 0.45
# Image grids: inches above each image for its caption, and above the grid for its title.
CAPTION_INCHES = 0.3
TITLE_INCHES = 0.45


def figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike | None = None, *, tight: bool = True) -> bytes:
    """The figure as PNG bytes, written atomically to `path` when given; `tight` crops it to what is drawn."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight" if tight else None)
    data = buffer.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


def plot_curves(history: Sequence[dict], loss_path: str | os.PathLike, accuracy_path: str | os.PathLike) -> None:
    """loss.png (train and validation loss) and accuracy.png (train accuracy, validation top-1 and top-5)."""
    epochs = [row["epoch"] for row in history]
    fig = figure(6, 4)
    ax = fig.add_subplot()
    ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    ax.plot(epochs, [row["val_loss"] for row in history], "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, loss_path)

    fig = figure(6, 4)
    ax = fig.add_subplot()
    ax.plot(epochs, [100 * row["train_acc"] for row in history], "o-", label="train top-1")
    ax.plot(epochs, [100 * row["val_top1"] for row in history], "s-", label="validation top-1")
    ax.plot(epochs, [100 * row["val_top5"] for row in history], "^--", label="validation top-5")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, accuracy_path)


def plot_confusion(
    counts: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike | None,
    *,
    title: str = "Confusion matrix",
) -> bytes:
    """Rows: true class, columns: predicted class; colour = fraction of the true class, numbers = counts.
    Returns the PNG (also written to `path` when given)."""
    matrix = np.asarray(counts, dtype=np.int64)
    n = len(classes)
    totals = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = min(4 + 0.45 * n, 16)
    fig = figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= TICKS_MAX_CLASSES:
        ax.set_xticks(range(n), labels=list(classes), rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), labels=list(classes))
    if n <= ANNOTATE_MAX_CLASSES:
        for t in range(n):
            for p in range(n):
                if matrix[t, p]:
                    colour = "white" if fraction[t, p] > 0.5 else "black"
                    ax.text(p, t, str(matrix[t, p]), ha="center", va="center", color=colour, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return save_figure(fig, path)


def to_display(image) -> np.ndarray:
    """A uint8 tensor or array C x H x W (C = 1 or 3) as H x W (grayscale) or H x W x 3 for imshow."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    return a


def plot_image_grid(
    images: Sequence,
    titles: Sequence[str],
    path: str | os.PathLike | None,
    *,
    columns: int = 6,
    title: str | None = None,
    heat: Sequence | None = None,
    size: float = 2.2,
) -> bytes:
    """Each image with its caption above it (e.g. "cat, 0.93"), `columns` per row; with `heat`, each image's
    Grad-CAM map (H x W in [0, 1]) drawn over it. Returns the PNG (also written to `path` when given).

    The cells are placed by hand (fixed inches per image and caption) rather than fitted by matplotlib's tight
    bounding box, which draws the figure twice: half the time for the grids `train` puts in every report."""
    count = max(1, len(images))
    columns = min(columns, count)
    rows = (count + columns - 1) // columns
    caption_h, title_h, pad = CAPTION_INCHES, (TITLE_INCHES if title else 0.0), 0.08
    width, height = size * columns, (size + caption_h) * rows + title_h
    fig = figure(width, height)
    for i, (image, caption) in enumerate(zip(images, titles, strict=True)):
        row, col = divmod(i, columns)
        top = title_h + row * (size + caption_h) + caption_h  # inches from the top edge to the image
        box = (col * size + pad) / width, 1 - (top + size - pad) / height, (size - 2 * pad) / width
        ax = fig.add_axes((box[0], box[1], box[2], (size - 2 * pad) / height))
        show_image(ax, image, None if heat is None else heat[i])
        ax.text(0.5, 1.02, caption, transform=ax.transAxes, ha="center", va="bottom", fontsize=9)
    if title:
        fig.text(0.5, 1 - 0.08 / height, title, ha="center", va="top", fontsize=12)
    return save_figure(fig, path, tight=False)


def show_image(ax, image, heat=None) -> None:
    """A uint8 image on `ax` (grayscale or colour), with a heat map over it when given; no axes."""
    a = to_display(image)
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=255)
    if heat is not None:
        h = heat.detach().cpu().numpy() if hasattr(heat, "detach") else np.asarray(heat)
        box = (-0.5, a.shape[1] - 0.5, a.shape[0] - 0.5, -0.5)  # the image's own pixel grid
        ax.imshow(h, cmap=HEAT_CMAP, alpha=HEAT_ALPHA, vmin=0, vmax=1, extent=box)
    ax.axis("off")
