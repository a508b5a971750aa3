"""Following a run through its directory: the engine side of `cbam-tui watch`.

A Follower stands in for a Trainer: it replays events.jsonl from the start
(history, curves, log), then polls it for new lines, and emits each as the
same Event the trainer emitted. Between log points it passes on the trainer's
progress.json. It also says, whenever it changes, whether this process can
steer the run, and reports a run whose process died without a final event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from core.channel import can_control
from core.control import Control
from core.events import (
    BatchLogged,
    EpochEnded,
    Event,
    Progress,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStopped,
    Watching,
    from_dict,
)
from core.runs import EVENTS, owner_alive

POLL_S = 0.25
CHECK_OWNER_S = 1.0
DETACHED = "detached"
_ENDS = {RunFinished: "finished", RunStopped: "stopped", RunFailed: "failed"}


class Follower:
    def __init__(self, run: Path, emit: Callable[[Event], None], control: Control, poll_s: float = POLL_S) -> None:
        self.run_dir = run
        self.emit = emit
        self.control = control
        self.poll_s = poll_s
        self._offset = 0
        self._partial = b""
        self._ended: str | None = None  # how the last run segment ended, once its final event is read
        self._started = False
        self._where = (0, 0)  # (epoch, batch) the events have reached; older progress is stale
        self._progress_mtime = 0.0
        self._checked = 0.0
        self._watching: tuple[bool, str] | None = None
        self._reported_dead = False

    def run(self) -> str:
        """Follow until the Control says stop (the dashboard is leaving); the run goes on."""
        while self.control.stop_reason is None:
            self._drain()
            now = time.monotonic()
            if now - self._checked >= CHECK_OWNER_S:
                self._checked = now
                self._check_owner()
            self._progress()
            time.sleep(self.poll_s)
        return DETACHED

    def _drain(self) -> None:
        for event in self._read_new():
            self._note(event)
            self.emit(event)

    def _read_new(self) -> list[Event]:
        path = self.run_dir / EVENTS
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []  # a detached run still starting
        if not chunk:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # a line still being written
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                events.append(from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash, or one this version does not know
        return events

    def _note(self, e: Event) -> None:
        if isinstance(e, RunStarted):
            self._started, self._ended, self._reported_dead = True, None, False
            self._where = (e.start_epoch, e.start_batch)
        elif isinstance(e, BatchLogged):
            self._where = (e.epoch, e.batch)
        elif isinstance(e, EpochEnded):
            self._where = (e.epoch + 1, 0)
        elif type(e) in _ENDS:
            self._ended = _ENDS[type(e)]

    def _check_owner(self) -> None:
        watching = can_control(self.run_dir, self._ended or ("dead" if self._reported_dead else None))
        if watching != self._watching:
            self._watching = watching
            self.emit(Watching(str(self.run_dir), *watching))
        if not self._ended and not self._reported_dead and owner_alive(self.run_dir) is None:
            self._drain()  # it may have written its final event just before it left
            if self._ended:
                self._checked = 0.0  # say at once that it can no longer be steered
                return
            self._reported_dead = True
            last = self.run_dir / "checkpoints" / "last.pt"
            self.emit(
                RunFailed(
                    "the training process is gone without a final event (killed?); see train.log or error.log "
                    "in the run directory",
                    str(last) if last.exists() else None,
                )
            )

    def _progress(self) -> None:
        """The batch counter between log points, while the run is live."""
        if self._ended or not self._started or not (self._watching and self._watching[0]):
            return
        path = self.run_dir / "progress.json"
        try:
            mtime = path.stat().st_mtime
            if mtime == self._progress_mtime:
                return
            self._progress_mtime = mtime
            event = from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return
        if isinstance(event, Progress) and (event.epoch, event.batch) >= self._where:
            self.emit(event)
