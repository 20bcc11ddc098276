"""`classicnets import` (Caffe .npy / torchvision .pth -> our checkpoint) and `classicnets export`
(-> safetensors, ONNX, TorchScript)."""

from __future__ import annotations

import argparse
from pathlib import Path

from classicnets.errors import UsageError

# Mirrors classicnets.weights.FORMATS / EXPORT_FORMATS; kept here so `--help` does not import torch.
IMPORT_FORMATS = ("auto", "caffe-npy", "torchvision", "safetensors", "classicnets")
EXPORT_FORMATS = ("safetensors", "onnx", "torchscript")


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

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write weights as safetensors, ONNX or TorchScript, with preprocessing and class names inside",
        description="Export a checkpoint (or any file `import` reads) for other tools. The written file is loaded "
        "back and compared with PyTorch on random inputs at batch sizes 1 and 2 (ONNX: with onnxruntime).",
    )
    p.add_argument("--weights", required=True, metavar="W", help="checkpoint or other weight file to export")
    p.add_argument("--out", required=True, metavar="F", help="file to write (.safetensors, .onnx, .ts)")
    p.add_argument("--format", choices=EXPORT_FORMATS, help="export format (default: from the --out suffix)")
    p.add_argument("--model", help="network name, when --weights is a torchvision state dict")
    p.add_argument("--from", dest="fmt", choices=IMPORT_FORMATS, default="auto", help="format of --weights")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18, at least 17)")
    p.add_argument("--no-verify", action="store_true", help="skip running the exported file against PyTorch")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=run_export)


def _check_out(src: str, out: str, force: bool) -> None:
    src_path, out_path = Path(src), Path(out)
    if out_path.exists() and src_path.exists() and out_path.resolve() == src_path.resolve():
        raise UsageError(f"--out {out} is the input file; write the result somewhere else")
    if out_path.is_dir():
        raise UsageError(f"--out {out} is a folder; name the file to write")
    if out_path.exists() and not force:
        raise UsageError(f"--out {out} exists; pass --force to replace it")


def _read_classes(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--classes {path}: cannot read it ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def run_import(args: argparse.Namespace) -> int:
    _check_out(args.src, args.out, args.force)
    classes = _read_classes(args.classes) if args.classes else None

    from classicnets.weights import load_weights
    from classicnets.weights.checkpoint import build_checkpoint, save_checkpoint

    model = load_weights(args.src, model=args.model, num_classes=args.num_classes, fmt=args.fmt)
    if classes is not None:
        if len(classes) != model.num_classes:
            raise UsageError(f"--classes {args.classes} has {len(classes)} names for {model.num_classes} classes")
        model.classes = classes
    named = model.classes is not None
    names = model.classes if named else [str(i) for i in range(model.num_classes)]
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


def run_export(args: argparse.Namespace) -> int:
    from classicnets.weights import export, format_from_suffix, load_weights

    fmt = args.format or format_from_suffix(args.out)
    _check_out(args.weights, args.out, args.force)
    model = load_weights(args.weights, model=args.model, fmt=args.fmt)
    result = export(model, args.out, fmt=fmt, verify=not args.no_verify, opset=args.opset)
    if result.max_abs_diff is not None:
        check = f"; reloaded output matches PyTorch to max abs {result.max_abs_diff:.2g} at batch sizes 1 and 2"
    else:
        check = "; not run against PyTorch" + (" (onnxruntime is not installed)" if not args.no_verify else "")
    print(f"wrote {args.out} ({fmt}, {result.size_bytes / 1e6:.1f} MB){check}")
    return 0
