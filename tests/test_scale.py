"""What grows without bound in the hands of a user or an attacker: a run's history (what
reading it costs is counted, events parsed and items kept, not timed, and must not grow with
the log; a summary that does not hold for the log is never trusted), junk in a run's inbox,
and a run deleted while it is watched or steered. The figures on a 1 GB log and 5,000 runs
come from bench/history.py."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

import core.inbox as inbox_module
import core.rundir as rundir
import core.runs as runs
import core.state as state_module
from core.errors import RunDirError
from core.events import (
    BatchLogged,
    EpochEnded,
    Event,
    IterLosses,
    Loading,
    Replayed,
    Replaying,
    RunFailed,
    RunFinished,
    RunGone,
    RunStarted,
    Watching,
)
from core.follow import Follower
from core.inbox import Inbox, send
from core.rundir import EventReader, RunDir, open_run
from core.runs import inspect_run, unfinished_run
from core.safefs import Dir
from core.state import RunState
from core.vocab import Command, Status
from tests.conftest import Recorder
from tests.scripted import attention, class_accuracy
from tests.scripted import events as scripted_events

BATCHES = 4


def start() -> list[Event]:
    """run_started and stage 1 of the scripted run (its plan: 50 epochs)."""
    return list(scripted_events(epochs=0, batches=BATCHES, log_every=2))[:3]


def epoch_events(epoch: int) -> Iterator[Event]:
    """One epoch as the trainer logs it: losses, two loss lines, per-class results, maps, the epoch."""
    step = (epoch - 1) * BATCHES
    for half in (0, 1):
        losses = tuple(float(step + half * 2 + i) for i in (1, 2))
        yield IterLosses(step + half * 2 + 1, losses, 1)
        yield BatchLogged(1, epoch, 50, half * 2 + 2, BATCHES, 2.0, 2.0, 100.0, step + half * 2 + 2, (1e-3,), (1.0,))
    yield class_accuracy(1, epoch, 50.0)
    yield attention(1, epoch)
    acc = 40.0 + epoch / 100
    yield EpochEnded(1, epoch, 50, epoch, 50, BATCHES, 1.0, acc, 1.0, acc, 1.0, 100.0, acc, step + BATCHES)


def write_lines(run: Path, events: list[Event] | Iterator[Event]) -> None:
    """Append events as RunDir.write does, but without it (so no index is kept on the way)."""
    with (run / "events.jsonl").open("ab") as f:
        for e in events:
            f.write((json.dumps({**e.to_dict(), "t": 1.7e9}, separators=(",", ":")) + "\n").encode())


def make_run(root: Path, name: str, epochs: int, finished: bool = True) -> Path:
    run = RunDir.create_at(root / name)
    run.write_config({"name": name.split("-")[-1]})
    run.close()
    path = root / name
    write_lines(path, start())
    write_lines(path, (e for n in range(1, epochs + 1) for e in epoch_events(n)))
    if finished:
        write_lines(path, [RunFinished(50.0, 50.0, epochs, 10.0)])
    return path


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every event the run directory's reader parses, by kind."""
    seen: Counter[str] = Counter()
    real = rundir.read_line

    def counting(line: bytes) -> tuple[Event, float | None]:
        event, t = real(line)
        seen[event.kind] += 1
        return event, t

    monkeypatch.setattr(rundir, "read_line", counting)
    return seen


def full_fold(run: Path) -> tuple[RunState, int]:
    """The reference: every line parsed, a light state folded from each."""
    with open_run(run) as d:
        reader = EventReader(d)
        state = RunState(keep_losses=False).fold(reader.events(final=True))
    return state, reader.bad


def shown(info: runs.RunInfo) -> tuple[object, ...]:
    return info.state, info.stage, info.epoch, info.best_acc, info.epochs_done, info.bad_lines, info.message


# --- runs: only what it shows, and then only what is new --------------------------------------


@pytest.mark.parametrize("epochs", [12, 120])  # a log 10x longer costs a listing no more
def test_listing_a_run_parses_no_curves_and_later_only_the_lines_after_its_index(
    tmp_path: Path, parsed: Counter[str], epochs: int
) -> None:
    run = make_run(tmp_path, "20260101-000000-long", epochs, finished=False)
    reference, _ = full_fold(run)
    parsed.clear()
    first = inspect_run(run)
    assert not parsed["attention"] and not parsed["iter_losses"] and not parsed["class_accuracy"]
    assert parsed["batch_logged"] == epochs  # of each epoch's two loss lines, the last
    assert first.epochs_done == epochs and first.best_acc == reference.best_acc and first.state is Status.DEAD
    assert (run / "index.json").exists()  # a run nobody holds gets an index

    parsed.clear()
    assert shown(inspect_run(run)) == shown(first) and sum(parsed.values()) == 0  # all from the index

    write_lines(run, [*epoch_events(epochs + 1), RunFinished(60.0, 60.0, epochs + 1, 10.0)])
    parsed.clear()
    again = inspect_run(run)
    assert sum(parsed.values()) == 3  # the new epoch's last loss line, the epoch, the end: as many for any length
    assert again.state is Status.FINISHED and again.epochs_done == epochs + 1
    state, _ = full_fold(run)
    assert (again.best_acc, again.epoch) == (state.best_acc, state.epoch_text)


def test_a_state_restored_from_its_snapshot_folds_on_exactly_like_the_original(tmp_path: Path) -> None:
    events = [*start(), *(e for n in range(1, 4) for e in epoch_events(n))]
    resumed = msgspec.structs.replace(events[0], resumed_from="x", start_epoch=3, global_step=2 * BATCHES)
    events += [Loading("loading"), resumed, *epoch_events(3), *epoch_events(4), RunFinished(1.0, 2.0, 3, 4.0)]
    second = next(i for i, e in enumerate(events) if isinstance(e, Loading))  # a process resumes it
    stamps = [1e9 + i + (1000 if i >= second else 0) for i in range(len(events))]  # after a long stop
    for cut in range(len(events) + 1):
        original = RunState(keep_losses=False)
        for e, t in zip(events[:cut], stamps, strict=False):
            original.apply(e, t)
        restored = RunState.restore(json.loads(json.dumps(original.snapshot())))
        for e, t in zip(events[cut:], stamps[cut:], strict=True):
            original.apply(e, t)
            restored.apply(e, t)
        assert restored.snapshot() == original.snapshot()
    assert [e.epoch for e in original.epochs] == [1, 2, 3, 4]
    assert original.run_seconds() == len(events) - 2  # two processes, each a second an event, not the stop


def _other_epochs(first: int, count: int) -> bytes:
    """Lines of epochs that score 90% and more: what the index cannot know."""
    out = []
    for e in (e for n in range(first, first + count) for e in epoch_events(n)):
        if isinstance(e, EpochEnded):
            e = msgspec.structs.replace(e, test_acc=90.0 + e.epoch / 100)
        out.append((json.dumps({**e.to_dict(), "t": 1.7e9}, separators=(",", ":")) + "\n").encode())
    return b"".join(out)


def _replaced(run: Path) -> None:
    """Another run's log in its place (another file), longer than the one the index folded."""
    data = (run / "events.jsonl").read_bytes()
    head = data[: data.index(b'{"event":"iter_losses"')]
    (run / "new.jsonl").write_bytes(head + _other_epochs(1, 8))
    os.replace(run / "new.jsonl", run / "events.jsonl")


def _cut_and_regrown(run: Path) -> None:
    """Cut short (a crash, a restore from backup) and written on past the index's length."""
    data = (run / "events.jsonl").read_bytes()
    keep = data[: data.index(b'{"event":"iter_losses"')]
    with (run / "events.jsonl").open("r+b") as f:  # the same file
        f.truncate(len(keep))
        f.seek(len(keep))
        f.write(_other_epochs(1, 8))


def _rewritten_in_place(run: Path) -> None:
    """The same file and length, an epoch's accuracy changed inside what the index folded."""
    data = (run / "events.jsonl").read_bytes()
    at = data.rindex(b'"test_acc":40.06')
    with (run / "events.jsonl").open("r+b") as f:
        f.seek(at)
        f.write(b'"test_acc":99.06')


def _garbage(run: Path) -> None:
    (run / "index.json").write_bytes(b'{"index": 1, "events": [1, 2], "state": "FINISHED"}')


def _lying_state(run: Path) -> None:
    data = json.loads((run / "index.json").read_text())
    data["state"]["status"] = "\x1b]2;pwned\x07"
    data["state"]["epochs"] = [{"event": "epoch_ended", "epoch": "all"}]
    (run / "index.json").write_text(json.dumps(data))


def _a_link(run: Path) -> None:
    os.replace(run / "index.json", run.parent / "elsewhere.json")
    os.symlink(run.parent / "elsewhere.json", run / "index.json")


def _a_fifo(run: Path) -> None:
    os.unlink(run / "index.json")
    os.mkfifo(run / "index.json")


@pytest.mark.parametrize(
    "spoil", [_replaced, _cut_and_regrown, _rewritten_in_place, _garbage, _lying_state, _a_link, _a_fifo]
)
def test_an_index_that_does_not_hold_for_the_log_is_not_trusted(tmp_path: Path, spoil) -> None:
    run = make_run(tmp_path, "20260101-000000-r", 6, finished=False)
    assert inspect_run(run).state is Status.DEAD and (run / "index.json").exists()
    write_lines(run, [RunFinished(99.0, 99.0, 6, 1.0)])  # a log the index no longer covers whole
    spoil(run)
    info = inspect_run(run)
    state, bad = full_fold(run)
    assert (info.state, info.epochs_done, info.best_acc, info.bad_lines) == (
        Status.FINISHED if state.status is Status.FINISHED else Status.DEAD, len(state.epochs), state.best_acc, bad
    )
    assert "pwned" not in info.state.word
    if spoil in (_replaced, _cut_and_regrown, _rewritten_in_place):
        assert info.best_acc is not None and info.best_acc > 90


# --- what a long history keeps in memory --------------------------------------------------


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_LOSSES", 64)
    monkeypatch.setattr(state_module, "MAX_CURVE_POINTS", 16)
    monkeypatch.setattr(state_module, "KEEP_EPOCH_VIEWS", 5)


def kept(state: RunState) -> dict[str, int]:
    return {"losses": len(state.iter_losses), "curves": len(state.group_curves), "maps": len(state.attention),
            "classes": len(state.class_reports)}


@pytest.mark.parametrize("epochs", [40, 400])
def test_what_a_state_keeps_of_a_long_history_stays_within_its_limits(small_limits, epochs: int) -> None:
    state = RunState()
    for e in [*start(), *(e for n in range(1, epochs + 1) for e in epoch_events(n))]:
        state.apply(e)
    assert kept(state)["losses"] <= 64 and kept(state)["curves"] <= 16
    assert kept(state)["maps"] == kept(state)["classes"] == 5 and state.attention[-1].epoch == epochs
    # Each point is the mean of loss_stride steps (a loss here is its step's number), in order.
    stride = state.loss_stride
    assert stride == (1 if epochs * BATCHES <= 64 else stride) and state.losses_end == epochs * BATCHES + 1
    for i, value in enumerate(state.iter_losses):
        assert value == pytest.approx(state.first_step + i * stride + (stride - 1) / 2)
    assert [p[0] for p in state.group_curves] == sorted(p[0] for p in state.group_curves)


def test_a_resume_cuts_a_bucketed_history_at_its_step_and_the_buckets_stay_aligned(small_limits) -> None:
    state = RunState()
    state.apply(IterLosses(1, tuple(float(s) for s in range(1, 1001)), 1))
    assert state.loss_stride == 16 and state.losses_end == 1001
    resumed = msgspec.structs.replace(start()[0], resumed_from="x", global_step=500)
    state.apply(resumed)
    assert state.losses_end == 501  # steps after 500 are redone by the resume
    state.apply(IterLosses(501, tuple(float(s) for s in range(501, 601)), 1))
    assert state.losses_end == 601
    for i, value in enumerate(state.iter_losses):
        if i != 31:  # the point the cut split keeps its earlier mean for its first steps
            assert value == pytest.approx(1 + i * 16 + 7.5)


# --- watching a long run ---------------------------------------------------------------------


def test_a_follower_folds_a_long_history_silently_and_never_calls_a_finished_run_failed(
    tmp_path: Path, parsed: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rundir, "MAX_READ", 4096)  # the history spans many reads
    monkeypatch.setattr(state_module, "KEEP_EPOCH_VIEWS", 3)
    monkeypatch.setattr("core.follow.KEEP_EPOCH_VIEWS", 3)
    run = make_run(tmp_path, "20260101-000000-done", 30)
    parsed.clear()
    seen = Recorder(lambda e: follower.stop() if isinstance(e, Watching) else None)
    follower = Follower(run, seen)
    follower.run()
    kinds = [e.kind for e in seen.events]
    assert set(kinds[: kinds.index("replayed")]) <= {"replaying"}  # nothing of the history before it is whole
    assert not seen.of(RunFailed) and seen.of(Watching)
    [history] = seen.of(Replayed)
    assert history.state.status == "FINISHED" and len(history.state.epochs) == 30
    assert [m.epoch for m in history.state.attention] == [28, 29, 30]
    assert parsed["attention"] == 3 and parsed["class_accuracy"] == 3  # the older ones are never parsed


def test_a_burst_of_lines_then_the_end_is_followed_to_the_end_and_not_called_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rundir, "MAX_READ", 4096)
    path = make_run(tmp_path, "20260101-000000-b", 1, finished=False)
    holder = RunDir.open(path)
    seen = Recorder()
    follower = Follower(path, seen)
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        _wait(lambda: seen.of(Watching))
        write_lines(path, [*(e for n in range(2, 40) for e in epoch_events(n)), RunFinished(1.0, 1.0, 39, 2.0)])
        holder.close()  # the owner leaves as soon as its last line is written
        _wait(lambda: seen.of(RunFinished) or seen.of(RunFailed))
    finally:
        follower.stop()
        thread.join(5)
    assert seen.of(RunFinished) and not seen.of(RunFailed)
    assert [e.epoch for e in seen.of(EpochEnded)] == list(range(2, 40))


def _wait(done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_state_shows_replaying_then_the_whole_history_at_once() -> None:
    state = RunState()
    state.apply(Replaying(10 << 20, 40 << 20))
    assert state.status == "REPLAYING" and state.started is None and "40 MB" in state.loading
    folded = RunState()
    for e in [*start(), *epoch_events(1)]:
        folded.apply(e)
    state.apply(Replayed(folded, ("a line",)))
    assert state.status == "RUNNING" and state.epochs == folded.epochs and state.keep_losses


# --- compare and --resume auto ---------------------------------------------------------------


def test_compare_loads_a_run_from_its_index(tmp_path: Path, parsed: Counter[str]) -> None:
    from tui.widgets.compare_view import Tracked

    run = make_run(tmp_path, "20260101-000000-c", 20)
    inspect_run(run)  # leaves the index
    parsed.clear()
    tracked = Tracked(run)
    assert sum(parsed.values()) == 0 and len(tracked.state.epochs) == 20 and tracked.state.status == "FINISHED"
    write_lines(run, [RunStarted(**{**msgspec.structs.asdict(start()[0]), "start_epoch": 21, "resumed_from": "x"})])
    assert tracked.poll() and tracked.state.status == "RUNNING"
    tracked.dir.close()


def test_resume_auto_looks_into_the_runs_of_its_name_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    for i in range(12):
        make_run(root, f"20260101-0000{i:02d}-other", 2, finished=False)
    wanted = make_run(root, "20260101-000100-mine", 2, finished=False)
    (wanted / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    inspected: list[Path] = []
    real = runs.inspect_run
    monkeypatch.setattr(runs, "inspect_run", lambda p, follow=True: inspected.append(p) or real(p, follow))
    assert unfinished_run("mine", root) == wanted
    assert inspected == [wanted]


# --- export -------------------------------------------------------------------------------------


def test_export_reads_a_long_run_in_bounded_memory_and_keeps_every_epoch(
    tmp_path: Path, small_limits, parsed: Counter[str]
) -> None:
    from core.export import loss_points, read

    run = make_run(tmp_path, "20260101-000000-e", 60)
    state, per_class = read(run)
    assert not parsed["attention"]  # no export shows them
    steps, losses = loss_points(state)
    assert len(losses) == len(steps)
    assert len(steps) <= 64 and steps == sorted(steps) and state.loss_stride > 1
    assert sorted(per_class) == list(range(1, 61)) and len(state.epochs) == 60


# --- a run deleted while it is watched or steered ----------------------------------------------


def test_a_run_deleted_while_followed_is_said_once_and_the_follower_ends(tmp_path: Path) -> None:
    path = make_run(tmp_path, "20260101-000000-w", 2, finished=False)
    holder = RunDir.open(path)  # a live owner
    seen = Recorder()
    follower = Follower(path, seen)
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        _wait(lambda: seen.of(Watching))
        shutil.rmtree(path)
        thread.join(10)
        assert not thread.is_alive()  # it ended by itself
    finally:
        follower.stop()
        thread.join(5)
        holder.close()
    assert [e.run_dir for e in seen.of(RunGone)] == [str(path)] and follower.gone
    assert not seen.of(RunFailed)  # not "gone without a final event": the directory is gone


def test_ctl_waiting_on_a_run_that_is_deleted_says_so(tmp_path: Path) -> None:
    path = make_run(tmp_path, "20260101-000000-d", 1, finished=False)
    holder = RunDir.open(path)
    try:
        name = inbox_module.send(path, Command("pause"), "test")
        threading.Timer(0.3, shutil.rmtree, (path,)).start()
        with pytest.raises(RunDirError, match="was deleted before the run took the command"):
            inbox_module.wait_taken(path, name, 30)
    finally:
        holder.close()


def test_a_run_deleted_while_runs_lists_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    make_run(root, "20260101-000000-a", 1)
    doomed = make_run(root, "20260101-000001-b", 1)
    real = runs.iter_run_dirs

    def deleting(where: Path) -> Iterator[Path]:
        for p in real(where):
            if p == doomed:
                shutil.rmtree(p)
            yield p

    monkeypatch.setattr(runs, "iter_run_dirs", deleting)
    assert [r.path.name for r in runs.list_runs(root)] == ["20260101-000000-a"]


# --- junk in the inbox ---------------------------------------------------------------------------


def test_junk_in_control_costs_each_poll_a_bounded_look_and_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_module, "INBOX_NAMES_PER_POLL", 500)
    run = RunDir.create_at(tmp_path / "run")
    run.write_config({})
    control = tmp_path / "run" / "control"
    for i in range(20_000):
        (control / f"junk-{i:05d}").write_bytes(b"")
    for i in range(2_000):  # named like commands, but directories: each must be looked at once
        (control / f"{i:020d}-1-pause").mkdir()
    past = time.time_ns() - 10**10
    os.utime(control, ns=(past, past))
    listings, looks = [0], [0]
    names, lstat = Dir.names, Dir.lstat
    monkeypatch.setattr(Dir, "names", lambda d: listings.__setitem__(0, listings[0] + 1) or names(d))
    monkeypatch.setattr(Dir, "lstat", lambda d, n: looks.__setitem__(0, looks[0] + 1) or lstat(d, n))
    taken: list[Command] = []
    notes: list[str] = []
    inbox = Inbox(run, lambda command, origin: taken.append(command), on_note=notes.append)
    per_poll = []
    for _ in range(10):
        listings[0] = looks[0] = 0
        inbox.poll(force=True)
        per_poll.append((listings[0], looks[0]))
    assert max(look for _, look in per_poll) <= 500  # however many entries there are
    assert per_poll[-1] == (0, 0)  # once looked at, an unchanged control/ is not even listed
    assert len(notes) == 1 and "20,000 entries that are no commands" in notes[0]
    send(tmp_path / "run", Command("pause"), "test")
    inbox.poll(force=True)
    assert [c.verb for c in taken] == ["pause"]  # a command among the junk is taken at the next poll
    for _ in range(3):
        inbox.poll(force=True)
    assert len(notes) == 1
    run.close()
