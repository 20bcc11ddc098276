"""Layer-by-layer summaries: exact totals, and MACs equal to torch's own FLOP counter / 2."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from classicnets.models.lrn import use_torch_lrn
from classicnets.models.registry import create_model, list_models
from classicnets.models.summary import summarize


def test_alexnet2012_totals_and_rows():
    s = summarize("alexnet2012")
    assert s.total_params == s.trainable_params == 60_965_224
    assert s.macs == 724_406_816  # docs/facts.md
    assert s.flops == 1_448_813_632  # docs/facts.md: what FlopCounterMode gives
    convs = [(r.name, r.output_shape, r.params, r.macs) for r in s.rows if r.type == "Conv2d"]
    assert convs[0] == ("features.conv1", [96, 55, 55], 34_944, 55 * 55 * 96 * 3 * 11 * 11)
    assert convs[1][1:] == ([256, 27, 27], 307_456, 27 * 27 * 256 * 48 * 5 * 5)  # groups=2: 48 inputs each
    assert [r.name for r in s.rows][-1] == "classifier.fc8"
    assert s.rows[-1].output_shape == [1000]
    assert s.activation_bytes == 4 * sum(torch.Size(r.output_shape).numel() for r in s.rows)


def test_alexnet_torchvision_macs():
    assert summarize("alexnet").macs == 714_188_480  # docs/facts.md (torchvision's "0.714 GFLOPS" are MACs)


@pytest.mark.parametrize("name", list_models())
def test_macs_equal_flop_counter_mode_over_two(name):
    with torch.device("meta"):
        model = create_model(name).eval()
    s = summarize(model)
    use_torch_lrn(model)  # FlopCounterMode would count our LRN's banded matmul; torch's LRN is pooling (0 FLOPs)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *s.input_size, device="meta"))
    assert s.macs * 2 == counter.get_total_flops()
    assert s.total_params == sum(r.params for r in s.rows) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "gmacs"),
    [("vgg16", 15.47), ("vgg19", 19.63), ("googlenet", 1.50), ("resnet18", 1.814), ("resnet50", 4.089)],
)
def test_macs_match_torchvision_metadata(name, gmacs):
    assert summarize(name).macs / 1e9 == pytest.approx(gmacs, abs=0.006)


def test_reused_module_params_counted_once_and_frozen_params():
    model = create_model("resnet18", num_classes=10)
    for p in model.layer1.parameters():
        p.requires_grad = False
    s = summarize(model, (3, 64, 64))
    relu_rows = [r for r in s.rows if r.name == "layer1.0.relu"]
    assert len(relu_rows) == 2  # torchvision's BasicBlock calls its ReLU twice
    assert s.total_params == sum(r.params for r in s.rows) == 11_181_642
    assert s.trainable_params == s.total_params - sum(p.numel() for p in model.layer1.parameters())
    assert s.rows[-1].output_shape == [10]


def test_summary_of_a_smaller_input_and_one_channel():
    s = summarize(create_model("lenet5"), (1, 32, 32), device="cpu")
    assert [r.output_shape for r in s.rows if r.type == "Conv2d"] == [[6, 28, 28], [16, 10, 10], [120, 1, 1]]
    assert s.macs == 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 120 * 400 + 84 * 120 + 10 * 84
