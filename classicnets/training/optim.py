"""Optimisers and learning-rate schedules for `fit`.

The schedule is one small class instead of a chain of torch LR schedulers: warm-up composes with every policy
(torch's SequentialLR cannot hold ReduceLROnPlateau), the lr is a pure function of (epoch, step, plateau state),
and its state is a plain dict, so a resumed run sets exactly the lr an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from classicnets.config import OptimConfig, ScheduleConfig

# ReduceLROnPlateau's default relative threshold: a new validation error counts as better only below best * (1 - 1e-4).
PLATEAU_THRESHOLD = 1e-4


def build_optimizer(
    params: Iterable[Any], config: OptimConfig, *, options: dict[str, Any] | None = None
) -> torch.optim.Optimizer:
    """SGD (momentum, L2 weight decay as in the paper and Caffe), Adam, or AdamW (decoupled weight decay).

    `params` are parameters or param groups (dicts with "params" and optionally "lr"); each group's starting lr is
    kept as "initial_lr", which the schedule multiplies. `options`: implementation choices that do not change the
    arithmetic's definition, such as runtime.fast_optimizer_options' fused=True (training.step passes them).
    """
    options = options or {}
    if config.name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay,
            **options,
        )  # fmt: skip
    elif config.name == "adam":
        betas = (config.betas[0], config.betas[1])
        optimizer = torch.optim.Adam(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay, **options)
    elif config.name == "adamw":
        betas = (config.betas[0], config.betas[1])
        optimizer = torch.optim.AdamW(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay, **options)
    else:  # config.validate() prevents this
        raise ValueError(f"unknown optimizer {config.name!r}")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


class LRSchedule:
    """lr(group) = group["initial_lr"] * multiplier(epoch, step), set before every optimisation step.

    Policies (`ScheduleConfig.name`):
      plateau   factor ** (number of decays); a decay when the validation error has not improved for more than
                `patience` epochs, at most `max_decays` times (the paper: lr / 10, three times)
      step      factor ** (epoch // step_size)
      cosine    cosine from 1 to min_lr / lr over the steps after warm-up (Loshchilov & Hutter 2017, no restarts)
      onecycle  cosine rise from 1 / div_factor to 1 over pct_start of the run, then cosine fall to
                1 / (div_factor * final_div_factor): the lr curve of torch's OneCycleLR (Smith & Topin 2017)
      constant  1
    A linear warm-up over `warmup_epochs` (counted in steps, Goyal et al. 2017) multiplies any policy but onecycle.
    """

    def __init__(self, config: ScheduleConfig, *, base_lr: float, epochs: int, steps_per_epoch: int) -> None:
        self.config = config
        self.base_lr = base_lr
        self.epochs = epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        # plateau state
        self.best_error: float | None = None
        self.bad_epochs = 0
        self.decays = 0

    def multiplier(self, epoch: int, step: int) -> float:
        """The lr multiplier for step `step` (0-based) of epoch `epoch` (0-based)."""
        c = self.config
        global_step = epoch * self.steps_per_epoch + step
        if c.name == "onecycle":
            return self._onecycle(global_step)
        warm = 1.0
        if global_step < self.warmup_steps:
            warm = (global_step + 1) / self.warmup_steps
        if c.name == "plateau":
            policy = c.factor**self.decays
        elif c.name == "step":
            policy = c.factor ** (epoch // c.step_size)
        elif c.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, max(0.0, (global_step - self.warmup_steps) / span))
            floor = c.min_lr / self.base_lr
            policy = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            policy = 1.0
        return warm * policy

    def _onecycle(self, global_step: int) -> float:
        c = self.config
        start, peak, end = 1 / c.div_factor, 1.0, 1 / (c.div_factor * c.final_div_factor)
        rise = max(1, round(c.pct_start * self.total_steps) - 1)
        if global_step <= rise:
            return _cos_between(start, peak, global_step / rise)
        fall = max(1, self.total_steps - 1 - rise)
        return _cos_between(peak, end, min(1.0, (global_step - rise) / fall))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> float:
        """Set every group's lr for this step; returns the multiplier."""
        m = self.multiplier(epoch, step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * m
        return m

    def end_epoch(self, val_error: float) -> bool:
        """Tell the plateau policy the epoch's validation error; True when the lr was just decayed."""
        if self.config.name != "plateau":
            return False
        if self.best_error is None or val_error < self.best_error * (1 - PLATEAU_THRESHOLD):
            self.best_error, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.config.patience and self.decays < self.config.max_decays:
            self.decays += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best_error": self.best_error, "bad_epochs": self.bad_epochs, "decays": self.decays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_error = state["best_error"]
        self.bad_epochs = int(state["bad_epochs"])
        self.decays = int(state["decays"])


def _cos_between(a: float, b: float, t: float) -> float:
    """Cosine interpolation from a (t=0) to b (t=1)."""
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * t))
