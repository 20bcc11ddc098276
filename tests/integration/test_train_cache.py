"""Training from the decode cache (data.cache=always): the same run twice gives bit-identical weights and metrics,
and a run stopped in the middle of an epoch resumes to the same result."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from classicnets.models import registry
from classicnets.training.loop import TrainingInterrupted, fit
from classicnets.training.signals import StopRequest
from classicnets.training.trainer import Trainer

RUN = {
    "epochs": 2, "batch_size": 8, "workers": 0,
    "settings": ["data.augment=paper", "data.pca_std=0.1", "model.in_chans=3", "data.cache=always"],
}  # fmt: skip


@pytest.fixture
def photos(tmp_path, digit_kit):
    """48 RGB PNG digits in class folders (3/, 7/)."""
    return digit_kit.folders(tmp_path / "photos", per_class=24, rgb=True)


@pytest.fixture(autouse=True)
def lenet_that_resizes(monkeypatch):
    """LeNet-5 with its short side resized to 36 before the 32x32 crops: a tiny model the cache can serve (the
    real one resizes nothing, so there would be no size to cache at)."""
    info = registry._REGISTRY["lenet5"]
    monkeypatch.setitem(registry._REGISTRY, "lenet5",
                        replace(info, preprocessing=replace(info.preprocessing, resize_size=36)))  # fmt: skip


def test_training_from_the_cache_is_deterministic_and_resumes_mid_epoch_bit_identically(
    photos, tmp_path, monkeypatch, quick_fit, assert_same_run, decode_cache_in_a_temporary_folder
):
    first = quick_fit(photos, tmp_path / "a", **RUN)
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["data"]["cache"] == "always"
    indexes = [json.loads(p.read_text()) for p in decode_cache_in_a_temporary_folder.glob("*/index.json")]
    ours = [i for i in indexes if i["root"] == str(photos.resolve())]
    assert [(i["size"], i["rows"], len(i["files"])) for i in ours] == [(36, 48, 48)]
    again = quick_fit(photos, tmp_path / "b", **RUN)
    assert_same_run(first.run_dir, again.run_dir)

    stop = StopRequest()
    original = Trainer.train_steps

    def stop_at_step_2_of_epoch_2(self, epoch, *, start=0):
        for item in original(self, epoch, start=start):
            if epoch == 1 and self.state.step_in_epoch == 2:
                stop.request()
            yield item

    monkeypatch.setattr(Trainer, "train_steps", stop_at_step_2_of_epoch_2)
    with pytest.raises(TrainingInterrupted, match=r"at epoch 2, step 2 of \d+; saved"):
        quick_fit(photos, tmp_path / "c", stop=stop, **RUN)
    monkeypatch.setattr(Trainer, "train_steps", original)
    fit(resume=tmp_path / "c")
    assert_same_run(first.run_dir, tmp_path / "c")
