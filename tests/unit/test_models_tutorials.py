"""The tutorials' own networks, exactly: parameter counts derived layer by layer, the shapes their code produces,
TensorFlow's padding and LRN, Keras' BatchNorm constants and initialisation, and the benchmark network without a
classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from classicnets.errors import UsageError
from classicnets.models.keras_layers import Conv2dSame, MaxPool2dSame, same_padding
from classicnets.models.lrn import LocalResponseNorm
from classicnets.models.registry import create_model, get_model_info
from classicnets.models.summary import summarize


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def conv_and_dense_params(model: nn.Module) -> list[int]:
    return [n_params(m) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


# Every count below is weights + biases of each convolution (k x k x in x out + out) and dense layer (in x out + out),
# in the tutorial's order; BatchNorm adds 2 x channels of trainable scale and shift.
def test_pytorch_tutorial_alexnet_no_lrn_no_groups_for_2_classes():
    # 34,944 + 614,656 + 885,120 + 1,327,488 + 884,992 + 37,752,832 + 16,781,312 + 8,194: the no-groups AlexNet
    # (62,378,344 for 1000 classes, docs/facts.md) - 4,097,000 + 8,194
    model = meta_model("alexnet2012", groups=1, lrn="none", num_classes=2)
    assert conv_and_dense_params(model) == [34_944, 614_656, 885_120, 1_327_488, 884_992, 37_752_832, 16_781_312, 8_194]
    assert n_params(model) == 58_289_538
    assert not any(isinstance(m, LocalResponseNorm) for m in model.modules())
    assert [r.output_shape for r in summarize(model).rows if r.name == "features.conv1"] == [[96, 55, 55]]


def test_keras_alexnet_with_batchnorm_after_conv1_and_conv2_counts_as_keras_prints():
    model = meta_model("alexnet_keras_bn")  # 24 classes: the tutorial's
    assert conv_and_dense_params(model) == [34_944, 614_656, 885_120, 1_327_488, 884_992,
                                            26_218_496, 16_781_312, 98_328]  # fmt: skip
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n_params(m) for m in norms] == [192, 512] and all((m.eps, m.momentum) == (1e-3, 0.01) for m in norms)
    s = summarize("alexnet_keras_bn")
    assert s.trainable_params == s.total_params == 46_846_040
    assert s.batchnorm_statistics == 704  # 2 x (96 + 256) running means and variances
    assert s.total_params + s.batchnorm_statistics == 46_846_744  # Keras' "Total params"
    shapes = {r.name: r.output_shape for r in s.rows}
    assert shapes["features.conv1"] == [96, 54, 54] and shapes["features.pool5"] == [256, 5, 5]  # "valid" 11x11/4
    assert [r.name for r in s.rows[:4]] == ["features.conv1", "features.relu1", "features.bn1", "features.pool1"]
    assert "features.bn3" not in shapes and model.classifier.fc6.in_features == 6_400


def test_tf2_fashion_mnist_alexnet_same_padding_and_its_head():
    model = meta_model("alexnet_keras_fashion")
    assert conv_and_dense_params(model) == [11_712, 614_656, 885_120, 1_327_488, 884_992, 4_719_104, 131_328, 2_570]
    assert n_params(model) == 8_576_970
    shapes = {r.name: r.output_shape for r in summarize("alexnet_keras_fashion").rows}
    assert shapes["features.conv1"] == [96, 56, 56] and shapes["features.pool5"] == [256, 6, 6]  # flatten 9,216
    assert get_model_info("alexnet_keras_fashion").input_size == (1, 224, 224)
    assert not any(isinstance(m, nn.Sigmoid | nn.Softmax) for m in model.modules())  # logits: the bug left out


def test_tf2_cifar100_vgg13_without_batchnorm():
    # 1,792 + 36,928 + 73,856 + 147,584 + 295,168 + 590,080 + 1,180,160 + 3 x 2,359,808 + 131,328 + 32,896 + 12,900
    model = meta_model("vgg13_keras_cifar")
    assert conv_and_dense_params(model) == [1_792, 36_928, 73_856, 147_584, 295_168, 590_080, 1_180_160,
                                            2_359_808, 2_359_808, 2_359_808, 131_328, 32_896, 12_900]  # fmt: skip
    assert n_params(model) == 9_582_116 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert get_model_info("vgg13_keras_cifar").preprocessing.mean == (0.0, 0.0, 0.0)  # the tutorial's x / 255


def test_tf2_cifar100_resnet18_stem_shortcuts_and_counts():
    # stem 1,792 + BN 128; layer1 2 x (2 x 36,928 + 2 x 128); layer2 73,856 + 147,584 + 8,320 (1x1 shortcut with
    # bias, no BN) + 512 + 147,584 x 2 + 512; layer3 919,296 + 1,181,184; layer4 3,673,600 + 4,721,664; fc 51,300
    model = meta_model("resnet18_keras_cifar")
    assert n_params(model) == 11_223_140
    assert n_params(model.layer2[0].downsample) == 64 * 128 + 128 and isinstance(model.layer2[0].downsample, nn.Conv2d)
    assert model.layer1[0].downsample is None and model.conv1.bias is not None
    s = summarize("resnet18_keras_cifar")
    assert s.batchnorm_statistics == 7_808  # 2 x (64 + 4 x 64 + 4 x 128 + 4 x 256 + 4 x 512)
    shapes = {r.name: r.output_shape for r in s.rows}
    assert (shapes["conv1"], shapes["maxpool"]) == ([64, 30, 30], [64, 30, 30])  # "valid" 3x3, then 2x2/1 "same"
    assert (shapes["layer2.0.conv1"], shapes["layer3.0.conv1"], shapes["layer4.1.bn2"]) == (
        [128, 15, 15], [256, 8, 8], [512, 4, 4])  # fmt: skip


def test_tf_benchmark_alexnet_ends_at_pool5_and_has_no_classifier():
    # 11 x 11 x 3 x 64 + 64, 5 x 5 x 64 x 192 + 192, 3 x 3 x 192 x 384 + 384, 3 x 3 x 384 x 256 + 256,
    # 3 x 3 x 256 x 256 + 256
    model = meta_model("alexnet_tf_benchmark")
    assert conv_and_dense_params(model) == [23_296, 307_392, 663_936, 884_992, 590_080]
    assert n_params(model) == 2_469_696
    s = summarize("alexnet_tf_benchmark")
    assert s.num_classes == 0 and s.rows[-1].output_shape == [256, 6, 6]
    assert s.print_activations(32) == [
        "conv1   [32, 56, 56, 64]", "pool1   [32, 27, 27, 64]", "conv2   [32, 27, 27, 192]",
        "pool2   [32, 13, 13, 192]", "conv3   [32, 13, 13, 384]", "conv4   [32, 13, 13, 256]",
        "conv5   [32, 13, 13, 256]", "pool5   [32, 6, 6, 256]",
    ]  # fmt: skip
    with pytest.raises(UsageError, match="ends at pool5 .* cannot be trained"):
        create_model("alexnet_tf_benchmark", num_classes=3)
    with pytest.raises(UsageError, match="no classifier"):
        model.reset_classifier(3)
    with pytest.raises(UsageError, match="no classifier"):
        _ = model.num_classes
    weights = create_model("alexnet_tf_benchmark").features.conv1.weight
    assert weights.abs().max() <= 0.2 and 0.08 < weights.std() < 0.1  # truncated normal, stddev 0.1, cut at 2 sd


def tf_lrn(x: np.ndarray, depth_radius: int, bias: float, alpha: float, beta: float) -> np.ndarray:
    """tf.nn.local_response_normalization as its documentation defines it, channels on axis 1."""
    sq = np.pad(x**2, ((0, 0), (depth_radius, depth_radius), (0, 0), (0, 0)))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(2 * depth_radius + 1))
    return x / (bias + alpha * window) ** beta


def test_tf_lrn_preset_is_tensorflows_formula():
    x = torch.rand(2, 20, 3, 4, dtype=torch.float64) * 30
    expected = tf_lrn(x.numpy(), depth_radius=4, bias=1.0, alpha=0.001 / 9, beta=0.75)
    lrn = LocalResponseNorm.preset("tf")
    assert np.allclose(lrn(x).numpy(), expected, rtol=1e-12)
    assert (lrn.size, lrn.k, lrn.beta, lrn.effective_alpha) == (9, 1.0, 0.75, 0.001 / 9)  # alpha not divided by 9
    assert np.allclose(lrn.to_torch()(x).numpy(), expected, rtol=1e-12)
    norm1 = create_model("alexnet2012", lrn="tf").features.norm1
    assert norm1.size == 9 and norm1.effective_alpha == 0.001 / 9
    with pytest.raises(UsageError, match="unknown lrn 'tensorflow'; choose one of paper, caffe, tf, none"):
        create_model("alexnet2012", lrn="tensorflow")


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"), [(224, 11, 4, (3, 4)), (30, 3, 2, (0, 1)), (15, 3, 2, (1, 1)),
                                               (30, 2, 1, (0, 1))],
)  # fmt: skip
def test_tensorflow_same_padding(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected
    assert math.ceil(size / stride) == (size + sum(expected) - kernel) // stride + 1  # "same": ceil(n / s) outputs


def test_same_convolution_and_pooling_pad_as_tensorflow():
    x = torch.randn(1, 2, 224, 224)
    conv = Conv2dSame(2, 3, 11, 4)
    assert torch.allclose(conv(x), F.conv2d(F.pad(x, (3, 4, 3, 4)), conv.weight, conv.bias, stride=4), atol=1e-5)
    y = torch.randn(1, 2, 5, 5) - 10  # all negative: zero padding would win the max where -inf padding does not
    pooled = MaxPool2dSame(2, 1)(y)
    assert pooled.shape == (1, 2, 5, 5) and torch.equal(pooled[..., -1, -1], y[..., -1, -1])
    assert torch.equal(pooled[..., :4, :4], F.max_pool2d(y, 2, 1))


KERAS_NETWORKS = ["alexnet_keras_bn", "alexnet_keras_fashion", "vgg13_keras_cifar", "resnet18_keras_cifar"]


@pytest.mark.parametrize("name", KERAS_NETWORKS)
def test_keras_initialisation_glorot_uniform_and_zero_biases(name):
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in, fan_out = m.weight[0].numel(), m.weight.shape[0] * m.weight[0, 0].numel()
            assert m.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) and torch.all(m.bias == 0)
    model.reset_classifier(5)
    assert torch.all(model.get_classifier().bias == 0)  # a new head is initialised the Keras way too
