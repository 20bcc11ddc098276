"""classicnets train under torchrun: 2 gloo processes on this machine, started as users start them.

`python -m torch.distributed.run` is the `torchrun` command. Each process imports torch (about 2 s on the shared
2-core test machines), so the few launches here are shared between tests through module fixtures.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from classicnets.config import resolve_config
from classicnets.errors import UsageError
from classicnets.models.registry import create_model
from classicnets.training.distributed import DistContext
from classicnets.training.loop import TrainingInterrupted, fit
from classicnets.training.signals import StopRequest
from classicnets.training.start import open_resume, start_trainer
from classicnets.training.trainer import Trainer
from classicnets.weights.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
# Plain SGD steps without momentum or weight decay: the update is the averaged gradient, nothing else.
SGD = ["--optimizer", "sgd", "--lr", "0.1", "--set", "optim.momentum=0", "--set", "optim.weight_decay=0",
       "--schedule", "constant"]  # fmt: skip
COMMON = ["--config", "lenet5_digits", "--model", "lenet5", "--device", "cpu", "--precision", "fp32",
          "--threads", "1", "--quiet"]  # fmt: skip
# A dead process makes the job end within this many seconds (the bound), a SIGTERM within 30.
DEAD_RANK_LIMIT_S = 60
SIGTERM_LIMIT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "-m", "classicnets", "train", *COMMON, *args]  # fmt: skip


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*args), cwd=cwd, env=environment(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@contextlib.contextmanager
def started(command: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """torchrun started in the background; killed on the way out if a test left it running."""
    with subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def metrics_rows(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def wait_for_rows(run: Path, rows: int, proc: subprocess.Popen, limit_s: float = 180) -> None:
    """Until metrics.csv holds `rows` epochs (process 0 writes it atomically after each epoch)."""
    end = time.monotonic() + limit_s
    while len(metrics_rows(run)) < rows:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"no epoch {rows} within {limit_s} s"
        time.sleep(0.2)


def worker_pids(torchrun_pid: int) -> dict[int, int]:
    """{rank: pid} of the training processes torchrun started (their environment holds RANK)."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(torchrun_pid)], capture_output=True, text=True)
    pids = {}
    for pid in map(int, children.stdout.split()):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ranks = [int(v.split(b"=")[1]) for v in environ if v.startswith(b"RANK=")]
        if ranks:
            pids[ranks[0]] = pid
    return pids


def our_tracebacks(stderr: str) -> list[str]:
    """Traceback frames inside classicnets (torchrun prints its own traceback when a worker fails: not ours)."""
    return [line for line in stderr.splitlines() if line.strip().startswith("File ") and "classicnets/" in line]


@pytest.fixture(scope="module")
def data(tmp_path_factory, digit_kit) -> Path:
    """A prepared folder: train/ with 40 digits (4 per class: 5 global batches of 8) and val/ with 11 digits."""
    root = tmp_path_factory.mktemp("ddp_data")
    digit_kit.idx(root / "train", per_class=4)
    images, labels = digit_kit.shipped("test")
    digit_kit.write_idx(root / "val", "val", images[:11], labels[:11])
    return root


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory):
    """One epoch on 2 processes of batch 4 (5 SGD steps), run from an empty folder."""
    cwd = tmp_path_factory.mktemp("two_ranks")
    done = torchrun(cwd, "--data", str(data), "--epochs", "1", "--batch-size", "4", "--out", "run", *SGD)
    assert done.returncode == 0, done.stderr
    return cwd, done


@pytest.fixture(scope="module")
def one_rank(data, tmp_path_factory):
    """The same epoch in one process of batch 8 (5 SGD steps), through fit() in this process."""
    out = tmp_path_factory.mktemp("one_rank") / "run"
    fit("lenet5", data, config="lenet5_digits", out=str(out), epochs=1, batch_size=8, device="cpu",
        precision="fp32", threads=1, optimizer="sgd", lr=0.1, schedule="constant",
        settings=["optim.momentum=0", "optim.weight_decay=0"])  # fmt: skip
    return out


def test_two_ranks_of_batch_4_end_with_the_weights_of_one_of_batch_8(two_ranks, one_rank):
    two = load_checkpoint(two_ranks[0] / "run" / "last.pt")
    one = load_checkpoint(one_rank / "last.pt")
    assert (two["global_step"], one["global_step"]) == (5, 5)
    assert (two["world_size"], one["world_size"]) == (2, 1)
    torch.manual_seed(0)  # the run's seed: the weights every process starts from
    start = create_model("lenet5", num_classes=10, activation="relu", pool="max").state_dict()
    assert two["state_dict"].keys() == one["state_dict"].keys() == start.keys()  # unwrapped: no "module." prefix
    moved = max(float((one["state_dict"][k] - start[k]).abs().max()) for k in start)
    differ = max(float((two["state_dict"][k] - one["state_dict"][k]).abs().max()) for k in start)
    assert moved > 1e-3  # 5 steps moved the weights 100 times the tolerance below
    assert differ < 1e-5, differ


def test_only_process_0_writes_one_run_folder(two_ranks):
    cwd, done = two_ranks
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]  # no runs/lenet5-2 from process 1
    assert [p.relative_to(cwd) for p in cwd.rglob("*.pt")] in (
        [Path("run/best.pt"), Path("run/last.pt")], [Path("run/last.pt"), Path("run/best.pt")]
    )  # fmt: skip
    assert len(list(cwd.rglob("metrics.csv"))) == 1 and len(metrics_rows(cwd / "run")) == 1
    assert done.stdout.count("best validation top-1") == 1  # process 1 prints nothing
    assert done.stderr.count("INFO: torchrun: 2 processes (gloo), batch 4 per process, global batch 8") == 1
    assert done.stderr.count("INFO: epoch 1/1") == 1 and "[rank 1]" not in done.stderr
    assert our_tracebacks(done.stderr) == []


def test_two_rank_validation_matches_one_process(two_ranks, one_rank):
    two, one = metrics_rows(two_ranks[0] / "run")[0], metrics_rows(one_rank)[0]
    assert (two["val_top1"], two["val_top5"]) == (one["val_top1"], one["val_top5"])
    hits = float(two["val_top1"]) * 11
    assert abs(hits - round(hits)) < 1e-4  # a count of 11 samples, not of 12 with a padded duplicate
    assert float(two["val_loss"]) == pytest.approx(float(one["val_loss"]), abs=1e-5)
    assert float(two["train_loss"]) == pytest.approx(float(one["train_loss"]), abs=1e-5)  # all-reduced sums


def _validate_worker(rank: int, port: int, data: str, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    trainer = start_trainer(validation_config(data))  # joins the 2-process group from the variables above
    results[rank] = validation_result(trainer)
    torch.distributed.destroy_process_group()


def validation_config(data: str):
    # batch 5: process 0 has 6 of the 11 samples (2 batches), process 1 has 5 (1 batch)
    return resolve_config("lenet5_digits", overrides={"model": "lenet5", "data": data, "batch_size": 5,
                                                      "device": "cpu", "precision": "fp32", "workers": 0})  # fmt: skip


def validation_result(trainer: Trainer):
    sums, confusion = trainer.validate(StopRequest())
    return sums.count, int(sums.values[1]), int(sums.values[2]), sums.loss, confusion.counts.tolist()


def test_a_batch_of_bad_files_on_one_process_is_skipped_by_every_process(tmp_path, digit_kit):
    """Before, only the process whose batch failed skipped the step: the other waited in the gradient all-reduce
    until the process group's timeout."""
    from classicnets.data import open_dataset
    from classicnets.training.distributed import TrainSampler

    digit_kit.folders(tmp_path / "data" / "train", per_class=8)  # 16 images: 4 global batches of 2 x 2
    digit_kit.folders(tmp_path / "data" / "val", per_class=2, split="test")
    train = open_dataset(tmp_path / "data" / "train")
    first_of_rank_1 = list(TrainSampler(16, rank=1, world_size=2, seed=0, drop_last=True))[:2]
    for i in first_of_rank_1:
        Path(train.paths[i]).write_text("<html>404</html>")  # process 1's first batch: every file bad
    env = {**environment(), "CLASSICNETS_DIST_TIMEOUT": "30"}  # a mismatch fails in 30 s, not 10 minutes
    done = subprocess.run(torchrun_command("--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "2",
                                           "--out", "run", "--set", "data.max_bad_fraction=0.5"),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("skipped step 1 of epoch 1: every file of a batch failed") == 2  # both processes
    assert f"[rank 1] skipped {train.paths[first_of_rank_1[0]]}: NOT_AN_IMAGE" in done.stderr
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (last["global_step"], last["epoch"]) == (3, 1)  # 4 steps, the first skipped by both
    assert our_tracebacks(done.stderr) == []


def test_evaluation_of_11_samples_on_2_processes_equals_one_process(data):
    single = validation_result(start_trainer(validation_config(str(data)), ctx=DistContext()))
    assert single[0] == 11 and sum(map(sum, single[4])) == 11
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_validate_worker, args=(free_port(), str(data), results), nprocs=2, start_method="spawn")
        results = dict(results)
    for rank in (0, 1):
        count, top1, top5, loss, confusion = results[rank]
        assert (count, top1, top5, confusion) == single[:3] + (single[4],)  # exact: 11 samples, none twice
        assert loss == pytest.approx(single[3], abs=1e-6)


def test_resume_a_two_process_run_in_one_process_at_an_epoch_boundary(two_ranks, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(two_ranks[0] / "run", run)
    caplog.set_level("INFO")
    result = fit(resume=run, epochs=2)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert "resuming with 1 process(es) instead of 2 processes: global batch 4 instead of 8" in caplog.text
    last = load_checkpoint(run / "last.pt")
    assert (last["epoch"], last["global_step"], last["world_size"]) == (2, 5 + 10, 1)  # 40 samples / 4 = 10 steps


def test_a_mid_epoch_resume_with_another_number_of_processes_is_refused(data, tmp_path, monkeypatch):
    stop = StopRequest()
    original = Trainer.train_steps

    def stop_after_step_2(self, epoch, *, start=0):
        for item in original(self, epoch, start=start):
            if self.state.step_in_epoch == 2:
                stop.request()
            yield item

    monkeypatch.setattr(Trainer, "train_steps", stop_after_step_2)
    with pytest.raises(TrainingInterrupted, match="at epoch 1, step 2 of 5"):
        fit("lenet5", data, config="lenet5_digits", out=str(tmp_path / "run"), epochs=2, batch_size=8,
            device="cpu", precision="fp32", threads=1, stop=stop)  # fmt: skip
    two = DistContext(rank=0, world_size=2, local_rank=0, backend="gloo")  # refused before any collective
    with pytest.raises(UsageError) as e:
        open_resume(tmp_path / "run", overrides={}, ctx=two)
    assert str(e.value) == (
        f"{tmp_path / 'run' / 'last.pt'}: the run stopped in the middle of epoch 1 (step 2) with 1 process; "
        "resume it with 1 (torchrun --nproc-per-node ...): the number of processes may only change at an epoch "
        "boundary"
    )


def test_killing_one_process_ends_the_job_non_zero(one_rank, tmp_path):
    """Also a resume across world sizes: the 1-process run continues on 2 processes for an epoch first."""
    run = tmp_path / "run"
    shutil.copytree(one_rank, run)
    command = torchrun_command("--resume", str(run), "--epochs", "1000")
    with started(command, tmp_path) as proc:
        wait_for_rows(run, 2, proc)  # epoch 2 trained by 2 processes, from the 1-process epoch 1
        victim = worker_pids(proc.pid)[1]
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=DEAD_RANK_LIMIT_S)
    assert proc.returncode != 0
    assert f"exitcode  : -9 (pid: {victim})" in stderr  # torchrun's summary names the dead process
    assert our_tracebacks(stderr) == []
    assert load_checkpoint(run / "last.pt")["world_size"] == 2
    assert [row["epoch"] for row in metrics_rows(run)][:2] == ["1", "2"]


def test_sigterm_to_torchrun_saves_once_and_every_process_exits(data, tmp_path):
    command = torchrun_command("--data", str(data), "--epochs", "1000", "--batch-size", "4", "--out", "run")
    with started(command, tmp_path) as proc:
        wait_for_rows(tmp_path / "run", 1, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=SIGTERM_LIMIT_S)
    assert "Sending process" in stderr and "closing signal SIGTERM" in stderr  # torchrun passed it on
    assert "forcefully exiting via SIGKILL" not in stderr  # every process exited by itself, none was killed
    assert stderr.count("stopped by SIGTERM") == 1  # process 0 saved and says so
    assert "under torchrun with 2 processes" in stderr
    assert stderr.count("[rank 1] SIGTERM received") == 1
    assert our_tracebacks(stderr) == []
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == len(metrics_rows(tmp_path / "run")) and last["world_size"] == 2
    assert 0 <= last["step_in_epoch"] < 5
    assert last["global_step"] == 5 * last["epoch"] + last["step_in_epoch"]
    assert last["partial"][3] == 8 * last["step_in_epoch"]  # the unfinished epoch's samples of both processes


def descendants(pid: int) -> set[int]:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return {int(c) for c in children} | {d for c in children for d in descendants(int(c))}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.slow
def test_a_dead_process_leaves_no_dataloader_worker_behind(tmp_path, digit_kit):
    """Photo folders decoded by a DataLoader worker in each training process: kill process 1 mid-run."""
    photos = digit_kit.folders(tmp_path / "photos", per_class=40)
    command = torchrun_command("--data", str(photos), "--epochs", "1000", "--batch-size", "4", "--workers", "1",
                               "--out", "run")  # fmt: skip
    with started(command, tmp_path) as proc:
        wait_for_rows(tmp_path / "run", 1, proc)
        end = time.monotonic() + 30
        everyone = descendants(proc.pid)
        while len(everyone) < 4 and time.monotonic() < end:  # loader workers live while an epoch is read
            time.sleep(0.05)
            everyone = descendants(proc.pid)
        victim = worker_pids(proc.pid)[1]
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=DEAD_RANK_LIMIT_S)
    assert proc.returncode != 0 and len(everyone) >= 4  # 2 training processes and their loader workers
    end = time.monotonic() + 10  # a loader worker notices a dead parent within 5 s (torch's MP_STATUS_CHECK_INTERVAL)
    while any(alive(p) for p in everyone) and time.monotonic() < end:
        time.sleep(0.2)
    assert [p for p in everyone if alive(p)] == []
    assert our_tracebacks(stderr) == []


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_resumes_on_2_processes_bit_identically(data, tmp_path):
    plain = ["--data", str(data), "--batch-size", "2", "--schedule", "constant"]  # 10 steps per epoch
    command = torchrun_command(*plain, "--epochs", "1000", "--out", "stopped")
    with started(command, tmp_path) as proc:
        wait_for_rows(tmp_path / "stopped", 1, proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=SIGTERM_LIMIT_S)
    stopped = load_checkpoint(tmp_path / "stopped" / "last.pt")
    epochs = stopped["epoch"] + 2
    resumed = torchrun(tmp_path, "--resume", "stopped", "--epochs", str(epochs))
    assert resumed.returncode == 0, resumed.stderr
    whole = torchrun(tmp_path, *plain, "--epochs", str(epochs), "--out", "whole")
    assert whole.returncode == 0, whole.stderr
    a, b = load_checkpoint(tmp_path / "stopped" / "last.pt"), load_checkpoint(tmp_path / "whole" / "last.pt")
    assert a["global_step"] == b["global_step"] == 10 * epochs
    for key in b["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (
            key,
            stopped["epoch"],
            stopped["step_in_epoch"],
        )
    for row_a, row_b in zip(a["metrics"], b["metrics"], strict=True):
        for key in ("epoch", "lr", "train_acc", "val_loss", "val_top1", "val_top5"):
            assert row_a[key] == row_b[key], (key, row_a, row_b)
        assert row_a["train_loss"] == pytest.approx(row_b["train_loss"], rel=1e-12)  # sums added in another order


@pytest.mark.slow
def test_two_machines_meet_at_a_c10d_rendezvous(data, tmp_path):
    """The README's multi-machine command, with both "machines" on this one (one process each)."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test",
               "-m", "classicnets", "train", *COMMON, "--data", str(data), "--epochs", "1", "--batch-size", "4",
               "--out", "run"]  # fmt: skip
    nodes = [subprocess.Popen(command, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("global batch 8") == 1 and "".join(out for out, _ in outputs).count("best validation") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["global_step"] == 5
