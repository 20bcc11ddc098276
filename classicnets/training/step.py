"""One training step, built in one place: `prepare_training` gives the Trainer (`train`) and `bench`'s default
path the same model preparation, the same optimiser with the same fast options, the same autocast, loss and
gradient scaler, so the speed `bench` prints is the speed `train` runs at.

    step = prepare_training(model, cfg.optim, device=device, precision=precision)
    loss = step(x, y)    # zero_grad, autocast forward, cross-entropy, backward, optimiser step

The Trainer uses the two halves (`forward_loss`, then `backward_and_step`) with its NaN check between them: a
step whose loss is not finite is not taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import increment_version

from classicnets import runtime
from classicnets.config import OptimConfig
from classicnets.models.base import ClassicNet
from classicnets.training.optim import build_optimizer

# GoogLeNet's auxiliary classifiers: "their loss is added to the total loss with a discount weight 0.3"
# (Szegedy et al. 2015, section 5).
AUX_LOSS_WEIGHT = 0.3


@dataclass
class TrainStep:
    """The pieces of one optimisation step. `model` is what trains (compiled, or in DistributedDataParallel under
    torchrun); `local_model` the prepared model on this process's device (validation, input layout)."""

    model: nn.Module
    local_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    device: torch.device
    precision: str
    criterion: nn.Module
    grad_clip: float | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """forward_loss then backward_and_step; returns the loss (not synchronised: no .item())."""
        _, loss = self.forward_loss(x, y)
        self.backward_and_step(loss)
        return loss

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and loss under autocast. The previous step's gradients are dropped first (set_to_none), so
        they do not occupy memory during this forward pass."""
        self.optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(self.device, self.precision):
            output = self.model(x)
            if isinstance(output, tuple):  # GoogLeNet in training mode: (logits, aux2, aux1)
                logits, *aux = output
                loss = self.criterion(logits, y)
                loss = loss + AUX_LOSS_WEIGHT * sum(self.criterion(a, y) for a in aux if a is not None)
                return logits, loss
            return output, self.criterion(output, y)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Gradients (scaled for fp16), optional clipping of their norm, one optimiser step."""
        clip = self.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        if self.optimizer.defaults.get("fused"):
            # A fused step writes the parameters in one kernel without bumping their version counters (torch
            # 2.13), and PrepackedConv2d keys its packed inference weight on that counter: bump it, or the next
            # validation would run on the weights packed before this step.
            increment_version([p for group in self.optimizer.param_groups for p in group["params"]])

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the memory layout the prepared model expects (channels_last where chosen)."""
        return runtime.to_input_layout(x, self.local_model)


def prepare_training(
    model: ClassicNet,
    optim: OptimConfig,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool | None = None,
    compile: bool = False,
    params: Iterable[Any] | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainStep:
    """The training step for `model` on `device`: runtime.prepare_model (layout, fast CPU layers, compile), the
    recipe's optimiser with runtime.fast_optimizer_options (fused on CPU and CUDA), cross-entropy with the
    recipe's label smoothing, a GradScaler for fp16.

    `params`: parameters or param groups for the optimiser (default: the trainable parameters); `wrap`: applied to
    the prepared model to get what trains (DistributedDataParallel under torchrun).
    """
    local = runtime.prepare_model(model, device, channels_last=channels_last, compile=compile)
    trained = wrap(local) if wrap is not None else local
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, optim, options=runtime.fast_optimizer_options(device))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    criterion = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    return TrainStep(trained, local, optimizer, scaler, device, precision, criterion, optim.grad_clip)


def optimizer_label(optimizer: torch.optim.Optimizer) -> str:
    """'SGD(fused)', 'Adam': the optimiser's class and whether its step is fused (bench's path description)."""
    fused = optimizer.defaults.get("fused")
    return f"{type(optimizer).__name__}{'(fused)' if fused else ''}"
