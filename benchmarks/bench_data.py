"""Decode + augment throughput of classicnets' data path, per loader worker, against a plain Pillow loop.

    .venv/bin/python benchmarks/bench_data.py [--data ../shared/data/cats-vs-dogs-sample] [--images 600]

Both sides do the same job on the same files in the same run: open, decode to RGB, resize the short side to 256,
crop 227x227 (AlexNet's paper recipe), and hand over a uint8 array. The baseline is the loop a tutorial writes
(`Image.open(p).convert("RGB")`, `resize`, `crop`, `np.asarray`); ours is one loader worker's work per sample
(`decode_image` with the bad-file guard, EXIF, draft, then ImageTransform's random crop + flip into a CHW
tensor). The sample's photos are 180x180, smaller than 256, so JPEG draft cannot help there; the second scenario
re-encodes the same photos at 4x (720x720, closer to real photos) where it can. Each figure is the median of
`--repeats` passes; the machine's load average is printed because timings on shared machines are noisy.
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
    scenario(f"{args.data.name} as is", paths, args, pre)
    with tempfile.TemporaryDirectory() as tmp:
        scenario(f"{args.data.name} re-encoded at 4x", upscaled_copy(paths, Path(tmp), 4), args, pre)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
