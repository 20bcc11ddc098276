"""The Trainer: one object holding a run's model, data, optimiser, schedule and progress, with the single steps
that train.py's loop strings together. train_start.py builds one (new run or --resume).

Under torchrun (ctx.enabled) the model trains wrapped in DistributedDataParallel (gradients averaged over the
processes), each process reads its shard (distributed.make_samplers), validation runs on the unwrapped model over
exact shards and its sums are all-reduced, and only process 0 writes (RunFolder).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from classicnets.config import Config
from classicnets.inference.metrics import ConfusionMatrix, MetricSums
from classicnets.models.base import ClassicNet
from classicnets.rng import capture_rng, mix_seed, restore_rng
from classicnets.runtime import autocast, prepare_model, to_input_layout
from classicnets.training.distributed import (
    DistContext,
    all_reduce_sum,
    any_process,
    describe,
    make_samplers,
    rank_seed,
    wrap_model,
)
from classicnets.training.optim import LRSchedule, build_optimizer
from classicnets.training.run_folder import EpochFiles, RunFolder
from classicnets.training.setup import (
    TrainingData,
    param_groups,
)
from classicnets.training.signals import StopRequest
from classicnets.training.state import Progress
from classicnets.weights.checkpoint import build_checkpoint

log = logging.getLogger(__name__)

# GoogLeNet's auxiliary classifiers: "their loss is added to the total loss with a discount weight 0.3"
# (Szegedy et al. 2015, section 5).
AUX_LOSS_WEIGHT = 0.3


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
        self.local_model = prepare_model(
            model, device, channels_last=cfg.train.channels_last, compile=cfg.train.compile
        )
        self.model = wrap_model(self.local_model, ctx, device, sync_bn=cfg.train.sync_bn)
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
        train_samples = len(samplers["train"]) if samplers.get("train") is not None else len(data.train)
        self.train_loader = make_loader(
            data.train,
            train=True,
            recipe=cfg.data.augment,
            drop_last=train_samples >= cfg.train.batch_size,
            max_bad_fraction=cfg.data.max_bad_fraction,
            sampler=samplers.get("train"),
            seed=self.random_seed,
            empty_batches=True,  # every process must see every step, to agree on skipping one (train_steps)
            **common,
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
        self.train_transform = BatchTransform(
            pre, train=True, pca_std=cfg.data.pca_std, channels_last=channels_last, seed=self.random_seed
        )
        self.eval_transform = BatchTransform(pre, train=False, channels_last=channels_last)
        self.optimizer = build_optimizer(param_groups(model, cfg), cfg.optim)
        self.schedule = LRSchedule(
            cfg.schedule, base_lr=cfg.optim.lr, epochs=cfg.train.epochs, steps_per_epoch=len(self.train_loader)
        )
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        self.resume_from = resume_from
        self.saved_current = resume_from is not None  # last.pt already holds the current state
        # (completed epochs, steps into the next) that last.pt holds; None while the run has no last.pt
        self.saved_at: tuple[int, int] | None = (state.epoch, state.step_in_epoch) if resume_from else None

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
        self.optimizer.load_state_dict(ckpt["optimizer"])
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
        taking the step, and the generator ends.
        """
        self.model.train()
        keep_frozen_norms_fixed(self.model)
        self.train_loader.set_epoch(epoch)
        self.train_transform.set_epoch(epoch)
        if start >= len(self.train_loader):
            return
        if start:
            log.info("skipping the %d batches of epoch %d trained before the stop", start, epoch + 1)
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
            with autocast(self.device, self.precision):
                logits, loss = self.forward_loss(x, labels)
            loss_value = float(loss.detach())  # one sync per step: the NaN check and the progress bar need it
            if self.agree(not math.isfinite(loss_value)):  # every process stops at the same step
                yield (loss_value if not math.isfinite(loss_value) else math.nan), None, None  # nan: another process's
                return
            self.backward_and_step(loss)
            self.state.step_in_epoch = i + 1
            self.state.global_step += 1
            self.saved_current = False
            yield loss_value, logits.detach(), labels

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Gradients (scaled for fp16), optional clipping of their norm, one optimiser step."""
        clip = self.config.optim.grad_clip
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()

    def forward_loss(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(x)
        if isinstance(output, tuple):  # GoogLeNet in training mode: (logits, aux2, aux1)
            logits, *aux = output
            loss = self.criterion(logits, labels)
            loss = loss + AUX_LOSS_WEIGHT * sum(self.criterion(a, labels) for a in aux if a is not None)
            return logits, loss
        return output, self.criterion(output, labels)

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
        """Record the epoch, step the plateau schedule, and write its files (RunFolder.write_epoch: last.pt last)."""
        state = self.state
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
        improved = state.is_better(row["val_top1"], row["val_loss"])
        if improved:
            state.best = {"epoch": row["epoch"], "val_top1": row["val_top1"], "val_loss": row["val_loss"]}
        files = EpochFiles(
            last=self.last_checkpoint(),  # first: it captures the RNG states before anything else runs
            history=[dict(r) for r in state.history],
            confusion=confusion.to_list(),
            classes=self.data.classes,
            best=self.best_checkpoint() if improved else None,
        )
        self.run_folder.write_epoch(files)
        self.saved_current, self.saved_at = True, (state.epoch, 0)

    # --- checkpoints ------------------------------------------------------------------------------------------

    def last_checkpoint(self) -> dict[str, Any]:
        """last.pt: the weights, the optimiser, schedule and scaler states, every RNG, and the progress."""
        return build_checkpoint(
            self.raw_model,
            classes=self.data.classes,
            config=self.config.to_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
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

    def best_checkpoint(self) -> dict[str, Any]:
        """best.pt: the weights and what eval/predict need, without the optimiser state (half the size)."""
        return build_checkpoint(
            self.raw_model,
            classes=self.data.classes,
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


def keep_frozen_norms_fixed(model: nn.Module) -> None:
    """BatchNorm layers whose weights are frozen (fine-tuning) stay in eval mode, so their running statistics stay
    those of the pretrained weights too (what torchvision's FrozenBatchNorm2d and timm's freeze() achieve)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
