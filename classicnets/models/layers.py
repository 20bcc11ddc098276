"""Layers shared by several models: local response normalisation (AlexNet 2012, GoogLeNet v1 paper)."""

from __future__ import annotations

import torch
from torch import nn

# Constants of the two LRN conventions that matter for AlexNet (FACTS.md):
# - "paper": Krizhevsky et al. 2012, section 3.3: k=2, n=5, alpha=1e-4, beta=0.75, and alpha is NOT divided by n.
# - "caffe": bvlc_alexnet deploy.prototxt: local_size 5, alpha 1e-4, beta 0.75, k 1 (Caffe's default), and Caffe
#   divides alpha by local_size, as torch.nn.LocalResponseNorm does.
LRN_PRESETS: dict[str, dict[str, float | int | bool]] = {
    "paper": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "alpha_over_size": False},
    "caffe": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0, "alpha_over_size": True},
}


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels.

        b_c = a_c / (k + alpha' * sum_{j in window(c)} a_j^2) ** beta,   alpha' = alpha / size if alpha_over_size

    The window holds `size` channels centred on c (size // 2 before, (size - 1) // 2 after, clipped at the edges),
    exactly as torch.nn.LocalResponseNorm. `alpha_over_size=False` is the paper's and TensorFlow's convention,
    True is Caffe's and PyTorch's. The window sum is a product with a banded 0/1 matrix over the channel axis,
    which is a plain matmul in channels_last layout and much faster on CPU than nn.LocalResponseNorm's
    3-D average pooling.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, *, alpha_over_size: bool = False
    ) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"LRN size must be at least 1, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self.alpha_over_size = bool(alpha_over_size)

    @classmethod
    def preset(cls, name: str) -> LocalResponseNorm:
        """LRN with the constants of a named convention: "paper" or "caffe"."""
        try:
            return cls(**LRN_PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown LRN preset {name!r}; choose one of {', '.join(LRN_PRESETS)}") from None

    @property
    def effective_alpha(self) -> float:
        """The factor multiplying the window sum of squares."""
        return self.alpha / self.size if self.alpha_over_size else self.alpha

    def to_torch(self) -> nn.LocalResponseNorm:
        """The equivalent torch.nn.LocalResponseNorm (which always divides alpha by size)."""
        return nn.LocalResponseNorm(self.size, alpha=self.effective_alpha * self.size, beta=self.beta, k=self.k)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"alpha_over_size={self.alpha_over_size}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        band = channel_window(x.shape[1], self.size, dtype=x.dtype, device=x.device)
        # Move channels last (a free view in channels_last memory), sum each window with one matmul, move back.
        squares = (x * x).movedim(1, -1)
        window_sum = torch.matmul(squares, band).movedim(-1, 1)
        return x * (window_sum * self.effective_alpha + self.k).pow(-self.beta)


def channel_window(channels: int, size: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0/1 matrix W (channels x channels) with W[j, c] = 1 when channel j is in the LRN window of channel c."""
    idx = torch.arange(channels, device=device)
    offset = idx[:, None] - idx[None, :]  # j - c
    return ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).to(dtype)


def use_torch_lrn(model: nn.Module) -> nn.Module:
    """Replace every classicnets LocalResponseNorm in `model` by the equivalent torch.nn.LocalResponseNorm, in place.

    The naive reference path (`bench --baseline`, FLOP counting with FlopCounterMode) uses this.
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LocalResponseNorm):
                setattr(module, child_name, child.to_torch())
    return model
