"""Detach, log out, come back: the real CLI in tmux, as a person on an SSH box would use it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.terminal import CBAM_TUI, Terminal, gone, needs_tmux
from tests.helpers import wait_for

pytestmark = [needs_tmux, pytest.mark.slow]

TINY = "--image-size 8 --limit-train 400 --limit-test 64 --batch-size 8 --stage-epochs 1,1,1 --log-every 10"


def ctl(run: Path, verb: str) -> str:
    done = subprocess.run([CBAM_TUI, "ctl", str(run), verb, "--timeout", "120"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def last_of(run: Path, kind: str) -> dict:
    lines = (run / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind][-1]


@pytest.fixture
def runs_killed_after(tmp_path: Path) -> Iterator[Path]:
    """No background run outlives its test, whatever the test did."""
    yield tmp_path
    for pid_file in (tmp_path / "runs").glob("*/run.pid"):
        pid = int(pid_file.read_text())
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_detached_run_outlives_its_shell_and_is_steered_from_two_dashboards_and_ctl(runs_killed_after: Path) -> None:
    tmp_path = runs_killed_after
    shell = Terminal("cbam-detach", f"{CBAM_TUI} demo --detach {TINY}", (100, 30), tmp_path, "shell-exit")
    try:
        shell.wait_for(lambda s: "dashboard:" in s, timeout=30)
        assert shell.exit_code() == 0  # it returned at once
        (run,) = (tmp_path / "runs").iterdir()
        pid = int((run / "run.pid").read_text())
        deadline = time.monotonic() + 60
        while '"batch_logged"' not in _text(run / "events.jsonl"):
            assert time.monotonic() < deadline, _text(run / "train.log")
            time.sleep(0.1)
        assert "pause taken" in ctl(run, "pause")
    finally:
        shell.close()  # the shell that started it is gone, as after a logout
    wait_for("the shell to exit", lambda: gone(shell.pid), 30)
    # A run that took the shell's SIGHUP would stop with a run_stopped event; the run goes on.
    assert alive(pid), "the run died with the shell that started it"

    a = Terminal("cbam-watch-a", f"{CBAM_TUI} watch", (100, 30), tmp_path, "a-exit")  # the newest run
    b = Terminal("cbam-watch-b", f"{CBAM_TUI} watch {run}", (100, 30), tmp_path, "b-exit")
    try:
        for t in (a, b):
            t.wait_for(lambda s: "PAUSED" in s and "◉ attached" in s, timeout=30)
        # Paused: nothing new is written while both look, so the screens must match the file.
        e, p = last_of(run, "batch_logged"), last_of(run, "paused")
        where = f"Epoch {p['epoch']}/3 · 1/1 in stage · batch {p['batch']}/{e['batches']}"
        # The last loss line, unless a slow machine let the epoch end first: then the pause.
        line = (f"Batch: {e['batch']}/{e['batches']} | Batch loss: {e['loss']:.4f} | Avg loss: {e['avg_loss']:.4f}"
                if p["batch"] else f"paused at epoch {p['epoch']}, batch 0")
        for t in (a, b):
            t.wait_for(lambda s, line=line, where=where: line in s and where in s, timeout=5)

        a.press("p")  # resume, from one dashboard: both see it
        for t in (a, b):
            t.wait_for(lambda s: "RUNNING" in s and "command resume from watch" in s, timeout=20)
        a.press("n")
        for t in (a, b):
            t.wait_for(lambda s: "Stage 2/3" in s, timeout=60)
        assert "pause taken" in ctl(run, "pause")
        for t in (a, b):
            t.wait_for(lambda s: "PAUSED" in s and "command pause from ctl" in s, timeout=20)

        b.press("q")  # leaving never stops the run
        assert b.exit_code(timeout=10) == 0
        assert "training goes on" in "".join(b.screen().split("\n"))
        assert alive(pid)

        assert "resume taken" in ctl(run, "resume")
        a.wait_for(lambda s: "FINISHED" in s and "watching only" in s, timeout=240)
        a.press("q")
        assert a.exit_code(timeout=10) == 0
    finally:
        a.close()
        b.close()
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    kinds = [x["event"] for x in events]
    assert kinds[-1] == "run_finished" and kinds.count("stage_started") == 3
    assert [x["verb"] for x in events if x["event"] == "command"] == ["pause", "resume", "next", "pause", "resume"]
    assert "finished" in (run / "train.log").read_text()

    # A finished run, watched afresh: the whole story, no controls.
    post = Terminal("cbam-watch-c", f"{CBAM_TUI} watch {run}", (100, 30), tmp_path, "c-exit")
    try:
        acc = [x for x in events if x["event"] == "epoch_ended"][-1]["test_acc"]
        post.wait_for(lambda s: "FINISHED" in s and "watching only" in s and f"test acc {acc:.2f}%" in s, timeout=30)
        post.press("p")
        post.wait_for(lambda s: "cannot pause: the run has finished" in s, timeout=5)
        post.press("q")
        assert post.exit_code(timeout=10) == 0
    finally:
        post.close()

    # A run killed with -9 leaves its pid file behind; `runs` tells it is dead.
    second = subprocess.run(
        [CBAM_TUI, "demo", "--detach", "--name", "killed", *TINY.split()], cwd=tmp_path, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    killed = next(p for p in (tmp_path / "runs").iterdir() if p.name.endswith("-killed"))
    ctl(killed, "pause")
    victim = int((killed / "run.pid").read_text())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10  # a kill takes effect soon, not at once
    while Path(f"/proc/{victim}").exists() and _state(victim) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    table = subprocess.run([CBAM_TUI, "runs"], cwd=tmp_path, capture_output=True, text=True).stdout
    rows = {r[0]: r[1] for r in map(str.split, table.splitlines()) if len(r) == 9 and r[0][:1] == "2" and r[0][-1] != ":"}
    assert rows == {run.name: "finished", killed.name: "dead"}, table
    assert "gone without a final event" in table
