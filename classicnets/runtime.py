"""Devices and numerics: pick the device, the precision and the fastest safe layout for it.

`train`, `eval`, `predict` and `bench` all go through here, so the fast path is the same everywhere.
What the default path is on each device, and why (measured with `classicnets bench` and benchmarks/):

- CPU: float32, or bf16 autocast where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX; elsewhere bf16 is
  emulated and matmuls run about 100x slower than float32); channels_last (oneDNN's NHWC convolutions and
  max-pooling are faster than NCHW ones); convolutions and fully connected layers keep a oneDNN-packed copy of
  their weight for inference, and fully connected layers multiply in oneDNN rather than MKL
  (models.fast_layers.PrepackedConv2d, OneDNNLinear); fused optimizer step (one pass over the parameters, not
  three); denormals flushed to zero (flush_denormals).
- CUDA: bf16 autocast from Ampere on, channels_last, cuDNN autotuning, fused optimizer step.
- Inference (`eval`, `predict`, `bench` infer rows: `prepare_inference`): no autocast. Autocast re-reads every
  float32 weight and writes a bf16 copy on every call, and at small batches a network like AlexNet is bound by
  reading its weights, so autocast made batch-1 inference twice as slow as float32 (docs/benchmarks.md). Instead
  the weights are cast once: bf16 copies where the hardware multiplies bf16 natively (half the bytes to read per
  call), else float32 with the oneDNN-packed convolution weights above.
- Everywhere: classicnets' LocalResponseNorm (shifted channel-slice sums a few images at a time, hand-written
  backward; benchmarks/lrn.py) is part of the models, and
  grouped convolutions stay single nn.Conv2d(groups=2) calls, which measured faster than two half convolutions
  (benchmarks/grouped_conv.py). torch.compile only when asked: it costs a minute of compiling per shape.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any, cast

import torch

from classicnets.choices import PRECISIONS
from classicnets.errors import UsageError
from classicnets.models.base import ClassicNet, unwrap_model
from classicnets.models.fast_layers import use_fast_cpu_layers
from classicnets.process_env import usable_cores

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu. Asking for a device that is absent is a usage error.

    Every command resolves its device before it builds anything, so this is also where the process starts flushing
    denormals (flush_denormals): threads that torch starts later (OpenMP's) inherit the setting from this one.
    """
    flush_denormals()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available on this machine (use --device cpu or auto)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device {name}: Apple MPS is not available on this machine (use --device cpu or auto)")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX), so bf16 autocast is a speed-up."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls in hardware, so bf16 autocast is a speed-up there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the hardware runs it natively (CPUs with AVX-512 BF16/AMX, CUDA from Ampere on),
    else 'fp32'. Explicit 'bf16'/'fp16' on hardware that cannot do them is a usage error (on a CPU without
    native bf16, bf16 still works, emulated and slow, and says so in a warning)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    bf16_ok = native_bf16(device)
    if precision == "bf16" and not bf16_ok and device.type == "cpu":
        log.warning("this CPU has no native bf16 (AVX-512 BF16/AMX): bf16 is emulated and much slower than fp32")
    if precision == "auto":
        return "bf16" if bf16_ok else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 is for GPUs; on a CPU use bf16 (if supported) or fp32")
    if precision == "bf16" and not bf16_ok and device.type != "cpu":
        raise UsageError(f"--precision bf16 is not supported on {device}")
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed-precision context for the forward pass ('fp32' does nothing)."""
    if precision == "fp32":
        yield
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def prepare_model(
    model: ClassicNet, device: torch.device, *, channels_last: bool | None = None, compile: bool = False
) -> torch.nn.Module:
    """Move `model` to `device` in its fastest safe layout.

    channels_last (None = automatic: on for CPU and CUDA, where oneDNN and cuDNN convolutions prefer NHWC);
    `compile=True` wraps the model in torch.compile (the returned module; the original is `._orig_mod`).
    Inputs must then be converted with `to_input_layout`.
    """
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=layout)  # type: ignore[call-overload]  # torch's stub lacks memory_format
    model.channels_last = channels_last
    if device.type == "cpu":
        flush_denormals()
    if device.type == "cpu" and channels_last and not compile:
        use_fast_cpu_layers(model)  # oneDNN-packed conv weights for inference, oneDNN linear products
    if device.type == "cuda" and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN time its algorithms once per shape
    if compile:
        return cast(torch.nn.Module, torch.compile(model))
    return model


def prepare_inference(model: ClassicNet, device: torch.device, precision: str = "auto") -> tuple[ClassicNet, str]:
    """(`model` ready for inference, the precision it runs in); `model` is changed in place and put in eval mode.

    The model is placed as `prepare_model` places it (channels_last, oneDNN layers on CPU); with bf16 or fp16 its
    weights are then cast ONCE to that dtype, and hooks at its entry and exit cast the input to it and the output
    back to float32, so callers feed float32 batches and get float32 logits with no autocast and no per-call
    re-cast of the weights. LocalResponseNorm computes in float32 internally for bf16/fp16 inputs.

    'auto' resolves as for training (`resolve_precision`): bf16 where the hardware computes it natively, whose
    weights are read in half the bytes (what batch-1 inference waits for), else fp32. A fixed rule, no timing probe:
    the same machine always makes the same choice.
    """
    resolved = resolve_precision(precision, device)
    _remove_cast_hooks(model)
    prepare_model(model, device)
    dtype = INFERENCE_DTYPES[resolved]
    model.to(dtype)
    if dtype != torch.float32:
        handles = (model.register_forward_pre_hook(_cast_input_hook), model.register_forward_hook(_float_output_hook))
        model._cast_hooks = handles  # type: ignore[assignment]  # a plain attribute, not a submodule
    model.inference_dtype = dtype
    log.info("inference precision: %s", describe_inference_precision(resolved))
    model.eval()
    return model, resolved


INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def describe_inference_precision(precision: str) -> str:
    """What `prepare_inference` did, in words: "bf16 (weights cast once)"."""
    if precision == "fp32":
        return "fp32 (oneDNN-packed weights on CPU)"
    return f"{precision} (weights cast once)"


def _cast_input_hook(module: torch.nn.Module, args: tuple) -> tuple:
    dtype = cast(torch.dtype, module.inference_dtype)
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _float_output_hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
    if isinstance(output, tuple):  # a model with auxiliary outputs
        return tuple(o.float() if isinstance(o, torch.Tensor) else o for o in output)
    return output.float()


def _remove_cast_hooks(model: torch.nn.Module) -> None:
    for handle in getattr(model, "_cast_hooks", ()):
        handle.remove()
    model._cast_hooks = ()  # type: ignore[assignment]  # a plain attribute, not a submodule


@contextlib.contextmanager
def limit_threads_for_workers(device: torch.device, workers: int) -> Iterator[None]:
    """On CPU, while loader processes run beside the model, give torch at most the cores they leave free.

    `workers` decoding processes plus one torch thread per core oversubscribe the cores, and an OpenMP parallel
    region waits for its slowest thread: a thread descheduled in favour of a worker stalls every layer, which
    shows as system time (the scheduler switching) and as forwards many times slower. Restores the count after.
    """
    before = torch.get_num_threads()
    cores = usable_cores()
    wanted = max(1, min(before, cores - workers)) if device.type == "cpu" and workers > 0 else before
    if wanted != before:
        log.info("%d loader processes on %d cores: %d torch threads instead of %d", workers, cores, wanted, before)
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != before:
            torch.set_num_threads(before)


def flush_denormals() -> None:
    """Treat denormal floats (below 1.2e-38) as zero on this process's CPU threads (x86 FTZ/DAZ), as TensorFlow
    does on its CPU threads (ScopedFlushDenormal). Without it, once weights, activations or Adam's moments grow
    tiny, multiplications by denormals take microcode assists that are tens of times slower: AlexNet-2012 training
    on photos slowed epoch after epoch (45, 41, 38 images/s) and ran at 44, 48, 53 with it (docs/benchmarks.md).
    The values flushed are far below anything that changes a result in float32 or bf16."""
    torch.set_flush_denormal(True)


def fast_optimizer_options(device: torch.device) -> dict[str, Any]:
    """Keyword arguments for torch.optim.SGD/Adam/AdamW that select their fastest step on `device`.

    `fused=True` updates every parameter in one kernel pass (CPU since torch 2.4, CUDA), instead of the default
    multi-tensor ("foreach") step, which makes three or four passes over the parameters; AlexNet has 61 M.
    """
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def to_input_layout(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Give a 4-D input batch the memory layout `prepare_model` chose for `model`."""
    model = unwrap_model(model)
    if getattr(model, "channels_last", False) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
