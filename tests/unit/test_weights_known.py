"""The table of known pretrained weights (classicnets/weights/known.py): every entry well-formed and true to the
registered network it names, and how a --weights value is told apart as a name or a path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.hub

from classicnets.errors import UsageError
from classicnets.models.registry import create_model, get_model_info, list_models
from classicnets.models.summary import summarize
from classicnets.weights.caffe import CAFFE_PREPROCESSING
from classicnets.weights.known import KNOWN_WEIGHTS, find_known_weights, list_known_weights, weights_reference
from classicnets.weights.load import imagenet_classes, weights_file

MIB = 2**20


def test_the_table_has_the_issue_s_networks():
    assert list(KNOWN_WEIGHTS) == [
        "alexnet.imagenet", "alexnet2012.imagenet",
        *(f"vgg{d}{bn}.imagenet" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
        "googlenet.imagenet",
        "resnet18.imagenet", "resnet34.imagenet",
        *(f"resnet{d}.{tag}" for d in (50, 101, 152) for tag in ("imagenet", "imagenet_v2")),
    ]  # fmt: skip


@pytest.mark.parametrize("known", list(KNOWN_WEIGHTS.values()), ids=list(KNOWN_WEIGHTS))
def test_every_entry_is_well_formed(known):
    assert known.url.startswith("https://") and known.url.endswith("/" + known.file_name)
    assert known.model in list_models() and known.name == f"{known.model}.{known.tag}"
    assert known.num_classes == len(imagenet_classes()) == 1000
    assert 0 < known.top5 - known.top1 < 30 and 50 < known.top1 < 90  # accuracies in %, top-5 above top-1
    assert known.preprocessing.input_size == get_model_info(known.model).input_size
    if known.publisher == "torchvision":
        # torch.hub's own rule for the digits it checks: `-([a-f0-9]*)\.` in the file name
        assert known.sha256 == torch.hub.HASH_REGEX.search(known.file_name).group(1)
        assert len(known.sha256) == 8 and known.fmt == "torchvision" and known.size_bytes is None
        assert known.url == f"https://download.pytorch.org/models/{known.file_name}"
        assert (known.preprocessing.resize_size, known.preprocessing.mean) == (
            232 if known.tag == "imagenet_v2" else 256,
            (0.485, 0.456, 0.406),
        )
    else:  # bvlc_alexnet.npy: no published hash, an exact size instead
        assert (known.model, known.fmt, known.sha256) == ("alexnet2012", "caffe-npy", None)
        assert known.size_bytes == 243_861_814
        assert known.preprocessing == CAFFE_PREPROCESSING
        assert known.size_mib == round(known.size_bytes / MIB, 3)


@pytest.mark.parametrize("known", list(KNOWN_WEIGHTS.values()), ids=list(KNOWN_WEIGHTS))
def test_parameter_count_and_file_size_fit_the_registered_network(known):
    assert summarize(known.model).total_params == known.num_params
    # A float32 state dict is 4 bytes a parameter plus a little (BatchNorm statistics, zip headers); torchvision's
    # GoogLeNet file also holds the two auxiliary heads its builder drops (and the parameter count leaves out).
    stored = known.num_params
    if known.model == "googlenet":
        stored = sum(p.numel() for p in create_model("googlenet", aux_logits=True).parameters())
    assert 4 * stored <= known.size_mib * MIB < 4 * stored * 1.01


def test_a_tag_with_the_model_or_a_full_name_finds_the_entry():
    assert find_known_weights("imagenet", "alexnet") is KNOWN_WEIGHTS["alexnet.imagenet"]
    assert find_known_weights("IMAGENET_V2", "resnet50") is KNOWN_WEIGHTS["resnet50.imagenet_v2"]
    assert find_known_weights("resnet50.imagenet") is KNOWN_WEIGHTS["resnet50.imagenet"]
    assert [w.name for w in list_known_weights("resnet5*")] == ["resnet50.imagenet", "resnet50.imagenet_v2"]


def test_paths_are_not_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("best.pt", "w/imagenet", "bvlc_alexnet.npy", tmp_path / "imagenet"):
        assert find_known_weights(path, "alexnet") is None
    (tmp_path / "imagenet").mkdir()  # a data folder called imagenet does not hide the name
    assert find_known_weights("imagenet", "alexnet") is KNOWN_WEIGHTS["alexnet.imagenet"]
    (tmp_path / "alexnet.imagenet").write_bytes(b"mine")  # a file does
    assert find_known_weights("alexnet.imagenet") is None
    assert weights_reference("alexnet.imagenet", "alexnet") == str(tmp_path / "alexnet.imagenet")
    assert weights_reference("imagenet", "resnet18") == "resnet18.imagenet"


def test_weights_file_is_the_path_itself_or_the_cached_download_a_name_stands_for(tmp_path, monkeypatch):
    """What `predict --runtime onnxruntime` hashes to key its cached graph: the file load_weights read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLASSICNETS_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "weights"
    assert weights_file("resnet18.imagenet") == cache / KNOWN_WEIGHTS["resnet18.imagenet"].file_name
    assert weights_file("imagenet", model="alexnet") == cache / KNOWN_WEIGHTS["alexnet.imagenet"].file_name
    assert weights_file("runs/best.pt") == Path("runs/best.pt")
    (tmp_path / "resnet18.imagenet").write_bytes(b"mine")  # a file of that name wins, as in load_weights
    assert weights_file("resnet18.imagenet") == Path("resnet18.imagenet")


@pytest.mark.parametrize(
    ("spec", "model", "message"),
    [
        ("imagenet", None, "'imagenet' weights need the network: give the model (--model alexnet) or write "
         "MODEL.imagenet (e.g. alexnet.imagenet, alexnet2012.imagenet, vgg11.imagenet, vgg11_bn.imagenet;"),
        ("alexnet", None, "unknown weights 'alexnet' (and no such file); closest: alexnet.imagenet, "
         "alexnet2012.imagenet"),
        ("resnet50.imagenet_v3", None, "closest: resnet50.imagenet_v2, resnet50.imagenet"),
        ("imagenet", "lenet5", "classicnets knows no pretrained weights for lenet5 (it has them for alexnet, "),
        ("alexnet2012.imagenet", "alexnet", "alexnet2012.imagenet are alexnet2012 weights, not alexnet"),
        ("imagenet_v2", "resnet18", "unknown weights 'resnet18.imagenet_v2' (and no such file); resnet18 has "
         "resnet18.imagenet"),
    ],
)  # fmt: skip
def test_an_unknown_name_is_a_usage_error_with_the_closest_names(spec, model, message):
    with pytest.raises(UsageError) as e:
        find_known_weights(spec, model)
    assert message in str(e.value) and "\n" not in str(e.value)
