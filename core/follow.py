"""Following a run through its directory: the engine side of `cbam-tui watch` and of
every dashboard that does not own the run it shows.

A Follower first folds events.jsonl from the start (history, curves, log) without
showing any of it, saying only how far it has come (`Replaying`), and hands the
folded history over in one piece (`Replayed`): a long history never shows stale
values while it is read, and costs the screen one update. Then it waits for the
file to grow (watchfiles where it can watch the directory, else a short poll) and emits each
new line as the same Event the trainer emitted. Between log points it passes on
the trainer's progress.json. It says, whenever it changes, whether this process
can steer the run, reports a run whose process died without a final event, and
one whose directory was deleted (`RunGone`, and it ends).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core.events import Evaluating, Event, Progress, Replayed, Replaying, RunFailed, RunGone, Watching
from core.inbox import can_control
from core.rundir import (
    EVENTS,
    MAX_READ,
    EventReader,
    checkpoint_in,
    deleted,
    has_checkpoint,
    open_run,
    probe_owner,
    read_live,
)
from core.safefs import Dir
from core.state import KEEP_EPOCH_VIEWS, RunState, describe
from core.vocab import Status, judge

if TYPE_CHECKING:
    from watchfiles._rust_notify import RustNotify

POLL_S = 0.05  # without a watcher
WAIT_S = 0.25  # with a watcher: only the owner check needs the timeout (a stop ends the wait at once)
# The watcher looks every step and hands changes over once a step passes without new ones: a
# wake comes 10-20 ms after the write (inside a frame), and an idle follower costs ~0.6% of a core
# (5 ms: 1.1%; 50 ms: 0.1% but 50-100 ms late).
STEP_MS = 10
DEBOUNCE_MS = 50  # a directory that keeps changing is still handed over this often
CHECK_OWNER_S = 1.0
DIED = "the training process is gone without a final event (killed?); see train.log or error.log in the run directory"
LOG_KEEP = 5000  # log lines handed over with a replayed history: as many as the dashboard's log keeps
REPLAY_REPORT_S = 0.25  # between two Replaying reports
NEWEST_ONLY = ("attention", "class_accuracy")  # a replay reads only the newest KEEP_EPOCH_VIEWS of these


class Follower:
    def __init__(self, run: Path, emit: Callable[[Event], None], poll_s: float = POLL_S) -> None:
        self.path = run
        self.emit = emit
        self.poll_s = poll_s
        self.state = RunState(keep_losses=False)  # how far the events have come, and how they ended
        self._stop = threading.Event()
        self._final = False
        self._watching: tuple[bool, str] | None = None
        self._reported_dead = False
        self._live_seen: tuple[Event | None, Event | None] = (None, None)

    def stop(self) -> None:
        """Stop following (the dashboard is leaving); the run goes on."""
        self._stop.set()

    def finish(self) -> None:
        """Stop following once everything written so far has been read (the run's processes ended)."""
        self._final = True
        self._stop.set()

    def run(self) -> None:
        with open_run(self.path) as run, _Changes(self.path, self._stop) as changes:
            history, lines, reader = replay(run, self.emit, self._stop)
            self.state = history.light()
            self.emit(Replayed(history, lines))
            checked = 0.0
            while not self._stop.is_set():
                self._drain(reader)
                now = time.monotonic()
                if now - checked >= CHECK_OWNER_S:
                    checked = now
                    if deleted(run):
                        self._gone()
                        return
                    self._check_owner(run, reader)
                self._live(run)
                changes.wait(WAIT_S if changes.active else self.poll_s)
            if self._final:
                self._drain(reader, final=True)

    def _drain(self, reader: EventReader, final: bool = False) -> None:
        """Everything written since the last look, however much (a run's last lines included)."""
        for event, t in reader.events(final):
            self.state.apply(event, t)
            if self.state.started is not None and event is self.state.started:
                self._reported_dead = False
            self.emit(event)

    def _gone(self) -> None:
        event = RunGone(str(self.path))
        self.state.apply(event)
        self.emit(event)

    @property
    def gone(self) -> bool:
        """The run directory was deleted while it was followed."""
        return self.state.status is Status.GONE

    def _check_owner(self, run: Dir, reader: EventReader) -> None:
        owner = probe_owner(run)
        status = self.state.status
        ended = status.word if status.ended else ("died" if self._reported_dead else None)
        watching = can_control(run, owner, ended)
        if watching != self._watching:
            self._watching = watching
            self.emit(Watching(str(self.path), *watching))
        if self._reported_dead or judge(status, owner.alive) is not Status.DEAD:
            return
        self._drain(reader, final=True)  # it may have written its final event just before it left
        if judge(self.state.status, owner.alive) is not Status.DEAD:
            return
        self._reported_dead = True
        self.emit(RunFailed(DIED, str(checkpoint_in(self.path)) if has_checkpoint(run) else None))

    def _live(self, run: Dir) -> None:
        """Between log points: the batch counter (or the evaluation's), and the machine."""
        if self.state.status.ended or self.state.started is None or not (self._watching and self._watching[0]):
            return
        position, system = read_live(run)
        seen_position, seen_system = self._live_seen
        if position is not None and position != seen_position and self._current(position):
            self.emit(position)
        if system is not None and system != seen_system:
            self.emit(system)
        self._live_seen = (position or seen_position, system or seen_system)

    def _current(self, e: Progress | Evaluating) -> bool:
        """Newer than what the events say: stale progress would move the counter back."""
        ended = self.state.epochs[-1].epoch if self.state.epochs else 0
        if isinstance(e, Evaluating):
            return e.epoch > ended
        return (e.epoch, e.batch) >= (self.state.epoch, self.state.batch) and e.epoch > ended


def replay(
    run: Dir, emit: Callable[[Event], None] | None = None, stop: threading.Event | None = None
) -> tuple[RunState, tuple[str, ...], EventReader]:
    """A run's history folded as a dashboard shows it, bounded however long it is (see
    RunState), with its newest log lines and the reader, positioned after it. ``emit`` gets
    a `Replaying` report about four times a second while it takes time; ``stop`` cuts it short."""
    state = RunState()
    lines: deque[str] = deque(maxlen=LOG_KEEP)
    reader = EventReader(run, skip=_older_than_kept(run))
    report_at = time.monotonic() + REPLAY_REPORT_S
    while not (stop is not None and stop.is_set()):
        before = reader.offset
        for event, t in reader.read():
            state.apply(event, t)
            lines.extend(describe(event))
        if reader.offset == before:
            break
        if emit is not None and time.monotonic() >= report_at:
            emit(Replaying(reader.offset, reader.size))
            report_at = time.monotonic() + REPLAY_REPORT_S
    return state, tuple(lines), reader


def _older_than_kept(run: Dir) -> Callable[[str], bool]:
    """Which lines a replay passes over unread: of the kinds a dashboard keeps only the newest
    few epochs of, all but those (counted in the file as it is now: a scan, not a parse)."""
    total = dict.fromkeys(NEWEST_ONLY, 0)
    marks = {kind: b'\n{"event":"' + kind.encode() + b'"' for kind in NEWEST_ONLY}
    try:
        fd = run.open_file(EVENTS, os.O_RDONLY)
    except OSError:
        return lambda kind: False
    try:
        offset, carry = 0, b"\n"  # the first line counts as if after a newline
        while chunk := os.pread(fd, MAX_READ, offset):
            offset += len(chunk)
            data = carry + chunk  # a mark cut by the chunk's end is whole here; one inside carry was counted
            for kind, mark in marks.items():
                total[kind] += data.count(mark) - carry.count(mark)
            carry = data[-64:]
    finally:
        os.close(fd)
    seen = dict.fromkeys(NEWEST_ONLY, 0)

    def skip(kind: str) -> bool:
        if kind not in seen:
            return False
        seen[kind] += 1
        return seen[kind] <= total[kind] - KEEP_EPOCH_VIEWS

    return skip


class _Changes:
    """Wakes the follower when the run directory changes: watchfiles (inotify on Linux) where it
    can watch the directory, else a poll. Either way a stop ends the wait at once."""

    def __init__(self, path: Path, stop: threading.Event) -> None:
        self.stop = stop
        self.watcher: RustNotify | None = None
        try:  # made before the replay, so nothing written after it goes unnoticed
            from watchfiles._rust_notify import RustNotify

            self.watcher = RustNotify([str(path)], False, False, round(POLL_S * 1000), False, False)
        except (ImportError, OSError, RuntimeError):  # no watchfiles, no inotify, too many watches
            self.watcher = None

    @property
    def active(self) -> bool:
        return self.watcher is not None

    def wait(self, timeout: float) -> None:
        if self.watcher is None:
            self.stop.wait(timeout)
            return
        try:
            got = self.watcher.watch(DEBOUNCE_MS, STEP_MS, max(1, round(timeout * 1000)), self.stop)
        except (OSError, RuntimeError):  # the watcher broke (an internal error): poll from the next wait on
            self.close()
            return
        if got == "signal":  # a signal handler raised (Ctrl-C in the main thread): watchfiles kept it, pass it on
            raise KeyboardInterrupt

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def __enter__(self) -> _Changes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
