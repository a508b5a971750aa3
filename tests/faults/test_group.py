"""A group of training processes whose launcher or one of whose ranks fails: `kill -9`
of the launcher, a rank frozen with SIGSTOP, a SIGTERM the ranks cannot obey in time,
SIGUSR1 twice while a checkpoint is written. One writer per run directory whatever
happens, no process left waiting, one line naming what went wrong, and a resume that
gives every epoch once."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.rundir import RunDir, probe_owner
from core.runs import inspect_run
from core.safefs import Dir
from core.vocab import Status, StopReason
from tests.e2e.terminal import gone
from tests.helpers import CBAM_TUI, COMMON, cbam, fake_run, of, wait_for

GROUP = [*COMMON, "--image-size", "8", "--limit-test", "16", "--batch-size", "8", "--nproc-per-node", "2"]


def launch(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], Path]:
    run = tmp_path / "run"
    proc = subprocess.Popen([CBAM_TUI, "run", *GROUP, "--run-dir", str(run), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    return proc, run


def ranks_of(launcher: int) -> dict[int, int]:
    """rank -> pid of the training processes the launcher started."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0") if b"=" in v)
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and b"RANK" in env:
            found[int(env[b"RANK"])] = int(entry.name)
    return found


def metrics_epochs(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_kill9_of_the_launcher_takes_its_ranks_with_it_and_a_resume_gives_each_epoch_once(tmp_path: Path) -> None:
    launcher, run = launch(tmp_path, "--limit-train", "160", "--stage-epochs", "3,0,0")
    try:
        wait_for("epoch 1's end", lambda: of(run, "epoch_ended"))
        wait_for("a loss line of epoch 2", lambda: [e for e in of(run, "batch_logged") if e["epoch"] == 2])
        ranks = wait_for("both ranks", lambda: len(ranks_of(launcher.pid)) == 2 and ranks_of(launcher.pid))
        launcher.kill()
        killed = time.monotonic()
        launcher.wait()
        # They die with it (a parent-death signal), and the lock they shared goes with the last one.
        while not all(gone(pid) for pid in ranks.values()) or inspect_run(run).live:
            assert time.monotonic() - killed < 5, "a rank outlived its launcher by 5 s"
            time.sleep(0.05)
    finally:
        launcher.kill()
        for pid in ranks_of(launcher.pid).values():
            os.kill(pid, signal.SIGKILL)
    info = inspect_run(run)
    assert info.state is Status.DEAD and info.resumable
    resumed = cbam(tmp_path, "run", "--resume", str(run), "--headless", "--nproc-per-node", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_epochs(run) == [1, 2, 3]
    assert [e["epoch"] for e in of(run, "epoch_ended")] == [1, 2, 3]
    assert len(of(run, "run_finished")) == 1


def test_a_rank_that_holds_the_launchers_lock_keeps_the_run_live_after_the_launcher_let_go(tmp_path: Path) -> None:
    """The lock is one open file shared by the launcher and every rank: a resume is
    refused until the last of them is gone, not just the launcher."""
    from tui.workers import LIFELINE_ENV, Lifeline

    rundir = RunDir.create_at(tmp_path / "run")
    rundir.write_config({"name": "t"})
    lifeline = Lifeline(rundir.lock_fd)
    code = (f"import sys, time; from pathlib import Path; from tui.workers import take_lock; "
            f"take_lock(Path({str(rundir.path)!r})); print('held', flush=True); time.sleep(60)")
    rank = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, LIFELINE_ENV: lifeline.path})
    try:
        assert rank.stdout is not None and rank.stdout.readline() == "held\n"
        assert lifeline.pids == {rank.pid}
        rundir.close()  # the launcher is gone
        lifeline.close()
        with Dir.open(tmp_path / "run") as d:
            assert probe_owner(d).alive
        with pytest.raises(Exception, match="in use by another cbam-tui process"):
            RunDir.open(tmp_path / "run")
    finally:
        rank.kill()
        rank.wait()
    with Dir.open(tmp_path / "run") as d:
        assert not probe_owner(d).alive  # the last holder is gone: the kernel let the lock go
    RunDir.open(tmp_path / "run").close()


@pytest.mark.slow
def test_a_frozen_rank_stops_the_group_within_the_stall_timeout_with_a_line_naming_it(tmp_path: Path) -> None:
    launcher, run = launch(tmp_path, "--limit-train", "4000", "--stage-epochs", "1,0,0", "--stall-timeout", "3")
    try:
        wait_for("a loss line", lambda: of(run, "batch_logged"))
        ranks = ranks_of(launcher.pid)
        os.kill(ranks[1], signal.SIGSTOP)
        frozen = time.monotonic()
        _, err = launcher.communicate(timeout=60)
        took = time.monotonic() - frozen
    finally:
        launcher.kill()
        for pid in ranks_of(launcher.pid).values():
            os.kill(pid, signal.SIGKILL)
    assert launcher.returncode == 1
    assert err.count("\n") == 1 and f"rank 1 (pid {ranks[1]}" in err and "stopped answering for" in err, err
    assert took < 3 + 10, took  # the stall timeout, a heartbeat or two, the process ends
    assert all(gone(pid) for pid in ranks.values())  # the frozen one too: killed by its sibling
    (failed,) = of(run, "run_failed")
    assert failed["message"] in err
    assert inspect_run(run).state is Status.FAILED


@pytest.mark.slow
def test_the_first_sigterm_takes_the_ranks_down_even_when_they_cannot_stop_in_time(tmp_path: Path) -> None:
    """The stop checkpoint hangs (a slow disk, simulated): after the grace (the stall
    timeout) the launcher kills its ranks and exits 143 with one line; the last complete
    checkpoint is kept."""
    launcher, run = launch(tmp_path, "--limit-train", "4000", "--stage-epochs", "1,0,0", "--stall-timeout", "3",
                           env={"CBAM_TUI_FAULTS": "save:stop=sleep:120"})
    try:
        wait_for("a loss line", lambda: of(run, "batch_logged"))
        ranks = ranks_of(launcher.pid)
        launcher.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = launcher.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        launcher.kill()
    assert launcher.returncode == 143
    assert err.count("\n") == 1 and "did not stop within 3 s of SIGTERM and were killed" in err, err
    assert took < 3 + 5, took
    assert all(gone(pid) for pid in ranks.values())


@pytest.mark.slow
def test_sigusr1_twice_while_a_checkpoint_is_written_gives_one_stop_checkpoint_and_an_exact_resume(
    tmp_path: Path,
) -> None:
    launcher, run = launch(tmp_path, "--limit-train", "64", "--stage-epochs", "2,0,0",
                           env={"CBAM_TUI_FAULTS": "epoch-end:before-last.pt=sleep:2@1"})
    try:
        progress = run / "progress.json"  # says "evaluating" from the evaluation until the next batch
        wait_for("epoch 1's evaluation", lambda: progress.exists() and '"evaluating"' in progress.read_text())
        launcher.send_signal(signal.SIGUSR1)  # during the evaluation, or the epoch's checkpoint write
        launcher.send_signal(signal.SIGUSR1)  # the same warning again: it changes nothing
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 75, err
    (stopped,) = of(run, "run_stopped")
    assert stopped["reason"] == "SIGUSR1" and stopped["checkpoint"]
    assert [e["reason"] for e in of(run, "checkpoint_saved")].count("stop") == 1
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["position"]["batch"] == stopped["batch"]
    resumed = cbam(tmp_path, "run", "--resume", str(run), "--headless", "--nproc-per-node", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_epochs(run) == [1, 2]


def test_the_launcher_knows_a_failed_rank_by_the_name_its_siblings_give_it() -> None:
    from core.dist import _who
    from tui.workers import killed_by_sibling

    said = f"{_who(1)} stopped answering for 3 s; the group stopped"
    assert killed_by_sibling(said, f"rank 1 (pid {os.getpid()})")
    assert not killed_by_sibling(said, f"rank 1 (pid {os.getpid() // 10})")
    assert not killed_by_sibling(said, f"rank 0 (pid {os.getpid()})")


@pytest.mark.parametrize("written", ["rank 1 (pid 4242 on gpu-7) stopped answering for 3 s",
                                     "rank 1 (pid 4242 on gpu-7, node 1) stopped answering for 3 s",
                                     "rank 0 (pid 4241 on gpu-7) failed: disk",
                                     "rank 1 (pid 42420 on gpu-7) stopped answering for 3 s",
                                     "rank 1 (pid 4242 on gpu-7) is gone: no heartbeat for 3 s"])
def test_a_rank_a_sibling_killed_is_not_said_twice_but_an_unexplained_kill_is(tmp_path: Path, written: str) -> None:
    # The launcher may see the frozen rank's SIGKILL (from its sibling's watchdog) as the first
    # failure, before the sibling's own exit: what the ranks wrote already names it.
    from core.events import RunFailed
    from tui.workers import Workers

    run, _ = fake_run(tmp_path, "run", [RunFailed(written)])
    rundir = RunDir.open(run)
    try:
        workers = Workers(rundir, 2)
        workers.signalled, workers.first_failed = True, "rank 1 (pid 4242)"
        workers.failure = "rank 1 (pid 4242) was killed by SIGKILL"
        workers.done.set()
        assert workers.finish() == StopReason.FAILED
    finally:
        rundir.close()
    if written.startswith("rank 1 (pid 4242 ") and "stopped answering" in written:
        assert workers.appended is None  # the watchdog's line stands, once
    else:
        assert workers.appended is not None and "killed by SIGKILL" in workers.appended.message
