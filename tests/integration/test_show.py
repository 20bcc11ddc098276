"""`classicnets show filters|activations|gradcam|neighbours` and `predict --gradcam` on a real run folder, and the
one-line errors of each."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from classicnets.cli import main
from classicnets.models.registry import create_model
from classicnets.weights.known import KNOWN_WEIGHTS


@pytest.fixture(scope="module")
def run(tmp_path_factory, digit_kit, quick_fit):
    """Two epochs of LeNet-5 on 300 real digits."""
    data = digit_kit.idx(tmp_path_factory.mktemp("digits"), per_class=30)
    return quick_fit(data, tmp_path_factory.mktemp("run") / "run", report=False).run_dir


@pytest.fixture(scope="module")
def queries(tmp_path_factory, digit_kit):
    """Three held-out digits (2, 5, 7) as PNG files."""
    return digit_kit.folders(tmp_path_factory.mktemp("q"), per_class=1, classes=("2", "5", "7"), split="test")


def test_filters_and_activations(run, queries, capsys, is_png):
    assert main(["show", "filters", str(run)]) == 0
    assert capsys.readouterr().out.splitlines() == ["C1: 6 kernels", f"picture: {run}/show/filters.png"]
    assert is_png(run / "show" / "filters.png")
    image = next((queries / "5").iterdir())
    assert main(["show", "activations", str(run / "best.pt"), str(image), "--layers", "features.c3,C1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ->  ")[0] for line in lines] == ["C3: 16 maps 10x10", "C1: 6 maps 28x28"]
    assert all(is_png(Path(line.split("  ->  ")[1])) for line in lines)


def test_gradcam_of_a_named_class_and_predict_gradcam(run, queries, capsys, tmp_path, is_png):
    out = tmp_path / "cam.png"
    assert main(["show", "gradcam", str(run), str(queries), "--class", "7", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[-1] == f"picture: {out}" and is_png(out)
    assert [line.split()[1] for line in lines[:3]] == ["7", "7", "7"]
    grid = tmp_path / "grid.png"
    assert main(["predict", "--weights", str(run / "best.pt"), str(queries), "--gradcam", "--grid", str(grid)]) == 0
    assert is_png(grid) and capsys.readouterr().out.endswith(f"picture: {grid}\n")


def test_neighbours_from_the_runs_own_training_split(run, queries, capsys, tmp_path, is_png):
    image = next((queries / "2").iterdir())
    cache = tmp_path / "cache"
    assert main(["show", "neighbours", str(run), str(image), "--k", "3", "--cache", str(cache), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{image}: ") and out[0].count("train-images-idx3-ubyte.gz#") == 3
    distances = [float(part.split()[1]) for part in out[0].split(": ", 1)[1].split(", ")]
    assert distances == sorted(distances) and distances[0] > 0  # a held-out digit is not in the training set
    assert is_png(run / "show" / "neighbours.png") and len(list(cache.iterdir())) == 1


def test_known_weights_by_name(weights_server, monkeypatch, capsys, tmp_path, is_png):
    """A name instead of a file, downloaded from the local test server like any known weights."""
    buffer = io.BytesIO()
    torch.save(create_model("lenet5").state_dict(), buffer)
    known = weights_server.publish(buffer.getvalue(), model="lenet5", file="lenet5-00000000.pth")
    monkeypatch.setitem(KNOWN_WEIGHTS, known.name, known)
    out = tmp_path / "filters.png"
    assert main(["show", "filters", known.name, "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "C1: 6 kernels" and is_png(out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "filters", "{run}", "--layer", "conv9"], "unknown layer 'conv9'"),
        (["show", "gradcam", "{run}", "{image}", "--class", "cat"], "--class cat: not one of the model's 10 classes"),
        (["show", "neighbours", "{run}/best.pt", "{image}"], "--data DIR is needed"),
        (["show", "neighbours", "{run}", "{image}", "--k", "0"], "--k must be at least 1"),
        (["show", "filters", "{image}"], "not"),
        (["predict", "--weights", "{run}/best.pt", "{image}", "--gradcam"], "--gradcam draws the heat maps"),
    ],
)
def test_bad_input_is_one_line_and_exit_code(run, queries, capsys, argv, message):
    image = next((queries / "2").iterdir())
    code = main([a.format(run=run, image=image) for a in argv])
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
