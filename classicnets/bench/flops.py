"""How many FLOPs a forward pass and a training step of a model take per image, counted on the meta device."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from classicnets.models.registry import create_model
from classicnets.models.summary import layer_macs


@dataclass
class FlopCount:
    """Per image. MACs are conv + linear multiply-adds (summary.py's convention); FLOPs = 2 x MACs.

    The training step counts the forward, the weight gradients (as many FLOPs as the forward) and the input
    gradients of every layer whose input needs one (all but the first convolution): the FLOPs a framework must
    spend, whatever kernels it picks. FlopCounterMode would double-count grouped convolutions' input gradients.
    """

    params: int
    macs: int
    forward_flops: int
    train_flops: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_flops(name: str, input_size: tuple[int, int, int], num_classes: int | None) -> FlopCount:
    """Parameters, MACs and FLOPs of one image through `name`, counted on the meta device (nothing computed)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=input_size[0])
    model.train()
    forward = 0
    input_grads = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal forward, input_grads
        if not isinstance(output, torch.Tensor):
            return
        macs = layer_macs(module, output)
        forward += macs
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].requires_grad:
            input_grads += macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        model(torch.zeros(1, *input_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return FlopCount(params, forward, 2 * forward, 2 * (2 * forward + input_grads))
