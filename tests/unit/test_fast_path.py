"""One path: `bench`'s default training step is the Trainer's own (training.step.prepare_training): the same
optimiser class and options (fused on CPU), model layout (channels_last, oneDNN layers), precision, loss; one step
from the same weights gives the same parameters; and every command applies the same process settings."""

from __future__ import annotations

import pytest
import torch

from classicnets.bench.settings import BenchConfig
from classicnets.bench.steps import bench_model_kwargs, build_default_path, train_step
from classicnets.config import resolve_config
from classicnets.models.fast_layers import OneDNNLinear, PrepackedConv2d
from classicnets.models.registry import create_model
from classicnets.training.start import start_trainer
from classicnets.training.step import prepare_training

CPU = torch.device("cpu")
RECIPE = """\
model: {name: lenet5, kwargs: {activation: relu, pool: max}}
optim: {name: adamw, lr: 0.003, weight_decay: 0.01, label_smoothing: 0.1, grad_clip: 5.0}
train: {batch_size: 8, epochs: 1}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(RECIPE)
    return str(path)


@pytest.fixture(scope="module")
def built(recipe, tmp_path_factory, digit_kit):
    """The Trainer `train --config RECIPE` builds, and bench's default path for `bench --config RECIPE`."""
    data = digit_kit.idx(tmp_path_factory.mktemp("digits"), per_class=10)
    overrides = {"data": str(data), "device": "cpu", "precision": "fp32", "out": str(tmp_path_factory.mktemp("run"))}
    trainer = start_trainer(resolve_config(recipe, overrides=overrides))
    cfg = BenchConfig(model="lenet5", recipe=recipe, precision="fp32", device="cpu", num_classes=10)
    base = create_model("lenet5", num_classes=10, **bench_model_kwargs(cfg))
    path = build_default_path(base, CPU, cfg, "fp32")
    return trainer, path


def test_bench_and_train_build_the_same_optimiser_layout_precision_and_loss(built):
    trainer, path = built
    assert path.step is not None and trainer.optimizer is trainer.step.optimizer
    bench_opt, train_opt = path.step.optimizer, trainer.step.optimizer
    assert type(bench_opt) is type(train_opt) is torch.optim.AdamW
    assert bench_opt.defaults == train_opt.defaults and train_opt.defaults["fused"] is True
    assert path.info.optimizer == "AdamW(fused)"
    ours, theirs = path.step.local_model, trainer.step.local_model
    assert [type(m) for m in ours.modules()] == [type(m) for m in theirs.modules()]
    assert {PrepackedConv2d, OneDNNLinear} <= {type(m) for m in theirs.modules()}  # the oneDNN layers
    assert ours.channels_last is theirs.channels_last is True
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in theirs.parameters() if p.dim() == 4)
    assert path.step.precision == trainer.step.precision == path.info.precision == "fp32"
    assert path.step.criterion.label_smoothing == trainer.step.criterion.label_smoothing == 0.1
    assert path.step.grad_clip == trainer.step.grad_clip == 5.0
    assert (path.step.scaler, trainer.step.scaler) == (None, None)


def test_one_step_from_the_same_weights_gives_the_same_parameters(built):
    trainer, path = built
    model = path.step.local_model
    initial = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    model.load_state_dict(initial)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 32, 32, generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)
    trainer.model.train()
    model.train()
    torch.manual_seed(1)
    loss = trainer.step(trainer.step.to_input(x), y)
    torch.manual_seed(1)
    train_step(path, x, y, CPU)()
    assert torch.isfinite(loss)
    after = dict(trainer.raw_model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, after[name]), name
        assert not torch.equal(p, initial[name]), name  # the step changed every parameter


def test_after_a_fused_step_inference_uses_the_new_weights():
    """A fused step does not bump the parameters' version counters; PrepackedConv2d's packed weight is keyed on
    them, so TrainStep bumps them: evaluation after a step sees the stepped weights, not the packed old ones."""
    torch.manual_seed(0)
    step = prepare_training(
        create_model("lenet5", num_classes=10), resolve_config(None).optim, device=CPU, precision="fp32"
    )
    assert step.optimizer.defaults["fused"] is True
    model = step.local_model
    x = step.to_input(torch.randn(4, 1, 32, 32))
    model.eval()
    with torch.no_grad():
        before = model(x)  # packs the conv weights
    model.train()
    step(x, torch.tensor([1, 2, 3, 4]))
    model.eval()
    with torch.no_grad():
        after = model(x)
    fresh = create_model("lenet5", num_classes=10)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        expected = fresh(x.contiguous())
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "argv", [["models"], ["train", "--model", "lenet5", "--data", "x", "--print-config"], ["bench", "--model", "nope"]]
)
def test_every_command_applies_the_process_settings_first(argv, monkeypatch, capsys):
    import classicnets.process_env
    from classicnets.cli import main

    calls = []
    monkeypatch.setattr(classicnets.process_env, "apply_fast_cpu_env", lambda: calls.append(argv[0]) or {})
    main(argv)
    assert calls == [argv[0]]
