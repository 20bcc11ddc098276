"""Local response normalisation (AlexNet 2012, GoogLeNet v1 paper), exact and fast.

`LocalResponseNorm` computes exactly what torch.nn.LocalResponseNorm computes, 4-7x faster on CPU for forward +
backward (benchmarks/lrn.py measures it): the window sum over channels is a few shifted in-place additions of
channel slices instead of a 3-D average pooling over a padded copy, the power uses square roots instead of
exp/log when beta is 0.75 (both presets), temporaries reuse each other's memory, and training uses a hand-written
backward that reuses the forward's denominators instead of autograd's chain of a dozen saved intermediates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from classicnets.models.base import is_tracing

# Constants of the three LRN conventions that matter for AlexNet (docs/facts.md):
# - "paper": Krizhevsky et al. 2012, section 3.3: k=2, n=5, alpha=1e-4, beta=0.75, and alpha is NOT divided by n.
# - "caffe": bvlc_alexnet deploy.prototxt: local_size 5, alpha 1e-4, beta 0.75, k 1 (Caffe's default), and Caffe
#   divides alpha by local_size, as torch.nn.LocalResponseNorm does.
# - "tf": TensorFlow's tf.nn.lrn as its tutorials call it (the CIFAR-10 tutorial's cifar10.py and the AlexNet
#   benchmark's widely copied version): depth_radius=4 (a window of 2 * 4 + 1 = 9 channels), bias=1,
#   alpha=0.001 / 9, beta=0.75; TensorFlow does NOT divide alpha by the window.
LRN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "alpha_over_size": False},
    "caffe": {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0, "alpha_over_size": True},
    "tf": {"size": 9, "alpha": 0.001 / 9, "beta": 0.75, "k": 1.0, "alpha_over_size": False},
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
        """LRN with the constants of a named convention: "paper", "caffe" or "tf"."""
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

    Eager training goes through a custom autograd Function with a hand-written backward; inference goes through
    the same arithmetic a few images at a time (`_lrn_chunked`); torch.compile and export tracing see the whole
    tensor as plain differentiable ops, which compilers can fuse.
    """
    if x.dim() < 3:
        raise ValueError(f"LRN expects N x C x ... input, got shape {tuple(x.shape)}")
    shape = x.shape
    folded = x.dim() != 4
    if folded:  # N x C x L or N x C x D x H x W: the window only runs over channels, so fold the rest
        x = x.reshape(shape[0], shape[1], -1, 1)
    if is_tracing():
        y = _lrn_forward(x.to(_compute_dtype(x.dtype)), size, alpha, beta, k)[0].to(x.dtype)
    elif x.requires_grad and torch.is_grad_enabled():
        y = _LRNFunction.apply(x, size, alpha, beta, k)
    else:
        y = _lrn_chunked(x, size, alpha, beta, k)
    return y.reshape(shape) if folded else y


# Eager LRN works through the batch this many bytes (of float32 temporaries) at a time: one or two of AlexNet's
# images (norm1 holds 1.2 MB per image, norm2 0.75 MB), so the five temporaries of a chunk stay in the core's L2
# cache (512 KiB-1 MiB on the EPYC and Xeon machines we measure) and the next level instead of streaming the whole
# batch through memory five times. benchmarks/lrn.py ("whole" vs "ours") measures the gain: 1.3-3x per pass.
_CHUNK_BYTES = 2 * 1024 * 1024


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """bf16/fp16 inputs are computed in float32: a window sum of squares of activations in the hundreds would lose
    digits in 8 (bf16) or overflow 65,504 (fp16)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunks(x: torch.Tensor) -> list[slice]:
    """Slices of the batch dimension of a few images each (at least one), about _CHUNK_BYTES of float32 each."""
    per_image = max(1, x[0].numel() * 4)
    step = max(1, _CHUNK_BYTES // per_image)
    return [slice(i, min(i + step, x.shape[0])) for i in range(0, x.shape[0], step)]


def _lrn_chunked(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """LRN of a 4-D input, chunk by chunk, into one output in x's dtype and memory layout (no whole-batch float32
    copy of a bf16 input is ever made)."""
    out = torch.empty_like(x)
    compute = _compute_dtype(x.dtype)
    for part in _chunks(x):
        out[part] = _lrn_forward(x[part].to(compute), size, alpha, beta, k)[0]
    return out


def _window_offsets(size: int, *, transposed: bool = False) -> range:
    """Channel offsets j - c of the window of channel c: size // 2 before, (size - 1) // 2 after (nn.LRN's)."""
    if transposed:  # channels c whose window holds j
        return range(-((size - 1) // 2), size // 2 + 1)
    return range(-(size // 2), (size - 1) // 2 + 1)


def _window_sum(s: torch.Tensor, size: int, *, transposed: bool = False, plus: float = 0.0) -> torch.Tensor:
    """plus + sum over the LRN window of s along dim 1, as a new tensor in the layout `s` has.

    Shifted in-place additions of channel slices: size - 1 passes over memory and no multiplications, about 2x
    faster than a banded C x C matmul (C multiply-adds per element) at AlexNet's 256 channels, and 1.2x at 96
    (benchmarks/lrn.py).
    """
    if is_tracing():
        return _window_sum_functional(s, size, transposed=transposed, plus=plus)
    channels = s.shape[1]
    out = torch.add(s, plus) if plus else s.clone()  # the centre term (offset 0) is always in the window
    for offset in _window_offsets(size, transposed=transposed):
        if offset > 0 and offset < channels:
            out[:, : channels - offset] += s[:, offset:]
        elif offset < 0 and -offset < channels:
            out[:, -offset:] += s[:, : channels + offset]
    return out


def _window_sum_functional(s: torch.Tensor, size: int, *, transposed: bool, plus: float) -> torch.Tensor:
    """The same sum without in-place slice updates (zero padding, then slices): what compilers and ONNX see."""
    offsets = _window_offsets(size, transposed=transposed)
    channels = s.shape[1]
    padded = torch.nn.functional.pad(s, (0, 0, 0, 0, -offsets[0], offsets[-1]))
    out = padded[:, 0:channels]
    for i in range(1, len(offsets)):
        out = out + padded[:, i : i + channels]
    return out + plus if plus else out


def _neg_pow_(d: torch.Tensor, beta: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """d ** -beta, computed in `out`'s memory when given (out=None: out-of-place ops, differentiable by autograd,
    for compilers and exporters). pow() with a fractional exponent is exp(-beta * log d), about 3x slower on CPU
    than the square roots that give the exponents in common use (0.75 in AlexNet and GoogLeNet, 0.5, 1)."""
    if beta == 0.75:  # (d * d ** 0.5) ** -0.5
        if out is None:
            return torch.rsqrt(d * torch.sqrt(d))
        return torch.sqrt(d, out=out).mul_(d).rsqrt_()
    if beta == 0.5:
        return torch.rsqrt(d, out=out)
    if beta == 1.0:
        return torch.reciprocal(d, out=out)
    return torch.pow(d, -beta, out=out)


def _lrn_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, denominator base d = k + alpha * window sum of x^2, d ** -beta) for a 4-D input."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    squares = x * x
    if alpha == 0:
        d = torch.full_like(x, k)
    elif is_tracing():
        d = _window_sum(squares * alpha, size, plus=k)
    else:
        # alpha * (k / alpha + window sum) = k + alpha * window sum, one pass shorter; the scale, which needs
        # squares no more, is computed in their memory (a fresh 37 MB tensor costs page faults on CPU).
        d = _window_sum(squares, size, plus=k / alpha).mul_(alpha)
    scale = _neg_pow_(d, beta, out=None if is_tracing() else squares)
    return x * scale, d, scale


class _LRNFunction(torch.autograd.Function):
    """LRN with the backward written out:

    y_c = x_c * d_c^-beta,  d_c = k + alpha * sum_{j in win(c)} x_j^2
    dL/dx_j = g_j * d_j^-beta - 2 * alpha * beta * x_j * sum_{c : j in win(c)} g_c * y_c / d_c

    The second sum runs over the transposed window (the same one when the size is odd). Only x is saved: the
    backward recomputes d, d^-beta and y chunk by chunk (`_chunks`), in cache, which costs less than writing
    three batch-sized tensors in the forward and reading them back (and saves their memory).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.params = (size, alpha, beta, k)
        return _lrn_chunked(x, size, alpha, beta, k)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        size, alpha, beta, k = ctx.params
        if x.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous(
            memory_format=torch.channels_last
        ):
            grad = grad.contiguous(memory_format=torch.channels_last)
        compute = _compute_dtype(x.dtype)
        grad_x = torch.empty_like(x)
        for part in _chunks(x):
            xc, g = x[part].to(compute), grad[part].to(compute)
            y, d, scale = _lrn_forward(xc, size, alpha, beta, k)
            ratio = torch.mul(g, y).div_(d)
            back = _window_sum(ratio, size, transposed=True)
            # g * d^-beta - 2 alpha beta x * back, in ratio's memory
            grad_x[part] = torch.mul(g, scale, out=ratio).addcmul_(xc, back, value=-2.0 * alpha * beta)
        return grad_x, None, None, None, None


def use_torch_lrn(model: nn.Module) -> nn.Module:
    """Replace every classicnets LocalResponseNorm in `model` by the equivalent torch.nn.LocalResponseNorm, in place.

    The naive reference path (`bench --baseline`, FLOP counting with FlopCounterMode) uses this.
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LocalResponseNorm):
                setattr(module, child_name, child.to_torch())
    return model
