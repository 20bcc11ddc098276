"""`classicnets export`: weights -> safetensors, ONNX or TorchScript, with preprocessing and class names inside."""

from __future__ import annotations

import argparse

from classicnets.choices import EXPORT_FORMATS, IMPORT_FORMATS
from classicnets.cli.args import check_output_file


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write weights as safetensors, ONNX or TorchScript, with preprocessing and class names inside",
        description="Export a checkpoint (or any file `import` reads) for other tools. The written file is loaded "
        "back and compared with PyTorch on random inputs at batch sizes 1 and 2 (ONNX: with onnxruntime).",
    )
    p.add_argument("--weights", required=True, metavar="W", help="checkpoint, other weight file or known name")
    p.add_argument("--out", required=True, metavar="F", help="file to write (.safetensors, .onnx, .ts)")
    p.add_argument("--format", choices=EXPORT_FORMATS, help="export format (default: from the --out suffix)")
    p.add_argument("--model", help="network name, when --weights is a torchvision state dict or a bare tag (imagenet)")
    p.add_argument("--from", dest="fmt", choices=IMPORT_FORMATS, default="auto", help="format of --weights")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18, at least 17)")
    p.add_argument("--no-verify", action="store_true", help="skip running the exported file against PyTorch")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from classicnets.weights import export, format_from_suffix, load_weights

    fmt = args.format or format_from_suffix(args.out)
    check_output_file(args.weights, args.out, args.force)
    model = load_weights(args.weights, model=args.model, fmt=args.fmt)
    result = export(model, args.out, fmt=fmt, verify=not args.no_verify, opset=args.opset)
    if result.max_abs_diff is not None:
        check = f"; reloaded output matches PyTorch to max abs {result.max_abs_diff:.2g} at batch sizes 1 and 2"
    else:
        check = "; not run against PyTorch" + (" (onnxruntime is not installed)" if not args.no_verify else "")
    print(f"wrote {args.out} ({fmt}, {result.size_bytes / 1e6:.1f} MB){check}")
    return 0
