"""Several training processes, on the CPU with gloo, as a user starts them:
`cbam-tui run --nproc-per-node 2`, or torchrun with `-m tui.worker`. Each test
launches real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from core import checkpoint as ckpt_mod
from core.checkpoint import Position
from core.control import Control
from core.data import batch_indices, count_batches
from core.events import BatchLogged, RunStarted
from core.model import build_model
from core.plan import PlanOptions
from core.vocab import StopReason
from tests.conftest import tiny_config, train
from tests.helpers import CBAM_TUI, COMMON, cbam, of, wait_for


def rank_pid(launcher: int, rank: int) -> int:
    """The training process of ``rank`` that the launcher started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} under pid {launcher}")


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """|a - b| over |b - start|, over every trained tensor: how far two runs' updates differ."""
    num = den = 0.0
    for k in b:
        if b[k].is_floating_point() and "running" not in k:
            num += float((a[k] - b[k]).norm()) ** 2
            den += float((b[k] - start[k]).norm()) ** 2
    return (num / den) ** 0.5


@pytest.mark.slow
def test_two_processes_train_as_one_with_twice_the_batch(tmp_path: Path) -> None:
    """Stage 1 with frozen BatchNorm in eval mode: no statistic depends on how the batch is
    split, so 2 x 8 images must give the updates of 1 x 16, up to the order of float sums
    (Adam divides by the gradient's size, which magnifies that noise where gradients are tiny)."""
    plan = ["--image-size", "16", "--limit-train", "64", "--limit-test", "32", "--stage-epochs", "1,0,0",
            "--frozen-bn", "eval"]
    # The two processes as the README's multi-node example starts them: torchrun and tui.worker.
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tui.worker",
         *COMMON, *plan, "--batch-size", "8", "--run-dir", "two"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    one = cbam(tmp_path, "run", *COMMON, *plan, "--batch-size", "16", "--run-dir", "one")
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    started = of(tmp_path / "two", "run_started")[0]
    assert (started["world_size"], started["batch_size"], started["batches_per_epoch"]) == (2, 8, 4)
    assert "batch 8 x 2 processes" in two.stdout
    torch.manual_seed(0)
    init = build_model(10, "none").state_dict()
    weights = {name: torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["model"]
               for name in ("two", "one")}
    # Measured: 0.0005 with 2 threads in the single process, 0.011 with 1 (oneDNN picks other
    # kernels, so other sums); BatchNorm in train mode (statistics per process) makes it 1.2.
    assert relative_difference(weights["two"], weights["one"], init) < 0.05
    (e2,), (e1,) = of(tmp_path / "two", "epoch_ended"), of(tmp_path / "one", "epoch_ended")
    assert e2["train_loss"] == pytest.approx(e1["train_loss"], rel=1e-3)
    assert e2["train_acc"] == pytest.approx(e1["train_acc"], abs=1e-9)  # counts, added up over the ranks
    assert abs(e2["test_acc"] - e1["test_acc"]) <= 100 / 32  # the whole test set, once: one image at most
    (c2,) = of(tmp_path / "two", "class_accuracy")
    assert sum(c2["total"]) == 32


@pytest.mark.slow
def test_ctl_reaches_every_rank_at_one_step_a_dead_rank_stops_the_group_and_the_run_goes_on(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["run", *COMMON, "--image-size", "8", "--limit-train", "256", "--limit-test", "32", "--batch-size", "8",
            "--stage-epochs", "1,2,1", "--run-dir", str(run)]
    launcher = subprocess.Popen([CBAM_TUI, *args, "--nproc-per-node", "2"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("a loss line", lambda: of(run, "batch_logged"))
        for verb in ("pause", "resume", "next"):
            taken = cbam(tmp_path, "ctl", str(run), verb, timeout=60)
            assert taken.returncode == 0, taken.stderr
            if verb == "pause":  # taken is not yet applied: a resume at the same exchange would cancel it
                paused = wait_for("the pause", lambda: of(run, "paused"))[0]
        wait_for("stage 2", lambda: [e for e in of(run, "stage_started") if e["stage"] == 2])
        commands = wait_for("three commands", lambda: len(of(run, "command")) == 3 and of(run, "command"))
        for c in commands:  # each rank applied it at the same global step, the one the event names
            assert c["rank_steps"] == [c["global_step"]] * 2, c
        assert of(run, "resumed")[0]["batch"] == paused["batch"]  # nothing trained while paused
        wait_for("the epoch-2 checkpoint", lambda: of(run, "epoch_ended") and len(of(run, "epoch_ended")) >= 2)
        os.kill(rank_pid(launcher.pid, 1), signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 1
    assert "rank 1" in err and "SIGKILL" in err and err.count("\n") == 1, err
    listed = cbam(tmp_path, "runs", "--runs-root", str(tmp_path))
    row = next(line for line in listed.stdout.splitlines() if "run" in line and "failed" in line)
    assert "rank 1" in listed.stdout, listed.stdout
    del row
    done = of(run, "epoch_ended")
    resumed = cbam(tmp_path, "run", "--resume", str(run), "--headless", "--nproc-per-node", "1")
    assert resumed.returncode == 0, resumed.stderr
    epochs = [e["epoch"] for e in of(run, "epoch_ended")]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4 and len(epochs) > len(done)
    starts = of(run, "run_started")
    assert [s["world_size"] for s in starts] == [2, 1]


@pytest.mark.slow
def test_sigusr1_to_the_launcher_checkpoints_every_rank_and_asks_for_a_requeue(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["run", *COMMON, "--image-size", "8", "--limit-train", "256", "--limit-test", "16", "--batch-size", "8",
            "--stage-epochs", "1,0,1", "--run-dir", str(run), "--nproc-per-node", "2"]
    launcher = subprocess.Popen([CBAM_TUI, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        wait_for("a loss line", lambda: of(run, "batch_logged"))
        launcher.send_signal(signal.SIGUSR1)
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == StopReason.SIGUSR1.exit_code == 75, err
    (stopped,) = of(run, "run_stopped")
    assert stopped["reason"] == "SIGUSR1" and stopped["checkpoint"] and 0 < stopped["batch"] < 16
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["world_size"], saved["global_batch"]) == (2, 16)
    assert saved["sums"]["seen"] == stopped["batch"] * 16  # both ranks' images, counted once
    # The requeued job goes on with one process: batches of 8 from where the 16s ended.
    resumed = cbam(tmp_path, "run", "--resume", str(run), "--headless")
    assert resumed.returncode == 0, resumed.stderr
    last = of(run, "run_started")[-1]
    assert (last["world_size"], last["start_batch"]) == (1, stopped["batch"] * 2)
    epoch1 = [e for e in of(run, "epoch_ended") if e["epoch"] == 1]
    assert len(epoch1) == 1


def test_a_position_keeps_its_place_in_the_epoch_across_world_sizes() -> None:
    p = Position(0, 3, batch=5)
    assert p.regrouped(16, 8) == Position(0, 3, 10)  # 2 processes -> 1: exact
    q = p.regrouped(8, 16)  # 1 -> 2: 40 images done, 2 batches of 16 and 8 more
    assert (q.batch, q.offset) == (2, 8) and q.images(16) == 40
    order = batch_indices(100, 16, 0, 3, torch.device("cpu"))
    rest = batch_indices(100, 16, 0, 3, torch.device("cpu"), start=q.offset)
    done = torch.cat(rest[: q.batch]).tolist()
    assert torch.cat(order).tolist()[q.offset : 40] == done  # the same images, none twice
    assert count_batches(100 - q.offset, 16) == len(rest)


def test_a_resume_with_another_global_batch_trains_the_rest_of_the_epoch_once(tmp_path: Path) -> None:
    """A checkpoint of 12-image batches (as if from 2 processes of 6), resumed by one process
    of 8: the epoch goes on from image 36 of its order, in batches of 8 cut from there."""
    control = Control()

    def stop_after_three(e: Any) -> None:
        if isinstance(e, BatchLogged) and e.batch >= 3:
            control.stop(StopReason.COMMAND)

    plan = PlanOptions(stage_epochs="1,0,0", lrs="1e-2,1e-3,1e-3")
    outcome, rec = train(tiny_config(tmp_path, plan_opts=plan, log_every=1), stop_after_three, control)
    assert outcome == StopReason.COMMAND
    path = rec.run_dir / "checkpoints" / "last.pt"
    saved = ckpt_mod.read(path)
    assert saved.position.batch == 3
    path.write_bytes(ckpt_mod.write(replace(saved, global_batch=12, sums=replace(saved.sums, seen=36))))

    outcome, rec = train(tiny_config(tmp_path, resume=str(rec.run_dir), plan_opts=plan, log_every=1))
    assert outcome == StopReason.FINISHED
    (begin,) = rec.of(RunStarted)
    assert begin.start_batch == 4  # 36 = 4 x 8 + 4: four batches of the new order, cut 4 images in
    trained = [b.batch for b in rec.of(BatchLogged)]
    assert trained == [5, 6]  # images 36-43 and 44-47: the 12 the epoch had left, once
    assert [b.batches for b in rec.of(BatchLogged)] == [6, 6]


@pytest.fixture
def solo_group(tmp_path: Path) -> Any:
    """A real process group of one (gloo, a file store): the collectives run, in this process."""
    import torch.distributed as dist

    from core.dist import Group

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield Group(0, 1, 0, torch.device("cpu"), dist.new_group(backend="gloo"))
    finally:
        dist.destroy_process_group()


def test_the_coordinator_applies_commands_in_order_at_the_exchange_and_never_before(solo_group: Any) -> None:
    from core.dist import Coordinator
    from core.vocab import Command

    local = Control()
    coord = Coordinator(solo_group, local)
    coord.take(Command("pause"), "ctl pid 1")
    coord.take(Command("lr", "x0.5", ref="00000000000000000001-2-lr"), "ctl pid 2")
    assert not coord.agreed.paused  # taken by rank 0's inbox, not yet applied anywhere
    commands, steps = coord.exchange(7)
    assert [c.verb for c, _ in commands] == ["pause", "lr"] and steps == (7,)
    assert commands[1][0].ref == "00000000000000000001-2-lr"  # so that ctl finds what became of it
    assert coord.agreed.paused and [c.value for c, _ in coord.agreed.take_changes()] == ["x0.5"]
    local.stop(StopReason.SIGUSR1)  # a signal to this rank reaches the loop only through an exchange
    assert coord.agreed.stop_reason is None
    coord.exchange(7)
    assert coord.agreed.stop_reason == StopReason.SIGUSR1
    assert coord.due(coord.next_sync) and not coord.due(coord.next_sync - 1)


def test_a_group_shards_like_tensor_split_and_sums_over_its_ranks(solo_group: Any) -> None:
    from core.dist import Group

    for n in (2, 7, 10, 64):
        for world in (1, 2, 3, 4):
            parts = [Group(r, world, r, torch.device("cpu")).shard(n) for r in range(world)]
            expected = [(int(c[0]), int(c[-1]) + 1) for c in torch.arange(n).tensor_split(world) if len(c)]
            assert [p for p in parts if p[0] < p[1]] == expected
    t = torch.tensor([1.5, 2.0])
    assert solo_group.sum(t).tolist() == [1.5, 2.0]
    assert solo_group.from_leader({"resume": "x"}) == {"resume": "x"}


def test_srun_tasks_become_ranks_and_torchrun_ranks_are_left_alone() -> None:
    from core.jobenv import from_slurm

    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "node01"}
    from_slurm(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_PORT"]) == ("5", "16", "1", "29500")
    torchrun = {"RANK": "2", "WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "16", "MASTER_ADDR": "n"}
    from_slurm(torchrun)  # torchrun inside an allocation: its ranks win
    assert torchrun["RANK"] == "2" and torchrun["WORLD_SIZE"] == "4"
    alone = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "MASTER_ADDR": "n"}
    from_slurm(alone)  # one task: not a group
    assert "RANK" not in alone


def test_the_watchdog_names_a_rank_that_joined_after_its_first_beat(monkeypatch) -> None:
    """Rank 0 beats from the start; a slow rank 1 (a busy machine) joins later. The rank
    it is told about must still carry its name and pid, not a bare "rank 1"."""
    from datetime import timedelta

    import torch.distributed as dist

    from core.dist import Watchdog

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    watchdog = Watchdog(0, 2, 60.0, "127.0.0.1", store.port)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    watchdog._store = dist.PrefixStore("cbam-tui//0-0/", store)
    watchdog._beat_once()  # rank 1 has not joined: its count reads 0, no name yet
    peer_store = dist.PrefixStore("cbam-tui//0-0/", store)
    for key, value in (("who", "rank 1 (pid 4242 on node2, node 1)"), ("pid", "4242"), ("addr", "10.0.0.2")):
        peer_store.set(f"{key}/1", value)
    watchdog._beat_once()
    assert watchdog.pid_of(1) == 4242
    watchdog._contact = float("inf")  # the store answers; only the rank is judged
    assert watchdog._judge(0.0, "is gone: no heartbeat for", left_too=True).startswith("rank 1 (pid 4242 on node2")


# A rank that leaves while its heartbeat thread waits in the store's C++ client (a loaded
# machine makes that wait long): the call returns while the interpreter shuts down.
_LEAVE_DURING_A_BEAT = """
import time
from datetime import timedelta

import torch.distributed as dist

from core.dist import Watchdog

master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
watchdog = Watchdog(0, 1, 60.0, "127.0.0.1", master.port)
watchdog.start()
slow = dist.TCPStore("127.0.0.1", master.port, is_master=False, wait_for_workers=False,
                     timeout=timedelta(seconds=0.05))
real = watchdog._store


class Loaded:
    # Each beat's first call spends half a second in the store client, in calls that time out.
    def __getattr__(self, name):
        return getattr(real, name)

    def add(self, key, amount):
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            try:
                slow.get("never-set")
            except Exception:
                pass
        return real.add(key, amount)


watchdog._store = Loaded()
time.sleep(1.1)  # the second beat has begun: its thread is in the store client
watchdog.stop()
"""


def test_a_rank_that_leaves_mid_beat_exits_cleanly_not_with_an_abort(tmp_path: Path) -> None:
    """A heartbeat's store call that returned during the interpreter's shutdown aborted the
    rank ("terminate called without an active exception", exit -6) under a loaded machine's
    timing; the watchdog's stop waits for the beat to end."""
    done = subprocess.run([sys.executable, "-c", _LEAVE_DURING_A_BEAT], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr[-2000:])
