"""Acceptance 2 in miniature, on real photos: prepare + train the paper's AlexNet with its recipe, then
eval --ten-crop and predict --grid on the result (the full run's figures are in the issue's closing note)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classicnets.cli import main
from classicnets.weights.checkpoint import load_checkpoint

PER_CLASS = 12
PAPER_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "alexnet2012_paper.yaml"  # the top-level folder


@pytest.mark.slow
def test_prepare_train_eval_ten_crop_and_predict_grid_on_cats_and_dogs(tmp_path, capsys, is_png, shared_data):
    source = shared_data("cats-vs-dogs-sample")
    flat = tmp_path / "download"
    flat.mkdir()
    for animal in ("cat", "dog"):
        for i in range(PER_CLASS):
            (flat / f"{animal}.{5000 + i}.jpg").symlink_to(source / f"{animal}.{5000 + i}.jpg")
    data = tmp_path / "catsdogs"
    assert main(["prepare", str(flat), str(data), "--by-prefix", "--split", "0.5,0.5", "--quiet"]) == 0
    run = tmp_path / "run"
    code = main(["train", "--model", "alexnet2012", "--config", str(PAPER_RECIPE), "--data", str(data),
                 "--epochs", "1", "--batch-size", "6", "--out", str(run), "--quiet", "--device", "cpu"])  # fmt: skip
    assert code == 0
    last = load_checkpoint(run / "last.pt")
    assert last["classes"] == ["cat", "dog"] and last["preprocessing"]["input_size"] == (3, 227, 227)
    assert last["config"]["data"]["pca_std"] == 0.1 and last["config"]["optim"]["momentum"] == 0.9
    capsys.readouterr()
    code = main(["eval", "--weights", str(run / "best.pt"), "--data", str(data), "--ten-crop", "--json", "--quiet"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["images"] == PER_CLASS  # the val split: half of 2 x 12
    assert 0 <= report["ten_crop"]["top1"] <= 1 and report["center"]["top5"] == 1.0  # 2 classes: top-5 is certain
    grid = tmp_path / "grid.png"
    code = main(["predict", "--weights", str(run / "best.pt"), str(data / "val"), "--grid", str(grid), "--json"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == PER_CLASS and is_png(grid)
    assert all(abs(sum(json.loads(line)["probabilities"].values()) - 1) < 1e-5 for line in lines)
