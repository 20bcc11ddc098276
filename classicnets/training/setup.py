"""Everything `fit` checks and builds before the first step: the data and its validation split, the model
(fresh, from starting weights, or from a checkpoint being resumed), and the optimiser's parameter groups.

All of it runs before the run folder is created, so a bad folder, class list or weight file stops the run with one
line and leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from classicnets.config import Config
from classicnets.errors import DataError, UsageError
from classicnets.models.base import ClassicNet

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    train: Any  # classicnets.data.ImageDataset
    val: Any
    classes: list[str]
    split: dict[str, Any]  # written to split.json


def open_training_data(
    path: str | None,
    *,
    in_chans: int,
    val_fraction: float,
    seed: int,
    allow_empty: bool = False,
    label_mode: str = "fine",
) -> TrainingData:
    """A source with its own splits (a prepared folder's train/ and val/ or test/, CIFAR's and a Keras .npz's
    train and test) as it is; anything else split per class with `seed`. `allow_empty`: an empty class folder is a
    class without images instead of an error; `label_mode`: CIFAR-100's fine or coarse labels."""
    from classicnets.data import open_dataset, open_splits, source_splits, stratified_split

    if not path:
        raise UsageError("no training data: give --data DIR (a prepared folder, class folders, a list file or IDX)")
    options: dict[str, Any] = {"in_chans": in_chans, "allow_empty": allow_empty, "label_mode": label_mode}
    splits = source_splits(path)
    if "train" in splits and len(splits) > 1:
        held_out = "val" if "val" in splits else "test"
        sets = open_splits(path, ["train", held_out], **options)
        train, val = sets["train"], sets[held_out]
        if list(val.classes) != list(train.classes):
            raise DataError(
                f"{path}: the classes of its {held_out} split ({_shorten(val.classes)}) differ from its train "
                f"split's ({_shorten(train.classes)}); re-run `classicnets prepare`"
            )
        split: dict[str, Any] = {"method": "splits", "source": str(path), "train": "train", "val": held_out}
    else:
        full = open_dataset(path, **options)
        _check_classes(path, full.classes)
        train_idx, val_idx = stratified_split(full.targets, [1 - val_fraction, val_fraction], seed=seed)
        if not val_idx or not train_idx:
            raise DataError(f"{path}: {len(full)} images are too few to hold out {val_fraction:.0%} for validation")
        train, val = full.subset(train_idx), full.subset(val_idx)
        split = {
            "method": "stratified",
            "source": str(path),
            "seed": seed,
            "val_fraction": val_fraction,
            "train_count": len(train_idx),
            "val_indices": [int(i) for i in val_idx],
        }
    _check_classes(path, train.classes)
    log.info(
        "data: %d training and %d validation images, %d classes (%s)",
        len(train),
        len(val),
        len(train.classes),
        _shorten(train.classes),
    )
    return TrainingData(train, val, list(train.classes), split)


def open_run_data(run_dir: Path) -> TrainingData:
    """The training and validation images of a finished run, split exactly as the run split them (its config.yaml:
    data path, validation fraction, seed)."""
    from classicnets.config import resolve_config

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UsageError(f"{run_dir}: no config.yaml; give a run folder that `classicnets train` wrote")
    cfg = resolve_config(config_path)
    d = cfg.data
    data = open_training_data(
        d.path, in_chans=default_in_chans(cfg), val_fraction=d.val_fraction, seed=cfg.train.seed,
        allow_empty=d.allow_empty, label_mode=d.label_mode,
    )  # fmt: skip
    split_path = run_dir / "split.json"
    if split_path.is_file() and json.loads(split_path.read_text(encoding="utf-8")) != data.split:
        raise DataError(f"{d.path}: the data changed since {run_dir} was trained (its split.json differs)")
    return data


def _check_classes(path: str, classes: list[str]) -> None:
    if len(classes) < 2:
        found = f"only one class ({classes[0]})" if classes else "no classes"
        raise DataError(f"{path}: found {found}; a classifier needs at least two class folders")


def _shorten(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def default_in_chans(config: Config) -> int:
    from classicnets.models.registry import get_model_info

    if config.model.in_chans is not None:
        return config.model.in_chans
    return get_model_info(_model_name(config)).input_size[0]


def _model_name(config: Config) -> str:
    if config.model.name is None:
        raise UsageError("no model: give --model NAME (see `classicnets models`) or --weights W")
    return config.model.name


def load_starting_weights(config: Config) -> ClassicNet:
    """The model held by --weights (our checkpoint, Caffe npy, torchvision pth, safetensors), before its head is
    fitted to the data. The file decides the architecture, so model.kwargs do not apply."""
    from classicnets.weights import load_weights

    m = config.model
    if m.weights is None:
        raise UsageError("no starting weights: give --weights W")
    if m.kwargs:
        log.warning("model.kwargs %s are ignored: the architecture comes from %s", m.kwargs, m.weights)
    model = load_weights(m.weights, model=m.name)
    if m.in_chans is not None and m.in_chans != model.preprocessing.input_size[0]:
        raise UsageError(
            f"--weights {m.weights} take {model.preprocessing.input_size[0]}-channel input, not in_chans={m.in_chans}"
        )
    return model


def build_training_model(config: Config, num_classes: int, *, start: ClassicNet | None = None) -> ClassicNet:
    """A fresh model, or `start` (from load_starting_weights) with a new head if the class count differs and the
    fine-tuning surgery of --skip-layers / --freeze / --freeze-until applied."""
    m = config.model
    if start is None:
        from classicnets.models.registry import create_model

        if m.skip_layers or m.freeze or m.freeze_until or m.head_lr_mult != 1.0:
            raise UsageError(
                "--skip-layers, --freeze, --freeze-until and --head-lr-mult need starting weights (--weights W)"
            )
        return create_model(_model_name(config), num_classes=num_classes, in_chans=m.in_chans, **m.kwargs)
    from classicnets.weights import replace_head

    if start.num_classes != num_classes:
        replace_head(start, num_classes)  # logs "replaced the N-class head with a new M-class head"
    apply_surgery(start, config, reinit=True)
    return start


def apply_surgery(model: nn.Module, config: Config, *, reinit: bool) -> dict | None:
    """--skip-layers (re-initialised, only when starting: reinit=True), --freeze, --freeze-until."""
    from classicnets.weights import finetune_surgery

    m = config.model
    skip = tuple(m.skip_layers) if reinit else ()
    if not (skip or m.freeze or m.freeze_until):
        return None
    return finetune_surgery(model, skip_layers=skip, freeze=list(m.freeze) or None, freeze_until=m.freeze_until)


def param_groups(model: nn.Module, config: Config) -> list[dict[str, Any]]:
    """Trainable parameters; when fine-tuning, the new layers (replaced head, --skip-layers) in their own group at
    lr * head_lr_mult (classicnets.weights.param_groups)."""
    if config.model.weights:
        from classicnets.weights import param_groups as weights_param_groups

        return weights_param_groups(model, lr=config.optim.lr, head_lr_mult=config.model.head_lr_mult)
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]
