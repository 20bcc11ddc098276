"""`classicnets train`, `eval`, `predict` and `demo`: flags -> fit / evaluate / predict / run_demo -> exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from classicnets.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw")  # classicnets.config.OPTIMIZERS (not imported: --help stays light)
SCHEDULES = ("plateau", "step", "cosine", "onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# How many classes `eval` lists one by one; with more, the lowest ones.
PER_CLASS_LINES = 20


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train or fine-tune a model on a folder of images; writes a run folder",
        description="Train a model. Settings come from the defaults, then --config, then these flags. "
        "Writes RUN/config.yaml, classes.json, split.json, metrics.csv, last.pt, best.pt, loss.png, accuracy.png, "
        "confusion_matrix.png. Ctrl-C or SIGTERM saves last.pt and exits 130/143; continue with --resume RUN. "
        "Several processes or machines: torchrun --nproc-per-node N -m classicnets train ... (see the README).",
    )
    s = argparse.SUPPRESS  # flags not given stay out of args, so the recipe's values stand
    p.add_argument("--model", default=s, help="model name (see `classicnets models`)")
    p.add_argument(
        "--data", default=s, metavar="DIR", help="prepared folder (train/, val/), class folders, list file or IDX"
    )
    p.add_argument(
        "--config", metavar="YAML", help="recipe: a YAML file or a shipped recipe name, e.g. alexnet2012_paper"
    )
    p.add_argument("--epochs", type=int, default=s)
    p.add_argument("--batch-size", type=int, default=s, help="per process (under torchrun: x processes = global)")
    p.add_argument("--lr", type=float, default=s, help="base learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=s)
    p.add_argument("--schedule", choices=SCHEDULES, default=s, help="learning-rate schedule")
    p.add_argument("--out", default=s, metavar="RUN", help="run folder (default: runs/MODEL, numbered if taken)")
    p.add_argument("--device", default=s, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, default=s, help="auto: bf16 where the hardware has it")
    p.add_argument("--seed", type=int, default=s)
    p.add_argument("--workers", type=int, default=s, help="data-loading processes")
    p.add_argument("--val-fraction", type=float, default=s, help="held out for validation when DIR has no val/")
    p.add_argument(
        "--allow-empty", action="store_true", default=s, help="keep an empty class folder as a class without images"
    )
    p.add_argument("--compile", action="store_true", default=s, help="torch.compile the model")
    p.add_argument("--threads", type=int, default=s, help="CPU threads (default: one per core)")
    p.add_argument(
        "--sync-bn", action="store_true", default=s, help="torchrun on CUDA: BatchNorm statistics over all GPUs"
    )
    p.add_argument("--resume", nargs="?", const=True, metavar="PATH", help="continue a run (its folder or last.pt)")
    p.add_argument("--weights", default=s, metavar="W", help="start from these weights (fine-tuning)")
    p.add_argument("--num-classes", type=int, default=s, help="classes of the new head (must match the data)")
    p.add_argument("--skip-layers", default=s, metavar="L1,L2", help="layers re-initialised instead of loaded")
    p.add_argument("--freeze", default=s, metavar="L1,L2", help="layers kept fixed")
    p.add_argument("--freeze-until", default=s, metavar="LAYER", help="freeze every layer up to this one")
    p.add_argument("--head-lr-mult", type=float, default=s, help="lr multiplier of the new layers (Caffe: 10)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. optim.momentum=0.95"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar (one log line per epoch, for log files)")
    p.set_defaults(handler=run_train)

    p = sub.add_parser("eval", parents=[common], help="top-1/top-5, loss, per-class accuracy, confusion matrix")
    p.add_argument("--weights", required=True, metavar="W", help="a run's best.pt (or any weights with classes)")
    p.add_argument(
        "--data", required=True, metavar="DIR", help="labelled images (a prepared folder: its test/ or val/)"
    )
    p.add_argument("--split", choices=("train", "val", "test"), help="which split of a prepared folder")
    p.add_argument("--ten-crop", action="store_true", help="also the paper's 10-crop (softmax averaged), side by side")
    p.add_argument("--allow-empty", action="store_true", help="keep an empty class folder instead of stopping")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--out", metavar="DIR", help="pictures and eval.json (default: eval/ beside the weights)")
    _runtime_flags(p)
    p.set_defaults(handler=run_eval)

    p = sub.add_parser("predict", parents=[common], help="top-k classes of images or folders; optional picture grid")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", required=True, metavar="W")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--grid", metavar="PNG", help="write the images with 'class, probability' above each")
    p.add_argument("--json", action="store_true", help="JSON lines: file, top-k, every class's probability")
    _runtime_flags(p)
    p.set_defaults(handler=run_predict)

    p = sub.add_parser("demo", parents=[common], help="train LeNet-5 on the digits shipped with classicnets (~1 min)")
    p.add_argument("--out", metavar="RUN", help="run folder (default: runs/demo, numbered if taken)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_demo)


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _flag_overrides(args: argparse.Namespace) -> dict:
    from classicnets.config import FLAG_KEYS

    return {name: getattr(args, name) for name in FLAG_KEYS if hasattr(args, name)}


def run_train(args: argparse.Namespace) -> int:
    overrides = _flag_overrides(args)
    if args.print_config:
        from classicnets.config import resolve_config

        base = args.config
        if args.resume:
            from classicnets.weights.checkpoint import load_checkpoint

            path = Path(overrides["out"] if args.resume is True and "out" in overrides else str(args.resume))
            base = load_checkpoint(path / "last.pt" if path.is_dir() else path).get("config")
        print(resolve_config(base, overrides=overrides, settings=args.set).to_yaml(), end="")
        return 0
    rank = _torchrun_rank()
    if rank:
        _quiet_other_process(rank)
    from classicnets.errors import ClassicNetsError
    from classicnets.training.distributed import shutdown
    from classicnets.training.loop import TrainingInterrupted, fit

    try:
        result = fit(config=args.config, resume=args.resume, settings=args.set, progress=not args.quiet, **overrides)
    except TrainingInterrupted as e:  # the process ends now: no shutdown (after a lost peer it could block on NCCL)
        if not rank:  # process 0 saved last.pt and says so; the others stopped at the same step
            print(str(e), file=sys.stderr)
        return e.exit_code
    except ClassicNetsError as e:
        if rank:
            e.args = (f"[rank {rank}] {e}",)
        raise
    shutdown()
    if rank:
        return 0
    best = result.best
    print(
        f"best validation top-1 {100 * best['val_top1']:.2f}% (epoch {best['epoch']}, loss {best['val_loss']:.4f})\n"
        f"run folder {result.run_dir}: config.yaml classes.json split.json metrics.csv last.pt best.pt "
        "loss.png accuracy.png confusion_matrix.png"
    )
    return 0


def _torchrun_rank() -> int:
    """This process's rank under torchrun (RANK), 0 otherwise; read before torch starts."""
    return int(os.environ.get("RANK", "0")) if "WORLD_SIZE" in os.environ else 0


def _quiet_other_process(rank: int) -> None:
    """Under torchrun, processes other than 0 log warnings and errors only, marked with their rank: process 0
    reports progress for the whole job (its metrics are the all-reduced ones)."""
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"%(levelname)s: [rank {rank}] %(message)s"))


def _pct(value: float | None) -> str:
    return "   -   " if value is None else f"{100 * value:6.2f}%"


def run_eval(args: argparse.Namespace) -> int:
    from classicnets.inference.evaluation import evaluate

    out = Path(args.out) if args.out else Path(args.weights).resolve().parent / "eval"
    report = evaluate(
        args.weights,
        args.data,
        ten_crop=args.ten_crop,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        out=out,
        progress=not args.quiet,
        allow_empty=args.allow_empty,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    names = list(report.passes)  # "center", maybe "ten_crop"
    titles = {"center": "centre crop", "ten_crop": "10-crop"}
    metrics = {n: report.metrics(n) for n in names}
    print(
        f"weights  {report.weights}\ndata     {report.data} ({report.images:,} images, {len(report.classes)} classes)\n"
    )
    print(f"{'':10}" + "".join(f"{titles[n]:>14}" for n in names))
    for key in ("top1", "top5"):
        print(f"{key.replace('top', 'top-'):10}" + "".join(f"{_pct(metrics[n][key]):>14}" for n in names))
    print(f"{'loss':10}" + "".join(f"{metrics[n]['loss']:>14.4f}" for n in names))
    rows = list(zip(*(metrics[n]["per_class"] for n in names), strict=True))
    heading = "per-class accuracy"
    if len(rows) > PER_CLASS_LINES:
        rows = sorted(rows, key=lambda r: (r[0]["accuracy"] is None, r[0]["accuracy"] or 0))[:PER_CLASS_LINES]
        heading += f" (the {PER_CLASS_LINES} lowest of {len(report.classes)} classes)"
    print(f"\n{heading}:\n  {'class':<20}{'images':>8}" + "".join(f"{titles[n]:>14}" for n in names))
    for r in rows:
        print(f"  {r[0]['class'][:20]:<20}{r[0]['count']:>8}" + "".join(f"{_pct(c['accuracy']):>14}" for c in r))
    main = names[-1]
    pairs = metrics[main]["most_confused"]
    print(f"\nmost confused ({titles[main]}, true -> predicted):")
    for pair in pairs:
        share = f"{100 * pair['fraction']:.1f}% of {pair['true']}"
        print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']} ({share})")
    if not pairs:
        print("  none: every image is classified correctly")
    print("\npictures: " + ", ".join(report.pictures.values()))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from classicnets.inference.prediction import predict

    results = predict(
        args.weights,
        args.inputs,
        topk=args.topk,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        grid=args.grid,
    )
    if args.json:
        for r in results:
            print(json.dumps(r.to_dict()))
        return 0
    width = min(60, max(len("file"), *(len(r.file) for r in results)))
    print(f"{'file':<{width}}  top-{len(results[0].classes)}")
    for r in results:
        tops = "  ".join(f"{c} {p:.3f}" for c, p in zip(r.classes, r.probabilities, strict=True))
        print(f"{r.file[-width:]:<{width}}  {tops}")
    if args.grid:
        print(f"\npicture: {args.grid}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from classicnets.demo import DEMO_RECIPE
    from classicnets.demo import run_demo as demo

    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    result = demo(out=args.out, epochs=args.epochs, device=args.device, progress=not args.quiet)
    how = f"{DEMO_RECIPE} recipe, {result.epochs} epoch{'s' if result.epochs != 1 else ''}, {result.seconds:.0f} s"
    print(f"\nLeNet-5 trained on {result.train_images:,} digits ({how})")
    print(f"test accuracy on {result.test_images:,} held-out digits: {100 * result.test_top1:.2f}%\n")
    print("predictions on a few held-out digits (true label in the file name):")
    for p in result.predictions:
        print(f"  {Path(p.file).name:<22} -> {p.classes[0]}  ({p.probabilities[0]:.3f})")
    print(f"\nrun folder {result.run_dir}: metrics.csv, loss.png, accuracy.png, confusion_matrix.png, best.pt, ...")
    print(f"test pictures: {result.run_dir / 'eval'}; prediction grid: {result.grid}")
    print(f"next: classicnets eval --weights {result.run_dir / 'best.pt'} --data {result.test_data}")
    return 0
