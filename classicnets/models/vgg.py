"""VGG: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015. https://arxiv.org/abs/1409.1556

Table-driven as in torchvision's models/vgg.py and timm's vgg.py; state-dict keys identical to torchvision's.
`vgg11_cifar` ... `vgg19_cifar` are the same convolution blocks for 32x32 images (CIFAR), as the widely used
kuangliu/pytorch-cifar builds them: BatchNorm after every convolution, the five poolings take 32x32 to 1x1, and
one linear layer 512 -> classes replaces the three 4096-wide ones. `vgg13_keras_cifar` is the TensorFlow 2
CIFAR-100 tutorial's VGG-13: the same blocks without BatchNorm, Dense 256 -> 128 -> 100, Keras' initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from classicnets.models.base import ClassicNet
from classicnets.models.keras_layers import keras_init
from classicnets.models.preprocessing import CIFAR_MEAN, CIFAR_STD, Preprocessing
from classicnets.models.registry import register_model

PAPER = "Simonyan & Zisserman 2015, https://arxiv.org/abs/1409.1556"
# Configurations A, B, D, E of the paper's Table 1: output channels of each 3x3 convolution, "M" = 2x2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(cfg: Sequence[int | str], in_chans: int, *, batch_norm: bool) -> nn.Sequential:
    """The convolution blocks: 3x3 convolutions (padding 1) [+ BatchNorm] + ReLU, "M" a 2x2 max-pool."""
    layers: list[nn.Module] = []
    channels = in_chans
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        width = int(v)
        layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        channels = width
    return nn.Sequential(*layers)


def torchvision_init(model: ClassicNet) -> None:
    """torchvision's VGG initialisation: He (fan_out) for convolutions, BatchNorm 1/0, the head's N(0, 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            model._init_new_head(m)


class VGG(ClassicNet):
    min_input_size = 32  # five 2x2 poolings: 32 -> 1
    head = "classifier.6"

    def __init__(
        self, cfg: list[int | str], num_classes: int = 1000, in_chans: int = 3, *, batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:  # fmt: skip
        super().__init__()
        self.features = make_features(cfg, in_chans, batch_norm=batch_norm)  # N x 512 x 7 x 7 at 224x224
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        torchvision_init(self)


class VGGCifar(ClassicNet):
    """VGG for 32x32 inputs: the convolution blocks (with BatchNorm by default) down to N x 512 x 1 x 1, then one
    linear layer 512 -> classes, or hidden ReLU layers first (`hidden=(256, 128)`: the Dense 256 -> 128 head of
    the TensorFlow 2 CIFAR-100 tutorial).

    The pooling before the head is adaptive so larger inputs work too; at 32x32 it is an identity. `init` is
    "torchvision" (He for convolutions, N(0, 0.01) for the head) or "keras" (Glorot-uniform, zero biases).
    """

    min_input_size = 32  # five 2x2 poolings: 32 -> 1

    def __init__(
        self,
        cfg: list[int | str],
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        batch_norm: bool = True,
        hidden: Sequence[int] = (),
        init: str = "torchvision",
    ) -> None:
        super().__init__()
        self.features = make_features(cfg, in_chans, batch_norm=batch_norm)  # N x 512 x 1 x 1 at 32x32
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        layers: list[nn.Module] = []
        width = 512
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]  # N x h
            width = int(h)
        layers.append(nn.Linear(width, num_classes))  # N x num_classes
        self.classifier = nn.Sequential(*layers)
        self.head = f"classifier.{len(layers) - 1}"
        if init not in ("torchvision", "keras"):
            raise ValueError(f"unknown init {init!r}; choose 'torchvision' or 'keras'")
        self.keras = init == "keras"
        if self.keras:
            keras_init(self)
        else:
            torchvision_init(self)

    def _init_new_head(self, layer: nn.Linear) -> None:
        if getattr(self, "keras", False):
            keras_init(layer)
        else:
            super()._init_new_head(layer)


def _vgg(cfg_name: str, batch_norm: bool, *, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return VGG(CONFIGS[cfg_name], num_classes, in_chans, batch_norm=batch_norm, **kwargs)


def _vgg_cifar(cfg_name: str, *, num_classes: int = 10, in_chans: int = 3, **kwargs) -> VGGCifar:
    return VGGCifar(CONFIGS[cfg_name], num_classes, in_chans, **kwargs)


CIFAR_PREPROCESSING = Preprocessing(input_size=(3, 32, 32), resize_size=None, mean=CIFAR_MEAN, std=CIFAR_STD)

for _name in CONFIGS:
    for _bn in (False, True):
        register_model(
            _name + ("_bn" if _bn else ""),
            family="vgg",
            preprocessing=Preprocessing(input_size=(3, 224, 224)),
            min_size=VGG.min_input_size,
            paper=PAPER + (" (+ BatchNorm, Ioffe & Szegedy 2015)" if _bn else ""),
            description=f"VGG-{_name[3:]}" + (" with BatchNorm" if _bn else ""),
        )(partial(_vgg, _name, _bn))
    register_model(
        f"{_name}_cifar",
        family="vgg",
        preprocessing=CIFAR_PREPROCESSING,
        min_size=VGGCifar.min_input_size,
        paper=PAPER + " (32x32 layout of kuangliu/pytorch-cifar: BatchNorm, one linear layer)",
        description=f"VGG-{_name[3:]} for 32x32 images (CIFAR): BatchNorm, 512 -> classes head",
    )(partial(_vgg_cifar, _name))


register_model(
    "vgg13_keras_cifar",
    family="vgg",
    # the tutorial's preprocess(): x / 255, no mean or std
    preprocessing=Preprocessing(input_size=(3, 32, 32), resize_size=None, mean=(0.0,) * 3, std=(1.0,) * 3),
    min_size=VGGCifar.min_input_size,
    paper=PAPER,
    description="VGG-13 of the TF2 CIFAR-100 tutorial: no BatchNorm, Dense 256 -> 128 -> classes",
    tutorial="TensorFlow 2 CIFAR-100 and VGG13 (cifar100_train.py): ten 3x3 convolutions, 2x2 pools, Dense 256-128-100",
)(partial(_vgg_cifar, "vgg13", num_classes=100, batch_norm=False, hidden=(256, 128), init="keras"))
