"""ResNet: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
https://arxiv.org/abs/1512.03385

torchvision's version (models/resnet.py, "ResNet v1.5": the stride of a bottleneck sits on its 3x3 convolution),
with its module names so its checkpoints load. `resnet18_cifar` and `resnet34_cifar` are the same networks for
32x32 images as kuangliu/pytorch-cifar builds them: a 3x3 stride-1 first convolution and no max-pool, so the four
stages see 32, 16, 8 and 4 pixels (He et al. 2016, section 4.2, keep CIFAR's 32x32 maps the same way in their
narrower CIFAR ResNets). `resnet18_keras_cifar` is the TensorFlow 2 CIFAR-100 tutorial's ResNet-18, exactly
(KerasResNet: biases, Keras' BatchNorm, TensorFlow's padding, a stem with a max-pool, 1x1 shortcuts without BN).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from classicnets.models.base import ClassicNet
from classicnets.models.keras_layers import Conv2dSame, MaxPool2dSame, keras_batch_norm, keras_init
from classicnets.models.preprocessing import CIFAR_MEAN, CIFAR_STD, Preprocessing
from classicnets.models.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), and a shortcut (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(ClassicNet):
    min_input_size = 1
    head = "fc"
    cam_layer = "layer4"  # the last stage's output (after the residual additions), as Grad-CAM ports use

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        zero_init_residual: bool = False,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        self.inplanes = 64
        # Shapes at 224x224 (imagenet stem) and at 32x32 (cifar stem: 3x3 stride 1, no max-pool).
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem {stem!r}; choose 'imagenet' or 'cifar'")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)  # N x 64 x 112 x 112
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)  # N x 64 x 32 x 32
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # N x 64 x 56 x 56 (imagenet); the cifar stem keeps 32 x 32
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.layer1 = self._make_layer(block, 64, layers[0])  # N x 64e x 56 x 56 | 32 x 32
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)  # N x 128e x 28 x 28 | 16 x 16
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)  # N x 256e x 14 x 14 | 8 x 8
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)  # N x 512e x 7 x 7 | 4 x 4
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # Goyal et al. 2017, https://arxiv.org/abs/1706.02677: each block starts as identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_new_head(self, layer: nn.Linear) -> None:
        layer.reset_parameters()  # torchvision keeps PyTorch's default init for fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # N x num_classes


class KerasBasicBlock(BasicBlock):
    """The BasicBlock of the TensorFlow 2 ResNet tutorial: convolutions with biases, Keras' BatchNorm constants,
    TensorFlow's "same" padding (asymmetric on the stride-2 convolution), and where the block downsamples a 1x1
    stride-2 convolution without BatchNorm as the shortcut (the identity elsewhere). BasicBlock's forward."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        nn.Module.__init__(self)
        self.conv1: nn.Conv2d = (
            Conv2dSame(inplanes, planes, 3, stride) if stride > 1 else nn.Conv2d(inplanes, planes, 3, padding=1)
        )
        self.bn1 = keras_batch_norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.bn2 = keras_batch_norm(planes)
        self.downsample = nn.Conv2d(inplanes, planes, 1, stride=stride) if stride != 1 else None


class KerasResNet(ResNet):
    """The TensorFlow 2 CIFAR-100 tutorial's ResNet (its resnet.py): a 3x3 "valid" convolution with bias, BatchNorm,
    ReLU and a 2x2 stride-1 "same" max-pool as the stem, KerasBasicBlocks, global average pooling, one Dense layer;
    Keras' initialisation. ResNet's forward."""

    min_input_size = 3  # the stem's 3x3 "valid" convolution

    def __init__(self, layers: list[int], num_classes: int = 100, in_chans: int = 3) -> None:
        ClassicNet.__init__(self)  # not ResNet's torchvision layers
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3)  # "valid": N x 64 x 30 x 30 at 32x32
        self.bn1 = keras_batch_norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MaxPool2dSame(2, 1)  # N x 64 x 30 x 30 (pads 1 at the bottom and right)
        self.layer1 = self._keras_layer(64, 64, layers[0], 1)  # N x 64 x 30 x 30
        self.layer2 = self._keras_layer(64, 128, layers[1], 2)  # N x 128 x 15 x 15
        self.layer3 = self._keras_layer(128, 256, layers[2], 2)  # N x 256 x 8 x 8
        self.layer4 = self._keras_layer(256, 512, layers[3], 2)  # N x 512 x 4 x 4
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        keras_init(self)

    @staticmethod
    def _keras_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        rest = [KerasBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(KerasBasicBlock(inplanes, planes, stride), *rest)

    def _init_new_head(self, layer: nn.Linear) -> None:
        keras_init(layer)


SPECS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


def _resnet(spec: str, *, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    block, layers = SPECS[spec]
    return ResNet(block, layers, num_classes, in_chans, **kwargs)


def _resnet_cifar(spec: str, *, num_classes: int = 10, in_chans: int = 3, **kwargs) -> ResNet:
    block, layers = SPECS[spec]
    return ResNet(block, layers, num_classes, in_chans, stem="cifar", **kwargs)


PAPER = "He et al. 2016, https://arxiv.org/abs/1512.03385"

for _name in SPECS:
    register_model(
        _name,
        family="resnet",
        preprocessing=Preprocessing(input_size=(3, 224, 224)),
        min_size=ResNet.min_input_size,
        paper=PAPER,
        description=f"ResNet-{_name[6:]} (torchvision v1.5)",
    )(partial(_resnet, _name))

for _name in ("resnet18", "resnet34"):
    register_model(
        f"{_name}_cifar",
        family="resnet",
        preprocessing=Preprocessing(input_size=(3, 32, 32), resize_size=None, mean=CIFAR_MEAN, std=CIFAR_STD),
        min_size=ResNet.min_input_size,
        paper=PAPER + " (32x32 layout of kuangliu/pytorch-cifar)",
        description=f"ResNet-{_name[6:]} for 32x32 images (CIFAR): 3x3 stride-1 stem, no max-pool",
    )(partial(_resnet_cifar, _name))


@register_model(
    "resnet18_keras_cifar",
    family="resnet",
    # the tutorial's preprocess(): x / 255 - 0.5, no std
    preprocessing=Preprocessing(input_size=(3, 32, 32), resize_size=None, mean=(0.5,) * 3, std=(1.0,) * 3),
    min_size=KerasResNet.min_input_size,
    paper=PAPER,
    description="ResNet-18 of the TF2 CIFAR-100 tutorial: valid 3x3 stem + 2x2 max-pool, biases, 1x1 shortcuts",
    tutorial="TensorFlow 2 ResNet-18 on CIFAR-100 (resnet.py): stem conv 3x3 valid + BN + ReLU + 2x2/1 max-pool, "
    "[2, 2, 2, 2] blocks, stride-2 shortcuts a 1x1 convolution without BN",
)
def resnet18_keras_cifar(*, num_classes: int = 100, in_chans: int = 3) -> KerasResNet:
    return KerasResNet([2, 2, 2, 2], num_classes, in_chans)
