"""CIFAR-10/100 in both official distributions (python pickles, binary records), unpacked or as .tar.gz: counts,
labels, class names, pixel order, fine/coarse labels, and pickles that ask for code refused without running it."""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from classicnets.data import make_loader, open_dataset, open_splits, source_splits
from classicnets.errors import DataError, UsageError
from classicnets.models.preprocessing import Preprocessing

CIFAR_PRE = Preprocessing(input_size=(3, 32, 32), resize_size=None)


def check_pixels(images: torch.Tensor, k: int, first: int) -> None:
    """Image k holds cifar_kit.pixels(first + k): planes R, G, B, each 32x32 row-major."""
    r = (first + k + np.arange(1024)) % 256
    assert images[k, 0].flatten().tolist() == r.tolist()
    assert images[k, 1, 0, 0] == (100 + first + k) % 256 and images[k, 2, 31, 31] == (200 + first + k + 1023) % 256
    assert images[k, 0, 1, 0] == (first + k + 32) % 256  # row-major: the second row starts at byte 32


@pytest.mark.parametrize("version", ["python", "binary"])
def test_cifar10_folder_counts_labels_names_and_pixel_order(tmp_path, cifar_kit, version):
    folder = getattr(cifar_kit, f"cifar10_{version}")(tmp_path, per_batch=4, test=3)
    assert source_splits(folder) == ("train", "test")
    sets = open_splits(folder, ["train", "test"])
    train, test = sets["train"], sets["test"]
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8 and len(test) == 3
    assert train.classes == cifar_kit.NAMES10 == test.classes
    # batches in order 1..5: batch i's labels are (i + k) % 10, its pixels start at 10 * i
    assert train.targets == [(i + k) % 10 for i in range(1, 6) for k in range(4)]
    assert test.targets == [0, 1, 2]
    check_pixels(train.images, 0, 10)
    check_pixels(train.images[4:], 1, 20)  # batch 2, image 1
    check_pixels(test.images, 2, 0)
    assert train.augment == "pad_crop" and train.describe(5).endswith("/train#5")


@pytest.mark.parametrize("version", ["python", "binary"])
def test_cifar100_fine_by_default_and_coarse_on_request(tmp_path, cifar_kit, version):
    folder = getattr(cifar_kit, f"cifar100_{version}")(tmp_path, train=6, test=4)
    fine = open_dataset(folder, split="train")
    assert fine.classes == cifar_kit.names100("fine") and fine.targets == [0, 7, 14, 21, 28, 35]
    coarse = open_dataset(folder, split="test", label_mode="coarse")
    assert coarse.classes == cifar_kit.names100("coarse") and coarse.targets == [0, 3, 6, 9]
    check_pixels(fine.images, 3, 5)
    with pytest.raises(DataError, match=r"CIFAR-100 \(.* version\) with splits train, test; pick one"):
        open_dataset(folder)


def test_coarse_labels_are_refused_for_cifar10_and_digits(tmp_path, cifar_kit, digit_kit):
    folder = cifar_kit.cifar10_python(tmp_path)
    with pytest.raises(UsageError, match="coarse labels are CIFAR-100's"):
        open_dataset(folder, split="train", label_mode="coarse")
    with pytest.raises(UsageError, match="applies to CIFAR-100"):
        open_dataset(digit_kit.idx(tmp_path / "digits", per_class=2), label_mode="coarse")


def test_one_batch_file_is_one_set(tmp_path, cifar_kit):
    folder = cifar_kit.cifar10_python(tmp_path, test=3)
    ds = open_dataset(folder / "test_batch")
    assert len(ds) == 3 and ds.classes == cifar_kit.NAMES10 and ds.describe(1) == "test_batch#1"
    binary = cifar_kit.cifar10_binary(tmp_path / "bin", per_batch=2)
    assert open_dataset(binary / "data_batch_3.bin").targets == [3, 4]


@pytest.mark.parametrize("maker", ["cifar10_python", "cifar100_binary"])
def test_archive_read_in_place(tmp_path, cifar_kit, maker):
    folder = getattr(cifar_kit, maker)(tmp_path / "unpacked")
    archive = cifar_kit.archive(folder, tmp_path / "download.tar.gz")
    assert source_splits(archive) == ("train", "test")
    from_archive = open_splits(archive, ["train", "test"])
    from_folder = open_splits(folder, ["train", "test"])
    for split in ("train", "test"):
        assert torch.equal(from_archive[split].images, from_folder[split].images)
        assert from_archive[split].targets == from_folder[split].targets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download.tar.gz", "unpacked"]  # nothing extracted


def test_archive_link_member_is_refused_and_nothing_lands_outside(tmp_path, cifar_kit):
    folder = cifar_kit.cifar10_python(tmp_path / "src")
    (folder / "test_batch").unlink()

    def evil(tar: tarfile.TarFile) -> None:
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        cifar_kit.add_bytes(tar, "../../escaped.txt", b"outside")

    archive = cifar_kit.archive(folder, tmp_path / "evil.tar.gz", extra=evil)
    with pytest.raises(DataError, match=r"cifar-10-batches-py/test_batch is a link in the archive \(to /etc/passwd\)"):
        open_splits(archive, ["test"])
    assert not (tmp_path.parent / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_malicious_data_batch_1_is_refused_without_running_code(tmp_path, cifar_kit):
    folder = cifar_kit.cifar10_python(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:  # unpickling this calls open(marker, "w"): the file would appear if the pickle ran code
        def __reduce__(self):
            return open, (str(marker), "w")

    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Exploit(), "labels": [1]}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: refused: .*refused global io.open.*only dicts, lists"):
        open_dataset(folder, split="train")
    assert not marker.exists()
    open_dataset(folder, split="test")  # the other files still read


def test_arrays_other_than_uint8_are_refused(tmp_path, cifar_kit):
    folder = cifar_kit.cifar10_python(tmp_path)
    batch = {"data": np.zeros((2, 3072), dtype=np.float64), "labels": [0, 1]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: refused: .*numpy dtype 'f8' \(CIFAR arrays are uint8\)"):
        open_dataset(folder, split="test")


def test_python3_pickles_with_bytes_keys_also_read(tmp_path, cifar_kit):
    folder = cifar_kit.cifar10_python(tmp_path, test=3)
    for protocol in (2, 5):
        batch = {b"data": cifar_kit.pixels(0, 2), b"labels": [4, 5]}
        (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
        ds = open_dataset(folder, split="test")
        assert ds.targets == [4, 5]
        check_pixels(ds.images, 1, 0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "test_batch.bin").write_bytes(b"\x01" * 3000), r"test_batch.bin: 3,000 bytes is not a whole"),
        (lambda f: (f / "data_batch_4.bin").unlink(), r"like CIFAR-10 \(binary version\) but has no data_batch_4"),
    ],
)
def test_damaged_binary_folders_name_the_file(tmp_path, cifar_kit, damage, message):
    folder = cifar_kit.cifar10_binary(tmp_path)
    damage(folder)
    with pytest.raises(DataError, match=message):
        open_splits(folder, ["train", "test"])


def test_truncated_archive_and_garbled_pickle(tmp_path, cifar_kit):
    folder = cifar_kit.cifar10_python(tmp_path / "src")
    archive = cifar_kit.archive(folder, tmp_path / "c.tar.gz")
    whole = archive.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) - 200])  # the start (and its layout) still reads
    with pytest.raises(DataError, match="cut.tar.gz: broken or truncated archive"):
        open_splits(tmp_path / "cut.tar.gz", ["train", "test"])
    (tmp_path / "stub.tar.gz").write_bytes(whole[:20])
    with pytest.raises(DataError, match="stub.tar.gz: not a readable tar archive"):
        open_dataset(tmp_path / "stub.tar.gz")
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x01(U\x04data")
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR batch"):
        open_dataset(folder, split="test")


def test_loader_pads_crops_and_flips_cifar_on_the_batch(tmp_path, cifar_kit):
    ds = open_dataset(cifar_kit.cifar10_python(tmp_path, test=3), split="train")
    loader = make_loader(ds, preprocessing=CIFAR_PRE, train=True, batch_size=20, seed=0)  # recipe auto
    assert loader.transform.recipe == "pad_crop"
    loader.set_epoch(0)
    x, _ = next(iter(loader))
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8
    originals = ds.images[torch.tensor(loader.batch_indices)]
    shifted = sum(not torch.equal(a, b) and not torch.equal(a, b.flip(-1)) for a, b in zip(x, originals, strict=True))
    assert shifted > 10  # crops at offsets -4..4: most images move
    # every output row/column is a shifted original row (or zeros from the padding): check the first image
    zero_rows = int((x[:, :, :4].sum(dim=(1, 3)) == 0).sum())
    assert zero_rows > 0  # some crops reach into the 4-pixel zero border
    again = make_loader(ds, preprocessing=CIFAR_PRE, train=True, batch_size=20, seed=0)
    again.set_epoch(0)
    assert torch.equal(next(iter(again))[0], x)  # the same (seed, epoch): the same crops
    evaluation = make_loader(ds, preprocessing=CIFAR_PRE, train=False, batch_size=20)
    assert torch.equal(next(iter(evaluation))[0], ds.images)  # no augmentation when evaluating


def test_archive_with_unknown_contents_is_not_cifar(tmp_path, cifar_kit):
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        cifar_kit.add_bytes(tar, "photos/cat.jpg", b"x")
    assert source_splits(other) == ()
    with pytest.raises(DataError, match="other.tar.gz: an archive without CIFAR's files; unpack it"):
        open_dataset(other)


def test_special_files_named_like_cifar_files_are_refused_without_blocking(tmp_path, cifar_kit, finishes):
    folder = cifar_kit.cifar10_python(tmp_path / "c10")
    (folder / "test_batch").unlink()
    os.mkfifo(folder / "test_batch")  # a FIFO without a writer: reading it would block forever
    with pytest.raises(DataError, match=r"cannot read .*test_batch: a FIFO \(named pipe\), not a regular file"):
        finishes(lambda: open_dataset(folder / "test_batch"), 30)
    with pytest.raises(DataError, match="looks like CIFAR-10 .* but has no test_batch"):
        finishes(lambda: open_dataset(folder, split="train"), 30)
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(DataError, match=r"fifo.npz: not a readable .npz file \(.*a FIFO"):
        finishes(lambda: open_dataset(tmp_path / "fifo.npz", split="train"), 30)
