"""The training configuration: one dataclass per section, a comment per field, and the value checks.

`Config` is what a recipe (YAML), the command-line flags and `fit`'s keyword arguments all set; a run folder's
config.yaml is `Config.to_yaml()` of the resolved config. Loading and precedence: classicnets.config.loading.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from classicnets.choices import AUGMENTATIONS, DATA_CACHE, LABEL_MODES, OPTIMIZERS, PRECISIONS, SCHEDULES
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
    path: str | None = None  # prepared folder, class folders, list file, IDX files, CIFAR folder or archive, Keras .npz
    val_fraction: float = 0.1  # held out for validation when `path` has no val/ or test/ split of its own
    # auto (the data's own: paper for photos, pad_crop for CIFAR, none for digits and clothes) | paper (resize,
    # random crop, flip) | modern (random-resized crop, flip) | pad_crop (pad 4, random crop, flip) | none
    augment: str = "auto"
    label_mode: str = "fine"  # CIFAR-100: fine (100 classes) or coarse (20 superclasses)
    pca_std: float = 0.0  # std of the paper's PCA colour noise (0.1 in the paper; 0 = off)
    workers: int | None = None  # data-loading processes; None: min(4, CPU count) on a GPU, half the cores on a CPU
    # auto | always | never: decode each image file once into the decode cache (docs/data.md), then crop and flip
    # whole batches in the training process; auto uses it when the model resizes (resize_size) and it fits on disk
    cache: str = "auto"
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
    # last.pt (everything --resume needs) is written after the first and the final epoch, on a stop (Ctrl-C,
    # SIGTERM), and after any other epoch that ends at least this many minutes after the previous last.pt; 0: after
    # every epoch. A crash (power cut, kill -9) loses at most this much training. docs/training.md, "Checkpoints".
    checkpoint_minutes: float = 10.0


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
    "label_mode": "data.label_mode",
    "workers": "data.workers",
    "cache": "data.cache",
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
    "checkpoint_minutes": "train.checkpoint_minutes",
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


# The most classes a model or a data set may have: 100,000, about 4.6 times the 21,841 classes of the full ImageNet
# release ("ImageNet-21k", the largest label set in common use; docs/facts.md). A label past it is a typo or a damaged
# file, and would allocate that many class names.
MAX_CLASSES = 100_000
# Seeds go to torch.manual_seed, which takes at most 64 bits; we keep to 63 (a positive int64).
MAX_SEED = 2**63 - 1


def validate(config: Config) -> None:
    """Value checks that a type check cannot make; each error names the key and the allowed values."""
    for key, ok, allowed in [*_model_checks(config), *_data_checks(config), *_optim_checks(config),
                             *_schedule_checks(config), *_train_checks(config)]:  # fmt: skip
        if not ok:
            raise UsageError(f"config {key}={config.get(key)!r}: must be {allowed}")


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _non_negative(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0


def _model_checks(c: Config) -> list[tuple[str, bool, str]]:
    m = c.model
    return [
        ("model.num_classes", m.num_classes is None or 2 <= m.num_classes <= MAX_CLASSES, f"2 to {MAX_CLASSES:,}"),
        ("model.in_chans", m.in_chans in (None, 1, 3), "1 or 3"),
        ("model.head_lr_mult", _positive(m.head_lr_mult), "positive and finite"),
    ]


def _data_checks(c: Config) -> list[tuple[str, bool, str]]:
    d = c.data
    return [
        ("data.augment", d.augment in AUGMENTATIONS, f"one of {', '.join(AUGMENTATIONS)}"),
        ("data.label_mode", d.label_mode in LABEL_MODES, f"one of {', '.join(LABEL_MODES)}"),
        ("data.val_fraction", 0 < d.val_fraction < 1, "between 0 and 1"),
        ("data.pca_std", _non_negative(d.pca_std), "zero or positive"),
        ("data.workers", d.workers is None or d.workers >= 0, "zero or positive"),
        ("data.cache", d.cache in DATA_CACHE, f"one of {', '.join(DATA_CACHE)}"),
        ("data.max_bad_fraction", 0 <= d.max_bad_fraction <= 1, "between 0 and 1"),
    ]


def _optim_checks(c: Config) -> list[tuple[str, bool, str]]:
    o = c.optim
    return [
        ("optim.name", o.name in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
        ("optim.lr", _positive(o.lr), "positive and finite"),
        ("optim.momentum", 0 <= o.momentum < 1, "in [0, 1)"),
        ("optim.nesterov", not (o.nesterov and o.name == "sgd" and o.momentum == 0), "false when optim.momentum is 0"),
        ("optim.weight_decay", _non_negative(o.weight_decay), "zero or positive"),
        ("optim.betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "two numbers in [0, 1)"),
        ("optim.label_smoothing", 0 <= o.label_smoothing < 1, "in [0, 1)"),
        ("optim.grad_clip", o.grad_clip is None or _positive(o.grad_clip), "positive (or null: off)"),
    ]


def _schedule_checks(c: Config) -> list[tuple[str, bool, str]]:
    s, epochs = c.schedule, c.train.epochs
    return [
        ("schedule.name", s.name in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        ("schedule.factor", 0 < s.factor < 1, "between 0 and 1"),
        ("schedule.patience", s.patience >= 0, "zero or positive"),
        ("schedule.max_decays", s.max_decays >= 0, "zero or positive"),
        ("schedule.step_size", s.step_size >= 1, "at least 1"),
        ("schedule.warmup_epochs", 0 <= s.warmup_epochs < epochs, "in [0, epochs)"),
        ("schedule.min_lr", _non_negative(s.min_lr) and s.min_lr <= c.optim.lr, "in [0, optim.lr]"),
        ("schedule.pct_start", 0 < s.pct_start < 1, "between 0 and 1"),
        ("schedule.div_factor", _positive(s.div_factor), "positive and finite"),
        ("schedule.final_div_factor", _positive(s.final_div_factor), "positive and finite"),
    ]


def _train_checks(c: Config) -> list[tuple[str, bool, str]]:
    t = c.train
    return [
        ("train.precision", t.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("train.epochs", t.epochs >= 1, "at least 1"),
        ("train.batch_size", t.batch_size >= 1, "at least 1"),
        ("train.seed", 0 <= t.seed <= MAX_SEED, "a whole number from 0 to 2**63 - 1"),
        ("train.threads", t.threads is None or t.threads >= 1, "at least 1"),
        ("train.checkpoint_minutes", t.checkpoint_minutes >= 0, "zero (every epoch) or positive"),
    ]
