"""`bench --data DIR`: the training step fed by the loader `train` builds (training.trainer.make_train_loader and
make_train_transform, with the recipe's augmentation under `--config`), against the same step on a synthetic
batch."""

from __future__ import annotations

import time
from typing import Any

import torch

from classicnets.bench.settings import BenchConfig
from classicnets.bench.steps import TimedPath, infer_step, train_step
from classicnets.bench.timing import Stats, synchronize, time_interleaved
from classicnets.config import Config, resolve_config
from classicnets.models.base import unwrap_model


def loader_config(cfg: BenchConfig, batch: int) -> Config:
    """The run config whose loader is timed: the recipe's (or the defaults) at this batch size, bench's workers
    and seed."""
    config = resolve_config(cfg.recipe)
    config.train.batch_size, config.data.workers, config.train.seed = batch, cfg.workers, cfg.seed
    return config


def time_data_loader(
    path: TimedPath, cfg: BenchConfig, batch: int, device: torch.device, *, quiet: bool
) -> dict[str, Any]:
    """The training (or inference) step fed by the real loader on `cfg.data`, against the same step on a
    synthetic batch already in memory, interleaved batch by batch."""
    from classicnets.data import BatchTransform, make_loader, open_dataset, source_splits
    from classicnets.training.trainer import make_train_loader, make_train_transform

    model = unwrap_model(path.model)
    preprocessing = model.preprocessing
    split = "train" if "train" in source_splits(str(cfg.data)) else None  # CIFAR, a .npz: their training split
    dataset = open_dataset(str(cfg.data), in_chans=preprocessing.input_size[0], split=split)
    mode = "train" if "train" in cfg.modes else "infer"
    train = mode == "train"
    run = loader_config(cfg, batch)
    channels_last = path.info.channels_last
    if train:  # what `train` reads and transforms (Trainer)
        loader = make_train_loader(dataset, run, preprocessing=preprocessing, device=device, seed=cfg.seed)
        transform = make_train_transform(preprocessing, run, channels_last=channels_last, seed=cfg.seed)
    else:
        loader = make_loader(
            dataset, preprocessing=preprocessing, train=False, batch_size=batch, workers=cfg.workers, seed=cfg.seed,
            device=device,
        )  # fmt: skip
        transform = BatchTransform(preprocessing, train=False, channels_last=channels_last)
    num_classes = model.num_classes
    path.model.train(train)

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            transform.set_epoch(epoch)
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
        while len(labels) == 0:  # a batch whose every file failed: the Trainer skips it too
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
