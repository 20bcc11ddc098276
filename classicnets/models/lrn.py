"""Layers shared by several models: local response normalisation (AlexNet 2012, GoogLeNet v1 paper).

`LocalResponseNorm` computes exactly what torch.nn.LocalResponseNorm computes, 4-7x faster on CPU for forward +
backward (benchmarks/lrn.py measures it): the window sum over channels is a few shifted in-place additions of
channel slices instead of a 3-D average pooling over a padded copy, the power uses square roots instead of
exp/log when beta is 0.75 (both presets), temporaries reuse each other's memory, and training uses a hand-written
backward that reuses the forward's denominators instead of autograd's chain of a dozen saved intermediates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
    shape, dtype = x.shape, x.dtype
    folded = x.dim() != 4
    if folded:  # N x C x L or N x C x D x H x W: the window only runs over channels, so fold the rest
        x = x.reshape(shape[0], shape[1], -1, 1)
    low_precision = dtype in (torch.float16, torch.bfloat16)
    if low_precision:
        x = x.float()
    if x.requires_grad and torch.is_grad_enabled() and not _tracing():
        y = _LRNFunction.apply(x, size, alpha, beta, k)
    else:
        y = _lrn_forward(x, size, alpha, beta, k)[0]
    if low_precision:
        y = y.to(dtype)
    return y.reshape(shape) if folded else y


def _tracing() -> bool:
    """True while torch.compile, torch.export (and so the ONNX exporter) or torch.jit trace the model."""
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    )


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
    if _tracing():
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
    elif _tracing():
        d = _window_sum(squares * alpha, size, plus=k)
    else:
        # alpha * (k / alpha + window sum) = k + alpha * window sum, one pass shorter; the scale, which needs
        # squares no more, is computed in their memory (a fresh 37 MB tensor costs page faults on CPU).
        d = _window_sum(squares, size, plus=k / alpha).mul_(alpha)
    scale = _neg_pow_(d, beta, out=None if _tracing() else squares)
    return x * scale, d, scale


class _LRNFunction(torch.autograd.Function):
    """LRN with the backward written out, reusing the forward's denominators:

    y_c = x_c * d_c^-beta,  d_c = k + alpha * sum_{j in win(c)} x_j^2
    dL/dx_j = g_j * d_j^-beta - 2 * alpha * beta * x_j * sum_{c : j in win(c)} g_c * y_c / d_c

    The second sum runs over the transposed window (the same one when the size is odd).
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
        grad = grad.to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous(
            memory_format=torch.channels_last
        ):
            grad = grad.contiguous(memory_format=torch.channels_last)
        ratio = torch.mul(grad, y).div_(d)
        back = _window_sum(ratio, ctx.size, transposed=True)
        grad_x = torch.mul(grad, scale, out=ratio).addcmul_(x, back, value=ctx.coef)  # reuses ratio's memory
        return grad_x, None, None, None, None


def _fast_path(module: nn.Module, run: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """`run()` (one of torch's internal oneDNN ops), or None after marking `module` to use its plain PyTorch forward
    from now on: those ops are not public API and may change name or signature in another torch version."""
    try:
        return run()
    except (RuntimeError, AttributeError, TypeError) as e:
        module._fast_path_failed = True
        logging.getLogger(__name__).debug("%s: oneDNN fast path unavailable (%s); plain forward", type(module), e)
        return None


class PrepackedConv2d(nn.Conv2d):
    """nn.Conv2d that, for CPU float32 inference on channels_last input, keeps its weight in oneDNN's blocked
    layout instead of re-arranging it on every call, which is a third of a convolution's time at batch 1
    (AlexNet conv3: 4.8 instead of 7.4 ms, one thread).

    Anything else (training, autograd, autocast, NCHW input, compilers, exporters) runs nn.Conv2d's forward.
    The packed copy is rebuilt whenever the weight changes (an optimizer step or load_state_dict bumps its
    version counter), so it can never be stale. Made by `use_fast_cpu_layers`, which swaps the class of existing
    Conv2d modules: parameters, names, hooks and state-dict keys stay as they are.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packable(x):
            y = _fast_path(
                self,
                lambda: torch.ops.mkldnn._convolution_pointwise(
                    x, self._packed(x), self.bias, self.padding, self.stride, self.dilation, self.groups, "none", [], ""
                ),
            )
            if y is not None:
                return y
        return super().forward(x)

    def _packable(self, x: torch.Tensor) -> bool:
        return (
            not torch.is_grad_enabled()
            and not getattr(self, "_fast_path_failed", False)
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available()
            and not _tracing()
        )

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        key = (self.weight._version, self.weight.data_ptr())
        cache = getattr(self, "_packed_cache", None)
        if cache is None or cache[0] != key:
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, list(x.shape)
            )
            self._packed_cache = cache = (key, packed)
        return cache[1]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_packed_cache", None)  # oneDNN tensors cannot be copied or pickled; rebuilt on demand
        return state


class OneDNNLinear(nn.Linear):
    """nn.Linear whose CPU float32 forward product runs in oneDNN (torch.ops.mkldnn._linear_pointwise) instead
    of MKL's sgemm. For the skinny products of small batches oneDNN measured 1.4-1.8x faster on the 2-core AMD
    EPYC test machines (AlexNet fc6 at batch 32: 31 vs 56 ms with 2 threads, 57 vs 85 ms with one; at batch 1 with
    2 threads 9.4 vs 12.7 ms, where MKL's matrix-vector product uses one core). At batch 1 on one thread MKL is
    slightly faster, so that case keeps nn.Linear's forward. The backward products run in oneDNN up to batch 32.
    Anything but CPU float32 without autocast, and compilers and exporters, run nn.Linear's forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._onednn_ok(x):
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                y = _fast_path(self, lambda: _OneDNNLinearFunction.apply(x, self.weight, self.bias))
            else:
                y = _fast_path(self, lambda: _onednn_linear(x, self.weight, self.bias))
            if y is not None:
                return y
        return super().forward(x)

    def _onednn_ok(self, x: torch.Tensor) -> bool:
        return (
            x.dim() == 2
            and (x.shape[0] > 1 or torch.get_num_threads() > 1)
            and not getattr(self, "_fast_path_failed", False)
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available()
            and not _tracing()
        )


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# The backward products grad_x = g W and grad_w = g^T x go to oneDNN up to this batch, to MKL above it. AlexNet's
# fc6-fc8, both products, 2 threads, medians (benchmarks/fc_products.py): batch 8: oneDNN 89 vs MKL 150 ms;
# 32: 160 vs 201; 64: 253 vs 261 (minimum 206 vs 179); 128: 550 vs 435.
ONEDNN_BACKWARD_MAX_BATCH = 32


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with the forward in oneDNN, and the backward products too for small batches."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        if grad.shape[0] <= ONEDNN_BACKWARD_MAX_BATCH:
            # grad @ W = linear(grad, W^T) and grad^T @ x = linear(grad^T, x^T), on transposed views (no copies)
            grad_x = _onednn_linear(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
            grad_w = _onednn_linear(grad.t(), x.t(), None) if ctx.needs_input_grad[1] else None
        else:
            grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
            grad_w = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def use_fast_cpu_layers(model: nn.Module) -> nn.Module:
    """Make every plain nn.Conv2d in `model` a PrepackedConv2d and every plain nn.Linear a OneDNNLinear, in place
    (see there); returns `model`. Parameters, names, hooks and state-dict keys stay as they are."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = PrepackedConv2d
        elif type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
    return model


def use_torch_lrn(model: nn.Module) -> nn.Module:
    """Replace every classicnets LocalResponseNorm in `model` by the equivalent torch.nn.LocalResponseNorm, in place.

    The naive reference path (`bench --baseline`, FLOP counting with FlopCounterMode) uses this.
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LocalResponseNorm):
                setattr(module, child_name, child.to_torch())
    return model
