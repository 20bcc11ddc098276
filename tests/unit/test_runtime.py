"""Device, precision and layout choices of the default path (classicnets.runtime)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from classicnets import runtime
from classicnets.errors import UsageError
from classicnets.models.registry import create_model

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.native_bf16(CPU) is native
    assert runtime.resolve_precision("auto", CPU) == expected
    assert runtime.resolve_precision("fp32", CPU) == "fp32"


def test_explicit_bf16_without_native_support_warns_but_runs(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="classicnets.runtime"):
        assert runtime.resolve_precision("bf16", CPU) == "bf16"
    assert "emulated" in caplog.text


@pytest.mark.parametrize(("precision", "message"), [("fp8", "unknown precision 'fp8'"), ("fp16", "for GPUs")])
def test_bad_precisions_are_usage_errors(precision, message):
    with pytest.raises(UsageError, match=message):
        runtime.resolve_precision(precision, CPU)


def test_native_bf16_detection_reads_the_cpu_flags():
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    assert runtime.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_devices():
    assert runtime.resolve_device("cpu") == CPU
    assert runtime.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError, match="unknown device 'gpu0'"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            runtime.resolve_device("cuda")


def test_autocast_runs_matmuls_in_bf16_only_when_asked():
    a = torch.randn(4, 4)
    with runtime.autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.float32
    with runtime.autocast(CPU, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_prepare_model_puts_cpu_models_in_channels_last_and_inputs_follow():
    model = runtime.prepare_model(create_model("alexnet2012", num_classes=3), CPU)
    assert model.channels_last is True
    assert model.features.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    x = runtime.to_input_layout(torch.rand(2, 3, 227, 227), model)
    assert x.is_contiguous(memory_format=torch.channels_last)
    nchw = runtime.prepare_model(create_model("lenet5"), CPU, channels_last=False)
    assert nchw.channels_last is False
    assert runtime.to_input_layout(torch.rand(2, 1, 32, 32), nchw).is_contiguous()


def test_channels_last_model_computes_what_the_nchw_one_does():
    torch.manual_seed(0)
    model = create_model("alexnet2012", num_classes=5).eval()
    x = torch.rand(2, 3, 227, 227)
    with torch.no_grad():
        expected = model(x)
        fast = runtime.prepare_model(model, CPU)
        got = fast(runtime.to_input_layout(x, fast))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_fused_optimizer_step_equals_the_default_step():
    assert runtime.fast_optimizer_options(CPU) == {"fused": True}
    assert runtime.fast_optimizer_options(torch.device("meta")) == {}
    torch.manual_seed(0)
    nets = [nn.Linear(8, 3), nn.Linear(8, 3)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = nets[0].weight.detach().clone()
    optims = [
        torch.optim.SGD(nets[0].parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
        torch.optim.SGD(
            nets[1].parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, **runtime.fast_optimizer_options(CPU)
        ),
    ]
    x = torch.randn(16, 8)
    for _ in range(3):
        for net, opt in zip(nets, optims, strict=True):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(nets[1].weight, nets[0].weight, rtol=1e-6, atol=1e-7)
    assert (nets[0].weight - start).abs().max() > 1e-3  # the steps really moved the weights


def test_prepare_model_prepacks_cpu_convolutions_without_changing_the_checkpoint_keys():
    from classicnets.models.fast_layers import PrepackedConv2d

    model = create_model("alexnet2012", num_classes=3)
    keys = list(model.state_dict())
    fast = runtime.prepare_model(model, CPU)
    assert type(fast.features.conv4) is PrepackedConv2d and isinstance(fast.features.conv4, nn.Conv2d)
    assert list(fast.state_dict()) == keys
    nchw = runtime.prepare_model(create_model("alexnet2012", num_classes=3), CPU, channels_last=False)
    assert type(nchw.features.conv4) is nn.Conv2d  # only the channels_last path packs weights


@pytest.mark.slow
def test_lenet5_trained_in_bf16_ends_within_0_3_points_of_fp32(tmp_path):
    # The shipped digits are the shared MNIST test set split 8,000 / 2,000 (assets/digits/README.md): train both
    # with the demo's recipe (15 epochs) and compare top-1 on the 2,000 held-out digits. Measured: 98.55 % both
    # (fp32 65 s, bf16 178 s with bf16 emulated on a CPU without AVX-512 BF16).
    from classicnets.demo import digits_dir
    from classicnets.inference.evaluation import evaluate
    from classicnets.training.loop import fit

    top1 = {}
    for precision in ("fp32", "bf16"):
        run = fit("lenet5", digits_dir() / "train", config="lenet5_digits", out=str(tmp_path / precision),
                  precision=precision, device="cpu", seed=0)  # fmt: skip
        report = evaluate(run.last_checkpoint, digits_dir() / "test", device="cpu", precision=precision)
        top1[precision] = report.passes["center"].sums.top1
    assert top1["fp32"] > 0.97  # really trained
    assert abs(top1["bf16"] - top1["fp32"]) <= 0.003


def test_fast_cpu_environment_is_set_before_torch_and_respects_the_user():
    import os
    import subprocess
    import sys

    from classicnets.process_env import FAST_CPU_ENV, apply_fast_cpu_env

    assert apply_fast_cpu_env() == {}  # torch is imported in this process: too late, nothing changed
    code = (
        "from classicnets.process_env import apply_fast_cpu_env; import json, os; applied = apply_fast_cpu_env(); "
        "import torch; print(json.dumps([applied, os.environ['OMP_WAIT_POLICY']]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in FAST_CPU_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [FAST_CPU_ENV, "PASSIVE"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's own choice wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [{"THP_MEM_ALLOC_ENABLE": "1"}, "ACTIVE"]



def test_keep_freed_memory_keeps_a_freed_64_mib_block_and_respects_the_user():
    """With keep_freed_memory a freed 64 MiB block stays in the process for the next allocation (resident memory
    does not drop); by default glibc maps such a block afresh and unmaps it on free. Skipped off glibc."""
    import ctypes
    import os
    import subprocess
    import sys

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018  (the attribute lookup is the test for glibc)
    except AttributeError:
        pytest.skip("not glibc: keep_freed_memory does nothing here")
    code = (
        "import os, sys; from classicnets.process_env import keep_freed_memory; kept = keep_freed_memory(); "
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20; "
        "block = b'x' * (64 << 20); before = rss(); del block; print(kept, before - rss())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,  # noqa: E731
                                     check=True).stdout.split()  # fmt: skip
    kept, released = run(env)
    assert kept == "True" and int(released) < 8  # MiB handed back on free: none (the block stays for reuse)
    kept, released = run({**env, "MALLOC_TRIM_THRESHOLD_": "131072"})  # the user's own malloc tuning wins
    assert kept == "False" and int(released) >= 60  # glibc's default: the block was unmapped

def _seeded(name: str, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes)


def test_prepare_inference_in_bf16_casts_the_weights_once_and_stays_close_to_fp32():
    fp32, prec32 = runtime.prepare_inference(_seeded("alexnet2012"), CPU, "fp32")
    bf16, prec16 = runtime.prepare_inference(_seeded("alexnet2012"), CPU, "bf16")
    assert (prec32, prec16) == ("fp32", "bf16")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}  # cast once, not per call under autocast
    assert not bf16.training and bf16.inference_dtype == torch.bfloat16
    x = torch.randn(4, 3, 227, 227, generator=torch.Generator().manual_seed(1)) * 3
    with torch.inference_mode():
        assert not torch.is_autocast_enabled("cpu")
        want = fp32(runtime.to_input_layout(x, fp32))
        got = bf16(runtime.to_input_layout(x, bf16))  # a float32 batch in, float32 logits out
    assert got.dtype == torch.float32 and got.shape == want.shape == (4, 10)
    spread = (want.max() - want.min()).item()
    assert (got - want).abs().max().item() < 0.05 * spread  # bf16 keeps 8 bits of mantissa
    assert got.argmax(1).tolist() == want.argmax(1).tolist()


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_inference_precision_is_bf16_weights_only_where_bf16_is_native(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    model, precision = runtime.prepare_inference(_seeded("lenet5"), CPU, "auto")
    assert precision == expected
    assert next(model.parameters()).dtype == runtime.INFERENCE_DTYPES[expected]
    assert runtime.describe_inference_precision("bf16") == "bf16 (weights cast once)"


def test_fp32_inference_uses_prepacked_weights_and_a_second_prepare_removes_the_cast_hooks():
    from classicnets.models.fast_layers import OneDNNLinear, PrepackedConv2d

    model, _ = runtime.prepare_inference(_seeded("alexnet"), CPU, "bf16")
    model, _ = runtime.prepare_inference(model, CPU, "fp32")
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert type(model.features[0]) is PrepackedConv2d and type(model.classifier[1]) is OneDNNLinear
    with torch.inference_mode():
        model(runtime.to_input_layout(torch.randn(1, 3, 224, 224), model))
    assert model.features[0]._packed_cache is not None  # the float32 path ran with packed weights


@pytest.mark.parametrize("change", ["train", "eval", "bf16", "fp32"])
def test_packed_conv_weights_are_dropped_on_mode_and_dtype_changes(change):
    from classicnets.models.fast_layers import use_fast_cpu_layers

    torch.manual_seed(0)
    dtype = torch.bfloat16 if change == "fp32" else torch.float32
    conv = use_fast_cpu_layers(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))).to(dtype)[0]
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x.to(dtype))
    assert conv._packed_cache is not None
    if change in ("train", "eval"):
        getattr(conv, change)()
    else:
        conv.to(runtime.INFERENCE_DTYPES[change])
    assert conv._packed_cache is None
    conv.eval()
    with torch.inference_mode():
        x = x.to(conv.weight.dtype)
        got = conv(x)
        want = nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert got.dtype == conv.weight.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_lrn_on_bf16_input_computes_in_float32_and_returns_bf16():
    from classicnets.models.lrn import LocalResponseNorm

    lrn = LocalResponseNorm.preset("paper")
    x = torch.randn(2, 16, 5, 5) * 50
    got = lrn(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), lrn(x.bfloat16().float()), rtol=1e-2, atol=1e-2)


def test_resolving_a_device_flushes_denormals_to_zero():
    """Denormal floats are treated as zero once a command has resolved its device (runtime.flush_denormals):
    arithmetic on them is tens of times slower on x86 and slowed training epoch after epoch."""
    from classicnets import runtime

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode torch can set (only x86 with SSE3)")
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a denormal (the smallest normal float32 is 1.18e-38)
    try:
        assert (tiny * 1.0).item() != 0.0
        runtime.resolve_device("cpu")
        assert (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(True)
