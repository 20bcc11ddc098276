"""Layers that reproduce what TensorFlow and Keras compute where PyTorch's defaults differ, for the networks of the
TensorFlow/Keras tutorials (alexnet_variants.py, resnet.py, vgg.py).

- "same" padding: TensorFlow pads `max((ceil(n / s) - 1) * s + k - n, 0)` pixels in all, the odd one at the bottom
  and right (tf.nn.convolution's documentation), so a strided "same" convolution or pooling is not a symmetric
  PyTorch padding. `Conv2dSame` and `MaxPool2dSame` pad that way for each input size (a max-pool pads with -inf:
  TensorFlow's padded pixels never win).
- BatchNormalization: Keras' defaults are epsilon 1e-3 and momentum 0.99 (its moving average keeps 0.99 of the old
  value), PyTorch's 1e-5 and 0.1 (it takes 0.1 of the new): `keras_batch_norm`.
- Initialisation: Keras' Conv2D and Dense default to Glorot-uniform kernels and zero biases: `keras_init`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Keras BatchNormalization defaults (keras.layers.BatchNormalization: momentum=0.99, epsilon=1e-3).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # = 1 - 0.99: PyTorch's momentum is the weight of the new batch statistics


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same" for one dimension of `size` pixels."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], value: float) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "same" padding (asymmetric when the stride needs it); padding=0 otherwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, self.kernel_size, self.stride, 0.0))  # type: ignore[arg-type]


class MaxPool2dSame(nn.MaxPool2d):
    """nn.MaxPool2d with TensorFlow's "same" padding: the padded pixels are -inf, so they are never the maximum."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__(kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        return super().forward(_pad_same(x, (k, k), (s, s), float("-inf")))  # type: ignore[arg-type]


def keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def keras_init(model: nn.Module) -> None:
    """Keras' default initialisation: Glorot-uniform kernels (Glorot & Bengio 2010), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
