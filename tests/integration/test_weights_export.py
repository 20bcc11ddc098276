"""Export round trips: safetensors bit-exact, ONNX (dynamic batch, full checker, onnxruntime within 1e-4 at batch
sizes 1 and 7, preprocessing in the metadata, LRN included), TorchScript."""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors import safe_open

from classicnets.errors import UsageError, WeightsError
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import create_model
from classicnets.weights import export, imagenet_classes, load_weights
from classicnets.weights.caffe import CAFFE_PREPROCESSING
from classicnets.weights.export import example_batch


@pytest.fixture(scope="module")
def caffe_alexnet():
    """What importing bvlc_alexnet.npy gives: alexnet2012 with Caffe's LRN, preprocessing and ImageNet classes."""
    torch.manual_seed(3)
    model = create_model("alexnet2012", lrn="caffe").eval()
    model.preprocessing, model.classes = CAFFE_PREPROCESSING, imagenet_classes()
    return model


def test_safetensors_round_trip_is_bit_exact(tmp_path):
    model = create_model("resnet18", num_classes=3)
    with torch.no_grad():  # non-trivial BatchNorm statistics, a counter and an odd-valued tensor
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.num_batches_tracked.fill_(1234)
        model.fc.bias.copy_(torch.tensor([1e-38, -0.0, float("inf")]))
    model.preprocessing = Preprocessing(input_size=(3, 160, 160), resize_size=182, interpolation="bicubic")
    model.classes = ["cat", "dog", "fox"]
    result = export(model, tmp_path / "r18.safetensors", fmt="safetensors", verify=False)
    assert result.size_bytes == (tmp_path / "r18.safetensors").stat().st_size
    back = load_weights(tmp_path / "r18.safetensors")
    assert list(back.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        got = back.state_dict()[key]
        assert got.dtype == value.dtype and torch.equal(
            got.view(-1).view(torch.uint8), value.view(-1).view(torch.uint8)
        )
    assert (back.model_name, back.model_kwargs, back.classes) == ("resnet18", {"num_classes": 3}, ["cat", "dog", "fox"])
    assert back.preprocessing == model.preprocessing
    with safe_open(str(tmp_path / "r18.safetensors"), framework="pt") as f:  # readable without classicnets
        meta = f.metadata()
    assert json.loads(meta["classicnets.model"]) == {"name": "resnet18", "kwargs": {"num_classes": 3}}
    assert json.loads(meta["classicnets.preprocessing"])["interpolation"] == "bicubic"


def test_onnx_export_dynamic_batch_checker_and_onnxruntime(tmp_path, caffe_alexnet):
    onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'classicnets[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'classicnets[onnx]')")
    path = tmp_path / "alexnet.onnx"
    export(caffe_alexnet, path, fmt="onnx", verify=False)  # verified here instead, independently

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 227, 227]  # symbolic batch, fixed image
    meta = {p.key: p.value for p in proto.metadata_props}
    assert Preprocessing.from_dict(json.loads(meta["classicnets.preprocessing"])) == CAFFE_PREPROCESSING
    assert json.loads(meta["classicnets.classes"]) == imagenet_classes()
    assert json.loads(meta["classicnets.model"])["kwargs"] == {"lrn": "caffe"}

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = example_batch(CAFFE_PREPROCESSING, batch, seed=batch)  # BGR, 0-255 minus the mean, as in use
        with torch.no_grad():
            expected = caffe_alexnet(x).numpy()
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert got.shape == (batch, 1000)
        assert abs(got - expected).max() <= 1e-4
    # The LRN layers were exported and matter: the same network without them gives a clearly different output.
    no_lrn = create_model("alexnet2012", lrn="caffe").eval()
    no_lrn.load_state_dict(caffe_alexnet.state_dict())
    no_lrn.features.norm1 = no_lrn.features.norm2 = torch.nn.Identity()
    with torch.no_grad():
        assert abs(no_lrn(x).numpy() - got).max() > 1e-2


def test_export_verifies_onnx_itself_when_onnxruntime_is_present(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'classicnets[onnx]')")
    model = create_model("lenet5")
    result = export(model, tmp_path / "lenet.onnx", fmt="onnx")
    assert result.fmt == "onnx" and result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    assert model.training  # export switched to eval mode only for the export


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_round_trip(tmp_path):
    model = create_model("lenet5", num_classes=4)
    model.classes = ["a", "b", "c", "d"]
    result = export(model, tmp_path / "lenet.ts", fmt="torchscript")
    assert result.max_abs_diff == 0.0
    extra = {"classicnets.json": ""}
    loaded = torch.jit.load(str(tmp_path / "lenet.ts"), _extra_files=extra)
    meta = json.loads(extra["classicnets.json"])
    assert json.loads(meta["classicnets.classes"]) == ["a", "b", "c", "d"]
    model.eval()
    for batch in (1, 7):
        x = example_batch(model.preprocessing, batch)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_export_refuses_what_it_cannot_describe(tmp_path):
    with pytest.raises(UsageError, match="built by create_model or load_weights"):
        export(torch.nn.Linear(2, 2), tmp_path / "x.safetensors", fmt="safetensors")
    model = create_model("lenet5")
    with pytest.raises(UsageError, match="3 class names for a model with 10 outputs"):
        export(model, tmp_path / "x.safetensors", fmt="safetensors", classes=["a", "b", "c"])
    with pytest.raises(UsageError, match="unknown export format 'tflite'"):
        export(model, tmp_path / "x.tflite", fmt="tflite")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_torchscript_file_is_not_taken_for_weights(tmp_path):
    export(create_model("lenet5"), tmp_path / "lenet.ts", fmt="torchscript", verify=False)
    with pytest.raises(WeightsError, match="lenet.ts: a TorchScript export: run it with torch.jit.load"):
        load_weights(tmp_path / "lenet.ts")
    buffer = io.BytesIO((tmp_path / "lenet.ts").read_bytes())
    assert torch.jit.load(buffer)(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_a_model_elsewhere_or_in_another_dtype_is_exported_as_a_float32_cpu_copy(tmp_path):
    """A bf16 model (as a GPU one) is copied to float32 on the CPU for export; the model itself is left alone."""
    model = create_model("lenet5").to(torch.bfloat16)
    result = export(model, tmp_path / "lenet.safetensors", fmt="safetensors")
    assert result.max_abs_diff == 0.0 and model.training
    back = load_weights(tmp_path / "lenet.safetensors")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for key, value in model.state_dict().items():
        assert back.state_dict()[key].dtype == torch.float32 and torch.equal(back.state_dict()[key], value.float())
