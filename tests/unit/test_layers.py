"""The LRN layer against plain reference implementations of the paper's and Caffe's formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from classicnets.models.lrn import LocalResponseNorm, use_torch_lrn


def reference_lrn(a: torch.Tensor, *, size: int, alpha: float, beta: float, k: float, divide_by_n: bool):
    """b_c = a_c / (k + alpha' * sum_{j = c - n/2}^{c + n/2} a_j^2) ** beta, written out channel by channel.

    Paper (Krizhevsky et al. 2012, section 3.3): alpha' = alpha. Caffe (LRNLayer, ACROSS_CHANNELS): alpha' = alpha / n.
    """
    channels = a.shape[1]
    out = torch.empty_like(a)
    scale = alpha / size if divide_by_n else alpha
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels - 1, c + (size - 1) // 2)
        window = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        out[:, c] = a[:, c] / (k + scale * window) ** beta
    return out


PRESETS = {
    "paper": dict(size=5, alpha=1e-4, beta=0.75, k=2.0, divide_by_n=False),
    "caffe": dict(size=5, alpha=1e-4, beta=0.75, k=1.0, divide_by_n=True),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_and_gradient_equal_the_reference_formula(preset):
    # Activations of the size AlexNet's conv1 produces after ReLU (tens to hundreds), where the
    # normalisation actually bites; at unit scale LRN is nearly the identity and a wrong alpha would pass.
    x = (torch.rand(2, 12, 5, 6, dtype=torch.float64) * 200).requires_grad_()
    lrn = LocalResponseNorm.preset(preset)
    ours = lrn(x)
    ref = reference_lrn(x, **PRESETS[preset])
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    assert (ours / x).min() < 0.5  # the denominators really differ from 1
    g = torch.randn_like(ours)
    (g_ours,) = torch.autograd.grad(ours, x, g)
    (g_ref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_gradcheck_float64(preset):
    x = (torch.rand(2, 7, 3, 4, dtype=torch.float64) * 50).requires_grad_()
    assert torch.autograd.gradcheck(LocalResponseNorm.preset(preset), (x,))


@pytest.mark.parametrize("preset", PRESETS)
def test_equals_torch_local_response_norm_in_float32(preset):
    lrn = LocalResponseNorm.preset(preset)
    torch_lrn = lrn.to_torch()
    assert isinstance(torch_lrn, nn.LocalResponseNorm)
    x1 = (torch.rand(4, 96, 13, 13) * 100).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = lrn(x1), torch_lrn(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_channels_last_and_even_window():
    x = torch.rand(2, 9, 6, 6) * 30
    lrn = LocalResponseNorm(size=4, alpha=1e-3, beta=0.5, k=1.0, alpha_over_size=True)
    expected = nn.LocalResponseNorm(4, alpha=1e-3, beta=0.5, k=1.0)(x)
    torch.testing.assert_close(lrn(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lrn(x.to(memory_format=torch.channels_last)), expected, rtol=1e-5, atol=1e-6)


def test_use_torch_lrn_swaps_every_layer_and_keeps_the_output():
    from classicnets.models.registry import create_model

    model = create_model("alexnet2012", num_classes=5).eval()
    x = torch.rand(1, 3, 227, 227)
    with torch.no_grad():
        before = model(x)
        use_torch_lrn(model)
        after = model(x)
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(nn.LocalResponseNorm) == 2 and LocalResponseNorm not in kinds
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-6)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown LRN preset 'tensorflow'; choose one of paper, caffe, tf"):
        LocalResponseNorm.preset("tensorflow")


CHANNELS_LAST = torch.channels_last


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fast_path_equals_torch_in_float32_forward_and_backward(preset, layout):
    # The training path (custom autograd Function with the hand-written backward) in both memory layouts,
    # against torch.nn.LocalResponseNorm, 1e-5 relative elementwise.
    lrn = LocalResponseNorm.preset(preset)
    x = torch.rand(3, 96, 11, 9) * 150
    if layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = lrn(x1), lrn.to_torch()(x2)
    assert type(y1.grad_fn).__name__ == "_LRNFunctionBackward"  # really the hand-written backward
    assert y1.is_contiguous(memory_format=CHANNELS_LAST) == (layout == "channels_last")  # layout kept
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=0)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5 * x2.grad.abs().max().item())


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradcheck_float64_both_layouts_and_odd_constants(layout):
    x = torch.rand(2, 9, 3, 4, dtype=torch.float64) * 40
    if layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST)
    # even window, beta without a square-root shortcut, alpha large enough for the second term to matter
    lrn = LocalResponseNorm(size=4, alpha=5e-3, beta=0.6, k=1.5, alpha_over_size=False)
    assert torch.autograd.gradcheck(lrn, (x.requires_grad_(),))
    for beta in (0.5, 1.0):  # the rsqrt and reciprocal shortcuts
        lrn = LocalResponseNorm(size=3, alpha=1e-2, beta=beta, k=1.0)
        assert torch.autograd.gradcheck(lrn, (x.detach().requires_grad_(),))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bfloat16_under_autocast_within_bf16_tolerance(layout):
    lrn = LocalResponseNorm.preset("paper")
    x = torch.rand(2, 96, 7, 7) * 150
    if layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST)
    ref_x = x.clone().requires_grad_()
    ref = lrn.to_torch()(ref_x)
    g = torch.randn_like(ref)
    ref.backward(g)
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = lrn(xb)
    assert yb.dtype == torch.bfloat16
    yb.backward(g.bfloat16())
    assert xb.grad.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (relative rounding 2^-8 = 0.4 %); input, output and gradient are each rounded.
    torch.testing.assert_close(yb.float(), ref, rtol=1.6e-2, atol=0)
    torch.testing.assert_close(xb.grad.float(), ref_x.grad, rtol=1.6e-2, atol=1.6e-2 * ref_x.grad.abs().max().item())


def test_inference_path_and_other_ranks_match_the_training_path():
    lrn = LocalResponseNorm.preset("caffe")
    x = torch.rand(2, 16, 5, 5) * 80
    with torch.inference_mode():  # builds and caches the band inside inference mode ...
        y_inf = lrn(x)
    y_train = lrn(x.clone().requires_grad_())  # ... which must still work with autograd afterwards
    y_train.sum().backward()
    torch.testing.assert_close(y_inf, y_train.detach(), rtol=0, atol=0)
    x3 = torch.rand(2, 16, 7) * 80  # N x C x L, as nn.LocalResponseNorm accepts
    torch.testing.assert_close(lrn(x3), lrn.to_torch()(x3), rtol=1e-5, atol=0)
    x5 = torch.rand(2, 16, 3, 2, 2) * 80
    torch.testing.assert_close(lrn(x5), lrn.to_torch()(x5), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="N x C"):
        lrn(torch.rand(4, 16))


@pytest.mark.parametrize("size", [1, 4, 5, 9])
def test_traced_graph_and_windows_wider_than_the_channels(size):
    # torch.export (what the ONNX exporter runs) and torch.compile get the functional form: padded slices, no
    # in-place slice updates. Size 9 over 6 channels: every window is clipped at both edges.
    lrn = LocalResponseNorm(size=size, alpha=2e-3, beta=0.75, k=1.0, alpha_over_size=True)
    x = torch.rand(2, 6, 4, 3) * 60
    expected = lrn.to_torch()(x)
    torch.testing.assert_close(lrn(x), expected, rtol=1e-5, atol=0)
    program = torch.export.export(lrn, (x,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert size == 1 or {"aten.pad.default", "aten.slice.Tensor"} <= ops
    assert "aten.add_.Tensor" not in ops  # the eager path's in-place slice additions
    torch.testing.assert_close(program.module()(x * 0.5), lrn.to_torch()(x * 0.5), rtol=1e-5, atol=0)
    xg = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lrn, (xg,))


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_functional_form_for_compilers_is_differentiable(monkeypatch, beta):
    # Under torch.compile and torch.export the layer is plain differentiable ops (autograd derives the backward):
    # forced here, it must match torch's LRN and pass gradcheck.
    import classicnets.models.lrn as lrn_module

    monkeypatch.setattr(lrn_module, "is_tracing", lambda: True)
    lrn = LocalResponseNorm(size=5, alpha=1e-3, beta=beta, k=2.0)
    x = (torch.rand(2, 8, 3, 3, dtype=torch.float64) * 40).requires_grad_()
    y = lrn(x)
    assert type(y.grad_fn).__name__ != "_LRNFunctionBackward"
    torch.testing.assert_close(y, lrn.to_torch()(x), rtol=1e-10, atol=0)
    assert torch.autograd.gradcheck(lrn, (x,))


def test_prepacked_convolutions_compute_what_conv2d_does_and_never_go_stale():
    import copy
    import pickle

    from classicnets.models.fast_layers import PrepackedConv2d, use_fast_cpu_layers

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(6, 8, 5, stride=2, padding=2, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 3))
    packed = use_fast_cpu_layers(copy.deepcopy(plain))
    assert [type(m) for m in packed] == [PrepackedConv2d, nn.ReLU, PrepackedConv2d]
    assert packed.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(3, 6, 17, 15).contiguous(memory_format=CHANNELS_LAST)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(packed(x.contiguous()), plain(x.contiguous()), rtol=1e-5, atol=1e-6)  # NCHW
        assert packed[0]._packed_cache is not None  # the packed weight was really used
    # A training step changes the weights: inference afterwards must use them, not the old packed copy.
    packed(x).sum().backward()  # autograd goes through nn.Conv2d's own forward
    with torch.no_grad():
        for p in packed.parameters():
            p -= 0.5 * p.grad
    plain.load_state_dict(packed.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-6)
    clone = pickle.loads(pickle.dumps(copy.deepcopy(packed)))  # the oneDNN copy is dropped, rebuilt on demand
    assert "_packed_cache" not in vars(clone[0])
    with torch.inference_mode():
        torch.testing.assert_close(clone(x), plain(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 5, 40])  # 40: above ONEDNN_BACKWARD_MAX_BATCH, MKL backward
def test_onednn_linear_equals_nn_linear_forward_and_backward(batch):
    import copy

    from classicnets.models.fast_layers import OneDNNLinear, use_fast_cpu_layers

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 7))
    fast = use_fast_cpu_layers(copy.deepcopy(plain))
    assert [type(m) for m in fast] == [OneDNNLinear, nn.ReLU, OneDNNLinear]
    x = torch.randn(batch, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-6)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fast(x1), plain(x2)
    if batch > 1 or torch.get_num_threads() > 1:
        assert type(y1.grad_fn).__name__ == "_OneDNNLinearFunctionBackward"  # the oneDNN product really ran
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: nn.Linear's own forward, in bf16
        assert fast(x).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onednn_linear_inference_uses_a_packed_weight_that_never_goes_stale(dtype):
    """No-grad forwards multiply by a oneDNN-packed copy of the weight (bf16 at every batch, float32 above batch 1,
    where packing measured faster); it equals nn.Linear's product and follows every change of the weight."""
    import copy
    import pickle

    from classicnets.models.fast_layers import use_fast_cpu_layers

    if torch.get_num_threads() == 1:
        pytest.skip("one torch thread: OneDNNLinear keeps nn.Linear's forward at batch 1")
    torch.manual_seed(0)
    plain = nn.Linear(96, 40).to(dtype)
    fast = use_fast_cpu_layers(nn.Sequential(copy.deepcopy(plain)))[0]
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    with torch.inference_mode():
        x1 = torch.randn(1, 96).to(dtype)
        torch.testing.assert_close(fast(x1), plain(x1), **tol)
        assert (fast._packed_cache is not None) == (dtype == torch.bfloat16)  # float32 batch 1 reads w as stored
        x8 = torch.randn(8, 96).to(dtype)
        torch.testing.assert_close(fast(x8), plain(x8), **tol)
        assert fast._packed_cache is not None and fast._packed_cache[1].is_mkldnn  # the packed weight was used
    with torch.no_grad():  # an in-place change of the weight (an optimizer step) must reach the next forward
        fast.weight.mul_(-2)
        plain.weight.mul_(-2)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x8), plain(x8), **tol)
    fast.train()
    assert fast._packed_cache is None
    clone = pickle.loads(pickle.dumps(fast))  # the oneDNN copy is dropped, rebuilt on demand
    assert "_packed_cache" not in vars(clone)
    with torch.inference_mode():
        torch.testing.assert_close(clone(x8), plain(x8), **tol)


def test_fast_cpu_layers_fall_back_to_plain_pytorch_when_the_onednn_op_fails(monkeypatch):
    """The oneDNN ops are internal to torch: if one fails (renamed in another version), the plain forward answers
    and the module keeps using it."""
    import copy

    from classicnets.models import fast_layers as layers

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    fast = layers.use_fast_cpu_layers(copy.deepcopy(plain))
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)

    def broken(*args, **kwargs):
        raise RuntimeError("no such op")

    monkeypatch.setattr(layers, "_onednn_linear", broken)
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", broken, raising=False)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-6)
    assert fast[0]._fast_path_failed and fast[2]._fast_path_failed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_chunked_lrn_equals_the_whole_batch_forward_and_backward(monkeypatch, dtype, layout):
    """Eager LRN works a few images at a time; with chunks of one image (and a batch of 5 that does not divide
    evenly into two-image chunks) output and input gradient equal the whole-batch computation, in x's dtype and
    layout."""
    from classicnets.models import lrn

    x = (torch.rand(5, 12, 6, 7, generator=torch.Generator().manual_seed(3)) * 50).to(dtype)
    x = x.contiguous(memory_format=layout)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    layer = LocalResponseNorm.preset("paper")

    def run(chunk_bytes):
        monkeypatch.setattr(lrn, "_CHUNK_BYTES", chunk_bytes)
        leaf = x.detach().clone().requires_grad_()
        y = layer(leaf)
        y.backward(grad)
        with torch.no_grad():
            inference = layer(x)
        return y.detach(), leaf.grad, inference

    per_image = 12 * 6 * 7 * 4
    whole = run(2**62)
    for chunk, pieces in ((per_image, 5), (2 * per_image, 3)):
        chunked = run(chunk)
        assert len(lrn._chunks(x)) == pieces
        for got, want in zip(chunked, whole, strict=True):
            assert got.dtype == dtype and got.is_contiguous(memory_format=layout)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
