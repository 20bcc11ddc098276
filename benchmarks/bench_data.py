"""Decode + augment throughput of classicnets' data path, per loader worker, against a plain Pillow loop.

    .venv/bin/python benchmarks/bench_data.py [--data ../shared/data/cats-vs-dogs-sample] [--images 600]

Both sides do the same job on the same files in the same run: open, decode to RGB, resize the short side to 256,
crop 227x227 (AlexNet's paper recipe), and hand over a uint8 array. The baseline is the loop a tutorial writes
(`Image.open(p).convert("RGB")`, `resize`, `crop`, `np.asarray`); ours is one loader worker's work per sample
(`decode_image` with the bad-file guard, EXIF, draft, then ImageTransform's random crop + flip into a CHW
tensor). The sample's photos are 180x180, smaller than 256, so JPEG draft cannot help there; the second scenario
re-encodes the same photos at 4x (720x720, closer to real photos) where it can. Each figure is the median of
`--repeats` passes; the machine's load average is printed because timings on shared machines are noisy.

Two more tables per scenario (issue 12, the data path that leaves the cores to the model):
- JPEG decoders, one thread, file -> 256x256 uint8 square (short side resized to 256 by Pillow's bilinear for
  all, then the centre crop, so the columns differ only by the decoder): Pillow with draft (what the package
  uses, cache_build.decode_row), Pillow without draft, simplejpeg with DCT scaling (`min_height/min_width`), OpenCV with
  IMREAD_REDUCED_COLOR_2/4 (the largest reduction that keeps the short side >= 256). simplejpeg and OpenCV are
  not dependencies: a decoder that is not installed is skipped with a line saying so.
- The decode cache: build rate (images/s, in this process and in --workers processes) and cached-batch rate
  (CachedLoader, batches of 64 random 227 crops + flips gathered from the memory-mapped rows, one process).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classicnets.data import make_loader  # noqa: E402
from classicnets.data.cache import CacheSpec, DecodeCache  # noqa: E402
from classicnets.data.cache_build import decode_row  # noqa: E402
from classicnets.data.datasets import FileDataset  # noqa: E402
from classicnets.data.loaders import _GuardedSamples  # noqa: E402
from classicnets.data.transforms import ImageTransform  # noqa: E402
from classicnets.models.registry import get_model_info  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cats-vs-dogs-sample"


class NoDraft(ImageTransform):
    """Our transform with JPEG draft switched off, to show what draft buys."""

    draft_short_side = None


def pillow_loop(paths: list[str], resize: int, crop: int, rng: np.random.Generator) -> None:
    """The baseline: what a tutorial's Dataset.__getitem__ does, nothing more."""
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        scale = resize / min(w, h)
        img = img.resize((max(resize, int(w * scale)), max(resize, int(h * scale))), Image.Resampling.BILINEAR)
        top = int(rng.integers(0, img.height - crop + 1))
        left = int(rng.integers(0, img.width - crop + 1))
        np.asarray(img.crop((left, top, left + crop, top + crop)))


def ours(samples: _GuardedSamples) -> None:
    for i in range(len(samples)):
        x = samples[i][0]
        assert x is not None


def timed_round_robin(variants: list[tuple[str, object]], repeats: int) -> list[tuple[float, float]]:
    """(median wall seconds, median CPU seconds of this process) per variant. One warm-up pass each (file cache,
    plugin imports), then the variants take turns, so a burst of load from another process hits all of them
    alike. CPU time is the steadier figure on a shared machine; it does not count loader worker processes."""
    for _, fn in variants:
        fn()
    wall: list[list[float]] = [[] for _ in variants]
    cpu: list[list[float]] = [[] for _ in variants]
    for _ in range(repeats):
        for k, (_, fn) in enumerate(variants):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]


def upscaled_copy(paths: list[str], folder: Path, factor: int) -> list[str]:
    out = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        target = folder / Path(p).name
        img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC).save(target, quality=90)
        out.append(str(target))
    return out


def scenario(name: str, paths: list[str], args, pre) -> list[tuple[str, float]]:
    n = len(paths)
    ds = FileDataset([(p, 0) for p in paths], ["x"], source=name)
    samples = _GuardedSamples(ds, ImageTransform(pre, train=True, recipe="paper"), seed=0, epoch=0)
    no_draft = _GuardedSamples(ds, NoDraft(pre, train=True, recipe="paper"), seed=0, epoch=0)
    size, crop = pre.resize_size, pre.input_size[1]
    variants = [
        (
            "plain Pillow open-resize-crop loop (baseline)",
            lambda: pillow_loop(paths, size, crop, np.random.default_rng(0)),
        ),
        ("classicnets, one worker's work (decode_image + ImageTransform)", lambda: ours(samples)),
        ("  the same without JPEG draft", lambda: ours(no_draft)),
    ]
    for workers in args.workers:
        loader = make_loader(ds, preprocessing=pre, train=True, batch_size=64, workers=workers)
        variants.append((f"make_loader, {workers} workers, batches of 64 (all workers)", lambda l=loader: list(l)))
    seconds = timed_round_robin(variants, args.repeats)
    print(f"\n{name}: {n} images, median of {args.repeats} interleaved passes")
    print(f"  {'':<66} {'images/s':>9} {'vs base':>8} {'CPU ms/img':>11} {'vs base':>8}")
    rows = []
    for (label, _), (wall, cpu) in zip(variants, seconds, strict=True):
        rows.append((label, n / wall, 1000 * cpu / n))
        in_process = "workers" not in label or ", 0 workers" in label
        cpu_text = f"{rows[-1][2]:11.2f} {rows[0][2] / rows[-1][2]:7.2f}x" if in_process else f"{'-':>11} {'':>8}"
        print(f"  {label:<66} {rows[-1][1]:9.0f} {rows[-1][1] / rows[0][1]:7.2f}x {cpu_text}")
    return rows


SQUARE = 256  # the decode cache's row size for the paper's recipes


def to_square(img: Image.Image, size: int = SQUARE) -> np.ndarray:
    """Short side to `size` (Pillow bilinear), central size x size: the same finish for every decoder."""
    w, h = img.size
    img = img.resize((size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size),
                     Image.Resampling.BILINEAR)  # fmt: skip
    top, left = (img.height - size) // 2, (img.width - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def pillow_no_draft(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return to_square(img.convert("RGB"))


def decoder_variants() -> tuple[list[tuple[str, object]], list[str]]:
    """(label, path -> 256x256x3 uint8) for each decoder that is installed; and a line per one that is not."""
    variants: list[tuple[str, object]] = [
        ("Pillow + draft (classicnets: cache_build.decode_row)", lambda p: decode_row(p, SQUARE)),
        ("Pillow without draft", pillow_no_draft),
    ]
    skipped = []
    try:
        import simplejpeg
    except ImportError:
        skipped.append("simplejpeg: not installed (pip install simplejpeg)")
    else:

        def simple(path: str) -> np.ndarray:
            with open(path, "rb") as f:  # DCT scaling: the smallest 1/2, 1/4, 1/8 scale at least this large
                a = simplejpeg.decode_jpeg(f.read(), colorspace="RGB", min_height=SQUARE, min_width=SQUARE)
            return to_square(Image.fromarray(a))

        variants.append(("simplejpeg (libjpeg-turbo) + DCT scaling", simple))
    try:
        import cv2
    except ImportError:
        skipped.append("OpenCV: not installed (pip install opencv-python-headless)")
    else:
        cv2.setNumThreads(1)

        def opencv(path: str) -> np.ndarray:
            with Image.open(path) as img:  # header only: the largest reduction that keeps the short side >= 256
                short = min(img.size)
            flag = (cv2.IMREAD_REDUCED_COLOR_4 if short // 4 >= SQUARE else
                    cv2.IMREAD_REDUCED_COLOR_2 if short // 2 >= SQUARE else cv2.IMREAD_COLOR)  # fmt: skip
            bgr = cv2.imread(path, flag)
            return to_square(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))

        variants.append(("OpenCV imread + IMREAD_REDUCED_COLOR_2/4", opencv))
    return variants, skipped


def decoders(name: str, paths: list[str], args) -> None:
    variants, skipped = decoder_variants()
    runs = [(label, lambda fn=fn: [fn(p) for p in paths]) for label, fn in variants]
    seconds = timed_round_robin(runs, args.repeats)
    print(f"\n{name}: JPEG decoders, one thread, file -> {SQUARE}x{SQUARE} square")
    base = len(paths) / seconds[0][0]
    for (label, _), (wall, _) in zip(variants, seconds, strict=True):
        print(f"  {label:<66} {len(paths) / wall:9.0f} {len(paths) / wall / base:7.2f}x")
    for line in skipped:
        print(f"  skipped {line}")


def cache_rates(name: str, paths: list[str], args, pre) -> None:
    """Build rate of the decode cache and batch rate of the loader over it, in a temporary cache folder."""
    ds = FileDataset([(p, 0) for p in paths], ["x"], source=str(Path(paths[0]).parent))
    print(f"\n{name}: decode cache at {pre.resize_size}x{pre.resize_size}")
    for workers in sorted({0, *args.workers}):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["CLASSICNETS_CACHE"] = tmp
            cache = DecodeCache(CacheSpec(Path(paths[0]).parent, pre.resize_size))
            t = time.perf_counter()
            cache.build(paths, workers=workers)
            rate = len(paths) / (time.perf_counter() - t)
            print(f"  {f'build, {workers} worker processes':<66} {rate:9.0f} images/s (one pass, no warm-up)")
            if workers == 0:
                loader = make_loader(ds, preprocessing=pre, train=True, batch_size=64, cache="always")
                wall, cpu = timed_round_robin([("batches", lambda l=loader: list(l))], args.repeats)[0]
                print(f"  {'CachedLoader, batches of 64, random crop + flip, no workers':<66} {len(paths) / wall:9.0f} "
                      f"images/s ({1000 * cpu / len(paths):.2f} CPU ms/img)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of JPEGs (default: the shared sample)")
    parser.add_argument("--images", type=int, default=600, help="how many of its images to use")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="loader worker counts to time")
    parser.add_argument("--model", default="alexnet2012", help="whose preprocessing (resize, crop) to use")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"error: {args.data} is absent; pass --data FOLDER_OF_JPEGS", file=sys.stderr)
        return 2
    paths = sorted(str(p) for p in args.data.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: args.images]
    pre = get_model_info(args.model).preprocessing
    print(f"load average before: {os.getloadavg()}; cpus: {os.cpu_count()}; preprocessing: resize "
          f"{pre.resize_size}, crop {pre.input_size[1]}")  # fmt: skip
    for name, files in [(f"{args.data.name} as is", paths), (f"{args.data.name} re-encoded at 4x", None)]:
        with tempfile.TemporaryDirectory() as tmp:
            files = files or upscaled_copy(paths, Path(tmp), 4)
            scenario(name, files, args, pre)
            decoders(name, files, args)
            cache_rates(name, files, args, pre)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
