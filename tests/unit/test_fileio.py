"""classicnets.fileio: a failed write names its file and leaves the old one, permissions follow the umask, the
temporary files of a killed write are cleaned up (only those), and special files are refused without blocking."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from classicnets.errors import WriteError
from classicnets.fileio import NotRegularFile, atomic_open, atomic_write_text, open_regular, remove_orphans


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # where a full disk shows on most file systems: the data reaching it
    with pytest.raises(WriteError) as e:
        atomic_write_text(target, "new\n")
    assert str(e.value) == f"cannot write {target}: No space left on device"
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_folder_that_cannot_be_written_names_the_file(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(WriteError, match=f"cannot write {blocker / 'last.pt'}: "):
        atomic_write_text(blocker / "last.pt", "x")


def test_an_error_of_the_callers_own_code_is_not_called_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_open(tmp_path / "copy.jpg", "wb"):
        open(tmp_path / "no-such-source.jpg", "rb")  # reading the source failed, not writing the copy
    assert list(tmp_path.iterdir()) == []


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        assert mode_of(tmp_path / "new.txt") == 0o640  # as open() would make it; not a forced 0644
        os.chmod(tmp_path / "new.txt", 0o600)
        atomic_write_text(tmp_path / "new.txt", "y")
        assert mode_of(tmp_path / "new.txt") == 0o600
        with atomic_open(tmp_path / "given.bin", "wb", permissions=0o604) as f:
            f.write(b"z")
        assert mode_of(tmp_path / "given.bin") == 0o604
    finally:
        os.umask(old)


def test_the_temporary_files_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    orphan = tmp_path / ".last.pt.k2j_9x0a.tmp"  # what tempfile.mkstemp names a write of last.pt
    orphan.write_bytes(b"half a checkpoint")
    keep = [".best.pt.k2j_9x0a.tmp", ".last.pt.short.tmp", "last.pt.k2j_9x0a.tmp", ".last.pt.k2j_9x0a.tmp.bak",
            "notes.tmp"]  # fmt: skip
    for name in keep:
        (tmp_path / name).write_text("the user's")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".last.pt.k2j_9x0b.tmp").write_text("another folder")
    os.symlink(tmp_path / "notes.tmp", tmp_path / ".last.pt.aaaaaaaa.tmp")  # not a regular file: left alone
    atomic_write_text(tmp_path / "last.pt", "new")
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, ".last.pt.aaaaaaaa.tmp", "last.pt", "sub"])
    assert (tmp_path / "sub" / ".last.pt.k2j_9x0b.tmp").exists()
    assert remove_orphans(tmp_path / "missing-folder", {"last.pt"}) == []


def test_fifos_and_devices_are_refused_without_blocking(tmp_path, finishes):
    os.mkfifo(tmp_path / "x.png")
    os.symlink("/dev/zero", tmp_path / "x.jpg")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "ok.jpg").write_bytes(b"data")
    reasons = {"x.png": "a FIFO (named pipe), not a regular file", "x.jpg": "a character device, not a regular file",
               "folder.jpg": "Is a directory"}  # fmt: skip
    for name, reason in reasons.items():
        with pytest.raises(NotRegularFile) as e:
            finishes(lambda name=name: open_regular(tmp_path / name))
        assert (e.value.strerror, e.value.filename) == (reason, str(tmp_path / name))
    with open_regular(tmp_path / "ok.jpg") as f:
        assert f.read() == b"data"
