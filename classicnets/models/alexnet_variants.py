"""AlexNet as tutorials write it, each exactly, beside the paper's (alexnet.py): the layers, paddings and
parameter counts a reader of that tutorial sees.

- `alexnet_bn`: BatchNorm after every convolution instead of LRN, no groups, 227 input (a common variant).
- `alexnet_keras_bn`: the Keras AlexNet tutorial (24 classes): 224 input, conv1 11x11/4 "valid" (54x54), BatchNorm
  after conv1 and conv2 only, 3/2 max-pools, 384-384-256 "same", flatten 5x5x256, 4096-4096 with dropout.
- `alexnet_keras_fashion`: the TensorFlow 2 AlexNet tutorial on Fashion-MNIST: one channel at 224 (28x28 resized
  with padding), conv1 96 11x11/4 "same" (56x56), 256-384-384-256 "same", 3/2 pools, flatten 9216, Dense 512-256-10.
  The tutorial ends in a sigmoid before a softmax cross-entropy; here the last layer gives the logits.
- `alexnet_tf_benchmark`: TensorFlow's AlexNet benchmark (tutorials/image/alexnet/alexnet_benchmark.py, in the
  widely copied version with batch 32): 64-192-384-256-256 convolutions, tf.nn.lrn(depth_radius=4, bias=1,
  alpha=0.001/9, beta=0.75) after conv1 and conv2, 3/2 "valid" pools; it ends at pool5: no fully connected layers.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from classicnets.errors import UsageError
from classicnets.models.alexnet import PAPER, AlexNet2012, paper_classifier
from classicnets.models.base import ClassicNet
from classicnets.models.keras_layers import Conv2dSame, keras_batch_norm, keras_init
from classicnets.models.lrn import LocalResponseNorm
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import register_model

# (name, in, out, kernel, stride, padding, batch norm after, pool after): the five convolutions of each variant.
ConvSpec = tuple[str, int, int, int, int, int, bool, bool]


def conv_stack(spec: list[ConvSpec], *, batch_norm=nn.BatchNorm2d) -> nn.Sequential:
    """conv -> ReLU [-> BatchNorm] [-> 3/2 max-pool] per row, named conv1, relu1, bn1, pool1, ... (Keras' order:
    Conv2D(activation="relu") then BatchNormalization)."""
    layers: list[tuple[str, nn.Module]] = []
    for i, cin, cout, k, s, p, bn, pool in spec:
        conv = Conv2dSame(cin, cout, k, s) if p < 0 else nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p)
        layers += [(f"conv{i}", conv), (f"relu{i}", nn.ReLU(inplace=True))]
        if bn:
            layers.append((f"bn{i}", batch_norm(cout)))
        if pool:
            layers.append((f"pool{i}", nn.MaxPool2d(kernel_size=3, stride=2)))
    return nn.Sequential(OrderedDict(layers))


SAME = -1  # padding marker: TensorFlow's "same" (Conv2dSame), asymmetric when the stride needs it


class AlexNetBN(ClassicNet):
    """96-256-384-384-256, each convolution followed by ReLU and BatchNorm (Ioffe & Szegedy 2015) in place of
    LRN, no groups, then the paper's pooling and classifier; 227x227 input."""

    min_input_size = 67
    head = "classifier.fc8"
    layer_names = AlexNet2012.layer_names

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = conv_stack([
            ("1", in_chans, 96, 11, 4, 0, True, True),  # N x 96 x 55 x 55 -> 27 x 27
            ("2", 96, 256, 5, 1, 2, True, True),  # N x 256 x 27 x 27 -> 13 x 13
            ("3", 256, 384, 3, 1, 1, True, False),  # N x 384 x 13 x 13
            ("4", 384, 384, 3, 1, 1, True, False),  # N x 384 x 13 x 13
            ("5", 384, 256, 3, 1, 1, True, True),  # N x 256 x 13 x 13 -> 6 x 6
        ])  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = paper_classifier(num_classes, dropout)


class AlexNetKerasBN(ClassicNet):
    """The Keras AlexNet tutorial's network (24 classes), Keras' BatchNormalization constants and initialisation.

    Parameters for 24 classes: 34,944 + 614,656 + 885,120 + 1,327,488 + 884,992 (convolutions) + 192 + 512
    (BatchNorm scale and shift) + 26,218,496 + 16,781,312 + 98,328 (dense) = 46,846,040 trainable, and 704
    BatchNorm running statistics, which Keras counts as non-trainable parameters (46,846,744 in all).
    """

    min_input_size = 67
    head = "classifier.fc8"
    layer_names = AlexNet2012.layer_names

    def __init__(self, num_classes: int = 24, in_chans: int = 3, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = conv_stack([
            ("1", in_chans, 96, 11, 4, 0, True, True),  # "valid": N x 96 x 54 x 54 -> 26 x 26
            ("2", 96, 256, 5, 1, 2, True, True),  # N x 256 x 26 x 26 -> 12 x 12
            ("3", 256, 384, 3, 1, 1, False, False),  # N x 384 x 12 x 12
            ("4", 384, 384, 3, 1, 1, False, False),  # N x 384 x 12 x 12
            ("5", 384, 256, 3, 1, 1, False, True),  # N x 256 x 12 x 12 -> 5 x 5
        ], batch_norm=keras_batch_norm)  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((5, 5))  # identity at 224x224
        self.classifier = nn.Sequential(
            OrderedDict(
                fc6=nn.Linear(256 * 5 * 5, 4096),  # flatten 5 x 5 x 256 = 6,400
                relu6=nn.ReLU(inplace=True),
                drop6=nn.Dropout(p=dropout),
                fc7=nn.Linear(4096, 4096),
                relu7=nn.ReLU(inplace=True),
                drop7=nn.Dropout(p=dropout),
                fc8=nn.Linear(4096, num_classes),  # Keras: Dense(24, softmax); here the logits
            )
        )
        keras_init(self)

    def _init_new_head(self, layer: nn.Linear) -> None:
        keras_init(layer)


class AlexNetKerasFashion(ClassicNet):
    """The TensorFlow 2 Fashion-MNIST AlexNet, with the sigmoid before the softmax cross-entropy left out.

    Parameters for 10 classes: 11,712 + 614,656 + 885,120 + 1,327,488 + 884,992 (convolutions) + 4,719,104 +
    131,328 + 2,570 (dense) = 8,576,970.
    """

    min_input_size = 57  # conv1 ("same", stride 4) keeps ceil(57 / 4) = 15, which three 3/2 pools take to 1
    head = "classifier.fc8"
    layer_names = AlexNet2012.layer_names

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.features = conv_stack([
            ("1", in_chans, 96, 11, 4, SAME, False, True),  # N x 96 x 56 x 56 (pads 3 top, 4 bottom) -> 27 x 27
            ("2", 96, 256, 5, 1, 2, False, True),  # N x 256 x 27 x 27 -> 13 x 13
            ("3", 256, 384, 3, 1, 1, False, False),  # N x 384 x 13 x 13
            ("4", 384, 384, 3, 1, 1, False, False),  # N x 384 x 13 x 13
            ("5", 384, 256, 3, 1, 1, False, True),  # N x 256 x 13 x 13 -> 6 x 6
        ])  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # identity at 224x224
        self.classifier = nn.Sequential(
            OrderedDict(
                fc6=nn.Linear(256 * 6 * 6, 512),  # flatten 9,216
                relu6=nn.ReLU(inplace=True),
                fc7=nn.Linear(512, 256),
                relu7=nn.ReLU(inplace=True),
                fc8=nn.Linear(256, num_classes),  # the tutorial's sigmoid here is a bug: see docs/models.md
            )
        )
        keras_init(self)

    def _init_new_head(self, layer: nn.Linear) -> None:
        keras_init(layer)


class AlexNetTFBenchmark(ClassicNet):
    """The convolutions of TensorFlow's AlexNet benchmark, ending at pool5 (N x 256 x 6 x 6 at 224x224): what its
    forward and forward-backward timings run. No classifier, so it cannot be trained; `bench` times it as the
    benchmark does (classicnets.bench.steps.l2_loss_step).

    Parameters: 23,296 + 307,392 + 663,936 + 884,992 + 590,080 = 2,469,696.
    """

    min_input_size = 57  # as alexnet_keras_fashion: conv1 gives ceil(57 / 4) = 15, the pools 7, 3, 1
    has_classifier = False

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=Conv2dSame(in_chans, 64, 11, 4),  # N x 64 x 56 x 56 ("SAME": pads 3 top, 4 bottom)
                relu1=nn.ReLU(inplace=True),
                lrn1=LocalResponseNorm.preset("tf"),
                pool1=nn.MaxPool2d(kernel_size=3, stride=2),  # N x 64 x 27 x 27 ("VALID")
                conv2=nn.Conv2d(64, 192, kernel_size=5, padding=2),  # N x 192 x 27 x 27
                relu2=nn.ReLU(inplace=True),
                lrn2=LocalResponseNorm.preset("tf"),
                pool2=nn.MaxPool2d(kernel_size=3, stride=2),  # N x 192 x 13 x 13
                conv3=nn.Conv2d(192, 384, kernel_size=3, padding=1),  # N x 384 x 13 x 13
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 256, kernel_size=3, padding=1),  # N x 256 x 13 x 13
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(256, 256, kernel_size=3, padding=1),  # N x 256 x 13 x 13
                relu5=nn.ReLU(inplace=True),
                pool5=nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 6 x 6
            )
        )
        # The benchmark's initialisation: tf.truncated_normal(stddev=1e-1) weights (cut at 2 standard deviations),
        # zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.features(x)  # N x 256 x 6 x 6: pool5

    @property
    def num_classes(self) -> int:
        raise UsageError("alexnet_tf_benchmark ends at pool5 (TensorFlow's benchmark has no classifier)")

    def reset_classifier(self, num_classes: int) -> None:
        raise UsageError("alexnet_tf_benchmark has no classifier to replace; train alexnet or alexnet2012 instead")


# Keras tutorials feed pixels scaled to [0, 1] (rescale=1/255) without mean or std: mean 0, std 1 here.
KERAS_RGB = Preprocessing(input_size=(3, 224, 224), resize_size=224, mean=(0.0,) * 3, std=(1.0,) * 3)
# Fashion-MNIST's 28x28 clothes scaled to 224x224 (tf.image.resize_with_pad on a square image is a plain resize).
KERAS_FASHION = Preprocessing(input_size=(1, 224, 224), resize_size=224, mean=(0.0,), std=(1.0,), channel_order="L")
BN = " (BatchNorm: Ioffe & Szegedy 2015, https://arxiv.org/abs/1502.03167)"


@register_model(
    "alexnet_bn",
    family="alexnet",
    preprocessing=Preprocessing(input_size=(3, 227, 227)),
    min_size=AlexNetBN.min_input_size,
    paper=PAPER + BN,
    description="AlexNet with BatchNorm after every convolution instead of LRN (a common variant)",
)
def alexnet_bn(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> AlexNetBN:
    return AlexNetBN(num_classes, in_chans, **kwargs)


@register_model(
    "alexnet_keras_bn",
    family="alexnet",
    preprocessing=KERAS_RGB,
    min_size=AlexNetKerasBN.min_input_size,
    paper=PAPER + BN,
    description="AlexNet of the Keras tutorial: BatchNorm after conv1 and conv2 only, 224 input",
    tutorial="Keras AlexNet tutorial (24 classes): conv1 11x11/4 valid, BatchNorm after conv1 and conv2, 4096-4096",
)
def alexnet_keras_bn(*, num_classes: int = 24, in_chans: int = 3, **kwargs) -> AlexNetKerasBN:
    return AlexNetKerasBN(num_classes, in_chans, **kwargs)


@register_model(
    "alexnet_keras_fashion",
    family="alexnet",
    preprocessing=KERAS_FASHION,
    min_size=AlexNetKerasFashion.min_input_size,
    paper=PAPER,
    description="AlexNet of the TF2 Fashion-MNIST tutorial: 1 channel, same padding, Dense 512-256",
    tutorial="TensorFlow 2 AlexNet on Fashion-MNIST: 1x224x224, conv1 same (56x56), Dense 512-256-10 (no sigmoid)",
)
def alexnet_keras_fashion(*, num_classes: int = 10, in_chans: int = 1) -> AlexNetKerasFashion:
    return AlexNetKerasFashion(num_classes, in_chans)


@register_model(
    "alexnet_tf_benchmark",
    family="alexnet",
    preprocessing=Preprocessing(input_size=(3, 224, 224)),
    min_size=AlexNetTFBenchmark.min_input_size,
    paper="Krizhevsky 2014, One weird trick, https://arxiv.org/abs/1404.5997 (64-192-384-256-256)",
    description="the convolutions of TensorFlow's AlexNet benchmark, to pool5 (no classifier)",
    tutorial="TensorFlow's alexnet_benchmark.py: tf.nn.lrn(4, 1, 0.001/9, 0.75) after conv1 and conv2, ends at pool5",
)
def alexnet_tf_benchmark(*, num_classes: int | None = None, in_chans: int = 3) -> AlexNetTFBenchmark:
    if num_classes is not None:
        raise UsageError(
            "alexnet_tf_benchmark ends at pool5 (TensorFlow's benchmark has no classifier): it takes no classes "
            "and cannot be trained; `classicnets bench --model alexnet_tf_benchmark` times it"
        )
    return AlexNetTFBenchmark(in_chans)
