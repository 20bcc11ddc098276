"""torchvision state dicts and our own checkpoints through load_weights.

The torchvision key layouts are written out here from torchvision's model code (models/alexnet.py,
models/resnet.py), not taken from our models, so a renamed layer in classicnets would fail these tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import pytest
import torch

from classicnets.errors import UsageError, WeightsError
from classicnets.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from classicnets.models.registry import create_model
from classicnets.weights import load_weights
from classicnets.weights.checkpoint import build_checkpoint, save_checkpoint

# torchvision models/alexnet.py: features 0, 3, 6, 8, 10 are convolutions, classifier 1, 4, 6 linear layers.
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}  # fmt: skip


def torchvision_resnet18_keys() -> dict[str, tuple[int, ...]]:
    """torchvision models/resnet.py naming: conv1/bn1, layerK.M.{conv1,bn1,conv2,bn2}, layerK.0.downsample.{0,1}, fc."""

    def bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}.num_batches_tracked": ()
        }

    keys = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    cin = 64
    for k, c in enumerate((64, 128, 256, 512), start=1):
        for m in range(2):
            p = f"layer{k}.{m}"
            keys |= {f"{p}.conv1.weight": (c, cin if m == 0 else c, 3, 3), **bn(f"{p}.bn1", c)}
            keys |= {f"{p}.conv2.weight": (c, c, 3, 3), **bn(f"{p}.bn2", c)}
            if m == 0 and cin != c:
                keys |= {f"{p}.downsample.0.weight": (c, cin, 1, 1), **bn(f"{p}.downsample.1", c)}
        cin = c
    return keys | {"fc.weight": (1000, 512), "fc.bias": (1000,)}


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s) * 0.01 for k, s in shapes.items()
    }


@pytest.fixture(scope="module")
def alexnet_state():
    torch.manual_seed(1)
    return random_state(TORCHVISION_ALEXNET)


def hub_named(path: Path) -> Path:
    """`path` renamed as torch.hub names its files: NAME-<the first 8 hex digits of its SHA-256>.pth."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path.rename(path.with_name(f"{path.stem}-{digest[:8]}{path.suffix}"))


def test_torchvision_alexnet_layout_loads_with_imagenet_conventions(tmp_path, alexnet_state):
    torch.save(alexnet_state, tmp_path / "alexnet-owt.pth")
    path = hub_named(tmp_path / "alexnet-owt.pth")  # as alexnet-owt-7be5be79.pth, with this file's own digest
    model = load_weights(path, model="alexnet")
    loaded = model.state_dict()
    assert list(loaded) == list(TORCHVISION_ALEXNET)
    assert all(torch.equal(loaded[k], v) for k, v in alexnet_state.items())
    assert sum(p.numel() for p in model.parameters()) == 61_100_840  # docs/facts.md
    pre = model.preprocessing
    assert (pre.mean, pre.std, pre.channel_order, pre.pixel_scale) == (IMAGENET_MEAN, IMAGENET_STD, "RGB", 1.0)
    assert pre.input_size == (3, 224, 224) and pre.resize_size == 256
    assert len(model.classes) == 1000 and model.classes[1] == "goldfish, Carassius auratus"
    assert (model.model_name, model.model_kwargs, model.new_layers) == ("alexnet", {}, [])
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_torchvision_resnet18_layout_and_old_checkpoints_without_counters(tmp_path):
    shapes = torchvision_resnet18_keys()
    assert len(shapes) == 122  # torchvision's resnet18 state dict
    state = random_state(shapes)
    torch.save(state, tmp_path / "new.pth")
    model = load_weights(tmp_path / "new.pth", model="resnet18")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # Checkpoints from before PyTorch 0.4.1 lack the BatchNorm counters; BatchNorm starts them at 0.
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    old = load_weights(tmp_path / "old.pth", model="resnet18")
    assert int(old.bn1.num_batches_tracked) == 0 and torch.equal(
        old.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"]
    )


def test_prefixes_and_wrappers_are_stripped(tmp_path, alexnet_state):
    ddp = {f"module.{k}": v for k, v in alexnet_state.items()}
    compiled = {f"_orig_mod.{k}": v for k, v in alexnet_state.items()}
    torch.save({"model": ddp, "epoch": 89}, tmp_path / "ddp.pth")  # torchvision's references/classification layout
    torch.save({"state_dict": compiled}, tmp_path / "compiled.pth")
    for name in ("ddp.pth", "compiled.pth"):
        model = load_weights(tmp_path / name, model="alexnet", fmt="torchvision")
        assert torch.equal(model.features[0].weight, alexnet_state["features.0.weight"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"features.0.weight": torch.zeros(64, 3, 7, 7)},
            r"conv1 \(features\.0\.weight\): expected shape \(64, 3, 11, 11\), got \(64, 3, 7, 7\) \(alexnet\)",
        ),
        ({"classifier.6.bias": None}, r"do not fit alexnet: missing classifier\.6\.bias$"),
        ({"features.1.weight": torch.zeros(3)}, r"do not fit alexnet: unexpected features\.1\.weight$"),
        ({"features.0.bias": torch.zeros(64, dtype=torch.int64)}, r"features\.0\.bias: expected floating-point"),
    ],
)
def test_wrong_or_missing_keys_give_precise_one_line_errors(tmp_path, alexnet_state, change, message):
    state = dict(alexnet_state)
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=message) as info:
        load_weights(tmp_path / "bad.pth", model="alexnet")
    assert "\n" not in str(info.value) and str(tmp_path / "bad.pth") in str(info.value)


def test_the_network_must_be_named_and_must_fit(tmp_path, alexnet_state):
    torch.save(alexnet_state, tmp_path / "a.pth")
    with pytest.raises(UsageError, match="does not say which network"):
        load_weights(tmp_path / "a.pth")
    with pytest.raises(
        WeightsError,
        match=r"do not fit vgg11: missing features\.11\.weight, .* and 8 more; unexpected features\.10\.weight",
    ):
        load_weights(tmp_path / "a.pth", model="vgg11")
    with pytest.raises(UsageError, match="unknown weight format 'pth'"):
        load_weights(tmp_path / "a.pth", model="alexnet", fmt="pth")


def test_class_count_follows_the_file_and_num_classes_replaces_the_head(tmp_path, alexnet_state, caplog):
    ten = dict(alexnet_state, **{"classifier.6.weight": torch.randn(10, 4096), "classifier.6.bias": torch.randn(10)})
    torch.save(ten, tmp_path / "ten.pth")
    model = load_weights(tmp_path / "ten.pth", model="alexnet")
    assert model.num_classes == 10 and model.classes is None and model.model_kwargs == {"num_classes": 10}
    assert torch.equal(model.classifier[6].bias, ten["classifier.6.bias"])
    torch.save(alexnet_state, tmp_path / "a.pth")
    with caplog.at_level(logging.INFO, logger="classicnets.weights"):
        model = load_weights(tmp_path / "a.pth", model="alexnet", num_classes=2)
    assert "replaced the 1000-class head with a new 2-class head" in caplog.text
    assert model.classifier[6].weight.shape == (2, 4096) and model.classes is None
    assert model.new_layers == ["classifier.6"] and model.model_kwargs == {"num_classes": 2}
    assert torch.equal(model.classifier[4].weight, alexnet_state["classifier.4.weight"])  # the rest is kept


def test_torchvision_googlenet_gets_transform_input_and_drops_aux_heads(tmp_path, caplog):
    state = create_model("googlenet", aux_logits=True).state_dict()  # torchvision's file holds the aux heads
    aux = [k for k in state if k.startswith(("aux1.", "aux2."))]
    torch.save(state, tmp_path / "googlenet.pth")
    with caplog.at_level(logging.INFO, logger="classicnets.weights"):
        model = load_weights(tmp_path / "googlenet.pth", model="googlenet")
    assert f"dropped the {len(aux)} auxiliary-head tensors" in caplog.text and len(aux) == 20
    assert model.transform_input is True and model.aux1 is None
    assert model.model_kwargs == {"transform_input": True}


def test_our_checkpoint_round_trips_with_its_conventions(tmp_path):
    original = create_model("resnet18", num_classes=3, zero_init_residual=True)
    original.preprocessing = dataclasses.replace(original.preprocessing, input_size=(3, 160, 160), resize_size=182)
    save_checkpoint(tmp_path / "best.pt", build_checkpoint(original, classes=["cat", "dog", "fox"], epoch=5))
    for fmt in ("auto", "classicnets"):
        model = load_weights(tmp_path / "best.pt", fmt=fmt)
        assert (model.model_name, model.model_kwargs) == ("resnet18", {"num_classes": 3, "zero_init_residual": True})
        assert model.classes == ["cat", "dog", "fox"] and model.preprocessing.input_size == (3, 160, 160)
        assert model.preprocessing == original.preprocessing
        pairs = zip(model.state_dict().values(), original.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(WeightsError, match="best.pt: holds resnet18 weights, not resnet50$"):
        load_weights(tmp_path / "best.pt", model="resnet50")
    model = load_weights(tmp_path / "best.pt", num_classes=3)  # same count: nothing replaced
    assert model.classes == ["cat", "dog", "fox"] and model.new_layers == []


def test_a_damaged_file_named_with_its_sha256_prefix_is_refused(tmp_path, alexnet_state):
    """torchvision files carry no checksum inside; torch.hub's file names carry the start of one."""
    torch.save(alexnet_state, tmp_path / "alexnet-owt.pth")
    path = hub_named(tmp_path / "alexnet-owt.pth")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the tensor data: torch.load would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as e:
        load_weights(path, model="alexnet")
    assert str(e.value).startswith(f"{path}: damaged: its SHA-256 begins ")
    assert f"not {path.stem[-8:]} as its name says" in str(e.value)
    renamed = path.rename(tmp_path / "alexnet-owt.pth")  # the user's way out when the name is no checksum
    assert load_weights(renamed, model="alexnet").num_classes == 1000
