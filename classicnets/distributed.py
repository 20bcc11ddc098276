"""torchrun / DistributedDataParallel glue: which process this is, sharding, reductions, rank-0-only writing.

classicnets never starts processes itself: `torchrun --nproc-per-node N -m classicnets train ...` starts them and
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them. Without those
variables everything here degrades to a single process (rank 0 of 1) at no cost.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from classicnets.errors import UsageError

log = logging.getLogger(__name__)

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
        dist.init_process_group(backend, timeout=timeout)
    ctx = DistContext(rank, world_size, local_rank, backend)
    log.debug("process %d of %d (local rank %d, backend %s)", rank, world_size, local_rank, backend)
    return ctx


def context_device(ctx: DistContext, device: torch.device) -> torch.device:
    """The device this process should use: its own GPU under torchrun on CUDA, else `device` unchanged."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `values` over all processes (float64 on the CPU for gloo, in place on a copy)."""
    if not ctx.enabled:
        return values
    device = torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else torch.device("cpu")
    reduced = values.detach().to(device=device, dtype=torch.float64 if values.is_floating_point() else torch.int64)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(values.device)


def any_process(ctx: DistContext, flag: bool) -> bool:
    """True on every process when `flag` is true on at least one: all ranks agree when to stop (SIGTERM, NaN)."""
    if not ctx.enabled:
        return flag
    return bool(all_reduce_sum(ctx, torch.tensor([1 if flag else 0])).item() > 0)


def broadcast_object(ctx: DistContext, obj: object) -> object:
    """Rank 0's `obj` on every process (e.g. a validation split chosen once)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
