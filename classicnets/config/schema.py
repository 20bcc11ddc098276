"""The training configuration: one dataclass per section, a comment per field, and the value checks.

`Config` is what a recipe (YAML), the command-line flags and `fit`'s keyword arguments all set; a run folder's
config.yaml is `Config.to_yaml()` of the resolved config. Loading and precedence: classicnets.config.loading.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from classicnets.choices import AUGMENTATIONS, OPTIMIZERS, PRECISIONS, SCHEDULES
from classicnets.errors import UsageError


@dataclass
class ModelConfig:
    name: str | None = None  # a registered model (`classicnets models`); required unless given by --weights
    num_classes: int | None = None  # None: the number of classes found in the data
    in_chans: int | None = None  # None: the model's own (1 for lenet5, 3 for the photo models)
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. {lrn: paper, init: paper}
    weights: str | None = None  # start from these weights (fine-tuning): our checkpoint, Caffe npy, torchvision pth
    skip_layers: list[str] = field(default_factory=list)  # layers NOT taken from `weights` (re-initialised)
    freeze: list[str] = field(default_factory=list)  # layers whose weights stay fixed
    freeze_until: str | None = None  # freeze every layer up to and including this one (e.g. conv5)
    head_lr_mult: float = 1.0  # learning-rate multiplier of the new head (Caffe fine-tuning: 10)


@dataclass
class DataConfig:
    path: str | None = None  # prepared folder (train/, val/), class-per-folder tree, list file or IDX files
    val_fraction: float = 0.1  # held out for validation when `path` has no val/ or test/ folder
    augment: str = "paper"  # paper (resize, random crop, flip) | modern (random-resized crop, flip) | none
    pca_std: float = 0.0  # std of the paper's PCA colour noise (0.1 in the paper; 0 = off)
    workers: int | None = None  # data-loading processes; None: min(4, CPU count)
    max_bad_fraction: float = 0.01  # more unreadable images than this fraction stops the run
    allow_empty: bool = False  # an empty class folder is kept as a class with no images instead of an error


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01  # base learning rate (the paper's 0.01)
    momentum: float = 0.9  # SGD momentum (paper: 0.9)
    nesterov: bool = False
    weight_decay: float = 5e-4  # L2 penalty (paper: 5e-4); decoupled for adamw
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/AdamW (Kingma & Ba 2015 defaults)
    label_smoothing: float = 0.0  # Szegedy et al. 2016; 0.1 in modern recipes
    grad_clip: float | None = None  # clip the gradient norm to this value; None = off


@dataclass
class ScheduleConfig:
    name: str = "plateau"  # plateau | step | cosine | onecycle | constant
    factor: float = 0.1  # plateau and step: multiply the lr by this (paper: divide by 10)
    patience: int = 3  # plateau: epochs without a better validation error before decaying
    max_decays: int = 3  # plateau: decay at most this many times (paper: "reduced three times")
    step_size: int = 30  # step: decay every this many epochs (torchvision reference recipe: 30)
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs (per step), then the schedule
    min_lr: float = 0.0  # cosine: the final lr
    pct_start: float = 0.3  # onecycle: fraction of the run spent rising (torch.optim.lr_scheduler.OneCycleLR)
    div_factor: float = 25.0  # onecycle: start at lr / div_factor (OneCycleLR default)
    final_div_factor: float = 1e4  # onecycle: end at lr / div_factor / final_div_factor (OneCycleLR default)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # per process: under torchrun the global batch is batch_size x processes
    seed: int = 0  # seeds weights, the validation split, shuffling, augmentation and dropout
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 where the hardware has it) | fp32 | bf16 | fp16 (GPU)
    compile: bool = False  # torch.compile the model (faster steps after a slow first one)
    channels_last: bool | None = None  # None: automatic (on for CPU and CUDA)
    out: str | None = None  # run folder; None: runs/<model>, numbered if it exists
    deterministic: bool = True  # torch.use_deterministic_algorithms during the run (bit-exact resume on CPU)
    threads: int | None = None  # CPU threads for the run; None: torch's default (one per core)
    sync_bn: bool = False  # under torchrun on CUDA: SyncBatchNorm, batch statistics over all GPUs (refused on CPU)
    tensorboard: bool = False  # also log every epoch to RUN/tensorboard (needs the tensorboard package)
    report: bool = True  # write RUN/report.html at the end of the run (classicnets report RUN writes it any time)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def get(self, key: str) -> Any:
        section, name = split_key(key)
        return getattr(getattr(self, section), name)


# Command-line flags (and `fit` keyword arguments) -> the config key they set.
FLAG_KEYS = {
    "model": "model.name",
    "num_classes": "model.num_classes",
    "weights": "model.weights",
    "skip_layers": "model.skip_layers",
    "freeze": "model.freeze",
    "freeze_until": "model.freeze_until",
    "head_lr_mult": "model.head_lr_mult",
    "data": "data.path",
    "val_fraction": "data.val_fraction",
    "allow_empty": "data.allow_empty",
    "workers": "data.workers",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "schedule": "schedule.name",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "compile": "train.compile",
    "threads": "train.threads",
    "sync_bn": "train.sync_bn",
    "tensorboard": "train.tensorboard",
    "report": "train.report",
    "out": "train.out",
}


def sections() -> dict[str, type]:
    """{section name: its dataclass}."""
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def split_key(key: str) -> tuple[str, str]:
    """'optim.lr' -> ('optim', 'lr'); an unknown section or key is a UsageError listing the valid ones."""
    section, _, name = key.partition(".")
    known = sections()
    if section not in known or not name:
        raise UsageError(f"unknown config key {key!r}; keys are section.name, sections: {', '.join(known)}")
    names = [f.name for f in dataclasses.fields(known[section])]
    if name not in names:
        raise UsageError(f"unknown config key {key!r}; {section} has {', '.join(names)}")
    return section, name


def validate(config: Config) -> None:
    """Value checks that a type check cannot make; each error names the key and the allowed values."""
    checks = [
        ("optim.name", config.optim.name in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
        ("schedule.name", config.schedule.name in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        ("data.augment", config.data.augment in AUGMENTATIONS, f"one of {', '.join(AUGMENTATIONS)}"),
        ("train.precision", config.train.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("train.epochs", config.train.epochs >= 1, "at least 1"),
        ("train.batch_size", config.train.batch_size >= 1, "at least 1"),
        ("optim.lr", config.optim.lr > 0, "positive"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, "zero or positive"),
        ("data.val_fraction", 0 < config.data.val_fraction < 1, "between 0 and 1"),
        ("data.pca_std", config.data.pca_std >= 0, "zero or positive"),
        ("data.workers", config.data.workers is None or config.data.workers >= 0, "zero or positive"),
        ("schedule.factor", 0 < config.schedule.factor < 1, "between 0 and 1"),
        ("schedule.warmup_epochs", 0 <= config.schedule.warmup_epochs < config.train.epochs, "in [0, epochs)"),
        ("schedule.patience", config.schedule.patience >= 0, "zero or positive"),
        ("schedule.step_size", config.schedule.step_size >= 1, "at least 1"),
        ("model.head_lr_mult", config.model.head_lr_mult > 0, "positive"),
        ("optim.betas", len(config.optim.betas) == 2, "two numbers, e.g. [0.9, 0.999]"),
        ("model.num_classes", config.model.num_classes is None or config.model.num_classes >= 2, "at least 2"),
        ("model.in_chans", config.model.in_chans in (None, 1, 3), "1 or 3"),
        ("train.threads", config.train.threads is None or config.train.threads >= 1, "at least 1"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            raise UsageError(f"config {key}={config.get(key)!r}: must be {allowed}")
