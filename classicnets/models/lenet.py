"""LeNet-5: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 86(11), 1998. http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from classicnets.models.base import ClassicNet
from classicnets.models.preprocessing import MNIST_MEAN, MNIST_STD, Preprocessing
from classicnets.models.registry import register_model


class LeNet5(ClassicNet):
    """LeNet-5 on a 32x32 input (MNIST's 28x28 digits are centred in a 32x32 field by zero padding, as in the paper).

    Layer names follow the paper: C1, S2, C3, S4, C5, F6, output. Two documented simplifications, shared by every
    modern port: C3 connects to all six S2 maps (the paper's Table I uses a sparse pattern), and S2/S4 are plain
    average pooling without the paper's trainable coefficient and bias. This gives exactly
    156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 parameters for 10 classes (docs/facts.md).
    The activation is the paper's tanh by default (its scaled 1.7159 tanh(2x/3) only rescales); `activation="relu"`
    and `pool="max"` give the variant most PyTorch tutorials use.
    """

    min_input_size = 32
    head = "classifier.output"
    # The paper's names (Fig. 2), for pictures and fine-tuning flags (--skip-layers F6, show filters --layer C3).
    layer_names = {
        "C1": "features.c1", "S2": "features.s2", "C3": "features.c3", "S4": "features.s4", "C5": "features.c5",
        "F6": "classifier.f6", "output": "classifier.output",
    }  # fmt: skip

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, *, activation: str = "tanh", pool: str = "avg"
    ) -> None:
        super().__init__()
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        subsample = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pool]
        self.features = nn.Sequential(
            OrderedDict(
                c1=nn.Conv2d(in_chans, 6, kernel_size=5),  # N x 6 x 28 x 28
                act1=act(),
                s2=subsample(kernel_size=2, stride=2),  # N x 6 x 14 x 14
                c3=nn.Conv2d(6, 16, kernel_size=5),  # N x 16 x 10 x 10
                act3=act(),
                s4=subsample(kernel_size=2, stride=2),  # N x 16 x 5 x 5
                c5=nn.Conv2d(16, 120, kernel_size=5),  # N x 120 x 1 x 1 (at 32x32 input)
                act5=act(),
            )
        )
        # A larger input leaves C5 with more than 1x1; average it so any size >= 32 works.
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(
            OrderedDict(f6=nn.Linear(120, 84), act6=act(), output=nn.Linear(84, num_classes))
        )

    def _init_new_head(self, layer: nn.Linear) -> None:
        layer.reset_parameters()  # PyTorch's default (LeCun-style uniform) init, as for the other layers


@register_model(
    "lenet5",
    family="lenet",
    preprocessing=Preprocessing(
        input_size=(1, 32, 32), resize_size=None, mean=MNIST_MEAN, std=MNIST_STD, channel_order="L"
    ),
    min_size=32,
    paper="LeCun et al. 1998, http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf",
    description="LeNet-5, 32x32 digits (28x28 padded)",
)
def lenet5(*, num_classes: int = 10, in_chans: int = 1, **kwargs) -> LeNet5:
    return LeNet5(num_classes, in_chans, **kwargs)
