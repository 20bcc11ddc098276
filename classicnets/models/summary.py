"""Layer-by-layer inspection: output shape, parameters and multiply-adds of every layer, then totals.

What the TensorFlow tutorials' `print_activations` and Keras' `model.summary()` print, BatchNorm's running
statistics included on a line of their own (Keras counts them as non-trainable parameters; PyTorch keeps them as
buffers). The model runs once on
PyTorch's "meta" device by default, so even VGG-19 is inspected without allocating its 575 MB of weights.

Counting convention (the one torchvision's metadata and the papers use): MACs are the multiply-adds of
convolutions and fully connected layers; a KxK convolution producing an output element costs (C_in / groups) * K * K
MACs, a linear layer in_features MACs per output. Biases, activations, pooling, LRN and BatchNorm count 0.
FLOPs = 2 x MACs, which is what torch.utils.flop_counter.FlopCounterMode reports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from classicnets.models.registry import create_model, get_model_info
from classicnets.tables import table_lines


@dataclass
class LayerRow:
    name: str  # dotted module name, as in the state dict
    type: str
    output_shape: list[int]  # one image: C x H x W, or features
    params: int  # counted on the layer's first call only (a module reused in forward counts once)
    macs: int


@dataclass
class ModelSummary:
    model: str
    input_size: list[int]  # C x H x W
    num_classes: int  # 0 for a feature extractor without a classifier (alexnet_tf_benchmark)
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    macs: int = 0
    activation_bytes: int = 0  # sum of every layer's output for one image, float32
    batchnorm_statistics: int = 0  # running means and variances of the BatchNorm layers (buffers, not parameters)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops"] = self.flops
        return d

    def format(self) -> str:
        """A fixed-width table, then the totals."""
        lines = table_lines(
            [(r.name, r.type, _shape(r.output_shape), f"{r.params:,}", f"{r.macs:,}") for r in self.rows],
            header=("Layer", "Type", "Output shape", "Params", "MACs"),
            align="lllrr",
        )
        rule = lines[1]
        output = f"{self.num_classes} classes" if self.num_classes else "no classifier (a feature extractor)"
        out = [f"{self.model}: input {_shape(self.input_size)}, {output}", rule, *lines]
        out += [
            rule,
            f"Total params:          {self.total_params:>15,}",
            f"Trainable params:      {self.trainable_params:>15,}",
            f"Non-trainable params:  {self.total_params - self.trainable_params:>15,}",
            *self._statistics_lines(),
            f"MACs (multiply-adds):  {self.macs:>15,}  ({_si(self.macs)}MACs)",
            f"FLOPs (2 x MACs):      {self.flops:>15,}  ({_si(self.flops)}FLOPs)",
            f"Activations per image: {self.activation_bytes / 2**20:>15,.2f} MiB (float32, sum of layer outputs)",
            f"Parameter memory:      {self.total_params * 4 / 2**20:>15,.2f} MiB (float32)",
        ]
        return "\n".join(out)

    def _statistics_lines(self) -> list[str]:
        if not self.batchnorm_statistics:
            return []
        return [
            f"BatchNorm statistics:  {self.batchnorm_statistics:>15,}  (running means and variances: buffers)",
            f"With the statistics:   {self.total_params + self.batchnorm_statistics:>15,}  "
            '(Keras\' "Total params", which counts them as non-trainable)',
        ]

    def print_activations(self, batch: int) -> list[str]:
        """The convolution and pooling outputs as TensorFlow's AlexNet benchmark prints them (print_activations:
        the layer's name, then batch x height x width x channels)."""
        lines = []
        for r in self.rows:
            name = r.name.rpartition(".")[2]
            if name.startswith(("conv", "pool")) and len(r.output_shape) == 3:
                c, h, w = r.output_shape
                lines.append(f"{name}   {[batch, h, w, c]}")
        return lines


def _shape(shape: list[int]) -> str:
    return " x ".join(str(s) for s in shape)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n} "


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one call of a leaf layer for one image (see the module docstring for the convention)."""
    per_image = output[0].numel() if output.dim() > 1 else output.numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def summarize(
    model: nn.Module | str,
    input_size: tuple[int, int, int] | None = None,
    *,
    num_classes: int | None = None,
    device: str | torch.device = "meta",
) -> ModelSummary:
    """Run one image through `model` (a module or a registered name) and describe every layer.

    `input_size` is C x H x W (default: the model's own). With `device="meta"` (the default) nothing is computed
    or allocated; shapes, parameters and MACs are exact all the same.
    """
    if isinstance(model, str):
        name = model
        with torch.device(device):
            model = create_model(name, num_classes=num_classes)
    else:
        name = getattr(model, "model_name", type(model).__name__)
    if input_size is None:
        preprocessing = getattr(model, "preprocessing", None)
        input_size = preprocessing.input_size if preprocessing else get_model_info(name).input_size
    model.eval()

    rows: list[LayerRow] = []
    seen: set[int] = set()
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor):
            return
        first_call = id(module) not in seen
        seen.add(id(module))
        params = sum(p.numel() for p in module.parameters(recurse=False)) if first_call else 0
        rows.append(
            LayerRow(names[module], type(module).__name__, list(output.shape[1:]), params, layer_macs(module, output))
        )

    # nn.Identity leaves (a switched-off layer, e.g. the CIFAR ResNets' max-pool) do nothing: no row for them
    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_size, device=param.device if param is not None else device)
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()

    params = list(model.parameters())
    statistics = [
        buffer
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for key, buffer in m.named_buffers(recurse=False)
        if key in ("running_mean", "running_var")
    ]
    return ModelSummary(
        model=name,
        input_size=list(input_size),
        num_classes=out.shape[-1] if out.dim() == 2 else 0,
        batchnorm_statistics=sum(b.numel() for b in statistics),
        rows=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        macs=sum(r.macs for r in rows),
        activation_bytes=sum(math.prod(r.output_shape) * 4 for r in rows),
    )
