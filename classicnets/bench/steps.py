"""The ways `bench` runs a model (the default path and the plain-PyTorch baseline) and one step of each:
a forward pass (inference) or a training step (forward + cross-entropy + backward + optimiser step); for a model
without a classifier (alexnet_tf_benchmark), TensorFlow's AlexNet benchmark's forward-backward instead (l2_loss_step).

The default path's training step is the Trainer's own (classicnets.training.step.prepare_training): the same model
preparation, optimiser with the same fast options, autocast, loss and scaler, so what bench prints is what
`train` runs. Its optimiser is the recipe's with `--config RECIPE`, else the paper's SGD below.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from classicnets import runtime
from classicnets.bench.report import PathInfo
from classicnets.bench.settings import BenchConfig
from classicnets.config import OptimConfig
from classicnets.models.base import ClassicNet, unwrap_model
from classicnets.models.lrn import use_torch_lrn
from classicnets.training.step import TrainStep, optimizer_label, prepare_training

# The paper's optimiser (Krizhevsky et al. 2012, section 5); the lr is small so that 100 steps on random data stay
# finite (NaNs and denormals would time different arithmetic).
SGD_OPTIONS: dict[str, Any] = {"lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4}


@dataclass
class TimedPath:
    """One way of running the model: built, placed and stepped. `step`: the Trainer's training step (the default
    path); None for the baseline, which steps its plain optimizer itself."""

    info: PathInfo
    model: nn.Module
    optimizer: torch.optim.Optimizer
    to_input: Callable[[torch.Tensor], torch.Tensor]
    step: TrainStep | None = None


def bench_optim(cfg: BenchConfig) -> OptimConfig:
    """The default path's optimiser settings: the recipe's (`--config`), else SGD_OPTIONS."""
    if cfg.recipe is not None:
        from classicnets.config import resolve_config

        return resolve_config(cfg.recipe).optim
    return OptimConfig(name="sgd", **SGD_OPTIONS)


def bench_model_kwargs(cfg: BenchConfig) -> dict[str, Any]:
    """The recipe's model options (`model.kwargs`, e.g. LeNet-5's activation) when it is the recipe's model."""
    if cfg.recipe is None:
        return {}
    from classicnets.config import resolve_config

    model = resolve_config(cfg.recipe).model
    return dict(model.kwargs) if model.name in (None, cfg.model) else {}


def build_default_path(base: ClassicNet, device: torch.device, cfg: BenchConfig, precision: str) -> TimedPath:
    """What `train` runs (training.step.prepare_training), and `eval`/`predict` in inference mode."""
    step = prepare_training(
        base, bench_optim(cfg), device=device, precision=precision, channels_last=cfg.channels_last,
        compile=cfg.compile,
    )  # fmt: skip
    plain = unwrap_model(step.model)
    info = PathInfo(
        name="default",
        precision=precision,
        channels_last=bool(plain.channels_last),
        compiled=cfg.compile,
        lrn="classicnets.LocalResponseNorm" if _has_lrn(plain) else "none",
        optimizer=optimizer_label(step.optimizer),
    )
    return TimedPath(info, step.model, step.optimizer, step.to_input, step)


def build_baseline_path(base: nn.Module, device: torch.device) -> TimedPath:
    """What a user writes from the PyTorch tutorials: the same weights, eager, fp32, NCHW, torch's LRN."""
    model = use_torch_lrn(base).to(device)
    optimizer = torch.optim.SGD(model.parameters(), **SGD_OPTIONS)
    info = PathInfo(
        name="baseline",
        precision="fp32",
        channels_last=False,
        compiled=False,
        lrn="torch.nn.LocalResponseNorm"
        if any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
        else "none",
        optimizer="SGD",
    )
    return TimedPath(info, model, optimizer, lambda x: x)


def _has_lrn(model: nn.Module) -> bool:
    return any(type(m).__name__ == "LocalResponseNorm" for m in model.modules())


def infer_step(path: TimedPath, x: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """A forward pass as `eval` and `predict` run it: weights cast once to the path's precision
    (runtime.prepare_inference, on a copy made once per model), no autocast. A compiled path keeps autocast on its
    compiled model (casting would recompile it)."""
    x = path.to_input(x)
    # no_grad rather than inference_mode: compiled models may not be called in inference mode after training.
    grad_off = torch.no_grad if path.info.compiled else torch.inference_mode
    if path.info.compiled:
        model, precision = path.model, path.info.precision
    else:
        model, precision = inference_model(path.model, device, path.info.precision), "fp32"

    def step() -> None:
        with grad_off(), runtime.autocast(device, precision):
            model(x)

    return step


# The cast-once copies of each path's model, by precision, made on first use (data_feed asks for a step per batch).
_INFERENCE_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def inference_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """`model` itself when float32 inference needs no copy (prepare_model already packed its weights), else a copy
    with the weights cast once to `precision` (runtime.prepare_inference)."""
    plain = unwrap_model(model)
    if precision == "fp32" and next(plain.parameters()).dtype == torch.float32:
        return model
    copies = _INFERENCE_COPIES.setdefault(model, {})
    if precision not in copies:
        copies[precision] = runtime.prepare_inference(deepcopy(plain), device, precision)[0]
    return copies[precision]


def train_step(path: TimedPath, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """The default path: the Trainer's step (TrainStep); the baseline: the tutorials' zero_grad, forward,
    cross-entropy, backward, step."""
    x = path.to_input(x)
    trainer_step = path.step
    if trainer_step is not None:

        def default_step() -> None:
            trainer_step(x, y)

        return default_step

    def step() -> None:
        path.optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(device, path.info.precision):
            loss = F.cross_entropy(path.model(x), y)
        loss.backward()
        path.optimizer.step()

    return step


def l2_loss_step(path: TimedPath, x: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """TensorFlow's AlexNet benchmark's "Forward-backward" (tutorials/image/alexnet/alexnet_benchmark.py): the
    gradients of tf.nn.l2_loss(pool5) = sum(pool5 ** 2) / 2 with respect to every parameter (tf.gradients), no
    optimizer step; the input needs no gradient."""
    x = path.to_input(x)

    def step() -> None:
        path.model.zero_grad(set_to_none=True)
        with runtime.autocast(device, path.info.precision):
            out = path.model(x)
        (out.float().square().sum() / 2).backward()

    return step


def timed_step(
    path: TimedPath, mode: str, x: torch.Tensor, y: torch.Tensor | None, device: torch.device
) -> Callable[[], None]:
    """The step `bench` times for `mode`: infer_step, or train_step (l2_loss_step for a model without a
    classifier, y None)."""
    if mode == "infer":
        return infer_step(path, x, device)
    return train_step(path, x, y, device) if y is not None else l2_loss_step(path, x, device)
