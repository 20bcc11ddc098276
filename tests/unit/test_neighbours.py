"""Nearest neighbours in feature space (the paper's Figure 4): the features are what the head reads, a training
image's nearest neighbour is itself at distance 0, and the cache is used, then refreshed when a file changes.

"Distance 0" is 0 up to float32 rounding: the query goes through the network in a batch of its own and the training
images in batches of 64, and a convolution's rounding depends on the batch it runs in (about 1e-7 here, where two
different digits lie 0.1 or more apart)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from classicnets import show_neighbours
from classicnets.data import open_dataset
from classicnets.inference.neighbours import dataset_features, model_hash, nearest
from classicnets.models.registry import create_model
from classicnets.weights.checkpoint import build_checkpoint, save_checkpoint

# Float32 rounding of features computed in batches of different sizes (see the module's docstring).
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    torch.manual_seed(4)
    model = create_model("lenet5", num_classes=2)
    path = tmp_path_factory.mktemp("w") / "lenet.pt"
    save_checkpoint(path, build_checkpoint(model, classes=["3", "7"]))
    return path, model.eval()


def test_features_are_what_the_classifier_head_reads(lenet, digit_kit, tmp_path):
    _, model = lenet
    folder = digit_kit.folders(tmp_path / "digits", per_class=3)
    dataset = open_dataset(folder, in_chans=1)
    features = dataset_features(model, dataset, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    assert features.shape == (6, 84)  # F6: LeNet-5's last hidden layer
    x = torch.nn.functional.pad(torch.from_numpy(np.array(dataset.load(4))).float()[None, None] / 255, (2,) * 4)
    x = (x - 0.1307) / 0.3081  # MNIST mean and std (models/preprocessing.py)
    with torch.no_grad():
        c = model.classifier
        expected = c.act6(c.f6(torch.flatten(model.avgpool(model.features(x)), 1)))[0]
    np.testing.assert_allclose(features[4].numpy(), expected.numpy(), atol=1e-5)


def test_a_training_image_is_its_own_nearest_neighbour_and_the_cache_follows_the_files(
    lenet, digit_kit, tmp_path, caplog, is_png
):
    weights, model = lenet
    folder = digit_kit.folders(tmp_path / "digits", per_class=8)
    cache = tmp_path / "cache"
    query = sorted((folder / "7").glob("*.png"))[2]
    caplog.set_level(logging.INFO, logger="classicnets.inference.neighbours")
    out = tmp_path / "n.png"
    [result] = show_neighbours(weights, [query], data=folder, k=4, cache_dir=cache, device="cpu", out=out)
    first = result.neighbours[0]
    assert first.file == str(query) and first.label == "7" and first.distance < ROUNDING
    assert [n.distance for n in result.neighbours] == sorted(n.distance for n in result.neighbours)
    assert result.neighbours[1].distance > 0.1 and len(result.neighbours) == 4 and is_png(out)
    assert [p.suffix for p in cache.iterdir()] == [".npz"] and "cached the features of 16 images" in caplog.text

    caplog.clear()
    again = show_neighbours(weights, [query], data=folder, k=4, cache_dir=cache, device="cpu")
    assert "from the cache" in caplog.text and [n.file for n in again[0].neighbours] == [
        n.file for n in result.neighbours
    ]
    # Another image written over a training file: the cache notices (size or time changed) and recomputes.
    target = sorted((folder / "3").glob("*.png"))[0]
    target.write_bytes(query.read_bytes())
    os.utime(target, ns=(1, 1))
    caplog.clear()
    [changed] = show_neighbours(weights, [query], data=folder, k=2, cache_dir=cache, device="cpu")
    assert "the data changed" in caplog.text and len(list(cache.iterdir())) == 1
    assert {n.file for n in changed.neighbours} == {str(query), str(target)}
    assert max(n.distance for n in changed.neighbours) < ROUNDING


def test_nearest_is_exact_and_skips_unreadable_rows_and_the_hash_follows_the_weights():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [float("nan"), 0.0], [1e4 + 1, 1e4]])
    distances, indices = nearest(torch.tensor([[1e4 + 1, 1e4], [0.0, 0.1]]), features, 3)
    assert indices.tolist() == [[3, 1, 0], [0, 1, 3]]
    assert distances[0, 0].item() == 0.0 and distances[1, 1].item() == pytest.approx(np.hypot(3, 3.9))
    torch.manual_seed(0)
    a = create_model("lenet5")
    torch.manual_seed(0)
    b = create_model("lenet5")
    assert model_hash(a) == model_hash(b)
    with torch.no_grad():
        b.features.c1.bias[0] += 1e-6
    assert model_hash(a) != model_hash(b)
