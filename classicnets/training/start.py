"""Building a Trainer: `start_trainer` for a new run, `open_resume` to continue one from its last.pt.

Everything that can fail because of the user's input (device, weights, data, run folder) is checked here, before
the run folder is created, so a bad flag or folder leaves nothing behind.

Under torchrun both join the process group here (classicnets.training.distributed): each process takes its own device,
process 0 picks the run folder for all, and the processes check that they read the same data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from classicnets.config import Config, resolve_config
from classicnets.errors import DataError, UsageError, WeightsError
from classicnets.process_env import cores_per_process
from classicnets.rng import seed_everything
from classicnets.runtime import resolve_device, resolve_precision
from classicnets.training.distributed import (
    DistContext,
    check_same_everywhere,
    check_sync_bn,
    context_device,
    data_fingerprint,
    decided_by_main,
    init_distributed,
)
from classicnets.training.run_folder import RunFolder, choose_run_folder, recorded_epochs
from classicnets.training.setup import (
    apply_surgery,
    build_training_model,
    default_in_chans,
    load_starting_weights,
    open_training_data,
)
from classicnets.training.state import RESUME_KEYS, Progress
from classicnets.training.trainer import Trainer
from classicnets.weights.checkpoint import load_checkpoint, model_from_checkpoint
from classicnets.weights.known import weights_reference

log = logging.getLogger(__name__)

# Data-loading processes when the config leaves it open: enough to keep 2-4 cores busy decoding JPEGs
# (per training process, and never more than the cores each of this machine's training processes has).
DEFAULT_MAX_WORKERS = 4
# Keys a resumed run may change: they do not alter the training trajectory (device and precision may, and say so).
RESUME_MAY_CHANGE = {
    "train.epochs",
    "data.workers",
    "train.device",
    "train.precision",
    "train.compile",
    "train.threads",
    "train.sync_bn",
    "train.tensorboard",
    "train.report",
    "train.checkpoint_minutes",
}


def _runtime(config: Config) -> tuple[torch.device, str]:
    if config.train.tensorboard:
        from classicnets.training.tensorboard import check_available

        check_available()  # before the run folder exists
    device = resolve_device(config.train.device)
    check_sync_bn(config.train.sync_bn, device)
    return device, resolve_precision(config.train.precision, device)


def _join(ctx: DistContext | None, device: torch.device) -> tuple[DistContext, torch.device]:
    """The process group torchrun set up (a 1-process context without torchrun) and this process's device."""
    if ctx is None:
        ctx = init_distributed(device)
    return ctx, context_device(ctx, device)


def _default_workers(device: torch.device) -> int:
    """Decoding processes per training process. On a GPU the model does not need the cores; on a CPU half of them
    decode and the model's threads get the rest (Trainer sets train.threads to match), so a 2-core machine runs
    1 worker and 1 thread instead of 2 workers beside 2 threads fighting for the cores. With the decode cache the
    workers only build it (cached_loader.build_workers)."""
    cores = cores_per_process()
    return min(DEFAULT_MAX_WORKERS, cores if device.type != "cpu" else max(1, cores // 2))


def _open_data(ctx: DistContext, cfg: Config, in_chans: int):
    """The run's training and validation data; under torchrun, checked to be the same on every process."""
    d = cfg.data
    data = open_training_data(
        d.path, in_chans=in_chans, val_fraction=d.val_fraction, seed=cfg.train.seed, allow_empty=d.allow_empty,
        label_mode=d.label_mode,
    )  # fmt: skip
    fingerprint = data_fingerprint(data.classes, len(data.train), len(data.val), data.split)
    check_same_everywhere(ctx, "the training data", fingerprint)
    return data


def start_trainer(
    config: Config, *, ctx: DistContext | None = None, samplers: dict | None = None, restart: bool = False
) -> Trainer:
    """Check everything (device, data, weights) before creating the run folder, then build a new run.

    `restart`: start again in config.train.out, a folder whose run finished no epoch (see open_resume).
    """
    cfg = resolve_config(config)  # a copy: the caller's config is not changed
    m = cfg.model
    device, precision = _runtime(cfg)
    ctx, local_device = _join(ctx, device)
    seed_everything(cfg.train.seed)  # before any weights are drawn
    start = load_starting_weights(cfg) if m.weights else None
    in_chans = start.preprocessing.input_size[0] if start is not None else default_in_chans(cfg)
    data = _open_data(ctx, cfg, in_chans)
    num_classes = len(data.classes)
    if m.num_classes is not None and m.num_classes != num_classes:
        raise UsageError(f"--num-classes {m.num_classes} but {cfg.data.path} has {num_classes} classes")
    model = build_training_model(cfg, num_classes, start=start)
    # The resolved config: what was left open is now written down, so config.yaml reproduces the run.
    m.name, m.num_classes, m.in_chans = model.model_name, num_classes, in_chans
    m.weights = weights_reference(m.weights, model.model_name) if m.weights else None  # a path, or a known name
    cfg.data.path = str(Path(str(cfg.data.path)).resolve())  # open_training_data refused a missing path
    cfg.data.workers = cfg.data.workers if cfg.data.workers is not None else _default_workers(device)
    cfg.train.device, cfg.train.precision = str(device), precision  # "cuda", not this process's "cuda:N"
    name = model.model_name
    folder = decided_by_main(ctx, lambda: choose_run_folder(cfg.train.out, name, restart=restart))  # rank 0 creates it
    cfg.train.out = str(folder)
    run_folder = RunFolder(folder, is_main=ctx.is_main)
    return Trainer(
        cfg,
        device=local_device,
        precision=precision,
        data=data,
        model=model,
        run_folder=run_folder,
        state=Progress(),
        ctx=ctx,
        samplers=samplers,
    )


def open_resume(
    resume: str | Path | bool,
    *,
    overrides: dict[str, Any],
    settings=(),
    ctx: DistContext | None = None,
    samplers: dict | None = None,
) -> Trainer:
    """Rebuild a run from its last.pt: same config (only RESUME_MAY_CHANGE keys may differ), data, weights, state.

    Under torchrun every process reads last.pt (on several machines: from a shared or copied run folder). The
    number of processes may change at an epoch boundary (the global batch changes with it); a run stopped in the
    middle of an epoch must continue with as many processes as it had.
    """
    path = _last_checkpoint_path(resume, overrides)
    if not path.exists() and path.name == "last.pt" and (path.parent / "config.yaml").is_file():
        return _restart(path.parent, overrides=overrides, settings=settings, ctx=ctx, samplers=samplers)
    try:
        ckpt = load_checkpoint(path)
    except WeightsError as e:
        if path.exists() and (path.parent / "config.yaml").is_file():  # a damaged last.pt
            raise WeightsError(
                f"{e}; to train again from the start: classicnets train --config {path.parent / 'config.yaml'} "
                "--out NEW_RUN"
            ) from None
        raise
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise WeightsError(f"{path}: holds no training state ({', '.join(missing)}); resume from a run's last.pt")
    saved = resolve_config(_with_cache_recorded(ckpt["config"]))
    requested = _resumed_config(saved, path, overrides, settings)
    cfg = requested
    device, precision = _runtime(cfg)
    if (str(device), precision) != (saved.train.device, saved.train.precision):
        log.warning(
            "resuming on %s/%s instead of %s/%s: results will not be bit-identical to an uninterrupted run",
            device,
            precision,
            saved.train.device,
            saved.train.precision,
        )
    cfg.train.device, cfg.train.precision = str(device), precision
    state = Progress.from_checkpoint(ckpt)
    if state.epoch >= cfg.train.epochs:
        raise UsageError(f"{path}: the run already finished its {state.epoch} epochs; ask for more with --epochs N")
    ctx, local_device = _join(ctx, device)
    _check_world_size(ctx, int(ckpt.get("world_size", 1)), state, path, cfg.train.batch_size)
    if not ctx.is_main:
        state.partial = [0.0] * 4  # the saved sums of the unfinished epoch are the whole job's: counted once
    data = _open_data(ctx, cfg, default_in_chans(cfg))  # the resolved config names in_chans
    if data.classes != list(ckpt["classes"]):
        raise DataError(f"{cfg.data.path}: its classes changed since the run started; cannot resume")
    model = model_from_checkpoint(ckpt)
    model.new_layers = list(ckpt.get("new_layers", []))  # the fine-tuning param groups, as before the stop
    apply_surgery(model, cfg, reinit=False)  # the same frozen layers as before the stop
    return Trainer(
        cfg,
        device=local_device,
        precision=precision,
        data=data,
        model=model,
        run_folder=RunFolder(path.parent, is_main=ctx.is_main),
        state=state,
        ctx=ctx,
        resume_from=ckpt,
        samplers=samplers,
    )


def resumed_recipe(resume: str | Path | bool, overrides: dict[str, Any]) -> dict[str, Any] | str:
    """The config --resume continues from: the one in last.pt, or config.yaml of a run that finished no epoch."""
    path = _last_checkpoint_path(resume, overrides)
    if not path.exists() and path.name == "last.pt" and (path.parent / "config.yaml").is_file():
        return str(path.parent / "config.yaml")
    return load_checkpoint(path).get("config") or {}


def _restart(folder: Path, *, overrides: dict[str, Any], settings, ctx: DistContext | None, samplers: dict | None):
    """--resume of a run that finished no epoch (no last.pt): nothing was committed, so it starts again from its
    config.yaml, in the same folder; any setting may change (a lower --lr after a NaN in epoch 1)."""
    out = overrides.pop("out", None)
    if out and Path(out).resolve() != folder.resolve():
        raise UsageError(f"--out {out} differs from the run being resumed ({folder}); drop --out")
    epochs = recorded_epochs(folder)
    if epochs > 1:  # its epochs were committed, so last.pt existed: it was removed, and the results stay
        raise UsageError(
            f"{folder}: no last.pt, but metrics.csv records {epochs} epochs (was last.pt removed?); --resume needs "
            f"it. Train on from the best weights in a new run: --weights {folder / 'best.pt'} --out NEW_RUN"
        )
    log.warning("%s holds no last.pt (the run finished no epoch): starting it again from its config.yaml", folder)
    cfg = resolve_config(str(folder / "config.yaml"), overrides=overrides, settings=settings)
    cfg.train.out = str(folder)
    return start_trainer(cfg, ctx=ctx, samplers=samplers, restart=True)


def _last_checkpoint_path(resume: str | Path | bool, overrides: dict[str, Any]) -> Path:
    """The last.pt that --resume names: a run folder or a file; True means the folder given by --out."""
    if resume is True or resume is False:
        if not overrides.get("out"):
            raise UsageError("--resume without a path needs --out RUN (or give the run folder: --resume RUN)")
        path = Path(overrides["out"])
    else:
        path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def _with_cache_recorded(config: dict[str, Any]) -> dict[str, Any]:
    """A run saved before the decode cache existed decoded every epoch: it resumes so (data.cache never), since the
    cache's pixels differ from the decoder's by rounding and the resume would not be bit-identical."""
    data = config.get("data")
    if isinstance(data, dict) and "cache" not in data:
        config = {**config, "data": {**data, "cache": "never"}}
    return config


def _resumed_config(saved: Config, path: Path, overrides: dict[str, Any], settings) -> Config:
    """The saved config with the flags applied; a key outside RESUME_MAY_CHANGE that differs is refused."""
    out = overrides.pop("out", None)
    if out and Path(out).resolve() != path.parent.resolve():
        raise UsageError(f"--out {out} differs from the run being resumed ({path.parent}); drop --out")
    if overrides.get("data"):
        overrides["data"] = str(Path(overrides["data"]).resolve())
    requested = resolve_config(saved, overrides=overrides, settings=settings)
    changed = [
        f"{s}.{k}"
        for s, section in saved.to_dict().items()
        for k in section
        if saved.get(f"{s}.{k}") != requested.get(f"{s}.{k}") and f"{s}.{k}" not in RESUME_MAY_CHANGE
    ]
    if changed:
        key = changed[0]
        raise UsageError(
            f"cannot change {key} when resuming (the run has {saved.get(key)!r}, asked {requested.get(key)!r}); "
            f"start a new run with --weights {path} instead"
        )
    requested.train.out = str(path.parent)
    return requested


def _check_world_size(ctx: DistContext, saved: int, state: Progress, path: Path, batch_size: int) -> None:
    """Refuse a mid-epoch resume with another number of processes; at an epoch boundary say what changes."""
    if saved == ctx.world_size:
        return
    had = f"{saved} process{'es' if saved != 1 else ''}"
    if state.step_in_epoch:
        # The steps already taken used global batches of batch_size x `saved` samples; with another world size the
        # rest of the epoch could not be cut from the same sample order without repeating or skipping samples.
        raise UsageError(
            f"{path}: the run stopped in the middle of epoch {state.epoch + 1} (step {state.step_in_epoch}) with "
            f"{had}; resume it with {saved} (torchrun --nproc-per-node ...): the number of processes may only "
            "change at an epoch boundary"
        )
    log.info(
        "resuming with %d process(es) instead of %s: global batch %d instead of %d (the learning rate is unchanged)",
        ctx.world_size,
        had,
        batch_size * ctx.world_size,
        batch_size * saved,
    )
