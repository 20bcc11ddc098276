"""The two optional parts of `classicnets bench`: onnxruntime on our exported model at batch 1, and the real data
loader feeding the training step."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Any

import torch

from classicnets.errors import UsageError
from classicnets.peak import Stats, synchronize, time_interleaved

if TYPE_CHECKING:
    from classicnets.bench import BenchConfig, Path

log = logging.getLogger(__name__)


def compare_onnxruntime(
    path: Path, x: torch.Tensor, device: torch.device, cfg: BenchConfig, *, required: bool, quiet: bool
) -> dict[str, Any]:
    """Batch-1 inference: our default path against onnxruntime (CPU provider, as many threads as torch uses)
    running the same weights exported with classicnets.weights.export (torch.onnx's dynamo exporter), interleaved.
    """
    try:
        import onnxruntime
    except ImportError:
        if required:
            raise UsageError("--onnx needs onnxruntime: pip install 'classicnets[onnx]'") from None
        return {"skipped": "onnxruntime is not installed"}
    if device.type != "cpu":
        return {"skipped": f"onnxruntime's CPU provider is compared with CPU runs only (this run is on {device})"}
    from classicnets.weights.export import export

    model = getattr(path.model, "_orig_mod", path.model)
    fp32_copy = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    with tempfile.TemporaryDirectory(prefix="classicnets-bench-") as tmp:
        onnx_file = FilePath(tmp) / f"{cfg.model}.onnx"
        start = time.perf_counter()
        export(fp32_copy, onnx_file, fmt="onnx", verify=False)
        export_s = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Spinning workers would keep burning the cores for a while after each run, into our interleaved turn;
        # without spinning onnxruntime itself measured as fast or faster here (48 vs 65 ms at load 3, 2 threads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    del fp32_copy
    feed = {"input": x[:1].float().cpu().numpy()}
    ours_input = path.to_input(x[:1])
    grad_off = torch.no_grad if path.info.compiled else torch.inference_mode
    from classicnets import runtime

    def ours() -> None:
        with grad_off(), runtime.autocast(device, path.info.precision):
            path.model(ours_input)

    def ort() -> None:
        session.run(None, feed)

    stats = time_interleaved({"ours": ours, "ort": ort}, warmup=cfg.warmup, steps=cfg.steps, device=device)
    return {
        "batch_size": 1,
        "onnxruntime_version": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
        "onnxruntime_options": "CPUExecutionProvider, intra_op_num_threads = torch threads, allow_spinning 0",
        "ours_path": path.info.describe(),
        **{f"ours_{k}": v for k, v in stats["ours"].to_ms().items()},
        **{f"onnxruntime_{k}": v for k, v in stats["ort"].to_ms().items()},
        "ratio": stats["ort"].mean / stats["ours"].mean,
        "ratio_median": stats["ort"].median / stats["ours"].median,
        "export": f"classicnets.weights.export (torch.onnx dynamo exporter, fp32, {export_s:.0f} s)",
    }


def time_data_loader(path: Path, cfg: BenchConfig, batch: int, device: torch.device, *, quiet: bool) -> dict[str, Any]:
    """The training (or inference) step fed by the real loader on `cfg.data`, against the same step on a
    synthetic batch already in memory, interleaved batch by batch."""
    from classicnets.bench import infer_step, train_step
    from classicnets.data import BatchTransform, make_loader, open_dataset

    model = getattr(path.model, "_orig_mod", path.model)
    preprocessing = model.preprocessing
    dataset = open_dataset(cfg.data, in_chans=preprocessing.input_size[0])
    mode = "train" if "train" in cfg.modes else "infer"
    train = mode == "train"
    loader = make_loader(
        dataset, preprocessing=preprocessing, train=train, batch_size=batch, workers=cfg.workers, seed=cfg.seed,
        drop_last=len(dataset) >= batch, device=device,
    )  # fmt: skip
    transform = BatchTransform(preprocessing, train=train, channels_last=path.info.channels_last)
    num_classes = model.num_classes
    path.model.train(train)

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    wait: list[float] = []
    synthetic_x = torch.randn(batch, *preprocessing.input_size, device=device)
    synthetic_y = torch.randint(0, num_classes, (batch,), device=device)
    synthetic = (infer_step if not train else lambda p, x, d: train_step(p, x, synthetic_y, d))(
        path, synthetic_x, device
    )

    def fed() -> None:
        start = time.perf_counter()
        images, labels = next(stream)
        x = transform(images.to(device, non_blocking=True))
        synchronize(device)
        wait.append(time.perf_counter() - start)
        labels = labels.to(device) % num_classes  # the data's classes need not match the model's head
        step = train_step(path, x, labels, device) if train else infer_step(path, x, device)
        step()

    stats = time_interleaved({"data": fed, "synthetic": synthetic}, warmup=cfg.warmup, steps=cfg.steps, device=device)
    data, synth = stats["data"], stats["synthetic"]
    timed_wait = Stats.of(wait[-cfg.steps :])
    return {
        "source": str(cfg.data),
        "images": len(dataset),
        "workers": cfg.workers,
        "batch_size": batch,
        "mode": mode,
        **data.to_ms(),
        "images_per_s": batch / data.mean,
        "wait_mean_ms": timed_wait.mean * 1e3,
        "synthetic_mean_ms": synth.mean * 1e3,
        "slowdown": data.mean / synth.mean,
    }
