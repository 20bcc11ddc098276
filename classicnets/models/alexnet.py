"""AlexNet: A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks", NIPS 2012. https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks

Two registered networks here (the tutorials' variants are in alexnet_variants.py):
- `alexnet`: torchvision's layout (One weird trick..., Krizhevsky 2014: 64-192-384-256-256, no LRN, no groups),
  state-dict keys identical to torchvision's so its checkpoints load unchanged.
- `alexnet2012`: the 2012 paper's network as Caffe's bvlc_alexnet implements it (96-256-384-384-256, LRN,
  overlapping pooling, groups=2 for the two GPU "towers", 227x227 input, the paper's initialisation). Options give
  the tutorials' versions: `groups=1, lrn="none", init="default"` is the PyTorch AlexNet tutorial's network,
  `lrn="tf"` TensorFlow's tf.nn.lrn as its tutorials call it.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from classicnets.models.base import ClassicNet
from classicnets.models.lrn import LRN_PRESETS, LocalResponseNorm
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import register_model

PAPER = "Krizhevsky et al. 2012, https://papers.nips.cc/paper/4824"


class AlexNet(ClassicNet):
    """torchvision's AlexNet (models/alexnet.py), keys `features.N.*` and `classifier.N.*` kept."""

    min_input_size = 63
    head = "classifier.6"
    # The paper's layer names, for fine-tuning flags such as --skip-layers fc8 or --freeze-until conv5.
    layer_names = {
        "conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
        "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6",
    }  # fmt: skip

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),  # N x 64 x 55 x 55
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # N x 64 x 27 x 27
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # N x 192 x 27 x 27
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # N x 192 x 13 x 13
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # N x 384 x 13 x 13
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # N x 256 x 13 x 13
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # N x 256 x 13 x 13
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 6 x 6
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def _init_new_head(self, layer: nn.Linear) -> None:
        layer.reset_parameters()  # torchvision leaves PyTorch's default init in place


def paper_classifier(num_classes: int, dropout: float) -> nn.Sequential:
    """fc6 -> fc7 -> fc8 with dropout after the two hidden layers, as in the paper and Caffe (relu6 -> drop6)."""
    return nn.Sequential(
        OrderedDict(
            fc6=nn.Linear(256 * 6 * 6, 4096),  # N x 4096
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(p=dropout),
            fc7=nn.Linear(4096, 4096),  # N x 4096
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(p=dropout),
            fc8=nn.Linear(4096, num_classes),
        )
    )


class AlexNet2012(ClassicNet):
    """The 2012 paper's AlexNet, laid out as Caffe's bvlc_alexnet (conv -> ReLU -> LRN -> pool).

    Layers are named as in the paper and in Caffe (`features.conv1`, ..., `classifier.fc8`). The paper's two GPUs
    are the groups=2 convolutions: conv2, conv4 and conv5 see only their own half of the channels.
    `lrn` picks the LRN constants ("paper" for training from scratch, "caffe" for the bvlc_alexnet weights, "tf" for
    the TensorFlow tutorials' tf.nn.lrn, "none" for no LRN layers);
    `init="paper"` is N(0, 0.01) weights with biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere
    (paper, section 5). `groups=1` gives the single-GPU variant (62,378,344 parameters instead of 60,965,224).
    """

    min_input_size = 67
    head = "classifier.fc8"
    layer_names = {
        name: f"{'features' if name.startswith('conv') else 'classifier'}.{name}"
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    }

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        lrn: str = "paper",
        groups: int = 2,
        dropout: float = 0.5,
        init: str = "paper",
    ) -> None:
        super().__init__()
        if lrn not in (*LRN_PRESETS, "none"):
            raise ValueError(f"unknown lrn {lrn!r}; choose one of {', '.join((*LRN_PRESETS, 'none'))}")

        def norm(i: int) -> list[tuple[str, nn.Module]]:  # lrn="none": no LRN layer at all (the PyTorch tutorial's)
            return [] if lrn == "none" else [(f"norm{i}", LocalResponseNorm.preset(lrn))]

        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_chans, 96, kernel_size=11, stride=4)),  # N x 96 x 55 x 55 (227 input)
                    ("relu1", nn.ReLU(inplace=True)),
                    *norm(1),
                    ("pool1", nn.MaxPool2d(kernel_size=3, stride=2)),  # N x 96 x 27 x 27 (overlapping pooling)
                    ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups)),  # N x 256 x 27 x 27
                    ("relu2", nn.ReLU(inplace=True)),
                    *norm(2),
                    ("pool2", nn.MaxPool2d(kernel_size=3, stride=2)),  # N x 256 x 13 x 13
                    ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),  # N x 384 x 13 x 13
                    ("relu3", nn.ReLU(inplace=True)),
                    ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups)),  # N x 384 x 13 x 13
                    ("relu4", nn.ReLU(inplace=True)),
                    ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups)),  # N x 256 x 13 x 13
                    ("relu5", nn.ReLU(inplace=True)),
                    ("pool5", nn.MaxPool2d(kernel_size=3, stride=2)),  # N x 256 x 6 x 6
                ]
            )
        )
        # Identity at 227x227; lets other input sizes (224, 256 ...) reach fc6 with the 6x6 map it expects.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = paper_classifier(num_classes, dropout)
        if init == "paper":
            self._init_paper()
        elif init != "default":
            raise ValueError(f"unknown init {init!r}; choose 'paper' or 'default'")

    def _init_paper(self) -> None:
        # Paper, section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers
        # ("accelerates the early stages of learning by providing the ReLUs with positive inputs"), 0 elsewhere.
        ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
        for name, module in (*self.features.named_children(), *self.classifier.named_children()):
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 1.0 if name in ones else 0.0)


@register_model(
    "alexnet",
    family="alexnet",
    preprocessing=Preprocessing(input_size=(3, 224, 224)),
    min_size=AlexNet.min_input_size,
    paper="Krizhevsky 2014, One weird trick, https://arxiv.org/abs/1404.5997 (torchvision layout)",
    description="AlexNet, torchvision layout 64-192-384-256-256",
)
def alexnet(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> AlexNet:
    return AlexNet(num_classes, in_chans, **kwargs)


@register_model(
    "alexnet2012",
    family="alexnet",
    preprocessing=Preprocessing(input_size=(3, 227, 227)),
    min_size=AlexNet2012.min_input_size,
    paper=PAPER,
    description="AlexNet as in the 2012 paper: LRN, groups=2, 227x227",
)
def alexnet2012(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> AlexNet2012:
    return AlexNet2012(num_classes, in_chans, **kwargs)
