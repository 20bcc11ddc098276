"""torchrun / DistributedDataParallel glue: which process this is, sharding, reductions, rank-0-only writing.

classicnets never starts processes itself: `torchrun --nproc-per-node N -m classicnets train ...` starts them and
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them. Without those
variables everything here degrades to a single process (rank 0 of 1) at no cost.

Training order: `TrainSampler` gives process r of w the samples r, r + w, r + 2w, ... of the permutation the
single-process loader would use for that epoch, so with batch b per process, global batch k is exactly the
single-process batch k of size b * w (same seed): the sample order depends on (seed, epoch), not on the world size.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from classicnets.errors import ClassicNetsError, DataError, UsageError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a collective may wait for a slow peer before failing. Rank 0 alone writes checkpoints and plots while the
# others wait at the next collective, so this must cover a large checkpoint write; a dead peer is detected much
# sooner (torchrun notices the exit within seconds and stops the other workers).
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class PeerLost(ClassicNetsError):
    """Another process of the job failed or was killed: a collective operation could not complete (exit code 1)."""


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); a plain run gets a 1-process context.

    On CUDA each process uses the GPU of its LOCAL_RANK, and `device` should then be `context_device(ctx, device)`.
    """
    if not launched_by_torchrun():
        return DistContext()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("CLASSICNETS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        try:
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError) as e:  # DistNetworkError, DistStoreError (timeouts), bad variables
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise PeerLost(
                f"process {rank} of {world_size} could not join the process group at {where} ({backend}): "
                f"{first_line(e)}"
            ) from None
    ctx = DistContext(rank, world_size, local_rank, backend)
    log.debug("process %d of %d (local rank %d, backend %s)", rank, world_size, local_rank, backend)
    return ctx


def context_device(ctx: DistContext, device: torch.device) -> torch.device:
    """The device this process should use: its own GPU under torchrun on CUDA, else `device` unchanged."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def shutdown(ctx: DistContext | None = None) -> None:
    """Leave the process group (`ctx` None: whichever this process joined, e.g. inside `fit`)."""
    if (ctx is None or ctx.enabled) and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `values` over all processes (float64 on the CPU for gloo, in place on a copy)."""
    if not ctx.enabled:
        return values
    reduced = values.detach().to(
        device=_collective_device(ctx), dtype=torch.float64 if values.is_floating_point() else torch.int64
    )
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(values.device)


def any_process(ctx: DistContext, flag: bool) -> bool:
    """True on every process when `flag` is true on at least one: all ranks agree when to stop (SIGTERM, NaN)."""
    if not ctx.enabled:
        return flag
    return bool(all_reduce_sum(ctx, torch.tensor([1 if flag else 0])).item() > 0)


def _collective_device(ctx: DistContext) -> torch.device:
    return torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else torch.device("cpu")


def broadcast_object(ctx: DistContext, obj: object) -> object:
    """Rank 0's `obj` on every process (e.g. a validation split chosen once)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_by_main(ctx: DistContext, decide: Callable[[], T]) -> T:
    """`decide()` run on process 0 only (e.g. choosing the run folder it alone creates), its answer on every
    process; a ClassicNetsError it raises is raised on every process, so none is left waiting."""
    if not ctx.enabled:
        return decide()
    outcome: tuple[object, ClassicNetsError | None] = (None, None)
    if ctx.is_main:
        try:
            outcome = (decide(), None)
        except ClassicNetsError as e:
            outcome = (None, e)
    value, error = cast(tuple[T, ClassicNetsError | None], broadcast_object(ctx, outcome))
    if error is not None:
        raise error
    return value


def check_same_everywhere(ctx: DistContext, what: str, value: object) -> None:
    """Raise DataError on every process when `value` (small, picklable) is not the same on all of them.

    Each machine reads its own copy of the data: a copy with other files would silently train on another split
    (validation images leaking into training), so the processes compare what they found before the first step.
    """
    if not ctx.enabled:
        return
    values: list[object] = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    for rank, other in enumerate(values):
        if other != values[0]:
            raise DataError(
                f"{what} differs between processes: process 0 has {values[0]}, process {rank} has {other}; "
                "every machine needs the same data at --data"
            )


def data_fingerprint(classes: Sequence[str], train_size: int, val_size: int, split: dict) -> str:
    """A short summary of a training set for `check_same_everywhere` (paths left out: they may differ per machine)."""
    held_out = split.get("val_indices", [])
    crc = zlib.crc32(repr((list(classes), list(held_out))).encode())
    return f"{len(classes)} classes, {train_size} training and {val_size} validation images (checksum {crc:08x})"


def rank_seed(seed: int, ctx: DistContext) -> int:
    """The seed of this process's random augmentation and dropout: `seed` alone in a single process; under torchrun
    mixed with the rank, so the processes do not draw the same crops, noise and dropout masks for their samples."""
    if not ctx.enabled:
        return seed
    from classicnets.rng import mix_seed

    return mix_seed(seed, ctx.rank, 0x5EED)


class TrainSampler(DistributedSampler):
    """DistributedSampler whose epoch order is the single-process loader's permutation (seed, epoch).

    torch's DistributedSampler shuffles with `seed + epoch`; the single-process loader
    (classicnets.data.epoch_loader.EpochLoaderBase.epoch_indices) with `mix_seed(seed, epoch, 0)`. Using the same
    permutation, process r taking every w-th sample from r, makes global batch k (b per process) the
    single-process batch k of b * w samples. Padding (drop_last=False) and truncation (drop_last=True) follow
    DistributedSampler, so every process gets the same number of samples and steps.
    """

    def __init__(self, size: int, *, rank: int, world_size: int, seed: int, drop_last: bool) -> None:
        # DistributedSampler only takes len() of its data set: a range of indices stands in for it.
        super().__init__(
            range(size),  # type: ignore[arg-type]
            num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_last,
        )  # fmt: skip

    def __iter__(self) -> Iterator[int]:
        from classicnets.rng import mix_seed

        n = len(self.dataset)  # type: ignore[arg-type]  # the range given to __init__
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0))  # as epoch_indices
        order = torch.randperm(n, generator=generator).tolist()
        order = (order * math.ceil(self.total_size / n))[: self.total_size]  # pads or truncates
        return iter(order[self.rank : self.total_size : self.num_replicas])


def make_samplers(
    ctx: DistContext, *, train_size: int, val_size: int, batch_size: int, seed: int
) -> dict[str, Sampler[int]]:
    """{"train": TrainSampler, "val": ShardSampler} for this process (Trainer's `samplers`).

    The last incomplete global batch is dropped, as the single-process loader drops its last incomplete batch:
    with n samples, w processes and b per process, every process runs n // (b * w) steps. A set smaller than one
    global batch is padded instead (one step).
    """
    drop_last = train_size >= batch_size * ctx.world_size
    train = TrainSampler(train_size, rank=ctx.rank, world_size=ctx.world_size, seed=seed, drop_last=drop_last)
    return {"train": train, "val": ShardSampler(val_size, rank=ctx.rank, world_size=ctx.world_size)}


def is_collective_failure(error: BaseException) -> bool:
    """A collective that failed because a peer is gone: torch raises DistError subclasses for NCCL and the stores,
    and a plain RuntimeError from gloo ("[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer")."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo" in str(error))


class ShardSampler(Sampler[int]):
    """Evaluation sampler: process r of w takes indices r, r + w, r + 2w, ... with no padding.

    torch's DistributedSampler pads the last round with repeated samples so every process gets the same count,
    which would count those samples twice in an accuracy. Summing per-process counts over this sampler's shards
    gives exactly the single-process result; processes may see one sample more or less than each other.
    """

    def __init__(self, indices: int | Sequence[int], *, rank: int, world_size: int) -> None:
        all_indices = range(indices) if isinstance(indices, int) else list(indices)
        self.indices = list(all_indices)[rank::world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:  # evaluation order is fixed
        pass


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    """--sync-bn synchronises BatchNorm statistics across GPUs (NCCL); gloo on CPU is refused up front."""
    if sync_bn and device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA GPUs (SyncBatchNorm runs on NCCL); drop it for CPU training")


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device, *, sync_bn: bool = False):
    """DistributedDataParallel around `model` under torchrun (optionally with SyncBatchNorm); unchanged otherwise."""
    check_sync_bn(sync_bn, device)
    if not ctx.enabled:
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def describe(ctx: DistContext, batch_size: int) -> str:
    """'2 processes (gloo), batch 4 per process, global batch 8' for the log."""
    return (
        f"{ctx.world_size} processes ({ctx.backend}), batch {batch_size} per process, "
        f"global batch {batch_size * ctx.world_size}"
    )
