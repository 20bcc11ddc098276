"""evaluate / `classicnets eval`: numbers checked against a direct computation, 10-crop, classes matched by name."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from classicnets.cli import main
from classicnets.inference.evaluation import evaluate
from classicnets.inference.metrics import ConfusedPair, ConfusionMatrix, MetricSums, topk_correct
from classicnets.models.preprocessing import MNIST_MEAN, MNIST_STD
from classicnets.training.loop import fit
from classicnets.weights.checkpoint import load_checkpoint, model_from_checkpoint

PER_CLASS = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digit_kit):
    """best.pt of a short LeNet-5 run on 300 real digits (good, not perfect: some mistakes to report)."""
    root = tmp_path_factory.mktemp("eval")
    data = digit_kit.idx(root / "train", per_class=30)
    result = fit("lenet5", data, config="lenet5_digits", epochs=2, batch_size=32, out=str(root / "run"),
                 device="cpu", precision="fp32", threads=1)  # fmt: skip
    return result.best_checkpoint


@pytest.fixture(scope="module")
def test_digits(tmp_path_factory, digit_kit):
    return digit_kit.idx(tmp_path_factory.mktemp("test"), per_class=PER_CLASS, split="test")


def direct_logits(checkpoint, images: torch.Tensor, *, mirror: bool = False) -> torch.Tensor:
    """What the model computes for 28x28 uint8 digits, written out by hand: centre 28x28 in 32x32 zeros, scale,
    normalise with the MNIST statistics."""
    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    x = F.pad(images.float()[:, None] / 255.0, (2, 2, 2, 2))
    x = (x - MNIST_MEAN[0]) / MNIST_STD[0]
    with torch.no_grad():
        return model(x.flip(-1) if mirror else x)


def test_topk_and_confusion_matrix_counts():
    logits = torch.tensor([[3.0, 2, 1, 0], [0, 1, 2, 3], [1, 3, 0, 2], [0, 0, 5, 1]])
    labels = torch.tensor([0, 0, 3, 1])
    assert topk_correct(logits, labels, (1, 2, 3, 5)) == [1, 2, 3, 4]  # top-5 of 4 classes: every sample
    sums = MetricSums()
    sums.update(logits, labels, loss=0.5)
    assert (sums.count, sums.top1, sums.top5, sums.loss) == (4, 0.25, 1.0, 0.5)
    cm = ConfusionMatrix(4)
    cm.update(logits.argmax(1), labels)
    assert cm.to_list() == [[1, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    assert cm.per_class_accuracy() == [0.5, 0.0, None, 0.0]
    names = ["a", "b", "c", "d"]
    assert cm.most_confused(names) == [
        ConfusedPair("a", "d", 1, 0.5), ConfusedPair("b", "c", 1, 1.0), ConfusedPair("d", "b", 1, 1.0),
    ]  # fmt: skip


def test_centre_crop_and_ten_crop_match_a_direct_computation(trained, test_digits, tmp_path, digit_kit, is_png):
    report = evaluate(trained, test_digits, ten_crop=True, device="cpu", precision="fp32", out=tmp_path)
    images, labels = digit_kit.shipped("test")
    index = [int(i) for c in range(10) for i in (labels == c).nonzero()[0][:PER_CLASS]]
    images, labels = torch.from_numpy(images[index]), torch.from_numpy(labels[index]).long()
    logits = direct_logits(trained, images)
    centre = report.metrics("center")
    assert report.images == 100
    assert centre["top1"] == (logits.argmax(1) == labels).sum().item() / 100
    assert centre["top5"] == topk_correct(logits, labels, (5,))[0] / 100
    assert centre["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    expected = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(labels.tolist(), logits.argmax(1).tolist(), strict=True):
        expected[t, p] += 1
    assert centre["confusion_matrix"] == expected.tolist()
    assert [c["count"] for c in centre["per_class"]] == [PER_CLASS] * 10
    # 28x28 digits padded to 32x32: the 5 crops of 32x32 are the image itself, the other 5 its mirror image
    probs = (logits.softmax(1) + direct_logits(trained, images, mirror=True).softmax(1)) / 2
    ten = report.metrics("ten_crop")
    assert ten["top1"] == (probs.argmax(1) == labels).sum().item() / 100
    assert ten["loss"] == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-5)
    wrong = ten["misclassified"]
    assert len(wrong) == min(24, 100 - round(100 * ten["top1"])) and all(m["true"] != m["predicted"] for m in wrong)
    assert all(m["file"].startswith("test-images-idx3-ubyte.gz#") for m in wrong)
    assert is_png(tmp_path / "confusion_matrix.png") and is_png(tmp_path / "misclassified.png")
    assert json.loads((tmp_path / "eval.json").read_text())["ten_crop"]["top1"] == ten["top1"]
    speed = report.speed
    assert (speed.images, speed.crops, report.precision) == (100, 1000, "fp32")
    assert speed.crops_per_s == pytest.approx(1000 / speed.model_s)
    assert speed.images_per_s == pytest.approx(100 / (speed.data_s + speed.model_s))


def test_class_folders_are_matched_to_the_model_by_name(trained, tmp_path, digit_kit):
    folders = digit_kit.folders(tmp_path / "two", per_class=6, classes=("3", "7"), split="test")
    report = evaluate(trained, folders, device="cpu")
    per_class = {c["class"]: c for c in report.metrics()["per_class"]}
    assert report.images == 12 and per_class["3"]["count"] == per_class["7"]["count"] == 6
    assert per_class["0"] == {"class": "0", "accuracy": None, "count": 0}
    assert sum(sum(row) for row in report.metrics()["confusion_matrix"]) == 12


def test_cli_eval_tables_json_and_errors(capsys, trained, test_digits, tmp_path, digit_kit):
    code = main(["eval", "--weights", str(trained), "--data", str(test_digits), "--ten-crop", "--quiet",
                 "--out", str(tmp_path / "e")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[4].split() == ["centre", "crop", "10-crop"] and lines[5].startswith("top-1")
    speed = re.fullmatch(
        r"speed    ([\d,.]+) images/s \(10 crops per image: ([\d,.]+) crops/s in the model\); "
        r"([\d.]+) s waiting for data, ([\d.]+) s in the model; precision (fp32|bf16) .*",
        lines[2],
    )
    assert speed is not None, lines[2]
    assert float(speed[1].replace(",", "")) > 0 and float(speed[2].replace(",", "")) > 0
    assert "per-class accuracy:" in out and "most confused (10-crop, true -> predicted):" in out
    assert f"pictures: {tmp_path / 'e' / 'confusion_matrix.png'}" in out
    code = main(["eval", "--weights", str(trained), "--data", str(test_digits), "--json", "--quiet"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and set(data) >= {"center", "classes", "images", "pictures"} and "ten_crop" not in data
    assert (trained.parent / "eval" / "confusion_matrix.png").is_file()  # default: eval/ beside the weights
    other = digit_kit.folders(tmp_path / "letters", per_class=2, names=("a", "b"))
    code = main(["eval", "--weights", str(trained), "--data", str(other)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "classes a, b are not among the model's 10 classes" in err
    code = main(["eval", "--weights", str(tmp_path / "none.pt"), "--data", str(test_digits)])
    err = capsys.readouterr().err
    assert code == 1 and "none.pt: no such file" in err and err.count("\n") == 1


def test_the_package_exports_functions_not_modules():
    import inspect

    import classicnets.inference.evaluation  # noqa: F401  (imported first: a submodule named like the function would win)
    import classicnets.inference.prediction  # noqa: F401
    from classicnets import evaluate as evaluate_function
    from classicnets import fit, predict

    assert all(inspect.isfunction(f) for f in (evaluate_function, fit, predict))


def test_ten_crop_evaluates_a_long_thin_png_instead_of_running_out_of_memory(tmp_path, digit_kit, memory_cap):
    """The issue's 1 x 100,000 PNG: 10-crop resized it whole (256 x 25,600,000 pixels) and the evaluation ended."""
    from PIL import Image

    from classicnets.models.registry import create_model

    folders = digit_kit.folders(tmp_path / "data", per_class=1, classes=("3", "7"), names=("a", "b"), rgb=True)
    Image.new("RGB", (1, 100_000), (200, 100, 50)).save(folders / "a" / "thin.png", optimize=True)
    assert (folders / "a" / "thin.png").stat().st_size < 1000
    model = create_model("resnet18", num_classes=2)  # resize 256, crop 224, as the ImageNet models
    model.classes = ["a", "b"]
    with memory_cap(3 << 30):  # the whole resize would need 26 GB
        report = evaluate(model, folders, ten_crop=True, device="cpu", precision="fp32")
    assert report.images == 3 and report.metrics("ten_crop")["per_class"][0]["count"] == 2


def test_bf16_inference_casts_a_copy_and_scores_as_fp32_does(trained, test_digits):
    model = model_from_checkpoint(load_checkpoint(trained)).eval()
    fp32 = evaluate(model, test_digits, device="cpu", precision="fp32")
    bf16 = evaluate(model, test_digits, device="cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was
    assert abs(bf16.metrics()["top1"] - fp32.metrics()["top1"]) <= 0.02  # at most 2 of 100 digits change
    assert bf16.metrics()["loss"] == pytest.approx(fp32.metrics()["loss"], rel=0.05)
