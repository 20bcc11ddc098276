"""Classification metrics kept as sums and counts, so per-process values can be all-reduced exactly (torchrun).

Accuracy follows torchvision's reference `accuracy(output, target, topk)`: a sample is top-k correct when its label
is among the k highest scores. With fewer than k classes, top-k is top-(number of classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the top k scores, for each k (k capped at the number of classes)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # N x maxk
    hits = top.eq(targets[:, None])
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class MetricSums:
    """Running sums over an epoch: loss * samples, top-1 hits, top-5 hits, samples.

    `values` is one float64 tensor, so `distributed.all_reduce_sum(ctx, sums.values)` combines processes exactly.
    """

    def __init__(self, values: torch.Tensor | None = None) -> None:
        self.values = torch.zeros(4, dtype=torch.float64) if values is None else values.to(torch.float64).cpu()

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor | float) -> None:
        """Add a batch; `loss` is the batch's mean loss."""
        n = targets.shape[0]
        c1, c5 = topk_correct(logits.detach(), targets, (1, 5))
        self.values += torch.tensor([float(loss) * n, c1, c5, n], dtype=torch.float64)

    @property
    def count(self) -> int:
        return int(self.values[3])

    @property
    def loss(self) -> float:
        return float(self.values[0] / self.values[3]) if self.count else float("nan")

    @property
    def top1(self) -> float:
        return float(self.values[1] / self.values[3]) if self.count else float("nan")

    @property
    def top5(self) -> float:
        return float(self.values[2] / self.values[3]) if self.count else float("nan")

    def to_list(self) -> list[float]:
        """Plain floats for a checkpoint (weights_only loading)."""
        return [float(v) for v in self.values]


@dataclass(frozen=True)
class ConfusedPair:
    true: str
    predicted: str
    count: int
    fraction: float  # of the true class's samples


class ConfusionMatrix:
    """counts[t, p] = samples of true class t predicted as p."""

    def __init__(self, num_classes: int, counts: torch.Tensor | None = None) -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64) if counts is None else counts.cpu()

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        index = targets.cpu().to(torch.int64) * self.num_classes + predictions.cpu().to(torch.int64)
        self.counts += torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def per_class_accuracy(self) -> list[float | None]:
        """Recall of each class (None for a class with no samples)."""
        totals = self.counts.sum(dim=1)
        return [float(self.counts[i, i] / totals[i]) if totals[i] else None for i in range(self.num_classes)]

    def most_confused(self, classes: list[str], n: int = 10) -> list[ConfusedPair]:
        """The off-diagonal cells with the most samples, largest first (ties: class order)."""
        off = self.counts.clone()
        off.fill_diagonal_(0)
        totals = self.counts.sum(dim=1)
        cells = [(int(off[t, p]), t, p) for t in range(self.num_classes) for p in range(self.num_classes) if off[t, p]]
        cells.sort(key=lambda c: (-c[0], c[1], c[2]))
        return [ConfusedPair(classes[t], classes[p], c, c / int(totals[t])) for c, t, p in cells[:n]]

    def to_list(self) -> list[list[int]]:
        return self.counts.tolist()
