"""Loaders: determinism per (seed, epoch), workers, the bad-file guard and its limits, the in-memory loader."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from classicnets.data import make_loader, open_dataset
from classicnets.data.datasets import InMemoryDataset
from classicnets.data.loaders import WorkerSeeder, _GuardedSamples
from classicnets.data.transforms import ImageTransform
from classicnets.errors import DataError
from classicnets.models.preprocessing import Preprocessing

PRE = Preprocessing(input_size=(3, 8, 8), resize_size=10)
DIGITS = Preprocessing(input_size=(1, 32, 32), resize_size=None, mean=(0.5,), std=(0.5,), channel_order="L")


def make_folder(root, n_per_class=6, bad=None):
    """Two classes of small PNGs; `bad` maps file names (in class a) to raw bytes."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    for name, data in (bad or {}).items():
        (root / "a" / name).write_bytes(data)
    return root


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=False)
    )


def test_batches_depend_only_on_seed_and_epoch(tmp_path):
    ds = open_dataset(make_folder(tmp_path))
    loader = make_loader(ds, preprocessing=PRE, train=True, batch_size=5, seed=3)
    assert len(loader) == 3
    e0, e1 = epoch_batches(loader, 0), epoch_batches(loader, 1)
    assert [len(x) for x, _ in e0] == [5, 5, 2] and e0[0][0].shape == (5, 3, 8, 8) and e0[0][0].dtype == torch.uint8
    assert e0[0][0].is_contiguous(memory_format=torch.channels_last)  # assembled channel-last, no transposing copy
    assert not same(e0, e1)
    resumed = make_loader(ds, preprocessing=PRE, train=True, batch_size=5, seed=3)
    assert same(epoch_batches(resumed, 1), e1)  # a run resumed at epoch 1 sees what the uninterrupted run saw
    assert same(epoch_batches(resumed, 0), e0)
    other = make_loader(ds, preprocessing=PRE, train=True, batch_size=5, seed=4)
    assert not same(epoch_batches(other, 0), e0)
    labels = torch.cat([y for _, y in e0])
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6


def test_workers_give_the_same_batches_as_the_main_process(tmp_path):
    ds = open_dataset(make_folder(tmp_path))
    single = make_loader(ds, preprocessing=PRE, train=True, batch_size=4, seed=1)
    multi = make_loader(ds, preprocessing=PRE, train=True, batch_size=4, seed=1, workers=2)
    assert same(epoch_batches(multi, 2), epoch_batches(single, 2))


@pytest.mark.slow  # starting spawn workers imports torch in each: about 10 s on 2 busy cores
def test_spawn_workers_give_the_same_batches(tmp_path):
    ds = open_dataset(make_folder(tmp_path))
    single = make_loader(ds, preprocessing=PRE, train=True, batch_size=4, seed=1)
    spawn = make_loader(ds, preprocessing=PRE, train=True, batch_size=4, seed=1, workers=2,
                        multiprocessing_context="spawn")  # fmt: skip
    assert same(epoch_batches(spawn, 1), epoch_batches(single, 1))


def test_worker_seeder_is_deterministic_per_seed_epoch_worker():
    def draw(seed, epoch, worker):
        WorkerSeeder(seed, epoch)(worker)
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    assert draw(1, 2, 0) == draw(1, 2, 0)
    assert len({draw(1, 2, 0), draw(1, 2, 1), draw(1, 3, 0), draw(2, 2, 0)}) == 4


def test_worker_dataset_is_picklable_for_spawn(tmp_path):
    ds = open_dataset(make_folder(tmp_path))
    samples = _GuardedSamples(ds, ImageTransform(PRE, train=True), seed=1, epoch=2)
    copy = pickle.loads(pickle.dumps(samples))
    assert np.array_equal(copy[3][0], samples[3][0]) and copy[3][1:] == samples[3][1:]


def test_eval_order_and_ten_crop(tmp_path):
    ds = open_dataset(make_folder(tmp_path))
    loader = make_loader(ds, preprocessing=PRE, train=False, batch_size=12, ten_crop=True)
    (x, y), *rest = list(loader)
    assert not rest and x.shape == (12, 10, 3, 8, 8) and y.tolist() == [0] * 6 + [1] * 6


BAD = {"00_zero.png": b"", "01_text.png": b"<html>404</html>", "02_cut.png": None}


def test_guard_skips_bad_files_and_reports_them(tmp_path, caplog):
    root = make_folder(tmp_path, n_per_class=100)
    good = (root / "a" / "00.png").read_bytes()
    bad = {**BAD, "02_cut.png": good[: len(good) // 2]}
    for name, data in bad.items():
        (root / "a" / name).write_bytes(data)
    ds = open_dataset(root)
    loader = make_loader(ds, preprocessing=PRE, train=True, batch_size=16, max_bad_fraction=0.05)
    seen, labels = [], []
    for _, y in loader:
        seen += loader.batch_indices  # which dataset samples this batch holds
        labels += y.tolist()
    bad_indices = {ds.paths.index(str(root / "a" / name)) for name in bad}
    assert seen == [i for i in loader.epoch_indices() if i not in bad_indices] and len(seen) == 200
    assert labels == [ds.targets[i] for i in seen]
    assert sorted(loader.bad_files) == [
        (str(root / "a" / "00_zero.png"), "ZERO_BYTES"),
        (str(root / "a" / "01_text.png"), "NOT_AN_IMAGE"),
        (str(root / "a" / "02_cut.png"), "TRUNCATED"),
    ]
    assert "skipped " + str(root / "a" / "01_text.png") + ": NOT_AN_IMAGE" in caplog.text
    with pytest.raises(DataError, match=r"3 of 203 files could not be read, more than 1.0%"):
        list(make_loader(ds, preprocessing=PRE, train=True, batch_size=16))


def test_guard_stops_after_too_many_in_a_row(tmp_path):
    root = make_folder(tmp_path, n_per_class=300)
    for i in range(4):
        (root / "a" / f"00_{i}.png").write_bytes(b"")
    ds = open_dataset(root)
    loader = make_loader(ds, preprocessing=PRE, train=False, batch_size=3, max_bad_in_row=4)
    with pytest.raises(DataError, match=r"4 files in a row could not be read \(last: .*00_3.png\).*max_bad_in_row=4"):
        list(loader)
    ok = make_loader(ds, preprocessing=PRE, train=False, batch_size=3, max_bad_in_row=5)
    assert sum(len(y) for _, y in ok) == 600 and len(ok.bad_files) == 4


def test_memory_running_out_on_one_file_skips_that_file_only(tmp_path, monkeypatch):
    """Before, only BadImageError counted as a bad file: a MemoryError in one sample ended the whole pass."""
    ds = open_dataset(make_folder(tmp_path))
    hungry = ds.paths.index(str(tmp_path / "a" / "03.png"))
    load = type(ds).load

    def load_or_run_out(self, index, **kw):
        if index == hungry:
            raise MemoryError
        return load(self, index, **kw)

    monkeypatch.setattr(type(ds), "load", load_or_run_out)
    loader = make_loader(ds, preprocessing=PRE, train=False, batch_size=4, ten_crop=True, max_bad_fraction=0.1)
    assert sum(len(y) for _, y in loader) == 11
    assert loader.bad_files == [(str(tmp_path / "a" / "03.png"), "TOO_LARGE")]


def test_a_batch_of_only_bad_files_is_left_out_or_yielded_empty(tmp_path):
    root = make_folder(tmp_path, n_per_class=2)
    for name in ("00.png", "01.png"):
        (root / "a" / name).write_bytes(b"")  # class a: every file bad, so batch 0 of the fixed order is all bad
    ds = open_dataset(root)
    options = dict(preprocessing=PRE, train=False, batch_size=2, max_bad_fraction=1.0)
    assert [len(y) for _, y in make_loader(ds, **options)] == [2]
    batches = list(make_loader(ds, **options, empty_batches=True))
    assert [tuple(x.shape) for x, _ in batches] == [(0, 3, 8, 8), (2, 3, 8, 8)]
    assert batches[0][0].dtype == torch.uint8 and batches[0][1].tolist() == []


def test_distributed_sampler_gets_the_epoch(tmp_path):
    ds = open_dataset(make_folder(tmp_path))
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = make_loader(ds, preprocessing=PRE, train=True, batch_size=4, sampler=sampler)
    loader.set_epoch(7)
    assert sampler.epoch == 7 and len(loader) == 2
    assert sum(len(y) for _, y in loader) == 6


def digits(n=40):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    return InMemoryDataset(images, [i % 10 for i in range(n)], [str(i) for i in range(10)], source="digits-idx")


def test_in_memory_loader_eval_pads_and_keeps_order():
    ds = digits()
    loader = make_loader(ds, preprocessing=DIGITS, train=False, batch_size=16)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [16, 16, 8] and loader.bad_files == []
    x = torch.cat([b[0] for b in batches])
    assert x.shape == (40, 1, 32, 32) and torch.equal(x[:, 0, 2:30, 2:30], ds.images)
    assert loader.batch_indices == list(range(32, 40))
    assert torch.cat([b[1] for b in batches]).tolist() == ds.targets


def test_in_memory_loader_augments_deterministically_and_expands_channels():
    ds = digits()
    loader = make_loader(ds, preprocessing=DIGITS, train=True, batch_size=16, seed=2, drop_last=True)
    e0, e1 = epoch_batches(loader, 0), epoch_batches(loader, 1)
    assert len(e0) == 2 and not same(e0, e1)
    assert same(
        epoch_batches(make_loader(ds, preprocessing=DIGITS, train=True, batch_size=16, seed=2, drop_last=True), 1), e1
    )
    # each training image is its digit translated inside the 32x32 field (pixel sum unchanged)
    x, y = e0[0]
    sums = {int(ds.images[i].sum()) for i in range(40)}
    assert all(int(img.sum()) in sums for img in x)
    colour = make_loader(ds, preprocessing=Preprocessing(input_size=(3, 32, 32), resize_size=None), train=False,
                         batch_size=4, recipe="none")  # fmt: skip
    x, _ = next(iter(colour))
    assert x.shape == (4, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
