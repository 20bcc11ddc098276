"""predict / `classicnets predict`: top-k with probabilities that sum to 1, the picture grid, unreadable files."""

from __future__ import annotations

import json
import re
import sys

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
    speed = r"speed: 6 images, [\d,.]+ images/s: decoding [\d.]+ s, model [\d.]+ s \(precision .+\)"
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
