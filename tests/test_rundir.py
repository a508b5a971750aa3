"""The run directory as an attacker and a broken disk see it: links, FIFOs, planted
files, garbled lines. Nothing outside the run is touched, nothing planted is read,
and one broken run never breaks another's listing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import RunDirError
from core.events import BatchLogged, CommandTaken, EpochEnded, Replayed, RunFailed, RunFinished, RunStopped, Watching
from core.follow import Follower
from core.inbox import Inbox, can_control, send, wait_taken
from core.rundir import EventReader, RunDir, open_run, probe_owner
from core.runs import inspect_run, list_runs, resolve_run
from core.state import describe
from core.vocab import Command, Status, StopReason
from tests.conftest import Recorder, cli, tiny_config, train
from tests.helpers import fake_run, stopped_run, wait_until
from tests.scripted import events as scripted_events


@pytest.fixture(scope="module")
def script() -> list:
    """A short run as its events.jsonl holds it: start, stage 1, three epochs of two log points, finished."""
    body = [e for e in scripted_events(epochs=3, batches=4, log_every=2) if not e.transient]  # as events.jsonl keeps them
    return [*body, RunFinished(body[-1].test_acc, body[-1].test_acc, 3, 12.5)]


def command_name(verb: str) -> str:
    return f"{time.time_ns():020d}-{os.getpid()}-{verb}"


# --- liveness: the lock, not the pid file ------------------------------------------


def test_a_live_owner_is_its_lock_and_a_planted_pid_proves_nothing(tmp_path: Path, script: list) -> None:
    live, holder = fake_run(tmp_path, "live", script[:6], hold=True)
    gone, _ = fake_run(tmp_path, "gone", script[:6])
    (gone / "run.pid").write_text("1\n")  # pid 1 is alive, and older than anything
    try:
        with open_run(live) as run:
            assert probe_owner(run).alive and probe_owner(run).pid == os.getpid()
        with open_run(gone) as run:
            assert not probe_owner(run).alive
        states = {r.path.name: r.state for r in list_runs(tmp_path)}
        assert states == {"live": Status.RUNNING, "gone": Status.DEAD}
    finally:
        assert holder is not None
        holder.close()
    with open_run(live) as run:
        assert not probe_owner(run).alive  # released the moment its owner let go


def test_run_files_are_owner_only_and_a_second_owner_is_refused(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "x")
    try:
        assert stat.S_IMODE(run.path.stat().st_mode) == 0o700
        assert stat.S_IMODE((run.path / ".lock").stat().st_mode) == 0o600
        assert stat.S_IMODE((run.path / "control").stat().st_mode) == 0o700
        run.write_config({"a": 1})
        assert stat.S_IMODE((run.path / "config.json").stat().st_mode) == 0o600
        (run.path / "events.jsonl").write_text("")
        with pytest.raises(RunDirError, match=f"in use by another cbam-tui process \\(pid {os.getpid()}\\)"):
            RunDir.open(run.path)
    finally:
        run.close()


# --- never follow a link, never touch what is not ours ----------------------------


def test_run_dir_refuses_a_directory_that_is_not_a_run_and_changes_nothing(tmp_path: Path) -> None:
    other = tmp_path / "mine"
    (other / "control").mkdir(parents=True)
    (other / "control" / "notes.txt").write_text("keep me")
    (other / "config.json").write_text("{}")
    (other / "metrics.csv").write_text("my,data\n")
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match="not empty and holds no run"):
        train(tiny_config(tmp_path, run_dir=str(other)))
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "entry", ["control", "events.jsonl", *(pytest.param(e, marks=pytest.mark.slow) for e in ("run.pid", "metrics.csv",
                                                                                          "checkpoints"))],
)
def test_a_planted_link_in_a_run_stops_a_resume_and_its_target_is_untouched(
    tmp_path: Path, stopped_copy: Callable[[Path], Path], entry: str
) -> None:
    home = stopped_copy(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("do not touch")
    target = victim if entry in ("control", "checkpoints") else victim / "precious"
    moved = home / f"{entry}.moved"
    had = os.path.lexists(home / entry)  # run.pid is gone once its process is
    if had:
        os.rename(home / entry, moved)
    os.symlink(target, home / entry)
    with pytest.raises(RunDirError, match=f"{entry} is not a"):
        train(tiny_config(tmp_path, resume=str(home)))
    assert (victim / "precious").read_text() == "do not touch" and os.listdir(victim) == ["precious"]
    os.unlink(home / entry)
    if had:
        os.rename(moved, home / entry)
    outcome, _ = train(tiny_config(tmp_path, resume=str(home)))  # put back, it resumes
    assert outcome == StopReason.FINISHED


def test_the_inbox_reads_only_regular_command_files_of_its_own(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "x")
    run.write_config({})
    secret = tmp_path / "secret"
    secret.write_text('{"origin": "the secret"}')
    inbox_dir = run.path / "control"
    os.symlink(secret, inbox_dir / command_name("pause"))
    os.mkfifo(inbox_dir / command_name("stop"))
    (inbox_dir / command_name("save")).mkdir()
    (inbox_dir / "notes.txt").write_text("not a command")
    (inbox_dir / command_name("jump")).write_text('{"origin": "x"}')
    (inbox_dir / command_name("next")).write_text("garbage, not JSON")
    taken: list[tuple[str, str]] = []
    try:
        inbox = Inbox(run, lambda c, origin: taken.append((c.verb, origin)))
        started = time.monotonic()
        inbox.poll(force=True)
        assert time.monotonic() - started < 1.0  # a FIFO cannot hang it
        assert taken == []
        assert secret.read_text() == '{"origin": "the secret"}'
        assert (inbox_dir / "notes.txt").exists()  # not ours to delete
        send(run.path, Command("resume"), "ctl pid 1")
        inbox.poll(force=True)
        assert taken == [("resume", "ctl pid 1")]
        # The inbox itself swapped for a link to another directory: the open inbox never goes there.
        victim = tmp_path / "victim"
        victim.mkdir()
        (victim / command_name("stop")).write_text('{"origin": "planted"}')
        os.rename(inbox_dir, run.path / "control.old")
        os.symlink(victim, inbox_dir)
        inbox.poll(force=True)
        assert taken == [("resume", "ctl pid 1")] and len(os.listdir(victim)) == 1
    finally:
        run.close()


def test_stale_commands_of_a_gone_owner_are_dropped_and_late_ones_taken_back(tmp_path: Path, script: list) -> None:
    path, holder = fake_run(tmp_path, "r", script[:6], hold=True)
    assert holder is not None
    try:
        stale = path / "control" / f"{1:020d}-99-stop"
        stale.write_text('{"origin": "a process that is gone"}')
        sent = send(path, Command("pause"), "test")  # while the trainer starts up: kept for it
        taken: list[str] = []
        inbox = Inbox(holder, lambda c, o: taken.append(c.verb))
        assert not stale.exists()
        inbox.poll(force=True)
        assert taken == ["pause"] and wait_taken(path, sent, 1.0)
        late = send(path, Command("stop"), "test")  # nobody polls: taken back, never applied later
        assert wait_taken(path, late, 0.2) is False
        inbox.poll(force=True)
        assert taken == ["pause"]
        threading.Timer(0.3, lambda: inbox.poll(force=True)).start()
        assert wait_taken(path, send(path, Command("resume"), "test"), 5.0) is True
        assert taken == ["pause", "resume"]
    finally:
        holder.close()


# --- a crafted checkpoint is input, not trust ----------------------------------------


def test_a_crafted_checkpoint_runs_no_code_and_writes_nowhere_else(
    tmp_path: Path, stopped_copy: Callable[[Path], Path]
) -> None:
    import pickle

    import torch

    from core import checkpoint

    good = torch.load(stopped_copy(tmp_path) / "checkpoints" / "last.pt", weights_only=True)
    good.pop("digest")
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted" / "cifar-10-batches-py"
    planted.mkdir(parents=True)
    payload = pickle.dumps(_Touch(str(marker)))
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"):
        (planted / name).write_bytes(payload)

    def crafted(**changes: object) -> Path:
        path = tmp_path / f"crafted-{len(list(tmp_path.glob('crafted-*')))}.pt"
        state = {**good, "config": {**good["config"], **changes}}
        path.write_bytes(checkpoint.serialize(state))  # a valid digest: an attacker can compute one
        return path

    from core.errors import CbamError

    with pytest.raises(CbamError, match="do not match their published checksums"):
        train(tiny_config(tmp_path, resume=str(crafted(dataset="cifar10", data_dir=str(planted.parent), download=False))))
    assert not marker.exists()
    for name in ("/../../x", "..", "a/b"):
        with pytest.raises(CbamError, match="--name must be one path component"):
            train(tiny_config(tmp_path, resume=str(crafted(name=name))))
    assert not (tmp_path.parent / "x").exists() and not any(tmp_path.glob("x*"))
    with pytest.raises(CbamError, match="batch_size is str"):
        train(tiny_config(tmp_path, resume=str(crafted(batch_size="64"))))


class _Touch:
    """A pickle that would create a file when loaded: proof that it never was."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


# --- one bad line never breaks a listing, a dashboard or a resume -----------------------


BAD_LINES = [b"42\n", b"\xff\xfe not utf-8\n", b'{"event":"epoch_ended","test_acc":"high"}\n',
             b'\xff\xfe{"event":"x"}\n', b"{cut short"]  # a BOM must not make it UTF-16


def test_bad_lines_are_counted_and_skipped_everywhere(tmp_path: Path, script: list, capsys) -> None:
    _good, _ = fake_run(tmp_path / "runs", "a-good", script)
    bad, _ = fake_run(tmp_path / "runs", "b-garbled", script)
    linked, _ = fake_run(tmp_path / "runs", "c-linked", script)
    with (bad / "events.jsonl").open("ab") as f:
        for line in BAD_LINES:
            f.write(line)
    (bad / "checkpoints").mkdir(exist_ok=True)
    (bad / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")  # finished all the same
    os.replace(linked / "events.jsonl", tmp_path / "elsewhere.jsonl")
    os.symlink(tmp_path / "elsewhere.jsonl", linked / "events.jsonl")
    code, out, err = cli(capsys, "runs", "--runs-root", str(tmp_path / "runs"))
    assert code == 0, err
    rows = {r[0]: r[1] for r in map(str.split, out.splitlines()) if len(r) >= 8 and r[0][:2] in ("a-", "b-", "c-") and not r[0].endswith(":")}
    assert rows == {"a-good": "finished", "b-garbled": "finished", "c-linked": "unreadable"}, out
    garbled = next(line for line in out.splitlines() if line.startswith("b-garbled:"))
    assert "5 unreadable lines in events.jsonl" in garbled and "utf-16" not in garbled
    assert "--resume" not in garbled  # it finished: nothing to continue
    assert "c-linked:" in out and "symbolic link" in out

    with open_run(bad) as run:
        reader = EventReader(run)
        events = [e for e, _ in reader.read_all(final=True)]
    assert events == script and reader.bad == 5

    seen = Recorder(lambda e: follower.stop() if isinstance(e, Watching) else None)
    follower = Follower(bad, seen)
    follower.run()
    [replayed] = [e for e in seen.events if not isinstance(e, Watching)]  # the history, in one piece
    assert isinstance(replayed, Replayed) and replayed.lines == tuple(x for e in script for x in describe(e))
    assert replayed.state.epochs == [e for e in script if isinstance(e, EpochEnded)]
    assert replayed.state.status == "FINISHED"
    assert resolve_run(None, tmp_path / "runs").name in ("a-good", "b-garbled", "c-linked")


def test_a_run_with_a_cut_metrics_line_and_garbage_resumes_to_one_row_per_epoch(tmp_path: Path) -> None:
    home = stopped_run(tmp_path, "1,2,0")
    with (home / "metrics.csv").open("a") as f:
        f.write("2,2,1,6,2.3")  # cut short by a crash
    with (home / "events.jsonl").open("ab") as f:
        f.write(b"42\n\xff\n{cut")
    outcome, _again = train(tiny_config(tmp_path, resume=str(home)))
    assert outcome == StopReason.FINISHED
    rows = (home / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["1", "2", "3"] and all(len(r.split(",")) == 10 for r in rows)


def test_a_command_sent_as_its_run_ends_is_taken_back_at_once(tmp_path: Path, script: list, capsys) -> None:
    path, held = fake_run(tmp_path, "ending", script[:3], hold=True)
    assert held is not None
    name = send(path, Command("pause"), "ctl pid 7")  # the run is live: queued
    threading.Timer(0.2, held.close).start()  # then its process ends without taking it
    began = time.monotonic()
    with pytest.raises(RunDirError, match="is no longer running: the command was not taken; withdrawn"):
        wait_taken(path, name, 30)
    assert time.monotonic() - began < 5 and not list((path / "control").iterdir())


def test_a_runs_duration_is_its_processes_time_not_the_time_it_lay_stopped(tmp_path: Path, script: list, capsys) -> None:
    from core.events import Loading

    root = tmp_path / "runs"
    home, _ = fake_run(root, "resumed", [])
    start, body, finished = script[0], script[1:-1], script[-1]

    def process(t0: float, seconds: float, events: list) -> None:  # one process's events, stamped over ``seconds``
        stamped = [Loading("loading synthetic data"), Loading("building the model"), *events]
        with (home / "events.jsonl").open("a") as f:
            for i, e in enumerate(stamped):
                f.write(json.dumps({**e.to_dict(), "t": t0 + seconds * i / (len(stamped) - 1)}) + "\n")

    def listed() -> float:
        code, out, _ = cli(capsys, "runs", "--runs-root", str(root), "--format", "json")
        assert code == 0
        return json.loads(out)["runs"][0]["seconds"]

    process(1000.0, 100.0, [start, *body[:4], RunStopped("stop command", 1, 1, 2, None)])
    process(3100.0, 50.0, [start, *body[4:8]])  # killed: no last event, then a day before the resume
    assert listed() == pytest.approx(150.0)  # (and this listing keeps an index of the fold so far)
    process(90000.0, 30.0, [start, *body[8:], finished])
    assert listed() == pytest.approx(180.0)  # from the index and the lines after it
    (home / "index.json").unlink()
    assert listed() == pytest.approx(180.0)  # from every line


# --- names ------------------------------------------------------------------------


def test_runs_are_found_by_name_and_prefix(tmp_path: Path, script: list, capsys) -> None:
    root = tmp_path / "runs"
    for name in ("20260101-120000-demo", "20260101-130000-demo", "20260102-090000-cbam"):
        fake_run(root, name, script)
    assert resolve_run("20260102", root).name == "20260102-090000-cbam"
    assert resolve_run("20260101-130000-demo", root).name == "20260101-130000-demo"
    with pytest.raises(RunDirError, match="matches 2 runs"):
        resolve_run("20260101", root)
    with pytest.raises(RunDirError, match="neither a run directory nor the name of a run"):
        resolve_run("zzz", root)
    code, _, err = cli(capsys, "ctl", "2026", "pause", "--runs-root", str(root))
    assert code == 1 and "matches 3 runs" in err and err.count("\n") == 1


def test_bad_paths_and_ended_runs_get_one_sentence(tmp_path: Path, script: list, capsys) -> None:
    ended, _ = fake_run(tmp_path, "ended", [*script[:6], RunStopped("SIGINT", 1, 1, 0, None)])
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
    code, _, err = cli(capsys, "ctl", str(ended), "pause")
    assert code == 1 and "no live process owns the run" in err and err.count("\n") == 1
    code, _, err = cli(capsys, "ctl", str(ended), "jump")
    assert code == 1 and "unknown command 'jump'" in err


def test_the_follower_replays_then_follows_and_reports_a_dead_owner(tmp_path: Path, script: list) -> None:
    path, holder = fake_run(tmp_path, "r", script[:8], hold=True)
    assert holder is not None
    seen = Recorder()
    follower = Follower(path, seen)
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        wait_until(lambda: seen.of(Replayed) and seen.of(Watching))
        assert seen.of(Replayed)[0].state.started == script[0] and seen.of(Watching)[0].can_control
        holder.write(script[8])
        line = (script[9].to_json() + "\n").encode()
        with (path / "events.jsonl").open("ab") as f:  # a line written in two halves
            f.write(line[:10])
            f.flush()
            time.sleep(0.1)  # time itself is tested: the follower looks while only half the line is there
            f.write(line[10:])
        wait_until(lambda: script[9] in seen.events)
        assert seen.events.count(script[8]) == 1 and seen.events.count(script[9]) == 1
        holder.close()  # the owner is gone without a final event
        wait_until(lambda: seen.of(RunFailed))
        assert "gone without a final event" in seen.of(RunFailed)[0].message
    finally:
        follower.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_a_trainer_obeys_commands_from_other_processes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tiny_config(tmp_path, limit_train=160, run_dir=str(run))
    sent: list[str] = []
    senders: list[threading.Thread] = []
    taken: list[bool] = []

    def react(e) -> None:
        def later(verb: str) -> None:
            sender = threading.Thread(target=lambda: taken.append(wait_taken(run, send(run, Command(verb), "ctl"), 10)))
            senders.append(sender)
            sender.start()

        if isinstance(e, BatchLogged) and e.global_step == 2 and not sent:
            sent.append("pause")
            later("pause")
        if e.kind == "paused":
            later("next")
            later("resume")
        if e.kind == "stage_started" and e.stage == 2:
            later("stop")

    outcome, rec = train(config, react)
    for sender in senders:  # each waits until its command is claimed: done before the directory goes
        sender.join(15)
    assert outcome == StopReason.COMMAND and outcome.exit_code == 0
    assert taken == [True] * 4
    verbs = [e.verb for e in rec.of(CommandTaken)]
    assert verbs[0] == "pause" and set(verbs[1:3]) == {"next", "resume"} and verbs[3] == "stop"
    assert next(e for e in rec.of(EpochEnded) if e.stage == 1).batches_done < 20  # "next" cut it short
    assert can_control(open_run(run)) == (False, "no live process owns the run: watching only")


def test_runs_lists_a_detached_child_as_starting_while_its_parent_holds_the_lock(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    run.write_config({})
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)"], pass_fds=(run.lock_fd,)
        )
        run.hand_over(child.pid)
        info = inspect_run(run.path)
        assert info.state is Status.STARTING and info.pid == child.pid
        child.kill()
        child.wait()
        assert inspect_run(run.path).state is Status.DEAD
    finally:
        run.close()


def test_events_are_single_writes_so_a_reader_never_sees_half_a_line(tmp_path: Path, script: list) -> None:
    path, holder = fake_run(tmp_path, "r", [], hold=True)
    assert holder is not None
    with open_run(path) as run:
        reader = EventReader(run)
        got = []
        for e in script:
            holder.write(e)
            got.extend(x for x, _ in reader.read())
    holder.close()
    assert got == script and reader.bad == 0
    assert all(json.loads(line)["t"] > 0 for line in (path / "events.jsonl").read_text().splitlines())


# --- checkpoints: a best epoch's bytes are written once ------------------------------


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_last_of_a_best_epoch_is_the_same_file_until_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    if not links:  # a file system that refuses hard links gets a second copy
        def refuse(*args: object, **kwargs: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", refuse)
    run = RunDir.create_at(tmp_path / "run")
    try:
        run.save_checkpoint(b"epoch 1", "best.pt")
        run.save_checkpoint(b"epoch 1", "last.pt", same_as="best.pt")
        best, last = run.checkpoint_path("best.pt"), run.checkpoint_path("last.pt")
        assert best.read_bytes() == last.read_bytes() == b"epoch 1"
        assert (best.stat().st_ino == last.stat().st_ino) is links
        run.save_checkpoint(b"epoch 2", "last.pt")  # a worse epoch: last moves on, best stays
        assert (best.read_bytes(), last.read_bytes()) == (b"epoch 1", b"epoch 2")
        assert sorted(p.name for p in best.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp file left
    finally:
        run.close()


def test_a_forged_clock_or_a_config_nested_too_deeply_costs_its_run_a_column_not_the_listing(
    tmp_path: Path, capsys
) -> None:
    """A stamp no clock gives (in events.jsonl or a rewritten index.json) and a config.json
    nested past the stack: the other runs are listed, compared and resumed as before."""
    from core.comparison import read_compared
    from core.runs import unfinished_run
    from tests.helpers import fake_run
    from tests.scripted import events

    script = [*events(epochs=2, batches=4, log_every=2)]
    root = tmp_path / "runs"
    good, _ = fake_run(root, "good", script, step_s=1.0)
    clock, _ = fake_run(root, "clock", script, step_s=1.0)
    log = clock / "events.jsonl"
    log.write_text("".join(json.dumps({**json.loads(line), "t": 1e17}) + "\n" for line in log.read_text().splitlines()))
    deep, _ = fake_run(root, "t-deep", script, step_s=1.0)
    (deep / "config.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    code, out, err = cli(capsys, "runs", "--runs-root", str(root))
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in
            ("good", "clock", "t-deep")}
    assert set(rows) == {"good", "clock", "t-deep"}, out
    assert len(rows["clock"]) < 120, rows["clock"]  # its time from the file's, not a 300-digit duration
    index = clock / "index.json"  # the index written by that listing, its clock forged and its tie kept
    data = json.loads(index.read_text())
    data["state"]["first_t"] = 1e17
    index.write_text(json.dumps(data))
    code, out, err = cli(capsys, "runs", "--runs-root", str(root))
    assert code == 0 and "good" in out and len(next(r for r in out.splitlines() if r.startswith("clock"))) < 120, err
    compared = read_compared(deep)
    assert read_compared(good).epochs_done == 2 and compared.epochs_done == 2 and compared.config == {}
    assert "nested too deeply" in compared.note  # told, not fatal
    unfinished_run("t", root)  # a requeued job's search goes on past it (it raised RecursionError)
