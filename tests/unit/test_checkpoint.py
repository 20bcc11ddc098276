"""Checkpoints round-trip through weights_only loading; bad files give one-line errors; writes are atomic."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile

import pytest
import torch

from classicnets.errors import WeightsError
from classicnets.fileio import atomic_open, atomic_write_text
from classicnets.models.registry import create_model
from classicnets.weights.checkpoint import build_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint


def test_round_trip_rebuilds_the_same_model(tmp_path):
    model = create_model("lenet5", num_classes=5, activation="relu").eval()
    model.reset_classifier(3)
    ckpt = build_checkpoint(model, classes=["a", "b", "c"], epoch=4)
    save_checkpoint(tmp_path / "w.pt", ckpt)
    loaded = load_checkpoint(tmp_path / "w.pt")
    assert loaded["epoch"] == 4 and loaded["classes"] == ["a", "b", "c"]
    assert loaded["model"] == {"name": "lenet5", "kwargs": {"num_classes": 3, "activation": "relu"}}
    rebuilt = model_from_checkpoint(loaded).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), rebuilt(x))
    assert rebuilt.classes == ["a", "b", "c"] and rebuilt.preprocessing == model.preprocessing
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]  # no temporary file left behind


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.pt: the file is empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(WeightsError, match="missing.pt: no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_checkpoint(create_model("lenet5"), classes=list("0123456789")))
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="cut.pt: unreadable or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"just": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="other.pt: not a classicnets checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    evil = tmp_path / "evil.pt"
    torch.save({"format": "classicnets-checkpoint", "payload": _Exploit()}, evil, pickle_module=pickle)
    with pytest.raises(WeightsError, match="evil.pt: refused: the file contains Python objects"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half a")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def flip_byte_in(path, entry_suffix: str, at: int = 100) -> None:
    """Flip one bit of byte `at` inside the stored zip entry ending in `entry_suffix` (torch.save stores the
    entries uncompressed, and torch.load does not check their CRC): a bad disk, copy or download."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(entry_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + at] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_weights_is_refused_not_loaded(tmp_path):
    from classicnets.weights import load_weights

    path = tmp_path / "best.pt"
    save_checkpoint(path, build_checkpoint(create_model("lenet5"), classes=list("0123456789"), epoch=3))
    assert load_checkpoint(path)["epoch"] == 3 and "digest" not in load_checkpoint(path)  # checked, then dropped
    flip_byte_in(path, "/data/0")  # the first tensor's bytes: conv1's weights
    message = (
        f"{path}: damaged: its contents no longer match the checksum stored when it was written (a bad disk, copy "
        "or download); use another copy of the file"
    )
    with pytest.raises(WeightsError) as e:
        load_checkpoint(path)
    assert str(e.value) == message
    with pytest.raises(WeightsError) as e:
        load_weights(path)  # what eval, predict and export read through
    assert str(e.value) == message


def test_a_checkpoint_written_before_the_digest_still_loads(tmp_path):
    ckpt = build_checkpoint(create_model("lenet5"), classes=list("0123456789"))
    torch.save(ckpt, tmp_path / "old.pt")  # no "digest" key: an earlier classicnets wrote it
    assert load_checkpoint(tmp_path / "old.pt")["classes"] == list("0123456789")
