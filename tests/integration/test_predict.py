"""predict / `classicnets predict`: top-k with probabilities that sum to 1, the picture grid, unreadable files."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import classicnets.inference.plots
from classicnets.cli import main
from classicnets.inference.prediction import predict
from classicnets.models.preprocessing import MNIST_MEAN, MNIST_STD
from classicnets.models.registry import create_model
from classicnets.weights.checkpoint import build_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A LeNet-5 with random weights and named classes: predict must use the stored names and preprocessing."""
    torch.manual_seed(3)
    model = create_model("lenet5")
    path = tmp_path_factory.mktemp("w") / "lenet.pt"
    save_checkpoint(path, build_checkpoint(model, classes=[f"digit {i}" for i in range(10)]))
    return path, model.eval()


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, digit_kit):
    return digit_kit.folders(tmp_path_factory.mktemp("pngs"), per_class=3, classes=("1", "4"), split="test")


def test_probabilities_follow_the_stored_preprocessing_and_sum_to_one(weights, pngs, digit_kit):
    path, model = weights
    results = predict(path, [pngs], topk=3, device="cpu", precision="fp32")
    files = sorted(str(p) for p in pngs.rglob("*.png"))
    assert [r.file for r in results] == files
    images, labels = digit_kit.shipped("test")
    first = int(np.flatnonzero(labels == 1)[0])
    x = torch.nn.functional.pad(torch.from_numpy(images[first]).float()[None, None] / 255, (2, 2, 2, 2))
    with torch.no_grad():
        expected = model((x - MNIST_MEAN[0]) / MNIST_STD[0]).softmax(1)[0]
    r = results[0]
    assert r.file.endswith(f"test_{first:04d}.png")
    assert list(r.all_probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert r.classes == [f"digit {i}" for i in expected.argsort(descending=True)[:3].tolist()]
    assert r.probabilities == sorted(r.probabilities, reverse=True) and len(r.probabilities) == 3
    assert sum(r.all_probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_cli_json_lines_table_topk_and_grid(capsys, weights, pngs, tmp_path, monkeypatch, is_png):
    path, _ = weights
    code = main(["predict", "--weights", str(path), str(pngs / "1"), "--json", "--topk", "20"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 3
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"file", "top", "probabilities"} and len(row["top"]) == 10  # top-k capped at 10 classes
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["top"][0]["probability"] == max(row["probabilities"].values())
    titles = []
    real = classicnets.inference.plots.plot_image_grid

    def recording(images, captions, path, **kw):
        titles.extend(captions)
        real(images, captions, path, **kw)

    monkeypatch.setattr(classicnets.inference.plots, "plot_image_grid", recording)
    grid = tmp_path / "grid.png"
    code = main(["predict", "--weights", str(path), str(pngs), "--grid", str(grid), "--topk", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and is_png(grid) and out[-1] == f"picture: {grid}"
    assert out[0].split()[-1] == "top-2" and len(out) == 1 + 6 + 3
    speed = r"speed: 6 images, [\d,.]+ images/s: decoding [\d.]+ s, model [\d.]+ s \(torch, precision .+\)"
    assert re.fullmatch(speed, out[-2])
    assert len(titles) == 6 and all(t.startswith("digit ") and t[-6:-4] == ", " for t in titles)  # "digit 3, 0.41"
    # with --json and --grid, standard output stays JSON lines only; the speed and picture lines go to stderr
    code = main(["predict", "--weights", str(path), str(pngs), "--grid", str(grid), "--json"])
    captured = capsys.readouterr()
    assert code == 0 and len([json.loads(line) for line in captured.out.splitlines()]) == 6
    assert captured.err.splitlines()[-1] == f"picture: {grid}"


def test_unreadable_images_are_skipped_and_missing_paths_are_errors(capsys, weights, pngs, tmp_path, caplog):
    path, _ = weights
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "fine.png").write_bytes((pngs / "1").glob("*.png").__next__().read_bytes())
    (tmp_path / ".hidden.png").write_bytes(b"")
    results = predict(path, [tmp_path], device="cpu")
    assert [r.file for r in results] == [str(tmp_path / "fine.png")]
    assert "skipped " + str(tmp_path / "broken.png") in caplog.text
    code = main(["predict", "--weights", str(path), str(tmp_path / "nothing.jpg")])
    err = capsys.readouterr().err
    assert code == 1 and err == f"error: {tmp_path / 'nothing.jpg'}: no such file or folder\n"
    code = main(["predict", "--weights", str(path), str(tmp_path / "broken.png")])
    assert code == 1 and capsys.readouterr().err == "error: none of the images could be read\n"


def test_cli_prints_each_line_before_the_last_image_is_decoded(weights, pngs, monkeypatch):
    """A large folder streams: no list of every result is built before the first line appears."""
    import classicnets.inference.prediction as prediction

    path, _ = weights
    events: list[tuple[str, str]] = []
    real_read = prediction.read_images

    def recording_read(files, geometry):
        events.extend(("decode", str(f)) for f in files)
        return real_read(files, geometry)

    class Recorder:
        def write(self, text: str) -> int:
            if text.strip():
                events.append(("print", text))
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(prediction, "read_images", recording_read)
    monkeypatch.setattr(sys, "stdout", Recorder())
    code = main(["predict", "--weights", str(path), str(pngs), "--batch-size", "2", "--device", "cpu"])
    assert code == 0
    decodes = [i for i, (kind, _) in enumerate(events) if kind == "decode"]
    rows = [i for i, (kind, text) in enumerate(events) if kind == "print" and ".png" in text]
    assert len(decodes) == len(rows) == 6
    assert rows[0] < decodes[2] and rows[3] < decodes[4]  # batch 1's lines before batch 2 is read, and so on
    speed = [text for kind, text in events if kind == "print" and text.startswith("\nspeed: ")]
    assert len(speed) == 1 and speed[0].startswith("\nspeed: 6 images, ")


def test_stats_count_the_images_and_split_the_time(weights, pngs, tmp_path):
    from classicnets.inference.prediction import PredictStats

    path, _ = weights
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    stats = PredictStats()
    results = predict(path, [pngs, tmp_path / "broken.png"], device="cpu", precision="bf16", stats=stats)
    assert len(results) == stats.images == 6 and stats.skipped == 1 and stats.precision == "bf16"
    assert stats.decode_s > 0 and stats.model_s > 0
    assert stats.images_per_s == pytest.approx(6 / (stats.decode_s + stats.model_s))
    fp32 = predict(path, [pngs], device="cpu", precision="fp32")
    assert [r.classes[0] for r in results] == [r.classes[0] for r in fp32]  # bf16 weights: the same top class
    for a, b in zip(results, fp32, strict=True):
        assert a.probabilities[0] == pytest.approx(b.probabilities[0], abs=0.02)


@pytest.fixture(scope="module")
def onnx_run(pngs, tmp_path_factory):
    """LeNet-5 weights predicted once with --runtime onnxruntime (the one real export of this module, ~7 s):
    (the weights, their cached graph, the predictions, their stats). The output layer is scaled up so that the
    probabilities differ from image to image (a random LeNet gives about 0.1 to every class, where a wrongly
    normalised input would still pass a 1e-4 comparison)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'classicnets[onnx]')")
    from classicnets.inference.prediction import PredictStats

    torch.manual_seed(3)
    model = create_model("lenet5")
    with torch.no_grad():
        model.classifier.output.weight.mul_(50)
    copy = tmp_path_factory.mktemp("ort") / "lenet.pt"
    save_checkpoint(copy, build_checkpoint(model, classes=[f"digit {i}" for i in range(10)]))
    stats = PredictStats()
    results = predict(copy, [pngs], topk=3, runtime="onnxruntime", stats=stats)
    graph = copy.parent / f"lenet.pt.{hashlib.sha256(copy.read_bytes()).hexdigest()[:16]}.onnx"
    return copy, graph, results, stats


def test_onnxruntime_predicts_what_torch_fp32_does_from_a_graph_cached_beside_the_weights(onnx_run, pngs):
    copy, graph, results, stats = onnx_run
    torch_fp32 = predict(copy, [pngs], topk=3, device="cpu", precision="fp32")
    assert [r.file for r in results] == [r.file for r in torch_fp32] and len(results) == 6
    assert max(r.probabilities[0] for r in results) > 0.5  # not all near 0.1: the comparison below means something
    for ort, ref in zip(results, torch_fp32, strict=True):
        assert ort.classes == ref.classes
        assert list(ort.all_probabilities) == list(ref.all_probabilities)  # the stored class names, in order
        assert list(ort.all_probabilities.values()) == pytest.approx(list(ref.all_probabilities.values()), abs=1e-4)
    assert sorted(p.name for p in copy.parent.iterdir()) == sorted([copy.name, graph.name])  # nothing else left
    assert stats.runtime == "onnxruntime" and stats.precision == "fp32" and stats.images == 6
    assert stats.describe().endswith(" (onnxruntime, CPU, precision fp32)")


def test_a_second_run_reuses_the_graph_and_new_weights_get_a_new_one(onnx_run, pngs, tmp_path, monkeypatch, caplog):
    import classicnets.inference.onnx_runtime as onnx_runtime

    source, cached, first, _ = onnx_run
    copy, graph = tmp_path / source.name, tmp_path / cached.name  # this test rewrites the weights: its own copies
    shutil.copyfile(source, copy)
    shutil.copyfile(cached, graph)
    data = graph.read_bytes()
    exports = []

    def no_export(model):
        exports.append(model)
        return data  # the first graph's bytes: the naming is under test here, not the exporter

    monkeypatch.setattr(onnx_runtime, "_export", no_export)
    before = graph.stat().st_mtime_ns
    again = predict(copy, [pngs], topk=3, runtime="onnxruntime")
    assert exports == [] and graph.stat().st_mtime_ns == before
    assert [r.all_probabilities for r in again] == [r.all_probabilities for r in first]
    # other weights under the same name: another hash, a new graph, and the old one removed
    torch.manual_seed(4)
    save_checkpoint(copy, build_checkpoint(create_model("lenet5"), classes=[f"digit {i}" for i in range(10)]))
    with caplog.at_level(logging.INFO, logger="classicnets.inference.onnx_runtime"):
        predict(copy, [pngs], runtime="onnxruntime")
    fresh = copy.parent / f"lenet.pt.{hashlib.sha256(copy.read_bytes()).hexdigest()[:16]}.onnx"
    assert len(exports) == 1 and fresh != graph and fresh.read_bytes() == data and not graph.exists()
    assert f"cached it as {fresh}" in caplog.text


def test_the_graph_goes_to_the_user_cache_or_stays_in_memory_when_it_cannot_be_written(
    onnx_run, pngs, tmp_path, monkeypatch, caplog
):
    import classicnets.inference.onnx_runtime as onnx_runtime
    from classicnets.errors import WriteError

    copy, graph, first, _ = onnx_run
    data = graph.read_bytes()
    weights = tmp_path / "read-only" / "lenet.pt"
    weights.parent.mkdir()
    shutil.copyfile(copy, weights)
    home = tmp_path / "home"
    monkeypatch.setenv("CLASSICNETS_HOME", str(home))
    monkeypatch.setattr(onnx_runtime, "_export", lambda model: data)
    refused: set[Path] = {weights.parent}  # tests run as root, who may write to a chmod 555 folder: refuse here
    real_write = onnx_runtime.atomic_write_bytes

    def write(path, payload):
        if Path(path).parent in refused:
            raise WriteError(f"cannot write {path}: Read-only file system")
        real_write(path, payload)

    monkeypatch.setattr(onnx_runtime, "atomic_write_bytes", write)
    with caplog.at_level(logging.INFO, logger="classicnets.inference.onnx_runtime"):
        results = predict(weights, [pngs], topk=3, runtime="onnxruntime")
    assert (home / "onnx" / graph.name).read_bytes() == data and sorted(weights.parent.iterdir()) == [weights]
    assert [r.all_probabilities for r in results] == [r.all_probabilities for r in first]
    assert f"cached it as {home / 'onnx' / graph.name}" in caplog.text
    (home / "onnx" / graph.name).unlink()
    refused.add(home / "onnx")
    caplog.clear()
    results = predict(weights, [pngs], topk=3, runtime="onnxruntime")
    assert [r.all_probabilities for r in results] == [r.all_probabilities for r in first]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].endswith("it is kept in memory for this run")
    assert "Read-only file system" in warnings[0] and not (home / "onnx" / graph.name).exists()


def test_cli_runtime_onnxruntime_speed_line_and_one_line_refusals(onnx_run, pngs, tmp_path, capsys, monkeypatch):
    copy, graph, _, _ = onnx_run
    code = main(["predict", "--weights", str(copy), str(pngs), "--runtime", "onnxruntime"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 1 + 6 + 2 and graph.is_file()
    assert re.fullmatch(r"speed: 6 images, .* model [\d.]+ s \(onnxruntime, CPU, precision fp32\)", out[-1])
    ort = ["predict", "--weights", str(copy), str(pngs), "--runtime", "onnxruntime"]
    refusals = [
        (["--grid", str(tmp_path / "g.png"), "--gradcam"], "--gradcam needs the torch model's gradients: drop "
         "--runtime onnxruntime to draw it"),
        (["--device", "cuda"], "--runtime onnxruntime runs on the CPU (its CPU provider): drop --device cuda"),
        (["--precision", "bf16"], "--runtime onnxruntime runs our float32 ONNX export: drop --precision bf16"),
    ]  # fmt: skip
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is not installed
    refusals.append(([], "--runtime onnxruntime needs onnxruntime: pip install 'classicnets[onnx]'"))
    for flags, message in refusals:
        code = main(ort + flags)
        captured = capsys.readouterr()
        assert (code, captured.err, captured.out) == (2, f"error: {message}\n", "")
    assert not (tmp_path / "g.png").exists()
    from classicnets.errors import UsageError
    from classicnets.inference.prediction import iter_predictions

    with pytest.raises(UsageError, match="^unknown runtime 'tensorrt'; use torch or onnxruntime$"):
        next(iter_predictions(copy, [], runtime="tensorrt"))


def test_a_damaged_cached_graph_is_exported_again(onnx_run, pngs, tmp_path, monkeypatch, caplog):
    import classicnets.inference.onnx_runtime as onnx_runtime

    source, cached, first, _ = onnx_run
    weights, graph = tmp_path / source.name, tmp_path / cached.name
    shutil.copyfile(source, weights)
    graph.write_bytes(cached.read_bytes()[:1000])  # cut short, as a full disk under another tool might leave it
    monkeypatch.setattr(onnx_runtime, "_export", lambda model: cached.read_bytes())
    results = predict(weights, [pngs], topk=3, runtime="onnxruntime")
    assert [r.all_probabilities for r in results] == [r.all_probabilities for r in first]
    assert graph.read_bytes() == cached.read_bytes()
    assert f"the cached ONNX graph {graph} cannot be loaded" in caplog.text
