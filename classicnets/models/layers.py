"""Layers shared by several models: local response normalisation (AlexNet 2012, GoogLeNet v1 paper).

`LocalResponseNorm` computes exactly what torch.nn.LocalResponseNorm computes, several times faster on CPU
(benchmarks/lrn.py measures it): the window sum over channels is one matrix product with a banded 0/1 matrix
instead of a 3-D average pooling, the power uses square roots instead of exp/log when beta is 0.75 (both presets),
and training uses a hand-written backward that reuses the forward's window sums instead of autograd's chain of
a dozen saved intermediates.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

# Constants of the two LRN conventions that matter for AlexNet (FACTS.md):
# - "paper": Krizhevsky et al. 2012, section 3.3: k=2, n=5, alpha=1e-4, beta=0.75, and alpha is NOT divided by n.
# - "caffe": bvlc_alexnet deploy.prototxt: local_size 5, alpha 1e-4, beta 0.75, k 1 (Caffe's default), and Caffe
#   divides alpha by local_size, as torch.nn.LocalResponseNorm does.
LRN_PRESETS: dict[str, dict[str, float | int | bool]] = {
    "paper": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "alpha_over_size": False},
    "caffe": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0, "alpha_over_size": True},
}


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels.

        b_c = a_c / (k + alpha' * sum_{j in window(c)} a_j^2) ** beta,   alpha' = alpha / size if alpha_over_size

    The window holds `size` channels centred on c (size // 2 before, (size - 1) // 2 after, clipped at the edges),
    exactly as torch.nn.LocalResponseNorm. `alpha_over_size=False` is the paper's and TensorFlow's convention,
    True is Caffe's and PyTorch's. Works in NCHW and channels_last layout; bf16/fp16 inputs are computed in
    float32 (the sum of squares of activations in the hundreds would lose digits) and returned in their own dtype.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, *, alpha_over_size: bool = False
    ) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"LRN size must be at least 1, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self.alpha_over_size = bool(alpha_over_size)

    @classmethod
    def preset(cls, name: str) -> LocalResponseNorm:
        """LRN with the constants of a named convention: "paper" or "caffe"."""
        try:
            return cls(**LRN_PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown LRN preset {name!r}; choose one of {', '.join(LRN_PRESETS)}") from None

    @property
    def effective_alpha(self) -> float:
        """The factor multiplying the window sum of squares."""
        return self.alpha / self.size if self.alpha_over_size else self.alpha

    def to_torch(self) -> nn.LocalResponseNorm:
        """The equivalent torch.nn.LocalResponseNorm (which always divides alpha by size)."""
        return nn.LocalResponseNorm(self.size, alpha=self.effective_alpha * self.size, beta=self.beta, k=self.k)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"alpha_over_size={self.alpha_over_size}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.effective_alpha, self.beta, self.k)


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Functional LRN over dim 1 of an N x C x ... tensor; `alpha` multiplies the window sum as is (not / size).

    Eager training goes through a custom autograd Function with a hand-written backward; inference, torch.compile
    and export tracing use the same arithmetic as plain differentiable ops, which compilers can fuse.
    """
    if x.dim() < 3:
        raise ValueError(f"LRN expects N x C x ... input, got shape {tuple(x.shape)}")
    shape = x.shape
    if x.dim() != 4:  # N x C x L or N x C x D x H x W: the window only runs over channels, so fold the rest
        x = x.reshape(shape[0], shape[1], -1, 1)
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    # Autocast would run the window-sum matmul in bf16 (and on CPUs without native bf16, 100x slower).
    with _no_autocast(x.device):
        if x.requires_grad and torch.is_grad_enabled() and not _tracing():
            y = _LRNFunction.apply(x, size, alpha, beta, k)
        else:
            y = _lrn_forward(x, size, alpha, beta, k)[0]
    return y.to(dtype).reshape(shape) if y.shape != shape or y.dtype != dtype else y


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on `device` (the meta device, used for shape inspection, has no autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _window_sum(sq: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """sum_j sq[:, j] * band[j, c] for every channel c, as one matmul in the layout `sq` already has."""
    n, c, h, w = sq.shape
    if sq.is_contiguous(memory_format=torch.channels_last):  # N x H x W x C in memory: (NHW x C) @ (C x C)
        out = torch.mm(sq.permute(0, 2, 3, 1).reshape(n * h * w, c), band)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    # N x C x HW in memory: (C x C) @ (C x HW) for each image; the band is broadcast, not copied.
    return torch.matmul(band.t(), sq.reshape(n, c, h * w)).view(n, c, h, w)


def _neg_pow(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d ** -beta. pow() with a fractional exponent is exp(-beta * log d), about 3x slower on CPU than the
    square roots that give the exponents in common use (0.75 in AlexNet and GoogLeNet, 0.5, 1)."""
    if beta == 0.75:
        out = torch.sqrt(d)
        return out.mul_(d).rsqrt_()  # (d * d ** 0.5) ** -0.5
    if beta == 0.5:
        return torch.rsqrt(d)
    if beta == 1.0:
        return torch.reciprocal(d)
    return torch.pow(d, -beta)


def _lrn_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, denominator base d = k + alpha * window sum, d ** -beta) for a 4-D input."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    if _tracing():  # compilers and exporters see the band built from arange, not a cached constant
        band = channel_window(x.shape[1], size, dtype=x.dtype, device=x.device) * alpha
    else:
        band = _scaled_window(x.shape[1], size, alpha, dtype=x.dtype, device=x.device)  # alpha folded into the matmul
    d = _window_sum(x * x, band).add_(k)
    scale = _neg_pow(d, beta)
    return x * scale, d, scale


class _LRNFunction(torch.autograd.Function):
    """LRN with the backward written out, reusing the forward's denominators:

    y_c = x_c * d_c^-beta,  d_c = k + alpha * sum_{j in win(c)} x_j^2
    dL/dx_j = g_j * d_j^-beta - 2 * alpha * beta * x_j * sum_{c : j in win(c)} g_c * y_c / d_c

    The second sum runs over the transposed window, so it is again one banded matmul.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        y, d, scale = _lrn_forward(x, size, alpha, beta, k)
        # x and y cost no memory of their own in AlexNet: the ReLU before and the max-pool after keep them anyway.
        ctx.save_for_backward(x, y, d, scale)
        ctx.size, ctx.coef = size, -2.0 * alpha * beta
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, y, d, scale = ctx.saved_tensors
        with _no_autocast(grad.device):
            grad = grad.to(x.dtype)
            if x.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous(
                memory_format=torch.channels_last
            ):
                grad = grad.contiguous(memory_format=torch.channels_last)
            band_t = _scaled_window(x.shape[1], ctx.size, ctx.coef, dtype=x.dtype, device=x.device).t()
            back = _window_sum((grad * y).div_(d), band_t)
            grad_x = (grad * scale).addcmul_(x, back)
        return grad_x, None, None, None, None


def channel_window(channels: int, size: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0/1 matrix W (channels x channels) with W[j, c] = 1 when channel j is in the LRN window of channel c."""
    idx = torch.arange(channels, device=device)
    offset = idx[:, None] - idx[None, :]  # j - c
    return ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).to(dtype)


@functools.lru_cache(maxsize=64)
def _scaled_window(channels: int, size: int, scale: float, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """scale * channel_window(...), built once per shape: at batch 1 building it costs more than using it.
    Callers must not modify the result in place."""
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor even when first built in inference mode
        return channel_window(channels, size, dtype=dtype, device=device) * scale


def use_torch_lrn(model: nn.Module) -> nn.Module:
    """Replace every classicnets LocalResponseNorm in `model` by the equivalent torch.nn.LocalResponseNorm, in place.

    The naive reference path (`bench --baseline`, FLOP counting with FlopCounterMode) uses this.
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LocalResponseNorm):
                setattr(module, child_name, child.to_torch())
    return model
