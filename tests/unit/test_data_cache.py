"""The decode cache (data/cache.py) and the loader over it (data/cached_loader.py): rows equal a direct decode,
rows reused and files re-decoded by size and time, bad files, the disk check, the lock, determinism and resume,
and `prepare --cache`. Every cache lands in tmp_path (CLASSICNETS_CACHE)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

from classicnets.cli import main
from classicnets.data import CachedLoader, Loader, cache_build, make_loader, open_dataset
from classicnets.data import cache as cache_module
from classicnets.data.cache import CacheSpec, CacheTooLarge, DecodeCache, folder_images
from classicnets.data.decode import decode_image
from classicnets.errors import DataError, UsageError
from classicnets.models.preprocessing import Preprocessing

S = 24  # the resize size of these tests (256 in the paper)
PRE = Preprocessing(input_size=(3, 20, 20), resize_size=S)


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CLASSICNETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def photo(path: Path, seed: int, size=(40, 30), quality=90) -> Path:
    """A smooth random JPEG (real photos are smooth; noise would make every JPEG decoder differ)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 5 + 1, size[0] // 5 + 1, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, quality=quality)
    return path


def folder(root: Path, per_class: int = 4) -> Path:
    sizes = [(40, 30), (30, 50), (64, 64), (90, 31)]  # landscape, portrait, square, wide
    for c, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            photo(root / name / f"{name}.{i}.jpg", seed=10 * c + i, size=sizes[i % len(sizes)])
    return root


def build(root: Path, **kwargs):
    paths = folder_images(root)
    cache = DecodeCache(CacheSpec(root.resolve(), S))
    return cache, paths, cache.build(paths, **kwargs)


def counting_decodes(monkeypatch) -> list[str]:
    decoded: list[str] = []
    original = cache_build.decode_row

    def counted(path, *args):
        decoded.append(Path(path).name)
        return original(path, *args)

    monkeypatch.setattr(cache_build, "decode_row", counted)
    return decoded


def test_rows_are_the_decoded_image_resized_and_centre_cropped(tmp_path, cache_home):
    root = folder(tmp_path / "data")
    cache, paths, rows = build(root)
    assert rows.images.shape == (8, S, S, 3) and rows.images.dtype == np.uint8 and not rows.bad
    for i, path in enumerate(paths):
        img = decode_image(path, draft_short_side=S)
        w, h = img.size  # short side to S, long side truncated as torchvision does; then the central S x S
        img = img.resize((S, int(S * h / w)) if w <= h else (int(S * w / h), S), Image.Resampling.BILINEAR)
        top, left = round((img.height - S) / 2), round((img.width - S) / 2)
        expected = np.asarray(img.crop((left, top, left + S, top + S)))
        assert np.array_equal(rows.images[rows.rows[i]], expected), path
    assert cache.folder.parent == cache_home and cache.data_path.stat().st_size == 8 * S * S * 3


def test_adding_a_file_decodes_only_that_file_and_keeps_the_other_rows(tmp_path, monkeypatch):
    root = folder(tmp_path / "data")
    cache, paths, first = build(root)
    decoded = counting_decodes(monkeypatch)
    photo(root / "cat" / "cat.new.jpg", seed=99)
    _, paths2, second = build(root)
    assert decoded == ["cat.new.jpg"]
    old_rows = dict(zip(paths, first.rows.tolist(), strict=True))
    assert all(second.rows[paths2.index(p)] == row for p, row in old_rows.items())
    assert second.rows[paths2.index(str(root / "cat" / "cat.new.jpg"))] == 8
    assert cache.data_path.stat().st_size == 9 * S * S * 3
    build(root)  # nothing changed: nothing decoded
    assert decoded == ["cat.new.jpg"]


def test_a_changed_file_is_decoded_again_into_a_new_row(tmp_path, monkeypatch):
    root = folder(tmp_path / "data")
    _, paths, first = build(root)
    decoded = counting_decodes(monkeypatch)
    changed = Path(paths[1])
    st = changed.stat()
    photo(changed, seed=1234, size=(40, 30))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a second later, whatever the size
    _, _, second = build(root)
    assert decoded == [changed.name]
    assert second.rows[1] == 8 and second.rows[0] == first.rows[0]
    assert not np.array_equal(second.images[second.rows[1]], first.images[first.rows[1]])


def test_a_bad_file_is_reported_by_name_and_skipped(tmp_path, monkeypatch, capsys):
    root = folder(tmp_path / "data")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "cut.jpg").write_bytes(photo(tmp_path / "whole.jpg", 5).read_bytes()[:300])
    cache, paths, rows = build(root)
    bad = {Path(paths[i]).name: code for i, (code, _) in rows.bad.items()}
    assert bad == {"empty.jpg": "ZERO_BYTES", "cut.jpg": "TRUNCATED"}
    assert rows.images.shape[0] == 8 and all(rows.rows[i] == -1 for i in rows.bad)
    decoded = counting_decodes(monkeypatch)
    build(root)
    assert decoded == []  # known bad files are not tried again while they stay the same
    loader = make_loader(open_dataset(root), preprocessing=PRE, train=True, batch_size=4, cache="always",
                         max_bad_fraction=0.5)  # fmt: skip
    assert isinstance(loader, CachedLoader)
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 8 and sorted(Path(p).name for p, _ in loader.bad_files) == ["cut.jpg", "empty.jpg"]
    assert main(["prepare", str(root), "--cache", "--cache-size", str(S), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "8 images at 24x24" in out and "2 could not be decoded" in out
    assert "not decoded: cat/empty.jpg (ZERO_BYTES)" in out and "not decoded: dog/cut.jpg (TRUNCATED)" in out


def test_not_enough_disk_space_stops_always_and_falls_back_with_auto(tmp_path, monkeypatch):
    root = folder(tmp_path / "data")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(CacheTooLarge, match=re.escape("the decode cache needs 13.5 KiB for 8 images (24x24x3 bytes "
                                                      "each) but ")) as e:  # fmt: skip
        build(root)
    assert "has 1.0 KiB free" in str(e.value) and "data.cache=never" in str(e.value)
    big = DecodeCache(CacheSpec(root.resolve(), 256))
    assert big.needed_bytes(folder_images(root)) == 8 * 196_608  # 192 KiB per 256 x 256 x 3 image
    dataset = open_dataset(root)
    assert isinstance(make_loader(dataset, preprocessing=PRE, train=True, batch_size=4, cache="auto"), Loader)
    assert not isinstance(make_loader(dataset, preprocessing=PRE, train=True, batch_size=4, cache="auto"),
                          CachedLoader)  # fmt: skip
    with pytest.raises(CacheTooLarge):
        make_loader(dataset, preprocessing=PRE, train=True, batch_size=4, cache="always")


def test_a_build_waits_for_the_lock_another_process_holds(tmp_path):
    root = folder(tmp_path / "data")
    cache = DecodeCache(CacheSpec(root.resolve(), S))
    cache.folder.mkdir(parents=True)
    with FileLock(str(cache.lock_path)):  # a torchrun rank building it
        with pytest.raises(DataError, match="another process is building the decode cache"):
            cache.build(folder_images(root), lock_timeout=0)
        assert not cache.index_path.exists()
    assert cache.build(folder_images(root), lock_timeout=0).images.shape[0] == 8


def batches(loader, epoch, start=0):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for i, (x, y) in enumerate(loader) if i >= start]


def test_cached_batches_depend_only_on_seed_and_epoch_so_a_resume_mid_epoch_is_bit_identical(tmp_path):
    dataset = open_dataset(folder(tmp_path / "data", per_class=6))
    options = dict(preprocessing=PRE, train=True, batch_size=4, seed=7, cache="always", drop_last=True)
    whole = make_loader(dataset, **options)
    epoch1 = batches(whole, 1)
    assert len(epoch1) == 3 and epoch1[0][0].shape == (4, 3, 20, 20) and epoch1[0][0].dtype == torch.uint8
    resumed = make_loader(dataset, **options)  # a new process after the stop, at step 2 of epoch 1
    later = batches(resumed, 1, start=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch1[2:], later, strict=True))
    assert not torch.equal(torch.cat([x for x, _ in batches(whole, 2)]), torch.cat([x for x, _ in epoch1]))
    other_seed = make_loader(dataset, **{**options, "seed": 8})
    assert not torch.equal(torch.cat([x for x, _ in batches(other_seed, 1)]), torch.cat([x for x, _ in epoch1]))


def test_evaluation_crops_are_the_centre_of_the_rows_and_only_an_existing_cache_is_read(tmp_path):
    root = folder(tmp_path / "data")
    dataset = open_dataset(root)
    options = dict(preprocessing=PRE, train=False, batch_size=8, cache="auto", build_cache=False)
    assert isinstance(make_loader(dataset, **options), Loader)  # no cache yet: decoded as before, none built
    assert not DecodeCache(CacheSpec(root.resolve(), S)).index_path.exists()
    _, _, rows = build(root)
    loader = make_loader(dataset, **options)
    (x, y), = batches(loader, 0)  # fmt: skip
    assert isinstance(loader, CachedLoader) and y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    expected = torch.from_numpy(np.asarray(rows.images[rows.rows])[:, 2:22, 2:22]).permute(0, 3, 1, 2)
    assert torch.equal(x, expected)
    (ten, _), = batches(make_loader(dataset, **options, ten_crop=True), 0)  # fmt: skip
    assert ten.shape == (8, 10, 3, 20, 20) and torch.equal(ten[:, 4], expected)  # the centre crop is the 5th


def test_always_refuses_a_model_that_resizes_nothing(tmp_path):
    dataset = open_dataset(folder(tmp_path / "data"))
    lenet = Preprocessing(input_size=(3, 32, 32), resize_size=None)
    with pytest.raises(UsageError, match=r"data.cache=always: the model's preprocessing resizes nothing"):
        make_loader(dataset, preprocessing=lenet, train=True, batch_size=4, cache="always")
    assert isinstance(make_loader(dataset, preprocessing=lenet, train=True, batch_size=4, cache="auto"), Loader)


def test_prepare_cache_builds_what_training_on_the_prepared_folder_reads(tmp_path, monkeypatch, capsys):
    flat = tmp_path / "download"
    for i in range(6):
        photo(flat / f"cat.{i}.jpg", seed=i)
        photo(flat / f"dog.{i}.jpg", seed=50 + i, size=(30, 50))
    dst = tmp_path / "prepared"
    assert main(["prepare", str(flat), str(dst), "--by-prefix", "--split", "0.5,0.5", "--cache", "--cache-size",
                 str(S), "--quiet"]) == 0  # fmt: skip
    assert f"decode cache of {dst}: 12 images at 24x24" in capsys.readouterr().out
    decoded = counting_decodes(monkeypatch)
    for split in ("train", "val"):  # both splits read the one cache of the prepared folder, nothing decoded
        loader = make_loader(open_dataset(dst / split), preprocessing=PRE, train=split == "train", batch_size=4,
                             cache="always")  # fmt: skip
        assert isinstance(loader, CachedLoader) and len(torch.cat([y for _, y in loader])) == 6
    assert decoded == []
    assert main(["prepare", str(flat)]) == 2
    assert "prepare needs SRC and DST (or one folder with --cache)" in capsys.readouterr().err


def test_a_run_saved_before_the_cache_resumes_decoding_every_epoch():
    """A checkpoint whose config has no data.cache was trained by decoding every epoch: its resume keeps doing so
    (the cache's pixels differ by rounding); a recorded choice is kept as it is."""
    from classicnets.training.start import _with_cache_recorded

    old = {"data": {"path": "/photos"}, "train": {"epochs": 3}}
    assert _with_cache_recorded(old)["data"] == {"path": "/photos", "cache": "never"}
    assert old["data"] == {"path": "/photos"}  # the checkpoint's dict is not changed
    recorded = {"data": {"path": "/photos", "cache": "always"}}
    assert _with_cache_recorded(recorded)["data"]["cache"] == "always"
