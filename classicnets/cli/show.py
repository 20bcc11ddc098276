"""`classicnets show filters|activations|gradcam|neighbours`: pictures of what a trained model learned, as PNG files
(classicnets.inference.explain)."""

from __future__ import annotations

import argparse
from pathlib import Path

WEIGHTS_HELP = "a weight file (any format classicnets reads), known weights by name or a run folder (its best.pt)"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "show",
        parents=[common],
        help="what a model learned: kernels, feature maps, Grad-CAM, nearest training images (PNG)",
        description="Pictures of a trained model, written as PNG files (default: show/ beside the weights).",
    )
    kinds = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    f = _kind(kinds, common, "filters", "the first layer's kernels as a grid (the paper's Figure 3)")
    f.add_argument("--layer", help="a convolution (conv1, or a dotted module name); default: the first")
    f.set_defaults(handler=run_filters)

    a = _kind(kinds, common, "activations", "the feature maps of chosen layers for one image")
    a.add_argument("image", metavar="IMAGE")
    a.add_argument("--layers", metavar="L1,L2", help="layers (default: the convolutions, at most 6)")
    a.set_defaults(handler=run_activations)

    g = _kind(kinds, common, "gradcam", "Grad-CAM heat maps of the predicted (or named) class over the images")
    g.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    g.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class instead of the predicted")
    g.add_argument("--layer", help="the layer to look at (default: the last convolution)")
    g.set_defaults(handler=run_gradcam)

    n = _kind(kinds, common, "neighbours", "the training images nearest in the last hidden layer (Figure 4)")
    n.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    n.add_argument("--data", metavar="DIR", help="the training images (default: the run's own training split)")
    n.add_argument("--k", type=int, default=5, help="neighbours per image (default 5)")
    n.add_argument("--cache", metavar="DIR", help="feature cache (default: features/ in classicnets' cache)")
    n.add_argument("--batch-size", type=int, default=64)
    n.add_argument("--workers", type=int, default=0, help="data-loading processes")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(handler=run_neighbours)


def _kind(kinds, common, name: str, text: str) -> argparse.ArgumentParser:
    p = kinds.add_parser(name, parents=[common], help=text, description=text)
    p.add_argument("weights", metavar="WEIGHTS|RUN", help=WEIGHTS_HELP)
    out = "the PNG to write" if name != "activations" else "the folder for activations_<layer>.png"
    p.add_argument("--out", metavar="PATH", help=f"{out} (default: show/ beside the weights)")
    if name != "filters":
        p.add_argument("--device", default="auto")
    return p


def _default_out(args: argparse.Namespace, name: str) -> Path:
    if args.out:
        return Path(args.out)
    weights = Path(args.weights)
    folder = weights if weights.is_dir() else weights.resolve().parent
    return folder / "show" / name


def run_filters(args: argparse.Namespace) -> int:
    from classicnets.inference.explain import show_filters

    out = _default_out(args, f"filters_{args.layer}.png" if args.layer else "filters.png")
    grid = show_filters(args.weights, layer=args.layer, out=out)
    groups = f" in {len(grid.groups)} groups" if len(grid.groups) > 1 else ""
    print(f"{grid.layer}: {len(grid.tiles)} kernels{groups}\npicture: {out}")
    return 0


def run_activations(args: argparse.Namespace) -> int:
    from classicnets.inference.explain import show_activations

    out = _default_out(args, "")
    layers = [n for n in args.layers.split(",") if n] if args.layers else None
    found = show_activations(args.weights, args.image, layers=layers, out=out, device=args.device)
    for name, maps in found.items():
        c, h, w = maps.maps.shape
        print(f"{name}: {c} maps {h}x{w}  ->  {out / f'activations_{name}.png'}")
    return 0


def run_gradcam(args: argparse.Namespace) -> int:
    from classicnets.inference.explain import show_gradcam

    out = _default_out(args, "gradcam.png")
    results = show_gradcam(
        args.weights, args.images, class_name=args.class_name, layer=args.layer, out=out, device=args.device
    )
    for r in results:
        print(f"{r.file}  {r.class_name} {r.probability:.3f}")
    print(f"\npicture: {out}")
    return 0


def run_neighbours(args: argparse.Namespace) -> int:
    from classicnets.inference.explain import show_neighbours

    out = _default_out(args, "neighbours.png")
    results = show_neighbours(
        args.weights, args.images, data=args.data, k=args.k, out=out, cache_dir=args.cache, device=args.device,
        batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    for r in results:
        found = ", ".join(f"{n.label} {n.distance:.3g} ({Path(n.file).name})" for n in r.neighbours)
        print(f"{r.file}: {found}")
    print(f"\npicture: {out}")
    return 0
