"""`classicnets import`: Caffe's bvlc_alexnet.npy, a torchvision .pth or a .safetensors -> a classicnets checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from classicnets.choices import IMPORT_FORMATS
from classicnets.cli.args import check_output_file
from classicnets.errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import",
        parents=[common],
        help="convert Caffe bvlc_alexnet.npy or a torchvision .pth into a classicnets checkpoint",
        description="Read a weight file safely (no code in it runs), check every layer and write a classicnets "
        "checkpoint that train/eval/predict --weights use directly, with the preprocessing and class names.",
    )
    p.add_argument("src", metavar="SRC", help="weight file: bvlc_alexnet.npy, a torchvision .pth, a .safetensors")
    p.add_argument("--from", dest="fmt", choices=IMPORT_FORMATS, default="auto", help="format of SRC (default: detect)")
    p.add_argument("--model", help="network name; required for torchvision files (e.g. alexnet, vgg16, resnet50)")
    p.add_argument("--out", required=True, metavar="W.pt", help="checkpoint to write")
    p.add_argument("--num-classes", type=int, metavar="N", help="replace the head by a new N-class one")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: ImageNet's for 1000)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=run_import)


def _read_classes(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--classes {path}: cannot read it ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def run_import(args: argparse.Namespace) -> int:
    check_output_file(args.src, args.out, args.force)
    classes = _read_classes(args.classes) if args.classes else None

    from classicnets.weights import load_weights
    from classicnets.weights.checkpoint import build_checkpoint, save_checkpoint

    model = load_weights(args.src, model=args.model, num_classes=args.num_classes, fmt=args.fmt)
    if classes is not None:
        if len(classes) != model.num_classes:
            raise UsageError(f"--classes {args.classes} has {len(classes)} names for {model.num_classes} classes")
        model.classes = classes
    named = model.classes is not None
    names = model.classes or [str(i) for i in range(model.num_classes)]
    save_checkpoint(args.out, build_checkpoint(model, classes=names, imported_from=str(Path(args.src).name)))
    params = sum(p.numel() for p in model.parameters())
    pre = model.preprocessing
    size = "x".join(map(str, pre.input_size))
    print(
        f"wrote {args.out}: {model.model_name}, {params:,} parameters, {model.num_classes} classes"
        f"{'' if named else ' (unnamed: pass --classes FILE to name them)'}; input {pre.channel_order} {size}, "
        f"pixels 0-{pre.pixel_scale:g}, mean {list(pre.mean)}, std {list(pre.std)}"
    )
    return 0
