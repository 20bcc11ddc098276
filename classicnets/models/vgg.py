"""VGG: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015. https://arxiv.org/abs/1409.1556

Table-driven as in torchvision's models/vgg.py and timm's vgg.py; state-dict keys identical to torchvision's.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from classicnets.models.base import ClassicNet
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import register_model

# Configurations A, B, D, E of the paper's Table 1: output channels of each 3x3 convolution, "M" = 2x2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(ClassicNet):
    min_input_size = 32  # five 2x2 poolings: 32 -> 1
    head = "classifier.6"

    def __init__(
        self, cfg: list[int | str], num_classes: int = 1000, in_chans: int = 3, *, batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:  # fmt: skip
        super().__init__()
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
        self.features = nn.Sequential(*layers)  # N x 512 x 7 x 7 at 224x224
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
        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                self._init_new_head(m)


def _vgg(cfg_name: str, batch_norm: bool, *, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return VGG(CONFIGS[cfg_name], num_classes, in_chans, batch_norm=batch_norm, **kwargs)


for _name in CONFIGS:
    for _bn in (False, True):
        register_model(
            _name + ("_bn" if _bn else ""),
            family="vgg",
            preprocessing=Preprocessing(input_size=(3, 224, 224)),
            min_size=VGG.min_input_size,
            paper="Simonyan & Zisserman 2015, https://arxiv.org/abs/1409.1556"
            + (" (+ BatchNorm, Ioffe & Szegedy 2015)" if _bn else ""),
            description=f"VGG-{_name[3:]}" + (" with BatchNorm" if _bn else ""),
        )(partial(_vgg, _name, _bn))
