"""Seeing inside a model: the layers found, Grad-CAM's localisation, the kernel grid and the feature maps, on models
whose right answers are known."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from classicnets.errors import UsageError
from classicnets.inference.activations import activation_maps, default_layers
from classicnets.inference.explain import show_gradcam
from classicnets.inference.explain_plots import plot_filters
from classicnets.inference.filters import filter_grid, grid_columns, mosaic
from classicnets.inference.gradcam import grad_cam
from classicnets.inference.layers import conv_layers, feature_label, gradcam_layer
from classicnets.inference.prediction import predict
from classicnets.models.base import ClassicNet
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import create_model

# The bright square of the test image: rows 4-11, columns 20-27 of 32 x 32.
SQUARE = (slice(4, 12), slice(20, 28))


class BrightOrDark(ClassicNet):
    """A model built to find bright pixels (class "bright") and dark ones (class "dark"): its convolution's
    channel 0 is the pixel value, channel 1 is one minus it, and each class score is the mean of one channel."""

    min_input_size = 8
    head = "classifier"

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1], conv.weight[1, 0, 1, 1] = 1.0, -1.0
            conv.bias.copy_(torch.tensor([0.0, 1.0]))
        self.features = nn.Sequential(conv, nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2, 2)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(2))
            self.classifier.bias.zero_()
        self.preprocessing = Preprocessing(
            input_size=(1, 32, 32), resize_size=None, mean=(0.0,), std=(1.0,), channel_order="L"
        )
        self.classes = ["bright", "dark"]
        self.model_name = "bright_or_dark"


def square_image() -> torch.Tensor:
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0][SQUARE] = 1.0
    return x


def test_gradcam_peaks_in_the_region_holding_the_class_evidence():
    model = BrightOrDark().eval()
    assert gradcam_layer(model) == "features.1"  # the convolution's rectified output
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[SQUARE] = True
    maps, logits = grad_cam(model, square_image(), torch.tensor([0]))
    bright = maps[0]
    assert logits.argmax(1).item() == 1  # most of the image is dark
    assert bright.max() == pytest.approx(1.0)
    row, col = divmod(int(bright.argmax()), 32)
    assert inside[row, col]
    # the square's edge is blurred by the bilinear upsampling only: 2 px inside it the map is 1, 2 px outside 0
    assert bright[6:10, 22:26].min() > 0.99 and bright[~inside].mean() < 0.03
    maps, _ = grad_cam(model, square_image(), torch.tensor([1]))  # the other class: everywhere but the square
    dark = maps[0]
    assert dark[6:10, 22:26].max() < 0.01 and dark[~inside].mean() > 0.95


def test_gradcam_through_show_gradcam_and_predict_uses_the_named_or_predicted_class(tmp_path, is_png):
    model = BrightOrDark()
    png = tmp_path / "square.png"
    Image.fromarray((square_image()[0, 0].numpy() * 255).astype(np.uint8)).save(png)
    out = tmp_path / "cam.png"
    [bright] = show_gradcam(model, [png], class_name="bright", out=out, device="cpu")
    assert bright.class_name == "bright" and is_png(out) and bright.heatmap.shape == (32, 32)
    assert 0 < bright.probability < 0.5  # the image is mostly dark
    assert np.unravel_index(int(bright.heatmap.argmax()), (32, 32))[1] >= 20
    [predicted] = predict(model, [png], device="cpu", precision="fp32", gradcam=True, grid=tmp_path / "g.png")
    assert predicted.classes[0] == "dark" and is_png(tmp_path / "g.png")
    assert predicted.heatmap[6:10, 22:26].max() < 0.01 and predicted.heatmap[20:, :16].min() > 0.99
    with pytest.raises(UsageError, match="--class cat: not one of the model's 2 classes"):
        show_gradcam(model, [png], class_name="cat", device="cpu")


@pytest.mark.parametrize(
    ("name", "cam", "features", "convolutions"),
    [
        ("lenet5", "features.act3", "F6", 3),  # after C3: C5's map is 1x1 at 32x32, nothing to localise
        ("alexnet2012", "features.relu5", "fc7", 5),  # conv5 rectified, as Caffe's in-place ReLU leaves it
        ("vgg11_bn", "features.27", "classifier.3", 8),  # the last conv (25), its BatchNorm (26), its ReLU (27)
        ("resnet18", "layer4", "pooled features", 20),
    ],
)
def test_the_layers_pictures_use(name, cam, features, convolutions):
    model = create_model(name, num_classes=10).eval()
    assert gradcam_layer(model) == cam
    assert feature_label(model) == features
    assert len(conv_layers(model)) == convolutions


def test_alexnet2012_conv1_grid_has_one_tile_per_kernel_in_the_papers_two_groups(is_png):
    torch.manual_seed(1)
    model = create_model("alexnet2012", num_classes=10).eval()
    grid = filter_grid(model)
    assert grid.layer == "conv1" and grid.tiles.shape == (96, 11, 11, 3)
    assert grid.groups == [range(0, 48), range(48, 96)]  # conv2 has groups=2: the paper's two GPUs
    weight = model.features.conv1.weight.detach()
    k = 5
    expected = (weight[k] - weight[k].min()) / (weight[k].max() - weight[k].min())
    np.testing.assert_allclose(grid.tiles[k], expected.permute(1, 2, 0).numpy(), atol=1e-6)
    assert (grid.tiles.reshape(96, -1).min(1) == 0).all() and np.allclose(grid.tiles.reshape(96, -1).max(1), 1)
    columns = grid_columns(48)
    assert columns == 8
    tiled = mosaic(grid.tiles[48:], columns)
    assert tiled.shape == (6 * 12 + 1, 8 * 12 + 1, 3)  # 6 rows of 8 tiles of 11 px, 1 px apart
    for j in range(48):  # every kernel of group 2 at its place
        top, left = 1 + (j // 8) * 12, 1 + (j % 8) * 12
        np.testing.assert_array_equal(tiled[top : top + 11, left : left + 11], grid.tiles[48 + j])
    picture = Image.open(io.BytesIO(plot_filters(grid)))
    assert picture.width > 1.5 * picture.height  # the two groups side by side
    single = filter_grid(create_model("alexnet2012", num_classes=10, groups=1))
    assert single.groups == [range(0, 96)]


def test_bgr_weights_are_shown_in_rgb_and_deeper_layers_averaged_over_their_inputs():
    model = create_model("alexnet2012", num_classes=10).eval()
    rgb = filter_grid(model)
    model.preprocessing = replace(model.preprocessing, channel_order="BGR")  # Caffe's convention
    np.testing.assert_array_equal(filter_grid(model).tiles, rgb.tiles[..., ::-1])
    conv2 = filter_grid(model, "conv2")
    assert conv2.tiles.shape == (256, 5, 5, 1) and "averaged over its 48 input channels" in conv2.note
    with pytest.raises(UsageError, match="fc7 is not a convolution"):
        filter_grid(model, "fc7")


def test_activation_maps_are_the_layer_outputs_for_the_image(digit_kit):
    torch.manual_seed(2)
    model = create_model("lenet5").eval()
    images, _ = digit_kit.shipped("test")
    x = nn.functional.pad(torch.from_numpy(images[0]).float()[None, None] / 255, (2, 2, 2, 2))
    assert default_layers(model) == ["features.c1", "features.c3"]  # C5 is 1x1
    c1, c3 = activation_maps(model, x)
    with torch.no_grad():
        expected = model.features.c1(x)[0]
        after = model.features.c3(model.features.s2(model.features.act1(model.features.c1(x))))[0]
    assert c1.layer == "C1" and c1.maps.shape == (6, 28, 28)
    np.testing.assert_allclose(c1.maps, expected.numpy(), atol=1e-6)
    assert c3.maps.shape == (16, 10, 10)
    np.testing.assert_allclose(c3.maps, after.numpy(), atol=1e-5)
    [fc] = activation_maps(create_model("alexnet2012", num_classes=4).eval(), torch.zeros(1, 3, 227, 227), ["conv5"])
    assert fc.layer == "conv5" and fc.maps.shape == (256, 13, 13)
    with pytest.raises(UsageError, match="outputs a vector"):
        activation_maps(model, x, ["classifier.f6"])
