"""Every registered model: shapes, exact parameter counts (docs/facts.md), torchvision keys, heads, input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from classicnets.errors import InputSizeError, UnknownModelError, UsageError
from classicnets.models.googlenet import GoogLeNetOutputs
from classicnets.models.registry import create_model, get_model_info, list_models
from classicnets.models.summary import summarize

# docs/facts.md (torchvision weight metadata, bvlc_alexnet shapes) for 1000 classes.
PARAMS_1000 = {
    "alexnet": 61_100_840,
    "alexnet2012": 60_965_224,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    # torchvision weight metadata (not in docs/facts.md):
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    # derived: the no-groups AlexNet of docs/facts.md (62,378,344) plus BatchNorm's weight and bias on
    # 96 + 256 + 384 + 384 + 256 channels.
    "alexnet_bn": 62_378_344 + 2 * (96 + 256 + 384 + 384 + 256),
}
# The CIFAR networks for 10 classes, derived layer by layer (weights + biases of every convolution and linear layer,
# BatchNorm's weight and bias; running statistics are buffers, not parameters):
# - resnet18_cifar: conv1 3x3x3x64 = 1,728 + bn 128; layer1 2 x (2 x 36,864 + 2 x 128) = 147,968; layer2 73,728 +
#   147,456 + 8,192 (1x1 shortcut) + 3 x 256 + 295,424 = 525,568; layer3 919,040 + 1,180,672 = 2,099,712; layer4
#   3,673,088 + 4,720,640 = 8,393,728; fc 5,130: 11,173,962 (the figure of kuangliu/pytorch-cifar's ResNet18), which
#   is also torchvision's resnet18 (11,689,512) - 513,000 (fc) + 5,130 - (9,408 - 1,728) (7x7 -> 3x3 conv1).
# - resnet34_cifar: the same stem, [3, 4, 6, 3] blocks: 21,282,122.
# - vggN_cifar: the convolutions with biases + 2 x channels of BatchNorm + 512 x 10 + 10:
#   vgg11 9,220,480 + 5,504 + 5,130; vgg13 9,404,992 + 5,888 + 5,130; vgg16 14,714,688 + 8,448 + 5,130 (kuangliu's
#   VGG16: 14,728,266); vgg19 20,024,384 + 11,008 + 5,130.
PARAMS_CIFAR = {
    "resnet18_cifar": 11_173_962,
    "resnet34_cifar": 21_282_122,
    "vgg11_cifar": 9_231_114,
    "vgg13_cifar": 9_416_010,
    "vgg16_cifar": 14_728_266,
    "vgg19_cifar": 20_040_522,
}
# The smallest square input each model accepts, found by searching sizes on the meta device.
MIN_SIZES = {"alexnet": 63, "alexnet2012": 67, "alexnet_bn": 67, "alexnet_keras_bn": 67, "alexnet_keras_fashion": 57,
             "alexnet_tf_benchmark": 57, "resnet18_keras_cifar": 3, "googlenet": 15, "lenet5": 32, "vgg": 32,
             "resnet": 1}  # fmt: skip
# Models without a classifier (a feature extractor; tests/unit/test_models_tutorials.py has its own tests).
NO_CLASSIFIER = {"alexnet_tf_benchmark"}

ALL = list_models()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_every_family_is_registered():
    assert ALL == sorted(
        ["lenet5", "alexnet", "alexnet2012", "alexnet_bn", "googlenet"]
        + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn", "_cifar")]
        + [f"resnet{d}" for d in (18, 34, 50, 101, 152)]
        + ["resnet18_cifar", "resnet34_cifar"]
        # the tutorials' networks
        + ["alexnet_keras_bn", "alexnet_keras_fashion", "alexnet_tf_benchmark", "vgg13_keras_cifar"]
        + ["resnet18_keras_cifar"]
    )


@pytest.mark.parametrize("name", sorted(PARAMS_1000))
def test_parameter_count_for_1000_classes(name):
    assert n_params(meta_model(name)) == PARAMS_1000[name]


@pytest.mark.parametrize("name", sorted(PARAMS_CIFAR))
def test_cifar_parameter_counts_for_10_classes(name):
    assert n_params(meta_model(name)) == PARAMS_CIFAR[name]  # their default: 10 classes
    assert get_model_info(name).input_size == (3, 32, 32) and get_model_info(name).preprocessing.resize_size is None


def test_cifar_networks_keep_32x32_through_the_stem():
    s = summarize("resnet18_cifar")
    assert [r.output_shape for r in s.rows if r.name in ("conv1", "layer1.1.bn2", "layer4.1.bn2")] == [
        [64, 32, 32], [64, 32, 32], [512, 4, 4]]  # fmt: skip
    assert "maxpool" not in [r.name for r in s.rows]
    assert s.rows[0].params == 3 * 3 * 3 * 64  # 3x3 stride-1 stem without bias
    vgg = summarize("vgg13_cifar")
    assert [r.output_shape for r in vgg.rows if r.type == "MaxPool2d"][-1] == [512, 1, 1]
    assert [r.type for r in vgg.rows[:3]] == ["Conv2d", "BatchNorm2d", "ReLU"]


def test_vgg_cifar_hidden_head_of_the_tensorflow_tutorial():
    # 9,404,992 (convolutions) + 5,888 (BatchNorm) + 512 x 256 + 256 + 256 x 128 + 128 + 128 x 100 + 100
    model = meta_model("vgg13_cifar", num_classes=100, hidden=[256, 128])
    assert n_params(model) == 9_404_992 + 5_888 + 131_328 + 32_896 + 12_900 == 9_588_004
    assert model.head == "classifier.4" and model.num_classes == 100
    model.reset_classifier(7)
    assert model.get_classifier().in_features == 128 and model.num_classes == 7


def test_lenet5_parameter_count():
    # docs/facts.md: 156 + 2,416 + 48,120 + 10,164 + 850 (C1, C3, C5, F6, output) for 10 classes, 1x32x32.
    model = meta_model("lenet5")
    assert n_params(model) == 61_706
    per_layer = [n_params(model.get_submodule(n)) for n in ("features.c1", "features.c3", "features.c5")]
    per_layer += [n_params(model.get_submodule(n)) for n in ("classifier.f6", "classifier.output")]
    assert per_layer == [156, 2_416, 48_120, 10_164, 850]


def test_alexnet2012_without_groups_matches_facts():
    assert n_params(meta_model("alexnet2012", groups=1)) == 62_378_344


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_at_default_size(name):
    info = get_model_info(name)
    model = create_model(name, **({} if name in NO_CLASSIFIER else {"num_classes": 7})).train()
    x = torch.randn(2, *info.input_size)
    out = model(x)
    assert out.shape == ((2, 256, 6, 6) if name in NO_CLASSIFIER else (2, 7))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_smallest_input_works_and_one_pixel_less_fails(name):
    info = get_model_info(name)
    expected_min = MIN_SIZES.get(name, MIN_SIZES.get(info.family))
    assert info.min_size == expected_min
    model = create_model(name, in_chans=1, **({} if name in NO_CLASSIFIER else {"num_classes": 3})).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, expected_min, expected_min)).shape[:2] == ((1, 256) if name in NO_CLASSIFIER
                                                                                  else (1, 3))  # fmt: skip
        if expected_min > 1:
            with pytest.raises(InputSizeError, match=f"minimum is {expected_min}x{expected_min}"):
                model(torch.randn(1, 1, expected_min - 1, expected_min + 5))


def test_lenet5_rejects_raw_28x28_digits_with_the_minimum_named():
    with pytest.raises(InputSizeError, match=r"input 28x28 is too small for LeNet5: the minimum is 32x32"):
        create_model("lenet5")(torch.zeros(1, 1, 28, 28))


def test_three_dimensional_input_is_refused():
    with pytest.raises(InputSizeError, match="expects a batch"):
        create_model("lenet5")(torch.zeros(1, 32, 32))


@pytest.mark.parametrize("name", ["alexnet", "alexnet2012", "vgg11_bn", "googlenet", "resnet18", "lenet5"])
def test_reset_classifier_replaces_the_head(name):
    model = meta_model(name, num_classes=10)
    before = n_params(model)
    in_features = model.get_classifier().in_features
    model.reset_classifier(4)
    assert model.num_classes == 4
    assert n_params(model) == before - 6 * (in_features + 1)


def test_googlenet_aux_heads_in_training_only_and_reset_together():
    model = create_model("googlenet", num_classes=5, aux_logits=True)
    model.reset_classifier(3)
    out = model.train()(torch.randn(2, 3, 224, 224))
    assert isinstance(out, GoogLeNetOutputs)
    assert [o.shape for o in out] == [(2, 3)] * 3
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 3)
    # torchvision counts GoogLeNet without the auxiliary heads: these add 2 x (conv 1x1 + fc1 + fc2).
    assert n_params(meta_model("googlenet", aux_logits=True)) > PARAMS_1000["googlenet"]


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownModelError, match=r"unknown model 'alexnt'; closest: alexnet"):
        create_model("alexnt")
    with pytest.raises(UsageError, match="in_chans must be 1 or 3"):
        create_model("alexnet", in_chans=4)
    with pytest.raises(UsageError, match="unexpected keyword argument 'lrn'"):
        create_model("alexnet", lrn="caffe")
    with pytest.raises(UsageError, match="alexnet2012: unknown init 'he'"):
        create_model("alexnet2012", init="he")


def test_torchvision_state_dict_keys():
    # Key names from torchvision's published checkpoints (alexnet-owt-7be5be79.pth, vgg16-397923af.pth, ...).
    alexnet = meta_model("alexnet").state_dict()
    assert list(alexnet) == [
        f"{part}.{i}.{kind}"
        for part, idx in (("features", (0, 3, 6, 8, 10)), ("classifier", (1, 4, 6)))
        for i in idx
        for kind in ("weight", "bias")
    ]
    vgg16 = meta_model("vgg16").state_dict()
    assert vgg16["features.28.weight"].shape == (512, 512, 3, 3)
    assert vgg16["classifier.0.weight"].shape == (4096, 25088)
    resnet50 = meta_model("resnet50").state_dict()
    assert resnet50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert resnet50["layer4.2.bn3.running_var"].shape == (2048,)
    assert resnet50["fc.weight"].shape == (1000, 2048)
    googlenet = meta_model("googlenet", aux_logits=True).state_dict()
    assert googlenet["inception3a.branch3.1.conv.weight"].shape == (32, 16, 3, 3)  # torchvision's 3x3 "5x5"
    assert googlenet["aux1.fc1.weight"].shape == (1024, 2048)
    assert googlenet["conv1.bn.num_batches_tracked"].shape == ()


def test_alexnet2012_layout_and_paper_init():
    model = create_model("alexnet2012")
    convs = {n: m for n, m in model.features.named_children() if isinstance(m, nn.Conv2d)}
    assert {n: m.groups for n, m in convs.items()} == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    assert [m.out_channels for m in convs.values()] == [96, 256, 384, 384, 256]
    norms = [n for n, m in model.features.named_children() if type(m).__name__ == "LocalResponseNorm"]
    order = list(dict(model.features.named_children()))
    assert norms == ["norm1", "norm2"]
    assert order.index("relu1") < order.index("norm1") < order.index("pool1")  # bvlc_alexnet: norm before pool
    pool = model.features.pool1
    assert (pool.kernel_size, pool.stride) == (3, 2)  # overlapping pooling, section 3.4
    for name, module in [*model.features.named_children(), *model.classifier.named_children()]:
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert module.weight.std().item() == pytest.approx(0.01, rel=0.05), name
            expected_bias = 1.0 if name in {"conv2", "conv4", "conv5", "fc6", "fc7"} else 0.0
            assert torch.all(module.bias == expected_bias), name
    assert model.classifier.drop6.p == 0.5 and model.classifier.drop7.p == 0.5


def test_alexnet2012_lrn_presets():
    paper = create_model("alexnet2012").features.norm1
    caffe = create_model("alexnet2012", lrn="caffe").features.norm1
    assert (paper.k, paper.effective_alpha, paper.beta, paper.size) == (2.0, 1e-4, 0.75, 5)
    assert (caffe.k, caffe.effective_alpha, caffe.beta, caffe.size) == (1.0, 1e-4 / 5, 0.75, 5)


def test_preprocessing_follows_input_channels():
    gray = create_model("resnet18", in_chans=1).preprocessing
    assert gray.input_size == (1, 224, 224) and gray.channel_order == "L" and len(gray.mean) == 1
    digits = create_model("lenet5", in_chans=3).preprocessing
    assert digits.input_size == (3, 32, 32) and digits.mean == (0.1307,) * 3
