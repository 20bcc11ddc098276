"""GoogLeNet (Inception v1): C. Szegedy et al., "Going Deeper with Convolutions", CVPR 2015.
https://arxiv.org/abs/1409.4842

torchvision's version (models/googlenet.py), with its module names so its checkpoints load: BatchNorm after every
convolution (added by torchvision; the paper has none) and, in the "5x5" branch, a 3x3 kernel, which is what
torchvision's published weights were trained with.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from classicnets.models.base import ClassicNet
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import register_model


class GoogLeNetOutputs(NamedTuple):
    """What GoogLeNet returns in training mode with aux_logits=True (torchvision's order)."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> "5x5"; 3x3 max-pool -> 1x1) concatenated on channels."""

    def __init__(
        self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1), BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1)
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1), BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on inception 4a / 4d; its loss is added with weight 0.3 in training (paper, section 5)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))  # N x 128 x 4 x 4
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)  # N x 1024
        return self.fc2(self.dropout(x))  # N x num_classes


class GoogLeNet(ClassicNet):
    """GoogLeNet; with `aux_logits=True` the two auxiliary heads exist and, in training mode only, forward returns
    GoogLeNetOutputs(logits, aux2, aux1). In eval mode it always returns the main logits."""

    min_input_size = 15  # the ceil-mode poolings need 15x15 to keep a pixel (found by search, pinned in tests)
    head = "fc"
    cam_layer = "inception5b"  # the concatenation of the last inception block's four branches
    extra_heads = ("aux1.fc2", "aux2.fc2")

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        aux_logits: bool = False,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        # torchvision's weights were trained on inputs scaled to [-1, 1]; transform_input converts an
        # ImageNet-normalised input to that scale first.
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)  # N x 64 x 112 x 112
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # N x 64 x 56 x 56
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)  # N x 192 x 56 x 56
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # N x 192 x 28 x 28
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)  # N x 256 x 28 x 28
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)  # N x 480 x 28 x 28
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # N x 480 x 14 x 14
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)  # N x 512 x 14 x 14
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)  # N x 528 x 14 x 14
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)  # N x 832 x 14 x 14
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)  # N x 832 x 7 x 7
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)  # N x 1024 x 7 x 7
        self.aux1 = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        # torchvision's initialisation: truncated normal, std 0.01, cut at +-2.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _init_new_head(self, layer: nn.Linear) -> None:
        nn.init.trunc_normal_(layer.weight, mean=0.0, std=0.01, a=-2, b=2)
        nn.init.zeros_(layer.bias)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        # (x * std + mean - 0.5) / 0.5 per channel, for ImageNet mean/std (torchvision).
        ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((ch0, ch1, ch2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        self.check_input(x)
        if self.transform_input:
            x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))  # N x num_classes
        if aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


@register_model(
    "googlenet",
    family="googlenet",
    preprocessing=Preprocessing(input_size=(3, 224, 224)),
    min_size=GoogLeNet.min_input_size,
    paper="Szegedy et al. 2015, https://arxiv.org/abs/1409.4842",
    description="GoogLeNet / Inception v1 (torchvision, BatchNorm)",
)
def googlenet(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    return GoogLeNet(num_classes, in_chans, **kwargs)
