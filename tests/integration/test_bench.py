"""`classicnets bench`: counted FLOPs, consistent figures, JSON/CSV output, the optional comparisons, CLI errors.

Only consistency is asserted (images/s = batch / time, efficiency in (0, 1], ...): speed goals are benchmark
figures, not unit tests.
"""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from classicnets import runtime
from classicnets.bench.flops import count_flops
from classicnets.bench.peaks import Peak, measure_conv_peak, measure_matmul_peak, measure_peak
from classicnets.bench.report import ResultRow
from classicnets.bench.run import ABOVE_PEAK_NOTE, _set_efficiency, run_bench
from classicnets.bench.settings import BenchConfig
from classicnets.bench.timing import Stats, time_interleaved
from classicnets.cli import main
from classicnets.models.lrn import use_torch_lrn
from classicnets.models.registry import create_model

CPU = torch.device("cpu")


def test_alexnet2012_counts_separate_params_macs_and_flops():
    c = count_flops("alexnet2012", (3, 227, 227), None)
    assert c.params == 60_965_224  # docs/facts.md
    assert c.macs == 724_406_816
    assert c.forward_flops == 1_448_813_632
    # forward + weight gradients (2 x forward) + input gradients of every layer but conv1 (96 x 55 x 55 x 3 x 11 x 11)
    conv1_macs = 96 * 55 * 55 * 3 * 11 * 11
    assert c.train_flops == 2 * (3 * 724_406_816 - conv1_macs) == 4_135_610_496


def test_training_flops_equal_flop_counter_mode_where_it_is_right():
    # FlopCounterMode counts grouped convolutions' input gradients twice, so compare on the ungrouped AlexNet.
    with torch.device("meta"):
        model = use_torch_lrn(create_model("alexnet"))
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224, device="meta")).sum().backward()
    assert count_flops("alexnet", (3, 224, 224), None).train_flops == counter.get_total_flops() == 4_144_577_280


def test_stats_and_interleaving():
    s = Stats.of([0.001, 0.002, 0.003, 0.010])
    assert s.mean == pytest.approx(0.004) and s.median == pytest.approx(0.0025) and s.min == 0.001 and s.n == 4
    assert s.sd == pytest.approx(0.004082483, rel=1e-6)
    assert s.to_ms()["mean_ms"] == pytest.approx(4.0)
    calls: list[str] = []
    stats = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, steps=3, device=CPU
    )
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds, alternating
    assert stats["a"].n == stats["b"].n == 3


def test_matmul_peak_is_measured_and_described():
    peak = measure_matmul_peak("fp32", CPU, budget_s=0.3, sizes=(64, 128))
    assert peak.gflops > 0 and peak.size in (64, 128) and peak.repeats >= 1
    assert peak.method == "64, 128 within 0.3 s"
    conv = measure_conv_peak("fp32", CPU, budget_s=0.3, channels=(32, 64))
    assert conv.gflops > 0 and conv.size in (32, 64) and conv.kernel == "conv"


def test_the_peak_is_the_faster_kernel_and_reports_both():
    peak = measure_peak("fp32", CPU, budget_s=0.4)
    assert peak.by_kernel.keys() == {"mm", "conv"} and all(g > 0 for g in peak.by_kernel.values())
    assert peak.gflops == max(peak.by_kernel.values()) == peak.by_kernel[peak.kernel]


def test_efficiency_is_at_most_one_with_a_note_when_a_step_beats_the_peak():
    peak = Peak("fp32", 100.0, 1024, 3, "test", "conv", {"mm": 50.0, "conv": 100.0})
    row = ResultRow(32, "train", "default", "fp32", 10.0, 1.0, 10.0, 9.0, 5, 3200.0, 2_000_000_000, 200.0)
    _set_efficiency(row, {"fp32": peak})
    assert (row.efficiency, row.note) == (1.0, ABOVE_PEAK_NOTE)
    assert row.roofline_ms == pytest.approx(20.0)  # 2 GFLOP at 100 GFLOP/s: the bound comes from the peak
    row.gflops = 40.0
    _set_efficiency(row, {"fp32": peak})
    assert (row.efficiency, row.note) == (pytest.approx(0.4), "")


@pytest.fixture(scope="module")
def lenet_report():
    cfg = BenchConfig(model="lenet5", batch_sizes=[1, 3], mode="both", warmup=1, steps=2, baseline=True, onnx=False,
                      peak_budget_s=0.3)  # fmt: skip
    return run_bench(cfg)


def test_figures_are_consistent(lenet_report):
    rows = lenet_report.rows
    # In infer mode the precision auto did not choose gets a row too (fp32 beside bf16; bf16 beside fp32 where
    # bf16 is native; none where it is emulated): infer_paths.other_precision.
    other = [name for name in lenet_report.paths if name not in ("default", "baseline")]
    assert [(r.batch_size, r.mode, r.path) for r in rows] == [
        (b, m, p) for b in (1, 3) for m in ("infer", "train") for p in ("default", "baseline", *other[: m == "infer"])
    ]
    assert other in ([], ["fp32"], ["bf16"]) and (other != [] or not runtime.native_bf16(CPU))
    counts = lenet_report.counts
    assert counts["params"] == 61_706 and counts["forward_flops"] == 2 * counts["macs"]
    for r in rows:
        mean_s = r.mean_ms / 1e3
        assert r.n == 2 and r.min_ms <= r.median_ms and r.sd_ms >= 0
        assert r.images_per_s == pytest.approx(r.batch_size / mean_s, rel=1e-9)
        per_image = counts["forward_flops"] if r.mode == "infer" else counts["train_flops"]
        assert r.flops_per_batch == r.batch_size * per_image
        assert r.gflops == pytest.approx(r.flops_per_batch / mean_s / 1e9, rel=1e-9)
        assert 0 < r.efficiency <= 1
        raw = r.gflops / lenet_report.peaks[r.precision]["gflops"]
        assert r.efficiency == pytest.approx(min(1.0, raw), rel=1e-9) and (r.note != "") == (raw > 1)
        assert r.efficiency == pytest.approx(min(1.0, r.roofline_ms / r.mean_ms), rel=1e-9)  # the bound, two ways
        if r.path == "default":
            base = next(b for b in rows if (b.batch_size, b.mode, b.path) == (r.batch_size, r.mode, "baseline"))
            assert r.speedup == pytest.approx(base.mean_ms / r.mean_ms, rel=1e-9)
        else:
            assert r.speedup is None
    assert lenet_report.paths["baseline"].channels_last is False
    assert lenet_report.paths["default"].channels_last is True


def test_json_csv_and_table(lenet_report):
    data = json.loads(lenet_report.to_json())
    assert {"model", "input_size", "system", "config", "counts", "peaks", "paths", "results"} <= data.keys()
    assert {"cpu", "threads", "torch", "git_revision", "device", "load_average_before"} <= data["system"].keys()
    assert data["system"]["threads"] == torch.get_num_threads() and data["system"]["torch"] == torch.__version__
    assert {"params", "macs", "forward_flops", "train_flops"} == data["counts"].keys()
    fp32 = data["peaks"]["fp32"]
    assert fp32["gflops"] > 0 and "torch.mm in fp32 (n x n @ n x n, 2 n^3 FLOPs)" in fp32["method"]
    assert "calls between the timed steps" in fp32["method"]  # probed between the steps too
    assert fp32["by_kernel"].keys() == {"mm", "conv"} and fp32["gflops"] == max(fp32["by_kernel"].values())
    assert {"mean_ms", "sd_ms", "images_per_s", "gflops", "efficiency", "speedup"} <= data["results"][0].keys()
    lines = list(csv.DictReader(io.StringIO(lenet_report.to_csv())))
    assert len(lines) == len(lenet_report.rows) >= 8
    assert lines[0]["model"] == "lenet5" and lines[0]["torch"] == torch.__version__
    assert float(lines[0]["images_per_s"]) == pytest.approx(lenet_report.rows[0].images_per_s, rel=1e-5)
    table = lenet_report.format()
    assert "peak fp32: " in table and " won" in table and "baseline path: fp32, NCHW" in table
    assert "SGD(fused)" in table  # the default path trains with the Trainer's step
    assert "MACs 416,520" in table and "FLOPs forward 833,040" in table
    assert table.count("roofline, batch") == 4  # one per default row with a baseline beside it
    assert {"fp32", "bf16"} <= lenet_report.peaks.keys()  # bf16's peak shows whether it is native


def test_infer_mode_times_both_precisions_and_onnxruntime_side_by_side_at_every_batch(monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)  # auto = bf16 weights, fp32 beside it
    cfg = BenchConfig(model="lenet5", batch_sizes=[1, 2], mode="infer", warmup=1, steps=2, onnx=True,
                      peak_budget_s=0.2)  # fmt: skip
    report = run_bench(cfg)
    rows = {(r.batch_size, r.path): r for r in report.rows}
    assert list(rows) == [(b, p) for b in (1, 2) for p in ("default", "fp32", "onnxruntime")]
    assert [rows[1, p].precision for p in ("default", "fp32", "onnxruntime")] == ["bf16", "fp32", "fp32"]
    assert all(r.n == 2 for r in report.rows)
    o = report.onnx
    assert o["threads"] == torch.get_num_threads() and [b["batch_size"] for b in o["by_batch"]] == [1, 2]
    for b in o["by_batch"]:
        ours, ort = rows[b["batch_size"], "default"], rows[b["batch_size"], "onnxruntime"]
        assert b["ratio"] == pytest.approx(ort.mean_ms / ours.mean_ms, rel=1e-9)
        assert b["ratio_median"] == pytest.approx(ort.median_ms / ours.median_ms, rel=1e-9)
    text = report.format()
    assert "infer rows: weights cast once" in text and "onnxruntime path: fp32, NCHW" in text
    line = next(x for x in text.splitlines() if x.startswith("infer batch 2, medians: default (bf16) "))
    ratio = rows[2, "fp32"].median_ms / rows[2, "default"].median_ms
    assert f"fp32 / default = {ratio:.2f}" in line and "onnxruntime / default = " in line


def test_the_default_infer_row_runs_weights_cast_once():
    from classicnets.bench.steps import inference_model

    model = runtime.prepare_model(create_model("lenet5"), CPU).eval()
    bf16 = inference_model(model, CPU, "bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    assert inference_model(model, CPU, "bf16") is bf16  # made once, not per step
    assert inference_model(model, CPU, "fp32") is model  # float32 weights are already packed by prepare_model


def test_data_loader_timing(tmp_path, monkeypatch):
    pytest.importorskip("classicnets.data")
    from PIL import Image

    from classicnets.training import trainer

    for label, colour in (("cat", 40), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(4):
            Image.new("RGB", (48, 40), (colour, i * 30, 90)).save(tmp_path / label / f"{i}.png")
    built = []  # the loader `train` builds (Trainer: make_train_loader), with the recipe's settings
    real = trainer.make_train_loader
    monkeypatch.setattr(trainer, "make_train_loader", lambda *a, **k: built.append(a[1]) or real(*a, **k))
    cfg = BenchConfig(model="lenet5", batch_sizes=[2], mode="train", warmup=1, steps=2, data=str(tmp_path),
                      workers=0, peak_budget_s=0.2, recipe="lenet5_digits")  # fmt: skip
    (d,) = run_bench(cfg).data
    assert [(c.train.batch_size, c.data.workers, c.data.augment) for c in built] == [(2, 0, "none")]
    assert d["images"] == 8 and d["batch_size"] == 2 and d["mode"] == "train" and d["n"] == 2
    assert d["slowdown"] == pytest.approx(d["mean_ms"] / d["synthetic_mean_ms"], rel=1e-9)
    assert 0 <= d["wait_mean_ms"] <= d["mean_ms"] * d["n"]


def test_cli_json_and_output_file(capsys, tmp_path):
    out = tmp_path / "reports" / "bench.csv"
    code = main(["bench", "--model", "lenet5", "--batch-size", "2", "--mode", "infer", "--steps", "2", "--warmup", "0",
                 "--json", "--quiet", "--peak-seconds", "0.2", "--output", str(out), "--no-onnx"])  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    line, *_ = csv.DictReader(out.open())  # the file gets CSV (by its suffix) while stdout gets JSON
    assert float(line["mean_ms"]) == pytest.approx(data["results"][0]["mean_ms"], rel=1e-5)
    assert data["results"][0]["path"] == "default" and {r["batch_size"] for r in data["results"]} == {2}
    assert data["onnxruntime"] is None
    assert math.isclose(data["results"][0]["images_per_s"], 2 / (data["results"][0]["mean_ms"] / 1e3), rel_tol=1e-9)


def test_cli_config_trains_with_the_recipes_model_and_optimiser(capsys):
    argv = ["bench", "--config", "lenet5_digits", "--mode", "train", "--batch-size", "2", "--steps", "1", "--warmup",
            "0", "--json", "--quiet", "--peak-seconds", "0.2", "--precision", "fp32"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "lenet5" and data["config"]["recipe"] == "lenet5_digits"
    assert data["paths"]["default"]["optimizer"] == "Adam(fused)"  # the recipe's, fused as `train` runs it


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "lenet5", "--batch-size", "0"], "--batch-size '0'"),
        (["--model", "lenet5", "--batch-size", "a,b"], "--batch-size 'a,b'"),
        (["--model", "alexnet2013"], "unknown model 'alexnet2013'"),
        (["--model", "lenet5", "--onnx", "--mode", "train"], "--onnx compares inference"),
        (["--model", "lenet5", "--data", "/nonexistent/folder"], "--data /nonexistent/folder: no such"),
        (["--model", "lenet5", "--steps", "0"], "--steps >= 1"),
        (["--model", "lenet5", "--output", "report.txt"], "name a .json or .csv file"),
        (["--model", "lenet5", "--peak-seconds", "0"], "--peak-seconds must be positive"),
        (["--model", "lenet5", "--threads", "0"], "--threads must be at least 1"),
        (["--config", "no_such_recipe"], "no_such_recipe"),
        (["--mode", "train"], "bench needs a model: --model NAME"),
    ],
)
def test_cli_usage_errors(capsys, argv, message):
    assert main(["bench", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_l2_loss_step_takes_the_gradients_of_half_the_squared_pool5_without_an_optimizer_step():
    from classicnets.bench.steps import build_baseline_path, l2_loss_step

    torch.manual_seed(0)
    path = build_baseline_path(create_model("alexnet_tf_benchmark"), CPU)  # fp32, plain PyTorch
    x = torch.randn(2, 3, 57, 57)
    before = {n: p.detach().clone() for n, p in path.model.named_parameters()}
    l2_loss_step(path, x, CPU)()
    grads = {n: p.grad.clone() for n, p in path.model.named_parameters()}
    assert all(torch.equal(p, before[n]) for n, p in path.model.named_parameters())  # no optimizer step
    reference = create_model("alexnet_tf_benchmark")
    reference.load_state_dict(before)
    out = reference(x)
    (0.5 * (out**2).sum()).backward()  # tf.nn.l2_loss(pool5)
    for name, p in reference.named_parameters():  # the baseline path runs torch's LRN, the reference ours
        assert (grads[name] - p.grad).norm() <= 1e-5 * p.grad.norm(), name


def test_cli_times_the_tf_benchmark_network_as_its_tutorial_does(capsys):
    code = main(["bench", "--model", "alexnet_tf_benchmark", "--batch-size", "2", "--steps", "2", "--warmup", "1",
                 "--quiet", "--peak-seconds", "0.1", "--threads", "2"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:8] == [  # print_activations: batch x height x width x channels, before any timing
        "conv1   [2, 56, 56, 64]", "pool1   [2, 27, 27, 64]", "conv2   [2, 27, 27, 192]", "pool2   [2, 13, 13, 192]",
        "conv3   [2, 13, 13, 384]", "conv4   [2, 13, 13, 256]", "conv5   [2, 13, 13, 256]", "pool5   [2, 6, 6, 256]",
    ]  # fmt: skip
    assert any("no optimizer: train = gradients of sum(out ** 2) / 2" in line for line in out)
    tf_lines = [line for line in out if "across 2 steps" in line]
    assert [line.split(":")[1].split(" across")[0].strip() for line in tf_lines] == [
        "Forward", "Forward-backward (gradients of sum(pool5 ** 2) / 2, no optimizer step)"]  # fmt: skip
    assert all(line.endswith("sec / batch") and " +/- " in line for line in tf_lines)
