"""The `classicnets` command: argument parsing only (flags -> one library call -> exit code).

Each command lives in its own module here (cli/train.py for `classicnets train`) and adds its sub-command through
`register(subparsers, common)`; args.py holds the few argument helpers several commands share.
Nothing in this package imports torch at module level, so `classicnets --help` and `classicnets CMD --help`
answer at once; a command's handler imports the library when it runs.

Exit codes: 0 success, 1 runtime failure (bad data, bad weights), 2 usage or config error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from classicnets import __version__
from classicnets.cli import (
    bench,
    demo,
    export,
    import_weights,
    models,
    predict,
    prepare,
    report,
    scan,
    show,
    summary,
    train,
    weights,
)
from classicnets.cli import eval as eval_cmd

# Modules that add sub-commands, in the order `--help` lists them.
COMMAND_MODULES = [
    models, summary, prepare, scan, train, eval_cmd, predict, show, report, demo, weights, import_weights, export,
    bench,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    parser = argparse.ArgumentParser(
        prog="classicnets",
        description="The classic CNN image classifiers (LeNet-5, AlexNet, VGG, GoogLeNet, ResNet), done properly.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"classicnets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from classicnets.process_env import apply_fast_cpu_env, keep_freed_memory

    # Every command, before torch is imported (here it is not yet, in a fresh process): huge pages for big tensors,
    # sleeping OpenMP threads, malloc keeping freed memory (process_env.py). The same settings for `train` as for
    # the `bench` that timed it.
    apply_fast_cpu_env()
    keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("PIL").setLevel(logging.WARNING)
    from classicnets.errors import ClassicNetsError

    try:
        return int(args.handler(args) or 0)
    except ClassicNetsError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # a second Ctrl-C or SIGTERM during training (training.signals.StopNow)
        print(str(e) or "interrupted", file=sys.stderr)
        return int(getattr(e, "exit_code", 130))
    except BrokenPipeError:  # `classicnets models | head`
        return 0
    except Exception as e:  # a bug: still one line unless --debug
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e} (run again with --debug for the traceback)", file=sys.stderr)
        return 1
