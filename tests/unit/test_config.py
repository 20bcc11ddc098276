"""Config: defaults < recipe < flags < --set, named errors, shipped recipes, and the learning-rate schedules."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from classicnets.cli import main
from classicnets.config import (
    FLAG_KEYS,
    Config,
    ScheduleConfig,
    find_recipe,
    list_recipes,
    parse_assignment,
    resolve_config,
)
from classicnets.errors import UsageError
from classicnets.training.optim import LRSchedule

REPO = Path(__file__).resolve().parents[2]


def test_precedence_defaults_recipe_flags_settings():
    default = Config()
    assert (default.optim.lr, default.train.epochs, default.optim.momentum) == (0.01, 10, 0.9)
    recipe = resolve_config("lenet5_digits")
    assert (recipe.optim.name, recipe.optim.lr, recipe.train.epochs) == ("adam", 0.002, 15)
    assert recipe.train.batch_size == 64 and recipe.model.kwargs == {"activation": "relu", "pool": "max"}
    flags = resolve_config("lenet5_digits", overrides={"lr": 0.1, "epochs": None, "batch_size": 32})
    assert (flags.optim.lr, flags.train.epochs, flags.train.batch_size) == (0.1, 15, 32)  # None = flag not given
    both = resolve_config("lenet5_digits", overrides={"lr": 0.1}, settings=["optim.lr=0.3", "optim.betas=[0.8, 0.9]"])
    assert both.optim.lr == 0.3 and both.optim.betas == [0.8, 0.9]


def test_recipes_by_name_path_and_top_level_configs_folder(tmp_path):
    assert set(list_recipes()) >= {
        "alexnet2012_paper", "alexnet2012_small_data", "alexnet2012_finetune", "lenet5_digits", "resnet_torchvision",
        "resnet18_cifar10", "resnet18_cifar10_short", "vgg13_cifar100", "alexnet_fashion_mnist",
        "alexnet_pytorch_tutorial", "vgg13_keras_cifar100", "resnet18_keras_cifar100",
    }  # fmt: skip
    assert find_recipe("alexnet2012_paper") == find_recipe("alexnet2012_paper.yaml")
    via_folder = resolve_config(REPO / "configs" / "alexnet2012_paper.yaml")
    assert via_folder == resolve_config("alexnet2012_paper")
    own = tmp_path / "mine.yaml"
    own.write_text("optim: {lr: 0.05}\ntrain:\n  epochs: 3\n")
    cfg = resolve_config(own)
    assert (cfg.optim.lr, cfg.train.epochs, cfg.optim.name) == (0.05, 3, "sgd")


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_builds_its_model_with_its_options(name):
    import torch

    from classicnets.models.registry import create_model

    cfg = resolve_config(name)
    with torch.device("meta"):
        model = create_model(cfg.model.name, in_chans=cfg.model.in_chans, **cfg.model.kwargs)
    assert model.model_name == cfg.model.name


def test_tutorial_recipes_have_their_scripts_numbers():
    # (model, optimizer, lr, batch, epochs): the PyTorch tutorial's train.py, lesson 40's cifar100_train.py,
    # lesson 43's resnet18_train.py
    got = {name: (c.model.name, c.optim.name, c.optim.lr, c.train.batch_size, c.train.epochs, c.data.augment)
           for name in ("alexnet_pytorch_tutorial", "vgg13_keras_cifar100", "resnet18_keras_cifar100")
           for c in [resolve_config(name)]}  # fmt: skip
    assert got == {
        "alexnet_pytorch_tutorial": ("alexnet2012", "adam", 1e-3, 32, 10, "none"),
        "vgg13_keras_cifar100": ("vgg13_keras_cifar", "adam", 1e-4, 128, 50, "none"),
        "resnet18_keras_cifar100": ("resnet18_keras_cifar", "adam", 1e-3, 512, 500, "none"),
    }
    assert resolve_config("alexnet_pytorch_tutorial").model.kwargs == {"groups": 1, "lrn": "none", "init": "default"}


def test_paper_recipe_has_the_papers_numbers():
    c = resolve_config("alexnet2012_paper")
    assert (c.model.name, c.model.kwargs) == ("alexnet2012", {"lrn": "paper", "init": "paper"})
    assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    assert (c.train.batch_size, c.train.epochs) == (128, 90)
    assert (c.schedule.name, c.schedule.factor, c.schedule.max_decays) == ("plateau", 0.1, 3)
    assert (c.data.augment, c.data.pca_std) == ("paper", 0.1)
    finetune = resolve_config("alexnet2012_finetune")
    assert (finetune.optim.lr, finetune.model.head_lr_mult) == (0.001, 10.0)
    small = resolve_config("alexnet2012_small_data")  # the paper's network and augmentation, another start
    assert (small.model.kwargs, small.optim.name, small.optim.lr) == ({"lrn": "paper", "init": "default"}, "adam", 1e-4)
    assert (small.data.augment, small.data.pca_std) == ("paper", 0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recipe": {"optimiser": {"lr": 1}}}, "unknown section 'optimiser'"),
        ({"recipe": {"optim": {"learning_rate": 1}}}, "unknown config key 'optim.learning_rate'; optim has name, lr"),
        ({"recipe": {"optim": {"lr": "fast"}}}, "config optim.lr: expected float, got 'fast'"),
        ({"recipe": {"train": {"epochs": 2.5}}}, "config train.epochs: expected int, got 2.5"),
        ({"recipe": {"train": {"compile": "yes"}}}, "config train.compile: expected bool"),
        ({"overrides": {"optimizer": "rmsprop"}}, "config optim.name='rmsprop': must be one of sgd, adam, adamw"),
        ({"overrides": {"lr": -1.0}}, "config optim.lr=-1.0: must be positive"),
        ({"overrides": {"val_fraction": 1.5}}, "config data.val_fraction=1.5: must be between 0 and 1"),
        ({"overrides": {"learning_rate": 1}}, "unknown setting 'learning_rate'"),
        ({"settings": ["optim.bogus=1"]}, "unknown config key 'optim.bogus'"),
        ({"settings": ["lr"]}, "--set 'lr': expected section.name=value"),
        ({"recipe": "no_such_recipe"}, "--config no_such_recipe: no such file or shipped recipe; shipped recipes: "),
    ],
)  # fmt: skip
def test_unknown_keys_and_bad_values_are_named(kwargs, message):
    recipe = kwargs.pop("recipe", None)
    with pytest.raises(UsageError) as e:
        resolve_config(recipe, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("setting", "message"),
    [  # the values, each of which failed later with a bare error or was accepted
        ("schedule.div_factor=0", "config schedule.div_factor=0.0: must be positive and finite"),
        ("optim.lr=.inf", "config optim.lr=inf: must be positive and finite"),
        ("optim.lr=.nan", "config optim.lr=nan: must be positive and finite"),
        ("optim.momentum=-5", "config optim.momentum=-5.0: must be in [0, 1)"),
        ("optim.betas=[2, -1]", "config optim.betas=[2.0, -1.0]: must be two numbers in [0, 1)"),
        ("schedule.pct_start=7", "config schedule.pct_start=7.0: must be between 0 and 1"),
        ("optim.grad_clip=-1", "config optim.grad_clip=-1.0: must be positive (or null: off)"),
        ("schedule.final_div_factor=0", "config schedule.final_div_factor=0.0: must be positive and finite"),
        ("schedule.min_lr=0.5", "config schedule.min_lr=0.5: must be in [0, optim.lr]"),
        ("schedule.max_decays=-1", "config schedule.max_decays=-1: must be zero or positive"),
        ("optim.label_smoothing=1", "config optim.label_smoothing=1.0: must be in [0, 1)"),
        ("optim.weight_decay=.inf", "config optim.weight_decay=inf: must be zero or positive"),
        ("data.pca_std=.nan", "config data.pca_std=nan: must be zero or positive"),
        ("data.max_bad_fraction=2", "config data.max_bad_fraction=2.0: must be between 0 and 1"),
        ("model.head_lr_mult=.inf", "config model.head_lr_mult=inf: must be positive and finite"),
        ("model.num_classes=999999999999", "config model.num_classes=999999999999: must be 2 to 100,000"),
        ("train.seed=-1", "config train.seed=-1: must be a whole number from 0 to 2**63 - 1"),
    ],
)
def test_every_value_is_range_checked_in_one_line_naming_the_key(setting, message):
    with pytest.raises(UsageError) as e:
        resolve_config("lenet5_digits", settings=[setting])
    assert str(e.value) == message


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(UsageError, match=r"config optim.nesterov=True: must be false when optim.momentum is 0"):
        resolve_config(None, settings=["optim.name=sgd", "optim.nesterov=true", "optim.momentum=0"])


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    lines = ["model:", "  kwargs:", "    a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"    {n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcde", "bcdef", strict=True)]
    bomb.write_text("\n".join(lines) + "\n")  # 9**6 = 531,441 leaves in under 300 bytes
    assert bomb.stat().st_size < 356
    message = "config model.kwargs: holds more than 10,000 values (YAML aliases repeating a block?)"
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve_config(bomb)
    assert main(["train", "--config", str(bomb), "--model", "lenet5", "--print-config"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {bomb}: {message}\n"


def test_bad_yaml_is_a_one_line_usage_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [0.1\n")
    with pytest.raises(UsageError, match=r"bad.yaml: not valid YAML"):
        resolve_config(bad)


def test_to_yaml_round_trips_and_every_flag_maps_to_a_key():
    cfg = resolve_config("alexnet2012_paper", overrides={"epochs": 3, "weights": "w.pt"})
    again = resolve_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    for key in FLAG_KEYS.values():
        cfg.get(key)  # raises for a flag pointing at no field
    assert parse_assignment("optim.betas=[0.5, 0.6]") == ("optim.betas", [0.5, 0.6])
    assert parse_assignment("model.freeze_until=null") == ("model.freeze_until", None)


def test_cli_print_config_and_unknown_flags(capsys):
    code = main(["train", "--config", "lenet5_digits", "--lr", "0.5", "--set", "optim.momentum=0.8", "--print-config"])
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert code == 0
    assert printed["optim"] == {**printed["optim"], "lr": 0.5, "momentum": 0.8, "name": "adam"}
    assert printed["train"]["epochs"] == 15 and printed["model"]["name"] == "lenet5"
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "lenet5", "--nope"])
    assert e.value.code == 2 and "unrecognized arguments: --nope" in capsys.readouterr().err
    code = main(["train", "--set", "train.epoch=3", "--print-config"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown config key 'train.epoch'; train has epochs")
    assert err.count("\n") == 1


def schedule(name: str, **kw) -> LRSchedule:
    return LRSchedule(ScheduleConfig(name=name, **kw), base_lr=0.1, epochs=10, steps_per_epoch=4)


def test_step_cosine_onecycle_and_warmup_multipliers():
    step = schedule("step", step_size=3)
    assert [step.multiplier(e, 0) for e in (0, 2, 3, 6, 9)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])
    cos = schedule("cosine", min_lr=0.001)
    assert cos.multiplier(0, 0) == 1.0
    assert cos.multiplier(5, 0) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way: halfway between 1 and min_lr/lr
    assert cos.multiplier(9, 3) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    one = schedule("onecycle")
    peak_step = round(0.3 * 40) - 1
    assert one.multiplier(0, 0) == pytest.approx(1 / 25)
    assert one.multiplier(peak_step // 4, peak_step % 4) == pytest.approx(1.0)
    assert one.multiplier(9, 3) == pytest.approx(1 / 25 / 1e4)
    warm = schedule("constant", warmup_epochs=1.0)
    assert [warm.multiplier(0, s) for s in range(4)] + [warm.multiplier(1, 0)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_plateau_decays_after_patience_at_most_max_decays_and_round_trips():
    s = schedule("plateau", patience=1, max_decays=2)
    errors = [0.5, 0.4, 0.4, 0.41, 0.39, 0.39, 0.39, 0.39, 0.39, 0.39]
    decayed = [s.end_epoch(e) for e in errors]
    # better, better, bad 1, bad 2 -> decay; better; bad 1, bad 2 -> decay (2nd, the last); never again
    assert decayed == [False, False, False, True, False, False, True, False, False, False]
    assert s.multiplier(9, 0) == pytest.approx(0.01)
    restored = schedule("plateau", patience=1, max_decays=2)
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict() == {"best_error": 0.39, "bad_epochs": 3, "decays": 2}
