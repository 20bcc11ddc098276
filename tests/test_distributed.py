"""torchrun glue: exact sharding without padding, reductions and agreement across 2 gloo processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from classicnets.distributed import (
    DistContext,
    ShardSampler,
    all_reduce_sum,
    any_process,
    broadcast_object,
    check_sync_bn,
    init_distributed,
    launched_by_torchrun,
)
from classicnets.errors import UsageError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_sample_exactly_once(world):
    shards = [list(ShardSampler(11, rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_by_torchrun()
    ctx = init_distributed(torch.device("cpu"))
    assert ctx == DistContext() and ctx.is_main and not ctx.enabled
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(ctx, t) is t
    assert any_process(ctx, True) and not any_process(ctx, False)
    assert broadcast_object(ctx, {"a": 1}) == {"a": 1}


def test_sync_bn_refused_on_cpu():
    with pytest.raises(UsageError, match="--sync-bn needs CUDA GPUs"):
        check_sync_bn(True, torch.device("cpu"))
    check_sync_bn(False, torch.device("cpu"))


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_distributed(torch.device("cpu"))
    labels = torch.arange(11) % 3
    predictions = torch.tensor([0, 1, 2, 0, 2, 2, 0, 1, 1, 0, 1])
    shard = list(ShardSampler(11, rank=ctx.rank, world_size=ctx.world_size))
    correct = (predictions[shard] == labels[shard]).sum()
    totals = all_reduce_sum(ctx, torch.tensor([correct.item(), len(shard)]))
    stop = any_process(ctx, rank == 1)
    keep = any_process(ctx, False)
    split = broadcast_object(ctx, [rank, "chosen by rank 0"])
    results[rank] = (totals.tolist(), stop, keep, split, ctx.backend)
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_agree_and_count_exactly():
    labels = torch.arange(11) % 3
    predictions = torch.tensor([0, 1, 2, 0, 2, 2, 0, 1, 1, 0, 1])
    single = [(predictions == labels).sum().item(), 11]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(2, free_port(), results), nprocs=2, start_method="spawn")
        results = dict(results)
    for rank in (0, 1):
        totals, stop, keep, split, backend = results[rank]
        assert totals == single  # 11 samples on 2 ranks: exact, no padded duplicates
        assert stop is True and keep is False
        assert split == [0, "chosen by rank 0"]
        assert backend == "gloo"
