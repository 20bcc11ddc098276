"""Sources: class folders, list files, MNIST and Fashion-MNIST IDX, Keras .npz, prepared-folder detection, stratified
splits. (CIFAR: test_data_cifar.py.)"""

from __future__ import annotations

import collections
import gzip
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from classicnets.data import (
    FASHION_MNIST_CLASSES,
    find_split_dirs,
    open_dataset,
    open_splits,
    read_idx,
    source_splits,
    stratified_split,
)
from classicnets.data.folders import split_counts
from classicnets.errors import DataError, UsageError

# Digit counts of the MNIST test set (t10k-labels-idx1-ubyte), computed once from the file and pinned here.
MNIST_TEST_COUNTS = {0: 980, 1: 1135, 2: 1032, 3: 1010, 4: 982, 5: 892, 6: 958, 7: 1028, 8: 974, 9: 1009}


def write_image(path, size=(12, 10), color=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode != "L" else color[0]).save(path)
    return path


def test_mnist_idx_parses_with_known_label_counts(shared_data):
    ds = open_dataset(shared_data("mnist"))
    assert ds.images.shape == (10000, 28, 28) and ds.images.dtype == torch.uint8
    assert dict(collections.Counter(ds.targets)) == MNIST_TEST_COUNTS
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.describe(123) == "t10k-images-idx3-ubyte.gz#123"
    assert int(ds.images[0].max()) == 255 and int(ds.images[0].min()) == 0
    sub = ds.subset([3, 1])
    assert sub.targets == [ds.targets[3], ds.targets[1]] and torch.equal(sub.images[1], ds.images[1])
    assert sub.describe(0) == "t10k-images-idx3-ubyte.gz#3" and sub.subset([1]).describe(0).endswith("#1")


def write_idx(path, array: np.ndarray, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_idx_plain_and_gzip_and_errors(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([2, 0, 2]), compress=True)
    ds = open_dataset(tmp_path / "train-images-idx3-ubyte")
    assert torch.equal(ds.images, torch.from_numpy(images)) and ds.targets == [2, 0, 2]
    assert ds.classes == ["0", "1", "2"]
    assert read_idx(tmp_path / "train-labels-idx1-ubyte.gz").tolist() == [2, 0, 2]
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 9, 4, 5) + b"12")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "bad-images-idx3-ubyte")
    (tmp_path / "lone-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match="no labels file"):
        open_dataset(tmp_path / "lone-images-idx3-ubyte")


def test_class_folders_sorted_case_insensitive_hidden_ignored(tmp_path, caplog):
    write_image(tmp_path / "dog" / "b.JPG")
    write_image(tmp_path / "dog" / "sub" / "a.png")
    write_image(tmp_path / "cat" / "z.jpeg")
    write_image(tmp_path / "cat" / ".hidden.jpg")
    write_image(tmp_path / ".ipynb_checkpoints" / "x" / "c.jpg")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert [os.path.relpath(p, tmp_path) for p in ds.paths] == ["cat/z.jpeg", "dog/b.JPG", "dog/sub/a.png"]
    assert ds.targets == [0, 1, 1]
    assert "ignored 2 hidden entries" in caplog.text and "ignored 1 files that are not images" in caplog.text
    img, label = ds[2]  # the PNG: lossless
    assert img.shape == (3, 10, 12) and img.dtype == torch.uint8 and label == 1
    assert img[:, 0, 0].tolist() == [200, 30, 30]
    assert open_dataset(tmp_path, in_chans=1)[0][0].shape == (1, 10, 12)


def test_symlink_loop_does_not_hang(tmp_path):
    write_image(tmp_path / "cat" / "a.png")
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "loop")
    os.symlink(tmp_path, tmp_path / "cat" / "up")
    ds = open_dataset(tmp_path)
    assert ds.classes == ["cat"] and len(ds) == 1


def test_empty_class_error_names_folder_and_flag(tmp_path):
    write_image(tmp_path / "cat" / "a.png")
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match=r"empty class folder .*dog: .*--allow-empty"):
        open_dataset(tmp_path)
    ds = open_dataset(tmp_path, allow_empty=True)
    assert ds.classes == ["cat", "dog"] and ds.class_counts() == {"cat": 1, "dog": 0}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nope", "no such file or folder"),
        (lambda p: p, "is empty"),
        (lambda p: write_image(p / "cat.1.jpg").parent, "holds 1 images but no class folders.*--by-prefix"),
        (lambda p: write_image(p / "one.jpg"), "is one image, not a data set"),
    ],
)
def test_source_errors_are_data_errors(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        open_dataset(make(tmp_path))


def test_list_file_names_and_indices(tmp_path):
    write_image(tmp_path / "imgs" / "a b.png")
    write_image(tmp_path / "imgs" / "c.png")
    (tmp_path / "train.txt").write_text("# comment\nimgs/a b.png dog\n\nimgs/c.png cat\n")
    ds = open_dataset(tmp_path / "train.txt")
    assert ds.classes == ["cat", "dog"] and ds.targets == [1, 0]
    assert ds.paths == [str(tmp_path / "imgs" / "a b.png"), str(tmp_path / "imgs" / "c.png")]
    (tmp_path / "val.txt").write_text("imgs/c.png 2\nimgs/a b.png 0\n")
    ds = open_dataset(tmp_path / "val.txt")
    assert ds.classes == ["0", "1", "2"] and ds.targets == [2, 0]
    (tmp_path / "bad.txt").write_text("imgs/c.png 2\nimgs/c.png cat\n")
    with pytest.raises(DataError, match="mix class indices and class names"):
        open_dataset(tmp_path / "bad.txt")
    (tmp_path / "short.txt").write_text("justonefield\n")
    with pytest.raises(DataError, match=r"short.txt:1: expected 'relative/path label'"):
        open_dataset(tmp_path / "short.txt")


def test_a_huge_label_is_an_error_naming_its_line_not_a_billion_class_names(tmp_path, memory_cap):
    write_image(tmp_path / "imgs" / "c.png")
    (tmp_path / "list.txt").write_text("imgs/c.png 3\nimgs/c.png 999999999999\n")  # the label
    with pytest.raises(DataError) as e, memory_cap(1 << 30):  # a list of 10**12 class names: MemoryError
        open_dataset(tmp_path / "list.txt")
    assert str(e.value) == (
        f"{tmp_path / 'list.txt'}:2: label 999999999999 is past the limit of 100,000 classes (integer labels are "
        "class indices 0, 1, 2, ...)"
    )
    (tmp_path / "edge.txt").write_text("imgs/c.png 99999\n")  # the largest allowed index: 100,000 classes
    assert len(open_dataset(tmp_path / "edge.txt").classes) == 100_000


def test_a_huge_idx_label_is_an_error_too(tmp_path, memory_cap):
    write_idx(tmp_path / "t-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    labels = np.array([1, 999_999_999], dtype=">i4")  # IDX type 0x0C: 32-bit labels
    (tmp_path / "t-labels-idx1-ubyte").write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + labels.tobytes())
    with pytest.raises(DataError) as e, memory_cap(1 << 30):
        open_dataset(tmp_path / "t-images-idx3-ubyte")
    assert str(e.value) == (
        f"{tmp_path / 't-labels-idx1-ubyte'}: label 999999999 (of image 1) is past the limit of 100,000 classes"
    )


def test_find_split_dirs(tmp_path):
    (tmp_path / "train").mkdir()
    assert find_split_dirs(tmp_path) is None
    (tmp_path / "test").mkdir()
    assert find_split_dirs(tmp_path) == {"train": tmp_path / "train", "test": tmp_path / "test"}
    (tmp_path / "val").mkdir()
    assert list(find_split_dirs(tmp_path)) == ["train", "val", "test"]
    write_image(tmp_path / "train" / "cat" / "a.png")
    with pytest.raises(DataError, match="prepared folder with splits train, val, test"):
        open_dataset(tmp_path)


def test_stratified_split_counts_and_determinism():
    targets = [0] * 600 + [1] * 600 + [2] * 7
    parts = stratified_split(targets, [0.8, 0.1, 0.1], seed=0)
    per_class = [collections.Counter(targets[i] for i in p) for p in parts]
    assert [c[0] for c in per_class] == [480, 60, 60] and [c[2] for c in per_class] == [5, 1, 1]
    assert sorted(i for p in parts for i in p) == list(range(len(targets)))
    assert parts == stratified_split(targets, [0.8, 0.1, 0.1], seed=0)
    assert parts != stratified_split(targets, [0.8, 0.1, 0.1], seed=1)
    assert split_counts(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]
    with pytest.raises(UsageError, match="add up to 1"):
        stratified_split(targets, [0.8, 0.3], seed=0)


def write_mnist_npz(path, digit_kit, per_class=(8, 3)):
    """A Keras-layout .npz (mnist.npz's arrays) of real shipped digits."""
    images, labels = digit_kit.shipped("train")
    train = digit_kit.first_per_class(labels, per_class[0])
    test_images, test_labels = digit_kit.shipped("test")
    test = digit_kit.first_per_class(test_labels, per_class[1])
    np.savez(path, x_train=images[train], y_train=labels[train], x_test=test_images[test], y_test=test_labels[test])
    return path


def test_keras_mnist_npz_has_its_train_and_test_splits(tmp_path, digit_kit):
    npz = write_mnist_npz(tmp_path / "mnist.npz", digit_kit)
    assert source_splits(npz) == ("train", "test")
    sets = open_splits(npz, ["train", "test"])
    assert sets["train"].images.shape == (80, 28, 28) and len(sets["test"]) == 30
    assert sets["train"].classes == [str(i) for i in range(10)] and sets["train"].augment == "none"
    images, labels = digit_kit.shipped("train")
    first = digit_kit.first_per_class(labels, 8)[0]
    assert torch.equal(sets["train"].images[0], torch.from_numpy(images[first]))
    assert sets["test"].describe(2) == "mnist.npz:test#2"
    with pytest.raises(DataError, match="a Keras .npz with splits train, test; pick one"):
        open_dataset(npz)


def test_npz_colour_labels_n_by_1_fashion_names_and_refusals(tmp_path):
    x = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    x[:, :, :, 2] = 9  # blue plane of Keras' channels-last images
    np.savez(tmp_path / "colour.npz", x_train=x, y_train=np.array([[0], [1], [2], [1]]), x_test=x[:2],
             y_test=np.array([[2], [0]]))  # fmt: skip
    train = open_dataset(tmp_path / "colour.npz", split="train")
    assert train.images.shape == (4, 3, 32, 32) and int(train.images[:, 2].min()) == 9 and train.targets == [0, 1, 2, 1]
    np.savez(tmp_path / "fashion.npz", x_train=x[..., 0], y_train=np.arange(4), x_test=x[:1, ..., 0], y_test=[9])
    assert open_dataset(tmp_path / "fashion.npz", split="test").classes[9] == "Ankle boot"
    np.savez(tmp_path / "objects.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=[0], x_test=x, y_test=[0])
    with pytest.raises(DataError, match=r"objects.npz: refused: .*allow_pickle=False"):
        open_dataset(tmp_path / "objects.npz", split="train")
    np.savez(tmp_path / "huge.npz", x_train=x, y_train=[0, 1, 2, 10**9], x_test=x[:1], y_test=[0])
    with pytest.raises(DataError, match="huge.npz: label 1000000000 is past the limit of 100,000 classes"):
        open_dataset(tmp_path / "huge.npz", split="train")
    np.savez(tmp_path / "other.npz", images=x)
    with pytest.raises(DataError, match=r"expected arrays x_train, y_train, x_test, y_test .*it holds images"):
        open_dataset(tmp_path / "other.npz", split="train")


def test_idx_folder_with_training_and_test_files_has_two_splits(tmp_path, digit_kit):
    folder = tmp_path / "fashion-mnist"  # Keras' ~/.keras/datasets/fashion-mnist layout
    images, labels = digit_kit.shipped("train")
    digit_kit.write_idx(folder, "train", images[:30], labels[:30])
    digit_kit.write_idx(folder, "t10k", images[30:40], labels[30:40])
    assert source_splits(folder) == ("train", "test")
    sets = open_splits(folder, ["train", "test"])
    assert len(sets["train"]) == 30 and len(sets["test"]) == 10
    assert sets["test"].classes == list(FASHION_MNIST_CLASSES) == sets["train"].classes
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    digits = digit_kit.write_idx(tmp_path / "mnist", "train", images[:30], labels[:30])
    digit_kit.write_idx(digits, "t10k", images[30:40], labels[30:40])
    assert open_dataset(digits, split="test").classes == [str(i) for i in range(10)]
    with pytest.raises(DataError, match="has no val split"):
        open_splits(digits, ["val"])
