"""`classicnets prepare`: sorting by prefix, stratified splits, copy/link/move, never overwriting, re-runs, PCA;
and `scan` on prepared folders (duplicates, train/test leakage)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from classicnets.cli import main
from classicnets.data import find_split_dirs, open_dataset
from classicnets.data.prepare import class_from_name, prepare_dataset
from classicnets.data.scan import scan_folder
from classicnets.errors import DataError, UsageError


def snapshot(folder):
    """(relative path, size, mtime) of every entry: to prove a folder was not touched."""
    return sorted((str(p.relative_to(folder)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*"))


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))


def test_prepare_cats_vs_dogs_counts_same_split_for_same_seed_source_untouched(tmp_path, capsys, shared_data):
    src = shared_data("cats-vs-dogs-sample")
    before = snapshot(src)
    code = main(["prepare", str(src), str(tmp_path / "a"), "--by-prefix", "--split", "0.8,0.1,0.1", "--link"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[:4] == [
        "class  train  val  test  total",
        "cat      480   60    60    600",
        "dog      480   60    60    600",
        "total    960  120   120   1200",
    ]
    assert f"linked 1200 files into {tmp_path / 'a'} (0 already there, 0 conflicts, 0 missing)" in out
    splits = find_split_dirs(tmp_path / "a")
    assert list(splits) == ["train", "val", "test"]
    train = open_dataset(splits["train"])
    assert train.classes == ["cat", "dog"] and train.class_counts() == {"cat": 480, "dog": 480}
    assert all(
        os.path.basename(p).startswith(train.classes[t]) for p, t in zip(train.paths, train.targets, strict=True)
    )
    assert main(["prepare", str(src), str(tmp_path / "b"), "--by-prefix", "--split", "0.8,0.1,0.1"]) == 0
    assert files(tmp_path / "a") == files(tmp_path / "b")  # same seed, same split; copies this time
    assert not (tmp_path / "b" / "train" / "cat" / os.listdir(splits["train"] / "cat")[0]).is_symlink()
    assert main(["prepare", str(src), str(tmp_path / "c"), "--by-prefix", "--split", "0.8,0.1,0.1", "--seed", "1",
                 "--link"]) == 0  # fmt: skip
    assert files(tmp_path / "c") != files(tmp_path / "a")
    assert snapshot(src) == before
    capsys.readouterr()
    assert main(["scan", str(tmp_path / "b"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "splits" and report["bad_files"] == [] and report["images"] == 1200
    assert report["counts"]["val"] == {"cat": 60, "dog": 60}


def make_flat(root, n=10, classes=("cat", "dog"), ext="jpg"):
    root.mkdir(parents=True)
    for c in classes:
        for i in range(n):
            rgb = np.random.default_rng(hash((c, i)) % 2**32).integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / f"{c}.{i}.{ext}")
    return root


def test_sorting_only_and_class_names():
    assert class_from_name("cat.5000.jpg") == "cat"
    assert class_from_name("american_bulldog_10.jpg") == "american_bulldog"
    assert class_from_name("IMG-0042.PNG") == "IMG"
    assert class_from_name("dog.copy.jpg") == "dog"


def test_by_prefix_without_split(tmp_path):
    src = make_flat(tmp_path / "flat", n=3)
    report = prepare_dataset(src, tmp_path / "out", by_prefix=True)
    assert report.counts == {"cat": {"": 3}, "dog": {"": 3}} and report.written == 6
    assert files(tmp_path / "out") == [f"{c}/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(3)]
    assert open_dataset(tmp_path / "out").class_counts() == {"cat": 3, "dog": 3}


def test_rerun_after_interruption_finishes_and_never_overwrites(tmp_path):
    src = make_flat(tmp_path / "flat")
    dst = tmp_path / "out"
    first = prepare_dataset(src, dst, by_prefix=True, split=[0.6, 0.2, 0.2])
    assert first.written == 20 and first.counts["cat"] == {"train": 6, "val": 2, "test": 2}
    placed = files(dst)
    os.unlink(dst / placed[0])  # as if the run had been interrupted before these
    os.unlink(dst / placed[5])
    (dst / placed[1]).write_bytes(b"the user's own file")  # a different file where ours would go
    again = prepare_dataset(src, dst, by_prefix=True, split=[0.6, 0.2, 0.2])
    assert (again.written, again.existing, again.conflicts) == (2, 17, [placed[1]])
    assert (dst / placed[1]).read_bytes() == b"the user's own file"
    assert files(dst) == placed
    with pytest.raises(DataError, match=r"prepared with other settings \(seed=0 \(now 3\)\)"):
        prepare_dataset(src, dst, by_prefix=True, split=[0.6, 0.2, 0.2], seed=3)


def test_interrupted_copy_leaves_no_partial_file_and_rerun_completes(tmp_path, monkeypatch):
    import classicnets.data.prepare as prepare_module

    src = make_flat(tmp_path / "flat", n=5)
    dst = tmp_path / "out"
    real_copy, calls = prepare_module.shutil.copyfileobj, []

    def copy_then_ctrl_c(fin, fout, length=0):
        calls.append(1)
        if len(calls) == 7:
            fout.write(fin.read(10))  # half-written when Ctrl-C arrives
            raise KeyboardInterrupt
        real_copy(fin, fout, length)

    monkeypatch.setattr(prepare_module.shutil, "copyfileobj", copy_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(src, dst, by_prefix=True, split=[0.6, 0.4])
    monkeypatch.undo()
    assert len(files(dst)) == 6 and not [p for p in dst.rglob(".*") if p.is_file()]  # no partial or temp file
    again = prepare_dataset(src, dst, by_prefix=True, split=[0.6, 0.4])
    assert (again.written, again.existing, again.conflicts) == (4, 6, [])
    assert all((dst / f).read_bytes() == (src / os.path.basename(f)).read_bytes() for f in files(dst))


def test_move_dry_run_and_resume(tmp_path):
    src = make_flat(tmp_path / "flat", n=5)
    dst = tmp_path / "out"
    dry = prepare_dataset(src, dst, by_prefix=True, split=[0.8, 0.2], mode="move", dry_run=True)
    assert dry.written == 10 and not dst.exists() and len(list(src.iterdir())) == 10
    report = prepare_dataset(src, dst, by_prefix=True, split=[0.8, 0.2], mode="move")
    assert report.written == 10 and list(src.iterdir()) == []
    assert open_dataset(dst / "train").class_counts() == {"cat": 4, "dog": 4}
    again = prepare_dataset(src, dst, by_prefix=True, split=[0.8, 0.2], mode="move")
    assert (again.written, again.existing, again.missing) == (0, 10, [])


def test_prepare_pca_writes_sorted_orthonormal_eigenvectors(tmp_path):
    src = make_flat(tmp_path / "flat", n=6, ext="png")  # lossless: JPEG's chroma subsampling correlates channels
    prepare_dataset(src, tmp_path / "out", by_prefix=True, split=[0.5, 0.5], pca=True)
    pca = json.loads((tmp_path / "out" / "pca.json").read_text())
    eigval, eigvec = np.array(pca["eigval"]), np.array(pca["eigvec"])
    assert pca["images"] == 6 and list(eigval) == sorted(eigval, reverse=True) and eigval[2] >= 0
    assert np.allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-4)
    pixels = np.concatenate(
        [np.asarray(Image.open(p)).reshape(-1, 3) / 255 for p in (tmp_path / "out" / "train").rglob("*.png")]
    )
    expected_val, expected_vec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    assert np.allclose(eigval, expected_val[::-1], atol=2e-6)
    assert np.allclose(np.abs(eigvec), np.abs(expected_vec[:, ::-1]), atol=1e-5)  # eigenvectors up to sign


def make_class_folders(root, n=4, classes=("cat", "dog")):
    """SRC/cat/cat.0.jpg ...: a class-per-folder tree."""
    for c in classes:
        flat = make_flat(root / f"_{c}", n=n, classes=(c,))
        flat.rename(root / c)
    return root


def test_move_never_empties_a_folder_outside_src_that_a_class_folder_links_to(tmp_path, capsys):
    outside = make_class_folders(tmp_path / "elsewhere", classes=("cat",)) / "cat"
    src = make_class_folders(tmp_path / "src", classes=("dog",))
    os.symlink(outside, src / "cat")  # SRC/cat -> a folder outside SRC
    before = snapshot(outside)
    code = main(["prepare", str(src), str(tmp_path / "dst"), "--split", "0.5,0.5", "--move"])
    assert code == 2 and capsys.readouterr().err == (
        f"error: --move would remove files outside SRC: {src / 'cat'} leads to {outside}; copy (the default) or "
        "--link instead, or move that folder into SRC first\n"
    )
    assert snapshot(outside) == before and not (tmp_path / "dst").exists() and len(files(src)) == 4  # dog/ only
    report = prepare_dataset(src, tmp_path / "copied", split=[0.5, 0.5])  # copying only reads: allowed
    assert report.written == 8 and snapshot(outside) == before


def test_a_plan_whose_entries_leave_src_or_dst_is_refused_before_any_file_moves(tmp_path):
    src = make_class_folders(tmp_path / "src")
    dst = tmp_path / "dst"
    prepare_dataset(src, dst, split=[0.5, 0.5], dry_run=False)
    plan_path = dst / "prepare.json"
    plan = json.loads(plan_path.read_text())
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(b"a file outside SRC and DST")
    cases = {
        "../victim.jpg": "train/cat/../../../escaped.jpg",  # the issue's: a file beside SRC moved beside DST
        "/etc/hostname": "train/cat/x.jpg",
        "cat/cat.0.jpg": "/tmp/escaped.jpg",
        "cat/cat.1.jpg": "bogus/cat/cat.1.jpg",  # not split/class/file
    }
    for rel_src, rel_dst in cases.items():
        plan_path.write_text(json.dumps({**plan, "files": {rel_dst: rel_src}}))
        before = snapshot(tmp_path)
        with pytest.raises(DataError, match=f"{plan_path} is damaged or was edited .*; prepare into a new DST"):
            prepare_dataset(src, dst, split=[0.5, 0.5], mode="move")
        assert snapshot(tmp_path) == before and victim.exists()


def test_a_symlinked_folder_inside_dst_is_not_followed_out_of_it(tmp_path):
    src = make_class_folders(tmp_path / "src")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dst" / "train").mkdir(parents=True)
    os.symlink(outside, tmp_path / "dst" / "train" / "cat")  # a user's link where prepare would write
    with pytest.raises(DataError, match=f"{tmp_path / 'dst' / 'train' / 'cat'} leads outside DST"):
        prepare_dataset(src, tmp_path / "dst", split=[0.5, 0.5])
    assert list(outside.iterdir()) == []


def test_copies_keep_the_source_files_permissions(tmp_path):
    src = make_class_folders(tmp_path / "src", n=2)
    private = src / "cat" / "cat.0.jpg"
    os.chmod(private, 0o600)  # a private photo stays private
    os.chmod(src / "cat" / "cat.1.jpg", 0o640)
    prepare_dataset(src, tmp_path / "dst", split=[0.5, 0.5])
    copies = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "dst").rglob("cat.*.jpg")}
    assert copies == {"cat.0.jpg": 0o600, "cat.1.jpg": 0o640}


def test_a_fifo_in_src_is_skipped_not_waited_on(tmp_path, caplog, finishes):
    src = make_class_folders(tmp_path / "src", n=2)
    os.mkfifo(src / "cat" / "x.jpg")
    report = finishes(lambda: prepare_dataset(src, tmp_path / "dst", split=[0.5, 0.5]), 60)
    assert report.written == 4 and "skipped 1 entries that are not regular files" in caplog.text
    assert not (tmp_path / "dst" / "train" / "cat" / "x.jpg").exists()


def test_prepare_errors(tmp_path, capsys):
    src = make_flat(tmp_path / "flat", n=2)
    with pytest.raises(DataError, match="no class folders to split.*add --by-prefix"):
        prepare_dataset(src, tmp_path / "o", split=[0.5, 0.5])
    with pytest.raises(UsageError, match="must not be inside one another"):
        prepare_dataset(src, src / "out", by_prefix=True)
    assert main(["prepare", str(src), str(tmp_path / "o"), "--split", "0.8,0.3"]) == 2
    assert (
        capsys.readouterr().err
        == "error: --split '0.8,0.3': give 2 or 3 fractions >= 0 that add up to 1, e.g. 0.8,0.1,0.1\n"
    )
    assert main(["prepare", str(tmp_path / "nope"), str(tmp_path / "o"), "--by-prefix"]) == 1


def test_scan_finds_duplicates_and_train_test_leaks(tmp_path):
    src = make_flat(tmp_path / "flat", n=10)
    dst = tmp_path / "out"
    prepare_dataset(src, dst, by_prefix=True, split=[0.8, 0.2])
    train_cat = sorted((dst / "train" / "cat").iterdir())
    val_cat = sorted((dst / "val" / "cat").iterdir())
    (dst / "val" / "cat" / "leaked.jpg").write_bytes(train_cat[0].read_bytes())
    (dst / "train" / "dog" / "copy.jpg").write_bytes(train_cat[1].read_bytes())
    report = scan_folder(dst)
    groups = {tuple(g.paths): (g.code, g.splits, g.classes) for g in report.duplicates}
    assert groups == {
        (f"train/cat/{train_cat[0].name}", "val/cat/leaked.jpg"): ("LEAK", ["train", "val"], ["cat"]),
        (f"train/cat/{train_cat[1].name}", "train/dog/copy.jpg"): ("DUPLICATE", ["train"], ["cat", "dog"]),
    }
    assert report.bad_files == [] and report.problems == 2 and len(val_cat) == 2
