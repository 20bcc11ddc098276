"""The command line: models, summary (text and JSON), error paths and exit codes, fast --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from classicnets.cli import build_parser, main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_table_lists_every_model(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("model", "-", "MACs"))}
    assert "60,965,224" in lines["alexnet2012"] and "0.724G" in lines["alexnet2012"]
    assert "1.449G" in lines["alexnet2012"] and "3x227x227" in lines["alexnet2012"]
    assert "61,706" in lines["lenet5"] and "1x32x32" in lines["lenet5"]
    assert "11,173,962" in lines["resnet18_cifar"] and "3x32x32" in lines["resnet18_cifar"]
    assert "14,728,266" in lines["vgg16_cifar"] and "0.313G" in lines["vgg16_cifar"]
    vgg13 = lines["vgg13_keras_cifar"]
    assert "9,582,116" in vgg13 and "TensorFlow 2 CIFAR-100 and VGG13" in vgg13
    assert len(lines) == 29


def test_models_json_and_filter(capsys):
    code, out, _ = run_cli(capsys, "models", "resnet*", "--json")
    rows = json.loads(out)
    assert code == 0
    assert [r["name"] for r in rows] == [
        "resnet101", "resnet152", "resnet18", "resnet18_cifar", "resnet18_keras_cifar", "resnet34", "resnet34_cifar",
        "resnet50",
    ]  # fmt: skip
    r18 = rows[2]
    assert (r18["params"], r18["flops"], r18["input"]) == (11_689_512, 2 * r18["macs"], "3x224x224")


def test_summary_of_a_cifar_network(capsys):
    code, out, _ = run_cli(capsys, "summary", "resnet18_cifar")
    assert code == 0
    assert "resnet18_cifar: input 3 x 32 x 32, 10 classes" in out
    assert "Total params:               11,173,962" in out


def test_summary_of_the_tutorials_networks(capsys):
    code, out, _ = run_cli(capsys, "summary", "alexnet_keras_bn")
    assert code == 0
    assert "Total params:               46,846,040" in out
    assert "BatchNorm statistics:              704  (running means and variances: buffers)" in out
    assert 'With the statistics:        46,846,744  (Keras\' "Total params"' in out
    assert "Tutorial:              Keras AlexNet tutorial (24 classes)" in out
    code, out, _ = run_cli(capsys, "summary", "alexnet2012", "--option", "groups=1", "--option", "lrn=none",
                           "--classes", "2", "--json")  # fmt: skip
    data = json.loads(out)
    assert (data["total_params"], data["options"], data["batchnorm_statistics"]) == (
        58_289_538, {"groups": 1, "lrn": "none"}, 0)  # fmt: skip
    assert "BatchNorm statistics" not in run_cli(capsys, "summary", "alexnet2012")[1]  # no BatchNorm, no line
    code, out, _ = run_cli(capsys, "summary", "alexnet_tf_benchmark")
    assert "alexnet_tf_benchmark: input 3 x 224 x 224, no classifier (a feature extractor)" in out
    assert "Total params:                2,469,696" in out


def test_summary_text_totals(capsys):
    code, out, _ = run_cli(capsys, "summary", "alexnet2012")
    assert code == 0
    assert "features.conv1    Conv2d             96 x 55 x 55" in out
    assert "Total params:               60,965,224" in out
    assert "MACs (multiply-adds):      724,406,816" in out
    assert "FLOPs (2 x MACs):        1,448,813,632" in out


def test_summary_json_with_input_and_classes(capsys):
    code, out, _ = run_cli(capsys, "summary", "alexnet", "--input", "1x100x100", "--classes", "2", "--json")
    d = json.loads(out)
    assert code == 0
    assert d["input_size"] == [1, 100, 100] and d["num_classes"] == 2
    assert d["rows"][0] == {
        "name": "features.0", "type": "Conv2d", "output_shape": [64, 24, 24], "params": 64 * 121 + 64,
        "macs": 64 * 24 * 24 * 121,
    }  # fmt: skip
    assert d["flops"] == 2 * d["macs"] == 2 * sum(r["macs"] for r in d["rows"])
    assert d["total_params"] == 61_100_840 - 4096 * 998 - 998 - 64 * 121 * 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "alexnt"], "error: unknown model 'alexnt'; closest: alexnet"),
        (
            ["summary", "alexnet2012", "--input", "3x50x50"],
            "error: input 50x50 is too small for alexnet2012: the minimum is 67x67",
        ),
        (["summary", "lenet5", "--input", "3xAx4"], "error: --input '3xAx4' is not CxHxW, e.g. 3x227x227"),
        (["summary", "lenet5", "--input", "4x32x32"], "error: --input has 4 channels"),
        (["models", "nothing*"], "error: no model matches 'nothing*'"),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_exit_code_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_every_subcommand_has_help_and_help_does_not_import_torch():
    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    assert {"models", "summary"} <= set(commands)
    script = (
        "import sys\nfrom classicnets.cli import main\n"
        f"for cmd in {commands!r}:\n"
        "    try:\n        main([cmd, '--help'])\n    except SystemExit as e:\n        assert e.code == 0, cmd\n"
        "assert 'torch' not in sys.modules, 'help imported torch'\nprint('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("ok\n")


def test_console_script_and_python_dash_m_exit_codes():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([sys.executable, "-m", "classicnets", "--version"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("classicnets ")
    cmd = [sys.executable, "-m", "classicnets"]
    bad = subprocess.run([*cmd, "summary", "vgg"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: unknown model 'vgg'") and "Traceback" not in bad.stderr
    flag = subprocess.run([sys.executable, "-m", "classicnets", "models", "--nope"], capture_output=True, text=True)
    assert flag.returncode == 2 and "unrecognized arguments: --nope" in flag.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "classicnets", "summary", "vgg", "--debug"], capture_output=True, text=True, env=env
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
