"""The Trainer: one object holding a run's model, data, optimiser, schedule and progress, with the single steps
that train.py's loop strings together. train_start.py builds one (new run or --resume).

Under torchrun (ctx.enabled) the model trains wrapped in DistributedDataParallel (gradients averaged over the
processes), each process reads its shard (distributed.make_samplers), validation runs on the unwrapped model over
exact shards and its sums are all-reduced, and only process 0 writes (RunFolder).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from classicnets.config import Config
from classicnets.inference.metrics import ConfusionMatrix, MetricSums
from classicnets.models.base import ClassicNet
from classicnets.rng import capture_rng, mix_seed, restore_rng
from classicnets.runtime import to_input_layout
from classicnets.training.distributed import (
    DistContext,
    all_reduce_sum,
    any_process,
    describe,
    make_samplers,
    rank_seed,
    wrap_model,
)
from classicnets.training.optim import LRSchedule
from classicnets.training.run_folder import EpochFiles, RunFolder
from classicnets.training.setup import (
    TrainingData,
    param_groups,
)
from classicnets.training.signals import StopRequest
from classicnets.training.state import Progress
from classicnets.training.step import prepare_training
from classicnets.training.writer import cpu_copy
from classicnets.weights.checkpoint import build_checkpoint

log = logging.getLogger(__name__)

class Trainer:
    def __init__(
        self,
        config: Config,
        *,
        device: torch.device,
        precision: str,
        data: TrainingData,
        model: ClassicNet,
        run_folder: RunFolder,
        state: Progress,
        ctx: DistContext,
        resume_from: dict[str, Any] | None = None,
        samplers: dict[str, Any] | None = None,
    ) -> None:
        from classicnets.data import BatchTransform, make_loader

        self.config, self.device, self.precision, self.data, self.ctx = config, device, precision, data, ctx
        self.run_folder, self.state = run_folder, state
        self.raw_model = model
        cfg = config
        # local_model: on this process's device (maybe compiled), for validation and the input layout;
        # model: what trains, the same module in DistributedDataParallel under torchrun.
        # The step (training.step): the same preparation, fused optimiser, autocast and loss `bench` times.
        self.step = prepare_training(
            model, cfg.optim, device=device, precision=precision, channels_last=cfg.train.channels_last,
            compile=cfg.train.compile, params=param_groups(model, cfg),
            wrap=lambda local: wrap_model(local, ctx, device, sync_bn=cfg.train.sync_bn),
        )  # fmt: skip
        self.local_model, self.model = self.step.local_model, self.step.model
        self.optimizer, self.scaler, self.criterion = self.step.optimizer, self.step.scaler, self.step.criterion
        channels_last = bool(getattr(model, "channels_last", False))
        pre = model.preprocessing
        # Random augmentation and dropout draw from a per-process seed under torchrun (distributed.rank_seed);
        # the sample order from the run's seed (TrainSampler), the same on every process.
        self.random_seed = rank_seed(cfg.train.seed, ctx)
        common: dict[str, Any] = {"preprocessing": pre, "batch_size": cfg.train.batch_size,
                                  "workers": cfg.data.workers, "device": device, "cache": cfg.data.cache}  # fmt: skip
        # `samplers` ({"train": ..., "val": ...}): under torchrun a TrainSampler (a DistributedSampler) and an exact
        # evaluation shard (ShardSampler); None in a single process keeps the loaders' own order.
        if samplers is None and ctx.enabled:
            samplers = make_samplers(ctx, train_size=len(data.train), val_size=len(data.val),
                                     batch_size=cfg.train.batch_size, seed=cfg.train.seed)  # fmt: skip
        samplers = samplers or {}
        self.train_loader = make_train_loader(
            data.train, cfg, preprocessing=pre, device=device, seed=self.random_seed, sampler=samplers.get("train")
        )
        self.val_loader = make_loader(
            data.val,
            train=False,
            max_bad_fraction=cfg.data.max_bad_fraction,
            sampler=samplers.get("val"),
            seed=cfg.train.seed,
            **common,
        )
        self._record_data_path()
        self.train_transform = make_train_transform(pre, cfg, channels_last=channels_last, seed=self.random_seed)
        self.eval_transform = BatchTransform(pre, train=False, channels_last=channels_last)
        self.schedule = LRSchedule(
            cfg.schedule, base_lr=cfg.optim.lr, epochs=cfg.train.epochs, steps_per_epoch=len(self.train_loader)
        )
        self.resume_from = resume_from
        self.saved_current = resume_from is not None  # last.pt already holds the current state
        # (completed epochs, steps into the next) that last.pt holds; None while the run has no last.pt
        self.saved_at: tuple[int, int] | None = (state.epoch, state.step_in_epoch) if resume_from else None
        self.times: dict[str, float] = {"data_s": 0.0, "compute_s": 0.0}  # of the epoch being trained (train_steps)
        self._snapshot: Any = None  # the last CPU copy handed to the writer (copy_for_writing refills it)
        self._last_written = time.monotonic()  # when last.pt was last handed to the writer (or the run began)

    def _record_data_path(self) -> None:
        """Write down what the loaders chose, so config.yaml and a resume reproduce it: data.cache auto becomes
        always or never; on a CPU without the cache, the model's threads leave the decoding workers their cores."""
        from classicnets.data import CachedLoader, Loader
        from classicnets.process_env import cores_per_process

        cfg = self.config
        if cfg.data.cache == "auto":
            cfg.data.cache = "always" if isinstance(self.train_loader, CachedLoader) else "never"
        decoding = isinstance(self.train_loader, Loader) and not isinstance(self.train_loader, CachedLoader)
        if decoding and cfg.data.workers and cfg.train.threads is None and self.device.type == "cpu":
            cfg.train.threads = max(1, cores_per_process() - cfg.data.workers)

    # --- the loop's building blocks -----------------------------------------------------------------------------

    def begin(self) -> None:
        """Write the run folder's first files (new run) or restore the optimiser, schedule and RNGs (resume)."""
        cfg = self.config
        if self.ctx.enabled:
            log.info("torchrun: %s", describe(self.ctx, cfg.train.batch_size))
        if self.resume_from is None:
            self.run_folder.write_start(cfg.to_yaml(), self.data.classes, self.data.split)
            self._open_logs()
            log.info(
                "run folder %s (%s, %d epochs, %s, %s)",
                self.run_folder.path,
                cfg.model.name,
                cfg.train.epochs,
                self.device,
                self.precision,
            )
            return
        ckpt = self.resume_from
        fused = self.optimizer.defaults.get("fused")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # the saved groups' options replace these: keep this device's step
            group["fused"] = fused
        self.schedule.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.run_folder.write_start(cfg.to_yaml(), self.data.classes, self.data.split)  # epochs may have changed
        self._open_logs()
        restore_rng(ckpt["rng"])  # last: nothing may draw random numbers between this and the first step
        self.resume_from = None
        state = self.state
        log.info("resuming %s at epoch %d, step %d", self.run_folder.path, state.epoch + 1, state.step_in_epoch)

    def _open_logs(self) -> None:
        self.run_folder.record_command()
        if self.config.train.tensorboard:
            self.run_folder.open_tensorboard(first_epoch=self.state.epoch)

    def train_steps(self, epoch: int, *, start: int = 0) -> Iterator[tuple[float, Any, Any]]:
        """Train one epoch from step `start` (earlier batches are drawn and skipped, so the order is unchanged).

        Yields (loss, logits, labels) after every optimisation step; a non-finite loss is yielded without
        taking the step, and the generator ends. `self.times` adds up where the epoch's time goes: data_s (waiting
        for the loader, the copy to the device, the batch transform) and compute_s (forward, loss, backward, step;
        on a GPU the step's last kernels may still run during the next wait); the caller's time between steps
        (metrics, progress bar) is in neither.
        """
        self.times = {"data_s": 0.0, "compute_s": 0.0}
        self.model.train()
        keep_frozen_norms_fixed(self.model)
        self.train_loader.set_epoch(epoch)
        self.train_transform.set_epoch(epoch)
        if start >= len(self.train_loader):
            return
        if start:
            log.info("skipping the %d batches of epoch %d trained before the stop", start, epoch + 1)
        mark = time.perf_counter()
        for i, (images, labels) in enumerate(self.train_loader):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            x = self.train_transform(images)  # also for skipped batches: it draws the PCA noise of this batch
            if i < start:
                continue
            # A batch whose every file failed (0 images) is skipped, under torchrun by every process at once: a
            # process that skipped alone would leave the others waiting in the gradient all-reduce.
            if self.agree(len(labels) == 0):
                log.warning("skipped step %d of epoch %d: every file of a batch failed", i + 1, epoch + 1)
                continue
            x = to_input_layout(x, self.local_model)
            if self.ctx.enabled:
                # This process's dropout masks: drawn from (its seed, step), so they differ between processes
                # and a resumed run draws the same ones as an uninterrupted run.
                torch.manual_seed(mix_seed(self.random_seed, self.state.global_step))
            self.schedule.apply(self.optimizer, epoch, i)
            mark = self._add_time("data_s", mark)
            logits, loss = self.forward_loss(x, labels)  # under autocast (training.step)
            loss_value = float(loss.detach())  # one sync per step: the NaN check and the progress bar need it
            if self.agree(not math.isfinite(loss_value)):  # every process stops at the same step
                yield (loss_value if not math.isfinite(loss_value) else math.nan), None, None  # nan: another process's
                return
            self.backward_and_step(loss)
            self.state.step_in_epoch = i + 1
            self.state.global_step += 1
            self.saved_current = False
            self._add_time("compute_s", mark)
            yield loss_value, logits.detach(), labels
            mark = time.perf_counter()

    def _add_time(self, key: str, since: float) -> float:
        """Add the time since `since` to self.times[key]; returns now."""
        now = time.perf_counter()
        self.times[key] += now - since
        return now

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.step.backward_and_step(loss)

    def forward_loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step.forward_loss(x, labels)

    def validate(self, stop: StopRequest) -> tuple[MetricSums, ConfusionMatrix] | None:
        """Loss, top-1/top-5 and the confusion matrix on the validation set; None when a stop came first."""
        from classicnets.inference.evaluation import evaluate_loader

        # The unwrapped model: DistributedDataParallel would synchronise BatchNorm buffers at every forward, and
        # the shards may hold one batch more on some processes than on others. For the same reason a stop is
        # checked locally during validation and agreed on once afterwards.
        result = evaluate_loader(
            self.local_model,
            self.val_loader,
            self.eval_transform,
            device=self.device,
            precision=self.precision,
            num_classes=len(self.data.classes),
            should_stop=lambda: stop.requested,
        )
        if self.agree(result is None) or result is None:
            return None
        center = result["center"]
        counts = all_reduce_sum(self.ctx, center.confusion.counts)
        return self.reduce(center.sums), ConfusionMatrix(center.confusion.num_classes, counts)

    def end_epoch(self, row: dict[str, float], confusion: ConfusionMatrix) -> None:
        """Record the epoch, step the plateau schedule, and write its files in the background (RunFolder.write_epoch:
        last.pt last, when `writes_last` says so) from a CPU copy of the state taken now."""
        state = self.state
        write_last = self.writes_last()
        improved = state.is_better(row["val_top1"], row["val_loss"])
        copy = self.copy_for_writing(row, full=write_last, weights=write_last or improved)  # sets row["save_s"]
        state.history.append(row)
        state.epoch += 1
        state.step_in_epoch, state.partial, state.partial_seconds = 0, [0.0] * 4, 0.0
        if self.schedule.end_epoch(1.0 - row["val_top1"]):
            log.info(
                "validation error stopped improving: lr x %g (decay %d of at most %d)",
                self.config.schedule.factor,
                self.schedule.decays,
                self.config.schedule.max_decays,
            )
        if improved:
            state.best = {"epoch": row["epoch"], "val_top1": row["val_top1"], "val_loss": row["val_loss"]}
        if self.run_folder.is_main:
            files = EpochFiles(
                # first: last_checkpoint captures the RNG states before anything else runs
                last=self.last_checkpoint(copy) if write_last else None,
                history=[dict(r) for r in state.history],
                confusion=confusion.to_list(),
                classes=self.data.classes,
                best=self.best_checkpoint(copy["state_dict"]) if improved else None,
            )
            self.run_folder.write_epoch_in_background(files)  # training goes on while it writes
        self.saved_current = write_last
        if write_last:
            self.saved_at, self._last_written = (state.epoch, 0), time.monotonic()

    def writes_last(self) -> bool:
        """Whether the epoch now ending writes last.pt: the run's first epoch (a folder with finished epochs always
        resumes), its final one, and any epoch ending train.checkpoint_minutes or more after the previous last.pt
        (0: every epoch). A 0.7 GB last.pt (AlexNet with Adam) written every epoch of a small data set slowed the
        epochs after it by a fifth while it went to disk (docs/benchmarks.md). Agreed by every process, which must
        all know whether last.pt holds the current state (a stop then saves it together)."""
        minutes = self.config.train.checkpoint_minutes
        due = (
            minutes <= 0
            or self.saved_at is None
            or self.state.epoch + 1 >= self.config.train.epochs
            or time.monotonic() - self._last_written >= 60 * minutes
        )
        return self.agree(due)

    def copy_for_writing(self, row: dict[str, float], *, full: bool, weights: bool) -> dict[str, Any]:
        """Wait for the previous epoch's background write (raising its error), then copy to the CPU the weights
        (`weights`) and, for last.pt (`full`), the optimiser and scaler states too; row["save_s"] = the time
        training stood still for both."""
        started = time.perf_counter()
        self.run_folder.wait_for_writes()
        copy: dict[str, Any] = {"state_dict": None, "optimizer": None, "scaler": None}
        if self.run_folder.is_main and (full or weights):
            live: dict[str, Any] = {"state_dict": self.raw_model.state_dict()}
            if full:
                live["optimizer"] = self.optimizer.state_dict()
                live["scaler"] = self.scaler.state_dict() if self.scaler is not None else None
            # the previous copy is written now (wait_for_writes): its buffers are refilled, not reallocated
            fresh = cpu_copy(live, into=self._snapshot)
            copy.update(fresh)
            self._snapshot = {**(self._snapshot or {}), **fresh}  # an epoch without last.pt keeps the optimiser's
        row["save_s"] = time.perf_counter() - started
        return copy

    # --- checkpoints ------------------------------------------------------------------------------------------

    def last_checkpoint(self, copy: dict[str, Any] | None = None) -> dict[str, Any]:
        """last.pt: the weights, the optimiser, schedule and scaler states, every RNG, and the progress.
        `copy`: copy_for_writing's copies of the weights, optimiser and scaler states (default: the live ones)."""
        if copy is None:
            copy = {"state_dict": None, "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None}  # fmt: skip
        return build_checkpoint(
            self.raw_model,
            classes=self.data.classes,
            state_dict=copy["state_dict"],
            config=self.config.to_dict(),
            optimizer=copy["optimizer"],
            scheduler=self.schedule.state_dict(),
            scaler=copy["scaler"],
            rng=capture_rng(),
            new_layers=list(getattr(self.raw_model, "new_layers", [])),
            world_size=self.ctx.world_size,  # a mid-epoch resume needs as many processes (train_start)
            **self.state.to_checkpoint(),
        )

    def save_last(self) -> None:
        """Save last.pt now (a stop between epochs or mid-epoch)."""
        self.run_folder.save("last", self.last_checkpoint())
        self.saved_current, self.saved_at = True, (self.state.epoch, self.state.step_in_epoch)

    def save_last_if_finite(self) -> bool:
        """Save last.pt when every weight is finite (the loss can overflow before the weights do)."""
        if all(bool(torch.isfinite(p).all()) for p in self.raw_model.parameters()):
            self.save_last()
            return True
        return False

    def best_checkpoint(self, state_dict: dict[str, Any] | None = None) -> dict[str, Any]:
        """best.pt: the weights (`state_dict`, a copy, or the live ones) and what eval/predict need, without the
        optimiser state (half the size)."""
        return build_checkpoint(
            self.raw_model,
            classes=self.data.classes,
            state_dict=state_dict,
            config=self.config.to_dict(),
            epoch=self.state.epoch,
            metrics=[dict(r) for r in self.state.history],
            best=dict(self.state.best),
        )

    # --- progress bar and process agreement --------------------------------------------------------------------

    def progress_bar(self, epoch: int, *, enabled: bool):
        from tqdm import tqdm

        return tqdm(
            total=len(self.train_loader),
            initial=self.state.step_in_epoch,
            unit="step",
            leave=False,
            desc=f"epoch {epoch + 1}/{self.config.train.epochs}",
            disable=not (enabled and self.ctx.is_main),
            dynamic_ncols=True,
            mininterval=0.5,
        )

    @staticmethod
    def update_bar(bar, sums: MetricSums, seconds: float) -> None:
        bar.update(1)
        if not bar.disable:
            rate = sums.count / seconds if seconds > 0 else 0.0
            text = f"loss {sums.loss:.4f}, acc {100 * sums.top1:.1f}%, {rate:.0f} img/s"
            bar.set_postfix_str(text, refresh=bar.n == bar.total)  # the epoch's final numbers are always drawn

    def agree(self, flag: bool) -> bool:
        """True on every process when any process has `flag` (a stop request): they stop at the same step."""
        return any_process(self.ctx, flag)

    def reduce(self, sums: MetricSums) -> MetricSums:
        return MetricSums(all_reduce_sum(self.ctx, sums.values))

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def make_train_loader(
    dataset: Any, cfg: Config, *, preprocessing: Any, device: torch.device, seed: int, sampler: Any = None
) -> Any:
    """The training loader of a run with config `cfg` (also what `bench --data` times): the recipe's batch size,
    workers and augmentation; `seed` draws the augmentation; `sampler` is the torchrun shard (None: all samples)."""
    from classicnets.data import make_loader

    samples = len(sampler) if sampler is not None else len(dataset)
    return make_loader(
        dataset,
        preprocessing=preprocessing,
        train=True,
        batch_size=cfg.train.batch_size,
        workers=cfg.data.workers or 0,
        device=device,
        cache=cfg.data.cache,  # decode cache (docs/data.md): auto builds it before the first epoch
        recipe=cfg.data.augment,
        drop_last=samples >= cfg.train.batch_size,
        max_bad_fraction=cfg.data.max_bad_fraction,
        sampler=sampler,
        seed=seed,
        empty_batches=True,  # every process must see every step, to agree on skipping one (train_steps)
    )


def make_train_transform(preprocessing: Any, cfg: Config, *, channels_last: bool, seed: int) -> Any:
    """The training batch transform of a run with config `cfg` (on the device: float, PCA lighting, normalise)."""
    from classicnets.data import BatchTransform

    return BatchTransform(preprocessing, train=True, pca_std=cfg.data.pca_std, channels_last=channels_last, seed=seed)


def keep_frozen_norms_fixed(model: nn.Module) -> None:
    """BatchNorm layers whose weights are frozen (fine-tuning) stay in eval mode, so their running statistics stay
    those of the pretrained weights too (what torchvision's FrozenBatchNorm2d and timm's freeze() achieve)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
