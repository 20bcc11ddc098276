"""torchrun glue: the training order of the shards, exact evaluation shards without padding, reductions and
agreement across 2 gloo processes. Whole training runs under torchrun: test_distributed_train.py."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from classicnets.errors import DataError, UsageError
from classicnets.training.distributed import (
    DistContext,
    ShardSampler,
    TrainSampler,
    all_reduce_sum,
    any_process,
    broadcast_object,
    check_same_everywhere,
    check_sync_bn,
    decided_by_main,
    init_distributed,
    launched_by_torchrun,
    make_samplers,
    rank_seed,
)


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


def digits_loader(n: int, *, batch_size: int = 8, sampler=None):
    """A training loader over n blank 28x28 images (the order is what matters here), single-process unless `sampler`."""
    from classicnets.data import InMemoryDataset, make_loader
    from classicnets.models.registry import get_model_info

    data = InMemoryDataset(
        torch.zeros(n, 28, 28, dtype=torch.uint8),
        [i % 10 for i in range(n)],
        [str(i) for i in range(10)],
        source="blank",
    )
    pre = get_model_info("lenet5").preprocessing
    return make_loader(data, preprocessing=pre, train=True, recipe="none", batch_size=batch_size, seed=7,
                       drop_last=True, sampler=sampler)  # fmt: skip


@pytest.mark.parametrize("epoch", [0, 3])
def test_two_shards_of_batch_4_make_the_single_process_batches_of_8(epoch):
    single = digits_loader(180)
    single.set_epoch(epoch)
    order = single.epoch_indices()
    assert sorted(order) == list(range(180)) and order != list(range(180))  # shuffled
    shards = []
    for rank in (0, 1):
        sampler = TrainSampler(180, rank=rank, world_size=2, seed=7, drop_last=True)
        loader = digits_loader(180, batch_size=4, sampler=sampler)
        loader.set_epoch(epoch)  # make_loader's loader forwards it to the sampler
        assert sampler.epoch == epoch
        shards.append(loader.epoch_indices())
    for k in range(len(single)):  # 22 global batches: batch k of 8 = rank 0's batch k + rank 1's batch k
        union = shards[0][4 * k : 4 * k + 4] + shards[1][4 * k : 4 * k + 4]
        assert sorted(union) == sorted(order[8 * k : 8 * k + 8])
    one = TrainSampler(180, rank=0, world_size=1, seed=7, drop_last=False)
    one.set_epoch(epoch)
    assert list(one) == order  # world size 1: exactly the single-process order


def test_every_process_runs_as_many_steps_as_the_single_process_with_the_global_batch():
    for n, world, batch in [(180, 2, 4), (15, 2, 4), (101, 3, 5), (40, 2, 4)]:
        samplers = [make_samplers(DistContext(r, world, r, "gloo"), train_size=n, val_size=11, batch_size=batch,
                                  seed=0)["train"] for r in range(world)]  # fmt: skip
        steps = {len(s) // batch for s in samplers}
        assert steps == {n // (batch * world)}, (n, world, batch)
        taken = [i for s in samplers for i in s]
        assert len(taken) == len(set(taken))  # no sample twice in an epoch
    # fewer samples than one global batch: padded to one step on every process (as one partial batch would be)
    small = [list(make_samplers(DistContext(r, 2, r, "gloo"), train_size=5, val_size=1, batch_size=4, seed=0)["train"])
             for r in (0, 1)]  # fmt: skip
    assert [len(s) for s in small] == [3, 3] and set(small[0] + small[1]) == set(range(5))


def test_validation_shards_of_11_samples_are_exact():
    shards = [make_samplers(DistContext(r, 2, r, "gloo"), train_size=40, val_size=11, batch_size=4, seed=0)["val"]
              for r in (0, 1)]  # fmt: skip
    assert [list(s) for s in shards] == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]


def test_random_augmentation_seeds_differ_per_process_only_under_torchrun():
    assert rank_seed(5, DistContext()) == 5
    seeds = {rank_seed(5, DistContext(r, 4, r, "gloo")) for r in range(4)}
    assert len(seeds) == 4 and 5 not in seeds


def test_one_process_decides_alone():
    assert decided_by_main(DistContext(), lambda: "runs/lenet5") == "runs/lenet5"
    check_same_everywhere(DistContext(), "data", object())  # nothing to compare with


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
    folder = decided_by_main(ctx, lambda: f"folder of rank {rank}")
    try:
        decided_by_main(ctx, lambda: (_ for _ in ()).throw(UsageError("--out x already holds a run")))
    except UsageError as e:
        refused = str(e)
    check_same_everywhere(ctx, "the training data", "10 classes")
    try:
        check_same_everywhere(ctx, "the training data", f"{10 + rank} classes")
    except DataError as e:
        differs = str(e)
    results[rank] = (totals.tolist(), stop, keep, split, ctx.backend, folder, refused, differs)
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
        totals, stop, keep, split, backend, folder, refused, differs = results[rank]
        assert totals == single  # 11 samples on 2 ranks: exact, no padded duplicates
        assert stop is True and keep is False
        assert split == [0, "chosen by rank 0"]
        assert backend == "gloo"
        assert folder == "folder of rank 0"
        assert refused == "--out x already holds a run"  # rank 0's error, raised on every process
        assert differs == (
            "the training data differs between processes: process 0 has 10 classes, process 1 has 11 classes; "
            "every machine needs the same data at --data"
        )
