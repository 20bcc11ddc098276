"""Faster CPU versions of nn.Conv2d and nn.Linear for float32, and for bf16 weights cast once for inference
(runtime.prepare_inference): oneDNN-packed convolution weights for inference and fully connected products in oneDNN
rather than MKL. `runtime.prepare_model` swaps them in on CPU
(`use_fast_cpu_layers`); parameters, names, hooks and state-dict keys stay those of nn.Conv2d / nn.Linear.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from classicnets.models.base import is_tracing

# The dtypes the oneDNN paths take, input and weight alike: float32, and bf16 for inference with weights cast once
# (runtime.prepare_inference), where packing saves the per-call reorder just as in float32.
PACKED_DTYPES = (torch.float32, torch.bfloat16)


def _fast_path(module: nn.Module, run: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """`run()` (one of torch's internal oneDNN ops), or None after marking `module` to use its plain PyTorch forward
    from now on: those ops are not public API and may change name or signature in another torch version."""
    try:
        return run()
    except (RuntimeError, AttributeError, TypeError) as e:
        module._fast_path_failed = True  # type: ignore[assignment]  # a plain attribute, not a submodule
        logging.getLogger(__name__).debug("%s: oneDNN fast path unavailable (%s); plain forward", type(module), e)
        return None


class _PackedWeightCache(nn.Module):
    """A oneDNN-packed copy of `self.weight`, rebuilt whenever the weight changes (an optimizer step or
    load_state_dict bumps its version counter; a cast gives it a new dtype) and dropped on train(), eval() and .to(),
    so it can never be stale. oneDNN tensors cannot be copied or pickled: the copy is left out and rebuilt on demand.
    """

    weight: torch.Tensor  # the layer's own parameter (this class is mixed into nn.Conv2d and nn.Linear)
    _packed_cache: tuple[tuple[int, int, torch.dtype], torch.Tensor] | None = None

    def _packed_weight(self, pack: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # The data pointer alone could be reused by a new weight of another dtype after the old one is freed.
        key = (self.weight._version, self.weight.data_ptr(), self.weight.dtype)
        cache = self._packed_cache
        if cache is None or cache[0] != key:
            self._packed_cache = cache = (key, pack(self.weight.detach()))
        return cache[1]

    def train(self, mode: bool = True):  # nn.Module's own signature; returns self
        self._packed_cache = None  # train() and eval() start afresh: a packed copy never outlives a mode switch
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # torch's own untyped signature
        self._packed_cache = None  # .to(dtype or device), .float(), .bfloat16(): the packed copy is of the old weight
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_packed_cache", None)
        return state


class PrepackedConv2d(_PackedWeightCache, nn.Conv2d):
    """nn.Conv2d that, for CPU float32 (or bf16-weight) inference on channels_last input, keeps its weight in
    oneDNN's blocked layout instead of re-arranging it on every call, which is a third of a convolution's time at
    batch 1 (AlexNet conv3: 4.8 instead of 7.4 ms, one thread; with bf16 weights 0.46 instead of 0.64 ms, best of 40).

    Anything else (training, autograd, autocast, NCHW input, compilers, exporters) runs nn.Conv2d's forward.
    The packed copy is kept as `_PackedWeightCache` says (never stale). Made by `use_fast_cpu_layers`, which swaps
    the class of existing Conv2d modules: parameters, names, hooks and state-dict keys stay as they are.
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
            and x.dtype in PACKED_DTYPES
            and self.weight.dtype == x.dtype
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available()
            and not is_tracing()
        )

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        return self._packed_weight(
            # torch's stub types this internal op's arguments too narrowly (lists, and no input size)
            lambda w: torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
                w.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, list(x.shape)  # type: ignore[arg-type]
            )
        )


class OneDNNLinear(_PackedWeightCache, nn.Linear):
    """nn.Linear whose CPU float32 forward product runs in oneDNN (torch.ops.mkldnn._linear_pointwise) instead
    of MKL's sgemm. For the skinny products of small batches oneDNN measured 1.4-1.8x faster on the 2-core AMD
    EPYC test machines (AlexNet fc6 at batch 32: 31 vs 56 ms with 2 threads, 57 vs 85 ms with one; at batch 1 with
    2 threads 9.4 vs 12.7 ms, where MKL's matrix-vector product uses one core). At batch 1 on one thread MKL is
    slightly faster, so that case keeps nn.Linear's forward. The backward products run in oneDNN up to batch 32.
    bf16 weights cast once (runtime.prepare_inference) with bf16 input take the same oneDNN call. No-grad forwards
    multiply by a oneDNN-packed copy of the weight where that is faster (`_inference_weight`: bf16 always, 1.6-2.8x
    at batch 1; float32 above batch 1). Anything else on CPU (autocast, mixed dtypes), and compilers and exporters,
    run nn.Linear's forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._onednn_ok(x):
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                y = _fast_path(self, lambda: _OneDNNLinearFunction.apply(x, self.weight, self.bias))
            else:
                y = _fast_path(self, lambda: _onednn_linear(x, self._inference_weight(x), self.bias))
            if y is not None:
                return y
        return super().forward(x)

    def _onednn_ok(self, x: torch.Tensor) -> bool:
        return (
            x.dim() == 2
            and (x.shape[0] > 1 or torch.get_num_threads() > 1)
            and not getattr(self, "_fast_path_failed", False)
            and x.device.type == "cpu"
            and x.dtype in PACKED_DTYPES
            and self.weight.dtype == x.dtype
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available()
            and not is_tracing()
        )


    def _inference_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight for a no-grad forward: oneDNN-packed (`torch.ops.mkldnn._reorder_linear_weight`) where that
        is faster, the plain weight elsewhere. Medians of AlexNet's fc6/fc7/fc8 products, 2 threads, AVX-512 BF16
        EPYC (2026-12-02): bf16 batch 1 packed 2.3/0.96/0.11 ms vs plain 6.4/2.0/0.31, batch 64 12.8/5.9/1.6 vs
        15.8/6.6/1.8 (the plain bf16 product re-lays the weight out on every call); float32 batch 64 25.7 vs
        30.8 ms (fc6), but batch 1 6.1 vs 4.1 (the plain matrix-vector product reads the weight as stored)."""
        if x.shape[0] == 1 and x.dtype == torch.float32:
            return self.weight
        return self._packed_weight(lambda w: torch.ops.mkldnn._reorder_linear_weight(w, None))


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
