"""Following a run through its directory: the engine side of `cbam-tui watch` and of
every dashboard that does not own the run it shows.

A Follower replays events.jsonl from the start (history, curves, log), then waits
for it to grow (inotify where the kernel has it, else a short poll) and emits each
new line as the same Event the trainer emitted. Between log points it passes on
the trainer's progress.json. It says, whenever it changes, whether this process
can steer the run, and reports a run whose process died without a final event.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.events import Evaluating, Event, Progress, RunFailed, Watching
from core.rundir import EventReader, can_control, checkpoint_in, has_checkpoint, open_run, probe_owner, read_live
from core.safefs import Dir
from core.state import ENDED, RunState

POLL_S = 0.05  # without inotify
WAIT_S = 0.25  # with inotify: only the stop flag and the owner check need the timeout
CHECK_OWNER_S = 1.0
GONE = "the training process is gone without a final event (killed?); see train.log or error.log in the run directory"


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
        with open_run(self.path) as run, _Changes(self.path) as changes:
            reader = EventReader(run)
            checked = 0.0
            while not self._stop.is_set():
                self._drain(reader)
                now = time.monotonic()
                if now - checked >= CHECK_OWNER_S:
                    checked = now
                    self._check_owner(run, reader)
                self._live(run)
                changes.wait(WAIT_S if changes.active else self.poll_s)
            if self._final:
                self._drain(reader, final=True)

    def _drain(self, reader: EventReader, final: bool = False) -> None:
        for event, t in reader.read(final):
            self.state.apply(event, t)
            if self.state.started is not None and event is self.state.started:
                self._reported_dead = False
            self.emit(event)

    def _check_owner(self, run: Dir, reader: EventReader) -> None:
        owner = probe_owner(run)
        ended = self.state.status.lower() if self.state.status in ENDED else ("died" if self._reported_dead else None)
        watching = can_control(run, owner, ended)
        if watching != self._watching:
            self._watching = watching
            self.emit(Watching(str(self.path), *watching))
        if owner.alive or self._reported_dead or self.state.status in ENDED:
            return
        self._drain(reader, final=True)  # it may have written its final event just before it left
        if self.state.status in ENDED:
            return
        self._reported_dead = True
        self.emit(RunFailed(GONE, str(checkpoint_in(self.path)) if has_checkpoint(run) else None))

    def _live(self, run: Dir) -> None:
        """Between log points: the batch counter (or the evaluation's), and the machine."""
        if self.state.status in ENDED or self.state.started is None or not (self._watching and self._watching[0]):
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


class _Changes:
    """Wakes the follower when the run directory changes: inotify on Linux, else a plain timeout."""

    _EVENTS = 0x2 | 0x8 | 0x80 | 0x100  # IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

    def __init__(self, path: Path) -> None:
        self.fd = -1
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(path), self._EVENTS) >= 0:
                self.fd = fd
            elif fd >= 0:
                os.close(fd)
        except (OSError, AttributeError):
            self.fd = -1

    @property
    def active(self) -> bool:
        return self.fd >= 0

    def wait(self, timeout: float) -> None:
        if self.fd < 0:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                while os.read(self.fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def __enter__(self) -> _Changes:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

