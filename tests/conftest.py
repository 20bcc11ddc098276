"""Fixtures every test folder shares (tests/unit: one module at a time on small inputs; tests/integration: commands
and training runs end to end on real data).

- `shared_data("mnist")`: a path under ../shared/data, the real data beside the checkout on our machines; the test
  skips with the reason when that folder is absent.
- `digit_kit`: small real data sets cut from the MNIST digits shipped with classicnets (IDX files, folders of
  PNGs).
- `cifar_kit`: small CIFAR-10/100 files in the exact public layouts (python pickles as Python 2's cPickle wrote
  them, the binary records, the .tar.gz archives).
- `is_png(path)`: whether a file is a PNG (by its signature).
- `weights_server`: an HTTP server on 127.0.0.1 in a thread, serving bytes the test gives it (Range requests,
  a connection cut half-way, HTTP errors, a pause mid-file), with CLASSICNETS_HOME set to an empty folder; no test
  touches the internet.
- `quick_fit(data, out, **flags)`: a short LeNet-5 run (the lenet5_digits recipe, 2 epochs, CPU, fp32, one thread).
- `assert_same_run(a, b)`: two run folders' last.pt hold bit-identical weights, optimiser state and metrics.
- `finishes(function, seconds)`: function() run in a thread, failing the test if it hangs (a FIFO read, say).
- Decode caches (classicnets.data.cache) go to a temporary folder for the whole session (CLASSICNETS_CACHE), never
  to the user's ~/.cache.
- `memory_cap(extra_bytes)`: a context that lets this process map at most `extra_bytes` more memory, so code that
  would allocate gigabytes raises MemoryError instead of swapping the shared test machine.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import resource
import struct
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="session")
def decode_cache_in_a_temporary_folder(tmp_path_factory) -> Iterator[Path]:
    """CLASSICNETS_CACHE for the session: the decode caches that training runs build land in a temporary folder."""
    folder = tmp_path_factory.mktemp("decode-cache")
    before = os.environ.get("CLASSICNETS_CACHE")
    os.environ["CLASSICNETS_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("CLASSICNETS_CACHE", None)
    else:
        os.environ["CLASSICNETS_CACHE"] = before


def _shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the checkout on our machines)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Callable[..., Path]:
    """shared_data(*parts) -> a path under ../shared/data, or skip the test when it is absent."""
    return _shared_data


@pytest.fixture(scope="session")
def is_png() -> Callable[[Path], bool]:
    return lambda path: Path(path).is_file() and Path(path).read_bytes()[:8] == PNG_SIGNATURE


class DigitKit:
    """Small real data sets cut from the digits shipped with classicnets (classicnets/assets/digits)."""

    def shipped(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images N x 28 x 28 uint8, labels) of the shipped `split` ("train": 8,000 digits, "test": 2,000)."""
        from classicnets.data import read_idx
        from classicnets.demo import digits_dir

        folder = digits_dir() / split
        return read_idx(folder / f"{split}-images-idx3-ubyte.gz"), read_idx(folder / f"{split}-labels-idx1-ubyte.gz")

    @staticmethod
    def first_per_class(labels: np.ndarray, per_class: int, classes: Iterable[int] = range(10)) -> list[int]:
        return [int(i) for c in classes for i in np.flatnonzero(labels == c)[:per_class]]

    @staticmethod
    def write_idx(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> Path:
        """`name`-images-idx3-ubyte.gz and its labels file in `folder`; returns the folder."""
        folder.mkdir(parents=True, exist_ok=True)
        for kind, array, magic in (("images", images, 2051), ("labels", labels, 2049)):
            header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
            suffix = "idx3" if kind == "images" else "idx1"
            data = header + array.astype(np.uint8).tobytes()
            (folder / f"{name}-{kind}-{suffix}-ubyte.gz").write_bytes(gzip.compress(data, mtime=0))
        return folder

    def idx(self, folder: Path, *, per_class: int = 20, split: str = "train", classes=range(10)) -> Path:
        """An IDX folder with the first `per_class` shipped digits of each class."""
        images, labels = self.shipped(split)
        index = self.first_per_class(labels, per_class, classes)
        return self.write_idx(folder, split, images[index], labels[index])

    def folders(
        self, root: Path, *, per_class: int = 12, classes=("3", "7"), split: str = "train", rgb=False, names=None
    ) -> Path:
        """Class folders of PNG digits (root/3/*.png, root/7/*.png): the photo-folder layout users have.
        `names` renames the folders (digits 3 and 7 in folders a/ and b/)."""
        images, labels = self.shipped(split)
        for digit, name in zip(classes, names or classes, strict=True):
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == int(digit))[:per_class]:
                img = Image.fromarray(images[i])
                (img.convert("RGB") if rgb else img).save(root / name / f"{split}_{i:04d}.png")
        return root


@pytest.fixture(scope="session")
def digit_kit() -> DigitKit:
    return DigitKit()


def _quick_fit(data, out, **flags):
    from classicnets.training.loop import fit

    # One thread: LeNet-5's layers are too small to share, and the test machines are shared by other processes.
    settings = {"config": "lenet5_digits", "epochs": 2, "batch_size": 32, "device": "cpu", "precision": "fp32",
                "threads": 1}  # fmt: skip
    return fit("lenet5", data, out=str(out), **{**settings, **flags})


@pytest.fixture(scope="session")
def quick_fit() -> Callable:
    """quick_fit(data, out, **flags) -> the FitResult of a short LeNet-5 run; flags override the settings."""
    return _quick_fit


def _py2_string(out: bytearray, text: bytes) -> None:
    out.extend(b"U" + bytes([len(text)]) + text if len(text) < 256 else b"T" + struct.pack("<I", len(text)) + text)


def _py2_int(out: bytearray, v: int) -> None:
    out.extend(b"K" + bytes([v]) if 0 <= v < 256 else b"M" + struct.pack("<H", v) if 0 <= v < 65536
               else b"J" + struct.pack("<i", v))  # fmt: skip


def _py2_array(out: bytearray, a: np.ndarray) -> None:
    """numpy.core.multiarray._reconstruct(ndarray, (0,), 'b'), then its state (1, shape, dtype('u1'), False, bytes)."""
    assert a.dtype == np.uint8 and a.ndim == 2
    out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01")
    _py2_int(out, a.shape[0])
    _py2_int(out, a.shape[1])
    out.extend(b"\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
    _py2_string(out, a.tobytes())
    out.extend(b"tb")


def _py2_write(out: bytearray, o) -> None:
    if isinstance(o, dict):
        out.extend(b"}(")
        for k, v in o.items():
            _py2_write(out, k)
            _py2_write(out, v)
        out.extend(b"u")
    elif isinstance(o, list):
        out.extend(b"](")
        for v in o:
            _py2_write(out, v)
        out.extend(b"e")
    elif isinstance(o, str):
        _py2_string(out, o.encode("latin1"))
    elif isinstance(o, int):
        _py2_int(out, o)
    else:
        _py2_array(out, o)


def py2_pickle(obj) -> bytes:
    """`obj` pickled as Python 2's cPickle.dump(obj, f, 2) wrote the CIFAR batches: protocol 2, strings as
    SHORT_BINSTRING/BINSTRING, numpy arrays through numpy.core.multiarray._reconstruct with their bytes as a str."""
    out = bytearray(b"\x80\x02")
    _py2_write(out, obj)
    return bytes(out + b".")


class CifarKit:
    """Small CIFAR files in the layouts of https://www.cs.toronto.edu/~kriz/cifar.html. Image k of a batch has the
    pixel bytes `pixels(k)`: 1024 red values, then 1024 green, then 1024 blue, each 32x32 plane row by row."""

    NAMES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    @staticmethod
    def pixels(k: int, n: int) -> np.ndarray:
        """n rows of 3072 bytes; row k: red plane (k + position) % 256, green 100 + that, blue 200 + that."""
        pos = np.arange(1024)
        return np.stack([np.concatenate([(k + pos) % 256, (100 + k + pos) % 256, (200 + k + pos) % 256])
                         for k in range(k, k + n)]).astype(np.uint8)  # fmt: skip

    def cifar10_python(self, root: Path, per_batch: int = 4, test: int = 3) -> Path:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            labels = [(i + k) % 10 for k in range(per_batch)]
            names = [f"img_{i}_{k}.png" for k in range(per_batch)]
            batch = {"batch_label": f"training batch {i} of 5", "labels": labels,
                     "data": self.pixels(10 * i, per_batch), "filenames": names}  # fmt: skip
            (folder / f"data_batch_{i}").write_bytes(py2_pickle(batch))
        batch = {
            "batch_label": "testing batch 1 of 1",
            "labels": [k % 10 for k in range(test)],
            "data": self.pixels(0, test),
            "filenames": [f"test_{k}.png" for k in range(test)],
        }
        (folder / "test_batch").write_bytes(py2_pickle(batch))
        meta = {"num_cases_per_batch": 10000, "label_names": self.NAMES10, "num_vis": 3072}
        (folder / "batches.meta").write_bytes(py2_pickle(meta))
        return folder  # fmt: skip

    def cifar10_binary(self, root: Path, per_batch: int = 4, test: int = 3) -> Path:
        folder = root / "cifar-10-batches-bin"
        folder.mkdir(parents=True)
        for name, start, n in [*((f"data_batch_{i}.bin", 10 * i, per_batch) for i in range(1, 6)),
                               ("test_batch.bin", 0, test)]:  # fmt: skip
            labels = np.array([[(start // 10 + k) % 10] for k in range(n)], dtype=np.uint8)
            (folder / name).write_bytes(np.hstack([labels, self.pixels(start, n)]).tobytes())
        (folder / "batches.meta.txt").write_text("\n".join(self.NAMES10) + "\n\n")
        return folder

    @staticmethod
    def names100(kind: str) -> list[str]:
        return [f"{kind}{i}" for i in range(100 if kind == "fine" else 20)]

    def cifar100_python(self, root: Path, train: int = 6, test: int = 4) -> Path:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, n in (("train", train), ("test", test)):
            batch = {"filenames": [f"{name}_{k}.png" for k in range(n)], "batch_label": f"{name}ing batch 1 of 1",
                     "fine_labels": [(7 * k) % 100 for k in range(n)],
                     "coarse_labels": [(3 * k) % 20 for k in range(n)], "data": self.pixels(5, n)}  # fmt: skip
            (folder / name).write_bytes(py2_pickle(batch))
        meta = {"fine_label_names": self.names100("fine"), "coarse_label_names": self.names100("coarse")}
        (folder / "meta").write_bytes(py2_pickle(meta))
        return folder

    def cifar100_binary(self, root: Path, train: int = 6, test: int = 4) -> Path:
        folder = root / "cifar-100-binary"
        folder.mkdir(parents=True)
        for name, n in (("train.bin", train), ("test.bin", test)):
            labels = np.array([[(3 * k) % 20, (7 * k) % 100] for k in range(n)], dtype=np.uint8)
            (folder / name).write_bytes(np.hstack([labels, self.pixels(5, n)]).tobytes())
        for kind in ("coarse", "fine"):
            (folder / f"{kind}_label_names.txt").write_text("\n".join(self.names100(kind)) + "\n")
        return folder

    @staticmethod
    def archive(folder: Path, path: Path, extra=None) -> Path:
        """`folder` as a .tar.gz holding `folder.name/...` (as downloaded); `extra(tar)` may add members."""
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
            if extra:
                extra(tar)
        return path

    @staticmethod
    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def cifar_kit() -> CifarKit:
    return CifarKit()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@dataclass
class WeightsServer:
    """What the server serves and how it misbehaves; `requests` records (path, Range header) of every GET."""

    port: int
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    status: int | None = None  # answer every request with this HTTP status
    cut_after: int | None = None  # send only this many bytes of a body, then close the connection ...
    cuts: int = 0  # ... for this many requests
    honour_range: bool = True
    pause: threading.Event | None = None  # when set up, a body's second half waits for this event
    started: threading.Event = field(default_factory=threading.Event)  # set when a body starts

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def publish(self, data: bytes, *, model: str, file: str = "w-00000000.pth", fmt: str = "torchvision",
                sha256: str | None = None, size_bytes: int | None = None):  # fmt: skip
        """Serve `data` as `file` and return the KnownWeights entry that points at it (its real SHA-256 prefix
        unless `sha256` says otherwise)."""
        from classicnets.models.registry import get_model_info
        from classicnets.weights.known import KnownWeights

        self.files[file] = data
        return KnownWeights(
            model=model, tag="imagenet", url=self.url(file),
            sha256=sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()[:8], size_mib=len(data) / 2**20,
            size_bytes=size_bytes, fmt=fmt, top1=50.0, top5=75.0, accuracy_source="tests", decimals=1, num_params=0,
            preprocessing=get_model_info(model).preprocessing, publisher="tests", num_classes=10,
        )  # fmt: skip


def _weights_handler(server: WeightsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            name, wanted = self.path.lstrip("/"), self.headers.get("Range")
            server.requests.append((name, wanted))
            if server.status is not None or name not in server.files:
                self.send_error(server.status or 404)
                return
            data, start = server.files[name], 0
            if wanted and server.honour_range:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self._send_body(data[start:])

        def _send_body(self, body: bytes) -> None:
            server.started.set()
            if server.cuts > 0 and server.cut_after is not None:
                server.cuts -= 1
                self.wfile.write(body[: server.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            if server.pause is not None:
                server.pause.wait(timeout=60)
            self.wfile.write(body[half:])

    return Handler


@pytest.fixture
def weights_server(tmp_path, monkeypatch) -> Iterator[WeightsServer]:
    """A local HTTP server for weight downloads, and CLASSICNETS_HOME set to an empty folder of this test."""
    monkeypatch.setenv("CLASSICNETS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("classicnets.weights.hub.RETRY_WAIT_S", 0.0)
    state = WeightsServer(port=0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _weights_handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    if state.pause is not None:
        state.pause.set()
    httpd.shutdown()
    httpd.server_close()


def _finishes(function: Callable[[], object], seconds: float = 60.0) -> object:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture(scope="session")
def finishes() -> Callable[..., object]:
    """finishes(function, seconds=60) -> function()'s result; the test fails if it is still running by then."""
    return _finishes


@contextlib.contextmanager
def _memory_cap(extra_bytes: int) -> Iterator[None]:
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="session")
def memory_cap() -> Callable[[int], contextlib.AbstractContextManager]:
    """with memory_cap(2 << 30): ... maps at most 2 GiB more (Linux; the test skips elsewhere)."""
    if not Path("/proc/self/statm").exists():
        pytest.skip("memory_cap needs Linux's /proc")
    return _memory_cap


def _assert_same_run(a: Path, b: Path) -> None:
    from classicnets.weights.checkpoint import load_checkpoint

    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), key
    for i, state in ca["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(cb["optimizer"]["state"][i][name])), (i, name)
    from classicnets.training.run_folder import TIME_COLUMNS

    times = ("seconds", "images_per_s", *TIME_COLUMNS)
    strip = [{k: v for k, v in row.items() if k not in times} for row in ca["metrics"]]
    assert strip == [{k: v for k, v in row.items() if k not in times} for row in cb["metrics"]]


@pytest.fixture(scope="session")
def assert_same_run() -> Callable[[Path, Path], None]:
    """assert_same_run(run_a, run_b): bit-identical weights, optimiser state and metrics (times aside)."""
    return _assert_same_run
