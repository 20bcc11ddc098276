"""Fine-tuning surgery: re-initialise by paper or module names, freeze, freeze-until, and param groups."""

from __future__ import annotations

import pytest
import torch

from classicnets.errors import UsageError
from classicnets.models.registry import create_model
from classicnets.weights import finetune_surgery, param_groups, replace_head

CONVS = ["features.conv1", "features.conv2", "features.conv3", "features.conv4", "features.conv5"]


@pytest.fixture
def alexnet2012():
    """The paper network with 'pretrained' weights we can recognise: every parameter filled with 0.5."""
    model = create_model("alexnet2012", lrn="caffe")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    model.new_layers = []
    return model


def test_skip_layers_reinitialise_with_the_papers_rule(alexnet2012):
    done = finetune_surgery(alexnet2012, skip_layers="fc7,fc8")
    assert done == {
        "reinitialised": ["classifier.fc7", "classifier.fc8"],
        "frozen": [],
        "new_layers": ["classifier.fc7", "classifier.fc8"],
    }
    fc7, fc8 = alexnet2012.classifier.fc7, alexnet2012.classifier.fc8
    # Paper, section 5: N(0, 0.01) weights; bias 1 in fc7, 0 in the output layer.
    assert abs(fc7.weight.std().item() - 0.01) < 2e-4 and abs(fc7.weight.mean().item()) < 2e-4
    assert torch.all(fc7.bias == 1.0) and torch.all(fc8.bias == 0.0)
    assert abs(fc8.weight.std().item() - 0.01) < 5e-4
    assert torch.all(alexnet2012.classifier.fc6.weight == 0.5)  # untouched
    assert all(p.requires_grad for p in alexnet2012.parameters())
    assert alexnet2012.new_layers == ["classifier.fc7", "classifier.fc8"]


def test_dotted_names_and_pytorch_default_init_elsewhere():
    model = create_model("resnet18")
    with torch.no_grad():
        model.layer4[1].bn2.weight.fill_(3.0)
        model.layer4[1].bn2.running_mean.fill_(3.0)
    done = finetune_surgery(model, skip_layers=["layer4.1", "fc"])
    assert done["reinitialised"] == ["layer4.1", "fc"]
    assert torch.all(model.layer4[1].bn2.weight == 1.0) and torch.all(model.layer4[1].bn2.running_mean == 0.0)
    bound = 1 / 512**0.5  # nn.Linear's default: uniform(-1/sqrt(in), 1/sqrt(in))
    assert model.fc.weight.abs().max() <= bound and model.fc.weight.abs().max() > 0.9 * bound


def test_freeze_features_and_freeze_until(alexnet2012):
    done = finetune_surgery(alexnet2012, freeze="features")
    assert done["frozen"] == CONVS and done["reinitialised"] == []
    trainable = [n for n, p in alexnet2012.named_parameters() if p.requires_grad]
    assert trainable == [f"classifier.fc{i}.{w}" for i in (6, 7, 8) for w in ("weight", "bias")]

    with torch.device("meta"):  # freezing needs no weights, only the layers
        assert finetune_surgery(create_model("alexnet2012"), freeze_until="conv5")["frozen"] == CONVS
        frozen = finetune_surgery(create_model("alexnet2012"), freeze_until="fc6")["frozen"]
        assert frozen == [*CONVS, "classifier.fc6"]
        model = create_model("resnet18")
    frozen = finetune_surgery(model, freeze_until="layer3")["frozen"]
    assert frozen[:2] == ["conv1", "bn1"] and frozen[-1] == "layer3.1.bn2"
    assert not model.layer3[1].conv2.weight.requires_grad and model.layer4[0].conv1.weight.requires_grad
    # layer4: convolutions 256*512*9 + 3 * 512*512*9 + 256*512 = 8,388,608 and five BatchNorms of 2 * 512; fc 513,000
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8_388_608 + 5 * 1024 + 513_000


def test_bad_requests_are_usage_errors_listing_valid_names():
    with torch.device("meta"):
        alexnet2012, resnet18 = create_model("alexnet2012"), create_model("resnet18")
    with pytest.raises(UsageError, match=r"unknown layer 'fc9' for alexnet2012; valid names: conv1, conv2, .*, fc8, "):
        finetune_surgery(alexnet2012, skip_layers="fc9")
    with pytest.raises(UsageError, match="classifier.fc8 would be both new and frozen"):
        finetune_surgery(alexnet2012, skip_layers="fc8", freeze="classifier")
    with pytest.raises(UsageError, match="freezes every layer"):
        finetune_surgery(alexnet2012, freeze_until="fc8")
    with pytest.raises(UsageError, match="relu1 has no weights"):
        finetune_surgery(alexnet2012, skip_layers="features.relu1")
    with pytest.raises(UsageError, match=r"valid names: conv1, bn1, relu, maxpool, layer1"):
        finetune_surgery(resnet18, freeze="features")
    assert all(p.requires_grad for p in alexnet2012.parameters())  # nothing changed by a refused request


def test_param_groups_give_new_layers_the_larger_rate_and_leave_frozen_out(alexnet2012):
    replace_head(alexnet2012, 2)  # what load_weights(num_classes=2) does
    finetune_surgery(alexnet2012, skip_layers="fc7", freeze="features")
    groups = param_groups(alexnet2012, lr=0.01, head_lr_mult=10)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("pretrained", 0.01, 2), ("new", 0.1, 4)]
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in alexnet2012.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == {
        id(p) for layer in ("fc7", "fc8") for p in alexnet2012.classifier.get_submodule(layer).parameters()
    }
    # One plain SGD step: frozen weights get no gradient and stay; the others move by their group's lr x gradient.
    before = {n: p.detach().clone() for n, p in alexnet2012.named_parameters()}
    optimizer = torch.optim.SGD(groups, lr=0.01)
    alexnet2012(torch.randn(2, 3, 67, 67)).logsumexp(1).sum().backward()
    optimizer.step()
    after = dict(alexnet2012.named_parameters())
    assert all(torch.equal(before[n], after[n]) and after[n].grad is None for n in before if n.startswith("features."))
    for name, lr in (("classifier.fc6.weight", 0.01), ("classifier.fc8.weight", 0.1), ("classifier.fc7.bias", 0.1)):
        step = before[name] - after[name].detach()
        assert step.abs().max() > 0 and torch.allclose(step, lr * after[name].grad, rtol=1e-3, atol=1e-6), name


def test_param_groups_without_new_layers_give_the_head_the_multiplier():
    model = create_model("lenet5")
    groups = param_groups(model, lr=0.1, head_lr_mult=10)
    assert [g["name"] for g in groups] == ["pretrained", "new"]
    assert groups[1]["params"] == list(model.classifier.output.parameters()) and groups[1]["lr"] == pytest.approx(1.0)
    assert len(param_groups(model, lr=0.1)) == 1  # multiplier 1: one group
    assert param_groups(model, lr=0.1, new_layers=["features"])[1]["params"] == list(model.features.parameters())
    with pytest.raises(UsageError, match="must be positive"):
        param_groups(model, lr=0.1, head_lr_mult=0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(UsageError, match="every parameter is frozen"):
        param_groups(model, lr=0.1)
