"""`classicnets train`: flags -> classicnets.training.fit -> a run folder and an exit code (130/143 when stopped)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from classicnets.choices import DATA_CACHE, LABEL_MODES, OPTIMIZERS, PRECISIONS, SCHEDULES

# Flags not given stay out of args (default=SUPPRESS), so the recipe's values stand (classicnets.config.loading).
KEEP = argparse.SUPPRESS


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train or fine-tune a model on a folder of images; writes a run folder",
        description="Train a model. Settings come from the defaults, then --config, then these flags. "
        "Writes RUN/config.yaml, command.txt, classes.json, split.json, metrics.csv, last.pt, best.pt, loss.png, "
        "accuracy.png, confusion_matrix.png and, at the end, report.html. Ctrl-C or SIGTERM saves last.pt and "
        "exits 130/143; continue with --resume RUN. "
        "Several processes or machines: torchrun --nproc-per-node N -m classicnets train ... (docs/torchrun.md).",
    )
    p.add_argument("--model", default=KEEP, help="model name (see `classicnets models`)")
    p.add_argument(
        "--data",
        default=KEEP,
        metavar="DIR",
        help="prepared folder (train/, val/), class folders, list file, IDX, CIFAR folder or .tar.gz, Keras .npz",
    )
    p.add_argument(
        "--config", metavar="YAML", help="recipe: a YAML file or a shipped recipe name, e.g. alexnet2012_paper"
    )
    _add_optimisation_flags(p.add_argument_group("optimisation"))
    _add_run_flags(p.add_argument_group("run"))
    _add_finetune_flags(p.add_argument_group("fine-tuning"))
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. optim.momentum=0.95"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar (one log line per epoch, for log files)")
    p.set_defaults(handler=run_train)


def _add_optimisation_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, default=KEEP)
    g.add_argument("--batch-size", type=int, default=KEEP, help="per process (under torchrun: x processes = global)")
    g.add_argument("--lr", type=float, default=KEEP, help="base learning rate")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=KEEP)
    g.add_argument("--schedule", choices=SCHEDULES, default=KEEP, help="learning-rate schedule")
    g.add_argument("--seed", type=int, default=KEEP)
    g.add_argument("--val-fraction", type=float, default=KEEP, help="held out for validation when DIR has no val/")
    g.add_argument(
        "--allow-empty", action="store_true", default=KEEP, help="keep an empty class folder as a class without images"
    )
    g.add_argument(
        "--label-mode", choices=LABEL_MODES, default=KEEP, help="CIFAR-100: fine (100) or coarse (20) labels"
    )


def _add_run_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--out", default=KEEP, metavar="RUN", help="run folder (default: runs/MODEL, numbered if taken)")
    g.add_argument("--resume", nargs="?", const=True, metavar="PATH", help="continue a run (its folder or last.pt)")
    g.add_argument("--device", default=KEEP, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    g.add_argument("--precision", choices=PRECISIONS, default=KEEP, help="auto: bf16 where the hardware has it")
    g.add_argument("--workers", type=int, default=KEEP, help="data-loading processes")
    g.add_argument("--cache", choices=DATA_CACHE, default=KEEP,
                   help="decode image files once into the decode cache (default auto; docs/data.md)")  # fmt: skip
    g.add_argument("--compile", action="store_true", default=KEEP, help="torch.compile the model")
    g.add_argument("--threads", type=int, default=KEEP, help="CPU threads (default: one per core)")
    g.add_argument(
        "--sync-bn", action="store_true", default=KEEP, help="torchrun on CUDA: BatchNorm statistics over all GPUs"
    )
    g.add_argument(
        "--tensorboard", action="store_true", default=KEEP, help="also log each epoch to RUN/tensorboard"
    )
    g.add_argument(
        "--no-report", dest="report", action="store_false", default=KEEP, help="do not write RUN/report.html"
    )
    g.add_argument("--checkpoint-minutes", type=float, default=KEEP, metavar="M",
                   help="write last.pt after an epoch when M minutes have passed since the previous one (default 10; "
                   "0: every epoch); always after the first and final epoch and on a stop")  # fmt: skip


def _add_finetune_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--weights", default=KEEP, metavar="W",
        help="start from these weights (fine-tuning): a file, or a known name such as imagenet (with --model) or "
        "alexnet.imagenet, downloaded once (`classicnets weights`)",
    )  # fmt: skip
    g.add_argument("--num-classes", type=int, default=KEEP, help="classes of the new head (must match the data)")
    g.add_argument("--skip-layers", default=KEEP, metavar="L1,L2", help="layers re-initialised instead of loaded")
    g.add_argument("--freeze", default=KEEP, metavar="L1,L2", help="layers kept fixed")
    g.add_argument("--freeze-until", default=KEEP, metavar="LAYER", help="freeze every layer up to this one")
    g.add_argument("--head-lr-mult", type=float, default=KEEP, help="lr multiplier of the new layers (Caffe: 10)")


def _flag_overrides(args: argparse.Namespace) -> dict:
    from classicnets.config import FLAG_KEYS

    return {name: getattr(args, name) for name in FLAG_KEYS if hasattr(args, name)}


def run_train(args: argparse.Namespace) -> int:
    overrides = _flag_overrides(args)
    if args.print_config:
        from classicnets.config import resolve_config

        base = args.config
        if args.resume:
            from classicnets.training.start import resumed_recipe

            base = resumed_recipe(args.resume, overrides)
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
        + (" report.html" if (result.run_dir / "report.html").is_file() else "")
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
