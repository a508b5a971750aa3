"""Runs as readers see them: states, a dead owner, the control channel, the follower."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.channel import CONTROL_DIR, STOP_COMMAND, Inbox, can_control, send, wait_taken
from core.control import Control
from core.errors import RunDirError
from core.events import (
    BatchLogged,
    CommandTaken,
    EpochEnded,
    Progress,
    RunFailed,
    RunFinished,
    RunStopped,
    Watching,
    from_dict,
)
from core.follow import Follower
from core.run_dir import RunDir
from core.runs import inspect_run, list_runs, owner_alive, read_events, resolve_run
from core.train import FINISHED, STOPPED, Trainer
from tests.conftest import Recorder, cli, tiny_config
from tests.scripted import events as scripted_events
from tui.headless import run_headless


def fake_run(root: Path, name: str, events: list, pid: int | None = None, ago: float = 0.0) -> Path:
    """A run directory holding ``events``, owned (or once owned) by ``pid``."""
    run = RunDir(root / name)
    (run.path / "checkpoints").mkdir(parents=True)
    for e in events:
        run.write(e)
    run.close()
    if pid is not None:
        (run.path / "run.pid").write_text(f"{pid}\n")
        stamp = time.time() - ago
        os.utime(run.path / "run.pid", (stamp, stamp))
    return run.path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def script() -> list:
    """A short run: start, stage 1, three epochs of two log points, finished (18 events)."""
    body = list(scripted_events(epochs=3, batches=4, log_every=2))
    return [*body, RunFinished(body[-1].test_acc, body[-1].test_acc, 3, 12.5)]


def test_states_of_finished_stopped_failed_running_and_dead_runs(tmp_path: Path, script: list) -> None:
    finished = fake_run(tmp_path, "a-finished", script)
    stopped = fake_run(tmp_path, "b-stopped", [*script[:6], RunStopped("SIGINT", 1, 1, 2, None)])
    failed = fake_run(tmp_path, "c-failed", [*script[:6], RunFailed("boom", None)])
    running = fake_run(tmp_path, "d-running", script[:6], pid=os.getpid())
    dead = fake_run(tmp_path, "e-dead", script[:6], pid=dead_pid())
    # Our pid, but written before this process started: the pid was reused, the owner is gone.
    reused = fake_run(tmp_path, "f-reused", script[:6], pid=os.getpid(), ago=10 * 24 * 3600)
    # Exited, but not reaped by its parent (as under a container's init): a zombie is no owner.
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    fake_run(tmp_path, "g-zombie", script[:6], pid=zombie.pid)

    states = {r.path.name: r for r in list_runs(tmp_path)}
    assert {k: v.state for k, v in states.items()} == {
        "a-finished": "finished", "b-stopped": "stopped", "c-failed": "failed",
        "d-running": "running", "e-dead": "dead", "f-reused": "dead", "g-zombie": "dead",
    }
    zombie.wait()
    best = max(e.test_acc for e in script if isinstance(e, EpochEnded))
    assert states["a-finished"].best_acc == best and states["a-finished"].stage == "1/3"
    assert states["a-finished"].epoch == "3/50" and states["a-finished"].seconds is not None
    assert states["d-running"].pid == os.getpid() and states["e-dead"].pid is None
    assert owner_alive(running) == os.getpid()
    assert owner_alive(dead) is None and owner_alive(reused) is None
    assert "gone without a final event" in states["e-dead"].message
    assert {finished, stopped, failed} <= {r.path for r in list_runs(tmp_path)}


def test_runs_lists_a_dead_run_and_says_how_to_continue(tmp_path: Path, script: list, capsys) -> None:
    fake_run(tmp_path, "live", script[:6], pid=os.getpid())
    fake_run(tmp_path, "gone", script[:6], pid=dead_pid())
    code, out, _ = cli(capsys, "runs", "--runs-root", str(tmp_path))
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip().startswith(("live", "gone"))}
    assert rows["live"][1] == "running" and rows["live"][-1] == str(os.getpid())
    assert rows["gone"][1] == "dead" and rows["gone"][-1] == "-"
    assert "gone: the process is gone without a final event" in out


def test_the_newest_run_is_watched_by_default_and_bad_paths_get_one_sentence(tmp_path: Path, capsys) -> None:
    older = fake_run(tmp_path, "zzz-older", [RunStopped("x", 1, 1, 0, None)])
    time.sleep(0.05)
    newer = fake_run(tmp_path, "aaa-newer", [RunStopped("x", 1, 1, 0, None)])
    assert resolve_run(None, tmp_path) == newer != older
    (tmp_path / "plain").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for arg, message in [
        (str(tmp_path / "nope"), "does not exist"),
        (str(tmp_path / "plain"), "is not a cbam-tui run directory"),
        (str(tmp_path / "file.txt"), "is a file, not a run directory"),
    ]:
        code, out, err = cli(capsys, "watch", arg)
        assert code == 1 and out == "" and err.count("\n") == 1 and message in err, err
    code, _, err = cli(capsys, "watch", "--runs-root", str(tmp_path / "empty"))
    assert code == 1 and "no runs yet" in err
    code, _, err = cli(capsys, "ctl", str(newer), "pause")
    assert code == 1 and "the run has stopped" in err and err.count("\n") == 1
    code, _, err = cli(capsys, "ctl", str(newer), "jump")
    assert code == 1 and "unknown command 'jump'" in err


def test_a_command_is_applied_once_or_taken_back(tmp_path: Path, script: list) -> None:
    run = fake_run(tmp_path, "r", script[:6], pid=os.getpid())
    (run / CONTROL_DIR).mkdir()
    stale = run / CONTROL_DIR / "0001-99-stop"
    stale.write_text("a process that is gone\n")
    old = time.time() - 10 * 24 * 3600  # before this process started
    os.utime(stale, (old, old))
    assert can_control(run) == (True, f"controlling pid {os.getpid()}")
    send(run, "pause", "test")  # sent while the trainer starts up: kept for it
    control, taken = Control(), []
    inbox = Inbox(run, control, lambda verb, origin: taken.append((verb, origin)))
    assert not stale.exists()

    for verb in ("save", "next"):
        send(run, verb, "test")
    inbox.poll()
    assert taken == [("pause", "test"), ("save", "test"), ("next", "test")]
    assert control.paused and control.take_save() and control.take_next_stage()

    # Nobody polls: the writer gives up and takes its command back, so it never applies.
    late = send(run, "stop", "test")
    assert wait_taken(late, 0.2) is False and not late.exists()
    time.sleep(0.25)
    inbox.poll()
    assert control.stop_reason is None and len(taken) == 3

    # A trainer that polls takes it within its poll interval.
    threading.Timer(0.3, inbox.poll).start()
    assert wait_taken(send(run, "resume", "test"), 5.0) is True
    assert not control.paused


def test_a_read_only_control_directory_means_watching_only(tmp_path: Path, script: list) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    run = fake_run(tmp_path, "r", script[:6], pid=os.getpid())
    (run / CONTROL_DIR).mkdir()
    (run / CONTROL_DIR).chmod(0o500)
    try:
        ok, why = can_control(run)
        assert not ok and "no permission" in why
        with pytest.raises(RunDirError, match="no permission"):
            send(run, "pause", "test")
    finally:
        (run / CONTROL_DIR).chmod(0o700)


def test_a_trainer_obeys_commands_and_a_stop_command_is_no_failure(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, limit_train=160, run_dir=str(tmp_path / "run"))
    run = tmp_path / "run"
    sent: list[str] = []

    def react(e) -> None:
        # From another thread, as `ctl` in another process would.
        if isinstance(e, BatchLogged) and e.global_step == 2 and not sent:
            sent.append("pause")
            threading.Thread(target=lambda: wait_taken(send(run, "pause", "ctl"), 10)).start()
        if e.kind == "paused":
            threading.Thread(target=lambda: wait_taken(send(run, "next", "ctl"), 10)).start()
            threading.Thread(target=lambda: wait_taken(send(run, "resume", "ctl"), 10)).start()
        if e.kind == "stage_started" and e.stage == 2:
            threading.Thread(target=lambda: wait_taken(send(run, "stop", "ctl"), 10)).start()

    rec = Recorder(react)
    assert Trainer(config, rec, Control()).run() == STOPPED
    verbs = [e.verb for e in rec.of(CommandTaken)]
    assert verbs[0] == "pause" and set(verbs[1:3]) == {"next", "resume"} and verbs[3] == "stop"
    assert rec.of(RunStopped)[0].reason == STOP_COMMAND
    first_stage_batches = next(e for e in rec.of(EpochEnded) if e.stage == 1).batches_done
    assert first_stage_batches < 20  # "next" cut the 20-batch epoch short
    written = [e["event"] for e in read_events(run / "events.jsonl")]
    assert written.count("command") == 4

    # Headless, a stop asked for is no failure: exit 0, with the stop in the output.
    out = io.StringIO()
    second = tmp_path / "second"

    def stop_when_up() -> None:
        deadline = time.monotonic() + 60
        while '"batch_logged"' not in _text(second / "events.jsonl"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        wait_taken(send(second, "stop", "ctl"), 30)

    threading.Thread(target=stop_when_up).start()
    assert run_headless(tiny_config(tmp_path, limit_train=160, run_dir=str(second)), out) == 0
    assert "command stop from ctl" in out.getvalue() and f"stopped ({STOP_COMMAND})" in out.getvalue()


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_the_follower_replays_a_run_then_follows_it_live(tmp_path: Path, script: list) -> None:
    run = fake_run(tmp_path, "r", script[:8], pid=os.getpid())
    (run / CONTROL_DIR).mkdir()
    control, seen = Control(), Recorder()
    follower = Follower(run, seen, control, poll_s=0.02)
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        _wait(lambda: len([e for e in seen.events if not isinstance(e, Watching)]) == 8)
        assert [e for e in seen.events if not isinstance(e, Watching)] == script[:8]
        assert seen.of(Watching)[0].can_control
        # It follows: new lines, a half-written one completed later, and progress between log points.
        writer = RunDir(run)
        writer.write(script[8])
        last = [e for e in script if isinstance(e, BatchLogged)][-1]
        writer.write(Progress(last.stage, last.epoch + 5, 1, last.batches, 100.0))
        line = (script[9].to_json() + "\n").encode()
        with (run / "events.jsonl").open("ab") as f:
            f.write(line[:10])
            f.flush()
            time.sleep(0.1)
            f.write(line[10:])
        _wait(lambda: script[9] in seen.events and seen.of(Progress))
        assert seen.events.count(script[8]) == 1 and seen.events.count(script[9]) == 1
        for e in script[10:]:
            writer.write(e)
        _wait(lambda: seen.of(RunFinished))
        assert not seen.of(RunFailed)  # a run that ended well is not reported dead
    finally:
        control.stop("detached")
        thread.join(5)
    assert not thread.is_alive()


def test_the_follower_reports_a_run_whose_process_died(tmp_path: Path, script: list) -> None:
    run = fake_run(tmp_path, "r", script[:8], pid=dead_pid())
    control = Control()
    seen = Recorder(lambda e: control.stop("detached") if isinstance(e, RunFailed) else None)
    Follower(run, seen, control, poll_s=0.02).run()
    assert "gone without a final event" in seen.of(RunFailed)[0].message
    assert not seen.of(Watching)[0].can_control


def test_events_written_by_a_real_trainer_read_back_as_the_same_events(tmp_path: Path) -> None:
    rec = Recorder()
    assert Trainer(tiny_config(tmp_path, run_dir=str(tmp_path / "run")), rec).run() == FINISHED
    back = [from_dict(d) for d in read_events(tmp_path / "run" / "events.jsonl")]
    assert back == [e for e in rec.events if not e.transient]
    assert all("t" in d for d in read_events(tmp_path / "run" / "events.jsonl"))
    assert (tmp_path / "run" / "progress.json").is_file()
    assert inspect_run(tmp_path / "run").state == "finished"


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
