"""Decoding real-world files, and the "nasty folder": scan reports exactly the planted problems, and one
training-data pass over it never crashes and reports exactly the planted bad files."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from classicnets.cli import main
from classicnets.data import decode_image, make_loader, open_dataset
from classicnets.data.decode import BadImageError
from classicnets.data.scan import scan_folder
from classicnets.models.preprocessing import Preprocessing

PRE = Preprocessing(input_size=(3, 16, 16), resize_size=20)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_raw(path, width, height, bit_depth, color_type, rows: bytes):
    """A PNG written by hand (Pillow cannot write 16-bit RGB, nor a header that lies about the size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
                     + png_chunk(b"IEND", b""))  # fmt: skip


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def build_nasty_folder(root):
    """Valid images plus one of each kind of trouble. Returns {relative path: reason} of the planted bad files."""
    cat, dog, bird = root / "cat", root / "dog", root / "bird"
    for d in (cat, dog, bird, root / ".ipynb_checkpoints"):
        d.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(noise(40, 30, i)).save(cat / f"ok_{i}.jpg", quality=90)
    (cat / "zero.jpg").write_bytes(b"")
    good = (cat / "ok_0.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(good[: len(good) * 6 // 10])
    (cat / "text.jpg").write_text("<html><body>404 Not Found</body></html>")
    write_png_raw(cat / "huge.png", 30_000, 30_000, 8, 2, b"\x00" * 64)  # 900 megapixels claimed, 100 bytes
    os.symlink(root / "nowhere.jpg", cat / "dangling.jpg")
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(dog / "cmyk.jpg")  # pure red in CMYK
    pal = Image.new("P", (24, 24), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 12, 24))  # left half red (index 1), right half index 0 = transparent
    pal.save(dog / "palette.png", transparency=0)
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[:, :12] = (0, 0, 255, 255)  # left opaque blue, right fully transparent black
    Image.fromarray(rgba, "RGBA").save(dog / "rgba.png")
    Image.fromarray(np.full((24, 24), 40000, np.uint16)).save(dog / "gray16.png")
    exif_img = np.zeros((10, 20, 3), np.uint8)
    exif_img[:, :10] = (255, 0, 0)  # stored: left half red; EXIF orientation 6 = rotate 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(exif_img).save(dog / "exif.jpg", exif=exif, quality=95)
    Image.fromarray(noise(24, 24, 7)).save(dog / "chien_\u00e9t\u00e9_\u72ac.png")
    Image.fromarray(noise(24, 24, 8)).save(dog / "UPPER.JPG")
    Image.fromarray(noise(24, 24, 9)).save(root / ".ipynb_checkpoints" / "copy.png")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return {"cat/zero.jpg": "ZERO_BYTES", "cat/truncated.jpg": "TRUNCATED", "cat/text.jpg": "NOT_AN_IMAGE",
            "cat/huge.png": "TOO_LARGE", "cat/dangling.jpg": "MISSING"}  # fmt: skip


@pytest.fixture
def nasty(tmp_path):
    root = tmp_path / "nasty"
    return root, build_nasty_folder(root)


def test_scan_reports_exactly_the_planted_problems(nasty):
    root, planted = nasty
    report = scan_folder(root)
    assert {b.path: b.code for b in report.bad_files} == planted
    assert report.empty_classes == ["bird/"]
    assert sorted(report.hidden) == [".DS_Store", ".ipynb_checkpoints/"]
    assert report.duplicates == [] and report.ignored == []
    assert report.images == 16 and report.counts == {"": {"bird": 0, "cat": 4, "dog": 7}}
    assert report.problems == 6


def test_scan_cli_text_json_and_strict(nasty, capsys):
    root, planted = nasty
    assert main(["scan", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ZERO_BYTES    cat/zero.jpg  (the file is empty)" in out
    assert "EMPTY_CLASS   bird/" in out and "HIDDEN        .DS_Store" in out
    assert out.rstrip().endswith("5 problem files, 1 empty classes, 0 duplicate groups (0 across splits), "
                                 "2 hidden entries skipped; 11 of 16 images readable")  # fmt: skip
    assert main(["scan", str(root), "--strict", "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert {b["path"]: b["code"] for b in d["bad_files"]} == planted and d["problems"] == 6
    os.unlink(root / "cat" / "dangling.jpg")
    for name in ("zero.jpg", "truncated.jpg", "text.jpg", "huge.png"):
        os.unlink(root / "cat" / name)
    os.rmdir(root / "bird")
    assert main(["scan", str(root), "--strict"]) == 0  # hidden entries alone are not problems


def test_one_training_pass_over_the_nasty_folder(nasty, caplog):
    root, planted = nasty
    ds = open_dataset(root, allow_empty=True)
    assert ds.classes == ["bird", "cat", "dog"] and len(ds) == 16
    loader = make_loader(ds, preprocessing=PRE, train=True, batch_size=4, max_bad_fraction=0.5, workers=0)
    seen = sum(len(y) for x, y in loader)
    assert seen == 11
    assert sorted((os.path.relpath(p, root), code) for p, code in loader.bad_files) == sorted(planted.items())
    assert "5 of 16 files could not be read this epoch" in caplog.text
    strict = make_loader(ds, preprocessing=PRE, train=True, batch_size=4)
    with pytest.raises(Exception, match=r"of 16 files could not be read, more than 1.0%"):
        list(strict)


def test_a_fifo_and_a_link_to_dev_zero_hang_neither_scan_nor_training(tmp_path, digit_kit, finishes, caplog):
    """Opening a FIFO for reading waits for a writer that never comes; /dev/zero never ends: both are refused
    from their file type, before they are read."""
    root = digit_kit.folders(tmp_path / "photos", per_class=10)
    os.mkfifo(root / "3" / "x.png")
    os.symlink("/dev/zero", root / "7" / "x.jpg")
    expected = {("3/x.png", "UNREADABLE", "a FIFO (named pipe), not a regular file"),
                ("7/x.jpg", "UNREADABLE", "a character device, not a regular file")}  # fmt: skip
    for duplicates in (True, False):  # the hash of /dev/zero hung even with --no-duplicates
        report = finishes(lambda duplicates=duplicates: scan_folder(root, duplicates=duplicates))
        assert {(b.path, b.code, b.detail) for b in report.bad_files} == expected and report.images == 22
    from classicnets.training.loop import fit

    result = finishes(lambda: fit("lenet5", root, config="lenet5_digits", out=str(tmp_path / "run"), epochs=1,
                                  batch_size=4, workers=0, device="cpu", threads=1,
                                  settings=["data.max_bad_fraction=0.2"]))  # fmt: skip
    assert len(result.history) == 1 and result.train_images + result.val_images == 22
    assert f"skipped {root / '3' / 'x.png'}: UNREADABLE (a FIFO (named pipe), not a regular file)" in caplog.text
    assert f"skipped {root / '7' / 'x.jpg'}: UNREADABLE (a character device, not a regular file)" in caplog.text


def decoded(path, mode="RGB", **kw):
    return np.asarray(decode_image(path, mode=mode, **kw))


def test_decoding_of_awkward_formats(nasty):
    root, _ = nasty
    dog = root / "dog"
    assert np.abs(decoded(dog / "cmyk.jpg").astype(int) - [255, 0, 0]).max() <= 3
    pal = decoded(dog / "palette.png")
    assert pal[0, 0].tolist() == [255, 0, 0] and pal[0, 23].tolist() == [255, 255, 255]  # transparent -> white
    rgba = decoded(dog / "rgba.png")
    assert rgba[5, 0].tolist() == [0, 0, 255] and rgba[5, 23].tolist() == [255, 255, 255]
    assert decoded(dog / "gray16.png", "L")[0, 0] == 156  # 40000 * 255 / 65535 = 155.6, not clipped to 255
    assert decoded(dog / "gray16.png")[0, 0].tolist() == [156] * 3
    exif = decoded(dog / "exif.jpg")
    assert exif.shape == (20, 10, 3)  # rotated upright: 10 wide, 20 high
    assert exif[2, 5].tolist()[0] > 200 and exif[17, 5].tolist()[0] < 50  # the red half is now on top
    assert decoded(dog / "UPPER.JPG").shape == (24, 24, 3)
    assert decoded(dog / "chien_\u00e9t\u00e9_\u72ac.png", "L").shape == (24, 24)


def test_sixteen_bit_rgb_and_rgba_composited_half_alpha(tmp_path):
    rows = b"".join(b"\x00" + struct.pack(">HHH", 65535, 32768, 256) * 2 for _ in range(2))
    write_png_raw(tmp_path / "rgb16.png", 2, 2, 16, 2, rows)
    assert decoded(tmp_path / "rgb16.png")[0, 0].tolist() == [255, 128, 1]
    Image.fromarray(np.full((2, 2, 4), (0, 0, 0, 128), np.uint8), "RGBA").save(tmp_path / "half.png")
    assert decoded(tmp_path / "half.png")[0, 0].tolist() == [127, 127, 127]


@pytest.mark.parametrize(
    ("name", "code"),
    [("zero.jpg", "ZERO_BYTES"), ("truncated.jpg", "TRUNCATED"), ("text.jpg", "NOT_AN_IMAGE"),
     ("huge.png", "TOO_LARGE"), ("dangling.jpg", "MISSING")],
)  # fmt: skip
def test_bad_files_raise_with_reason_codes(nasty, name, code):
    root, _ = nasty
    with pytest.raises(BadImageError) as info:
        decode_image(root / "cat" / name)
    assert info.value.code == code and name in str(info.value)


def test_size_limit_is_checked_before_decoding(tmp_path):
    Image.fromarray(noise(100, 100)).save(tmp_path / "a.png")
    with pytest.raises(BadImageError, match=r"100x100 = 10,000 pixels, over the limit of 9,999") as info:
        decode_image(tmp_path / "a.png", max_pixels=9_999)
    assert info.value.code == "TOO_LARGE"


def test_jpeg_draft_decodes_at_reduced_size_only_when_at_least_2x(tmp_path):
    Image.fromarray(noise(300, 400)).save(tmp_path / "big.jpg")
    assert decode_image(tmp_path / "big.jpg").size == (400, 300)
    assert decode_image(tmp_path / "big.jpg", draft_short_side=70).size == (100, 75)  # 1/4 scale
    assert decode_image(tmp_path / "big.jpg", draft_short_side=150).size == (200, 150)  # 1/2 scale
    assert decode_image(tmp_path / "big.jpg", draft_short_side=160).size == (400, 300)  # under 2x: full size


def test_decoding_does_not_leak_file_handles(nasty):
    root, _ = nasty
    files = [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        for p in files:
            try:
                decode_image(p)
            except BadImageError:
                pass
    assert len(os.listdir("/proc/self/fd")) == before
    assert torch.is_tensor(open_dataset(root, allow_empty=True)[5][0])


@pytest.mark.parametrize("ext", ["png", "gif", "webp", "tiff", "bmp", "jpg"])
def test_every_format_decodes_and_a_cut_file_is_truncated(tmp_path, ext):
    a = noise(16, 16, 3) // 64 * 64  # 4 levels per channel: GIF's palette holds them exactly
    Image.fromarray(a).save(tmp_path / f"a.{ext}", **({"lossless": True} if ext == "webp" else {}))
    out = decoded(tmp_path / f"a.{ext}")
    assert out.shape == (16, 16, 3)
    if ext != "jpg":
        assert np.array_equal(out, a)
    data = (tmp_path / f"a.{ext}").read_bytes()
    for fraction in (0.9, 0.5, 0.05):
        (tmp_path / f"cut.{ext}").write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(BadImageError) as info:
            decode_image(tmp_path / f"cut.{ext}")
        assert info.value.code == "TRUNCATED", (fraction, info.value.detail)
