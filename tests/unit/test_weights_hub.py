"""Downloading known weights into the cache (classicnets/weights/hub.py) from a local HTTP server (the
`weights_server` fixture): progress, hash check, HTTP errors, cut connections, Range resume, a full disk, no
network, files copied in by hand, and two processes fetching at once."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections import namedtuple
from dataclasses import replace
from pathlib import Path

import pytest

from classicnets.errors import WeightsError
from classicnets.weights import hub

DATA = os.urandom(3 * 2**20 + 12345)  # 3 MiB and a bit: many reads of 128 KiB


def cache_files(home: Path) -> list[str]:
    folder = home / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def one_line_error(call) -> str:
    with pytest.raises(WeightsError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"  # CLASSICNETS_HOME, set by weights_server


def test_cache_folder_follows_classicnets_home_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("CLASSICNETS_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hub.weights_dir() == tmp_path / "user" / ".cache" / "classicnets" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "classicnets"
    monkeypatch.setenv("CLASSICNETS_HOME", str(tmp_path / "mine"))
    assert hub.cache_dir() == tmp_path / "mine"


def test_a_download_shows_progress_lands_checked_and_is_used_from_the_cache(weights_server, home, capsys):
    known = weights_server.publish(DATA, model="lenet5")
    assert hub.cache_state(known) == "no"
    path = hub.fetch_weights(known)
    assert path == home / "weights" / "w-00000000.pth" and path.read_bytes() == DATA
    err = capsys.readouterr().err
    assert "w-00000000.pth: 100%" in err and "3.01M/3.01M" in err  # tqdm's bar, in bytes
    assert cache_files(home) == ["w-00000000.pth", "w-00000000.pth.checked", "w-00000000.pth.lock"]
    assert hub.cache_state(known) == "yes"
    assert hub.fetch_weights(known, progress=False) == path  # from the cache: no second request
    assert weights_server.requests == [("w-00000000.pth", None)]


def test_a_wrong_hash_removes_the_download(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5", sha256="0badc0de")
    message = one_line_error(lambda: hub.fetch_weights(known, progress=False))
    digest = hashlib.sha256(DATA).hexdigest()
    assert message == (
        f"download of lenet5.imagenet from {known.url} is damaged, its SHA-256 {digest[:16]}... does not begin "
        "with the published 0badc0de; removed it, try again"
    )
    assert cache_files(home) == ["w-00000000.pth.lock"]


def test_a_wrong_size_removes_the_download_when_no_hash_is_published(weights_server, home):
    known = replace(weights_server.publish(DATA, model="alexnet2012", file="bvlc_alexnet.npy"),
                    sha256=None, size_bytes=len(DATA) + 1)  # fmt: skip
    message = one_line_error(lambda: hub.fetch_weights(known, progress=False))
    assert f"it has {len(DATA):,} bytes, the published file {len(DATA) + 1:,}; removed it" in message
    assert cache_files(home) == ["bvlc_alexnet.npy.lock"]


@pytest.mark.parametrize(
    ("status", "advice"),
    [(404, "the file may have moved; fetch it elsewhere and run `classicnets import w-00000000.pth --from "
           "torchvision --model lenet5 --out lenet5.pt`"),
     (500, "the server failed; try again later")],
)  # fmt: skip
def test_http_errors_are_one_line_and_leave_nothing(weights_server, home, status, advice):
    known = weights_server.publish(DATA, model="lenet5")
    weights_server.status = status
    message = one_line_error(lambda: hub.fetch_weights(known, progress=False))
    assert message.startswith(f"cannot download lenet5.imagenet: {known.url} answered HTTP {status} ")
    assert message.endswith(advice)
    assert cache_files(home) == ["w-00000000.pth.lock"]


def test_a_connection_cut_half_way_is_resumed_with_a_range_request(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5")
    weights_server.cut_after, weights_server.cuts = 1_000_000, 1
    path = hub.fetch_weights(known, progress=False)
    assert path.read_bytes() == DATA
    assert weights_server.requests == [("w-00000000.pth", None), ("w-00000000.pth", "bytes=1000000-")]


def test_a_connection_that_keeps_breaking_keeps_its_partial_file_for_the_next_try(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5")
    weights_server.cut_after, weights_server.cuts = 500_000, 3
    message = one_line_error(lambda: hub.fetch_weights(known, progress=False))
    partial = home / "weights" / "w-00000000.pth.partial"
    assert message.startswith(
        "cannot download lenet5.imagenet: the connection broke 3 times (the last at 1.4 of 3.0 MiB"
    )
    assert message.endswith(f"run the command again to resume from {partial}")
    assert partial.read_bytes() == DATA[:1_500_000] and hub.cache_state(known) == "partial 47%"
    assert [r for _, r in weights_server.requests] == [None, "bytes=500000-", "bytes=1000000-"]
    assert hub.fetch_weights(known, progress=False).read_bytes() == DATA  # the next try resumes
    assert weights_server.requests[-1] == ("w-00000000.pth", "bytes=1500000-")
    assert cache_files(home) == ["w-00000000.pth", "w-00000000.pth.checked", "w-00000000.pth.lock"]


def test_a_server_that_ignores_the_range_restarts_the_download(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5")
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "w-00000000.pth.partial").write_bytes(DATA[:1000])
    weights_server.honour_range = False
    assert hub.fetch_weights(known, progress=False).read_bytes() == DATA  # not 1000 bytes twice
    assert weights_server.requests == [("w-00000000.pth", "bytes=1000-")]


def test_a_partial_file_longer_than_the_file_is_dropped(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5")
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "w-00000000.pth.partial").write_bytes(DATA + b"junk")
    assert hub.fetch_weights(known, progress=False).read_bytes() == DATA
    assert [r for _, r in weights_server.requests] == [f"bytes={len(DATA) + 4}-", None]  # 416, then from the start


def test_a_full_disk_is_one_line_and_leaves_nothing(weights_server, home, monkeypatch):
    known = weights_server.publish(DATA, model="lenet5")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda _: usage(10 * 2**20, 9 * 2**20, 2**20))
    message = one_line_error(lambda: hub.fetch_weights(known, progress=False))
    assert message == (
        f"cannot download lenet5.imagenet: it needs 3.0 MiB and {home / 'weights'} has 1.0 MiB free; free some space "
        "or set CLASSICNETS_HOME to a folder on a larger disk"
    )
    assert cache_files(home) == ["w-00000000.pth.lock"]


def test_a_disk_that_fills_up_while_writing_leaves_nothing(weights_server, home, monkeypatch):
    known = weights_server.publish(DATA, model="lenet5")
    real_open = Path.open

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, block):
            if self.written > 2**20:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += self.f.write(block)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if str(path).endswith(".partial") else f

    monkeypatch.setattr(Path, "open", open_)
    message = one_line_error(lambda: hub.fetch_weights(known, progress=False))
    assert message.startswith("cannot download lenet5.imagenet: it needs 3.0 MiB and ")
    assert cache_files(home) == ["w-00000000.pth.lock"]


def test_no_network_names_the_url_and_the_import_command(weights_server, home):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    known = replace(weights_server.publish(DATA, model="lenet5"), url=f"http://127.0.0.1:{port}/w-00000000.pth")
    message = one_line_error(lambda: hub.fetch_weights(known, progress=False))
    assert message == (
        f"cannot download lenet5.imagenet: no connection to 127.0.0.1 ([Errno 111] Connection refused); fetch "
        f"{known.url} elsewhere and run `classicnets import w-00000000.pth --from torchvision --model lenet5 --out "
        f"lenet5.pt` (then --weights lenet5.pt), or copy w-00000000.pth into {home / 'weights'}"
    )
    assert cache_files(home) == ["w-00000000.pth.lock"]


def test_a_file_copied_into_the_cache_is_used_when_its_hash_matches(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5")
    weights_server.status = 500  # never asked
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "w-00000000.pth").write_bytes(DATA)
    assert hub.cache_state(known) == "unchecked"
    assert hub.fetch_weights(known).read_bytes() == DATA
    assert hub.cache_state(known) == "yes" and weights_server.requests == []


def test_a_wrong_file_in_the_cache_is_reported_and_kept(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5")
    (home / "weights").mkdir(parents=True)
    mine = home / "weights" / "w-00000000.pth"
    mine.write_bytes(b"not the weights")
    message = one_line_error(lambda: hub.fetch_weights(known))
    assert message.startswith(f"{mine} is in the cache but is not lenet5.imagenet: its SHA-256 ")
    assert message.endswith("delete it and run `classicnets weights get lenet5.imagenet`")
    assert mine.read_bytes() == b"not the weights" and weights_server.requests == []


def test_a_changed_cache_file_is_checked_again(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5")
    path = hub.fetch_weights(known, progress=False)
    path.write_bytes(DATA[:-1] + b"?")  # changed after its check: the record no longer fits
    assert hub.cache_state(known) == "unchecked"
    assert "is in the cache but is not lenet5.imagenet" in one_line_error(lambda: hub.fetch_weights(known))


FETCH = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from classicnets.weights.hub import fetch_weights
from classicnets.weights.known import KnownWeights
from classicnets.weights.caffe import CAFFE_PREPROCESSING
known = KnownWeights(model="lenet5", tag="imagenet", url=sys.argv[1], sha256=sys.argv[2], size_mib=3.0,
    size_bytes=None, fmt="torchvision", top1=1.0, top5=2.0, accuracy_source="", decimals=1, num_params=0,
    preprocessing=CAFFE_PREPROCESSING, publisher="tests")
print(fetch_weights(known, progress=False))
"""


def test_two_processes_download_once(weights_server, home):
    known = weights_server.publish(DATA, model="lenet5")
    weights_server.pause = threading.Event()
    env = {**os.environ, "CLASSICNETS_HOME": str(home)}
    argv = [sys.executable, "-c", FETCH, known.url, known.sha256]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert weights_server.started.wait(timeout=120)  # the first is half-way through the file, and stays there
    second = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in second.stderr:  # the second waits for the first's lock
        if "another process is downloading it; waiting for it to finish" in line:
            break
    weights_server.pause.set()
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(home / "weights" / "w-00000000.pth")] * 2
    assert weights_server.requests == [("w-00000000.pth", None)]  # one download
    assert (home / "weights" / "w-00000000.pth").read_bytes() == DATA
