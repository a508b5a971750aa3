"""Thread-safe steering of a running Trainer: pause, resume, next stage, save, stop.

Any thread (the UI, a signal handler, the run directory's inbox) calls the
verbs; the trainer takes them at batch boundaries, so nothing here ever blocks
the caller. Stopping takes a `StopReason`, whose exit code the CLI returns.
"""

from __future__ import annotations

import threading

from core.vocab import Command, StopReason


class Control:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._paused = False
        self._next_stage = False
        self._save = False
        self._stop: StopReason | None = None
        self._changes: list[tuple[Command, str]] = []  # lr and epochs: applied in order at the boundary

    # --- verbs, for any thread -------------------------------------------
    def apply(self, command: Command, origin: str = "keys") -> None:
        verb = command.verb
        if verb in ("lr", "epochs"):
            with self._wake:
                self._changes.append((command, origin))
                self._wake.notify_all()
        elif verb == "pause":
            self.pause()
        elif verb == "resume":
            self.resume()
        elif verb == "next":
            self.next_stage()
        elif verb == "save":
            self.save()
        else:
            self.stop(command.stop_reason())

    def pause(self) -> None:
        with self._wake:
            self._paused = True
            self._wake.notify_all()

    def resume(self) -> None:
        with self._wake:
            self._paused = False
            self._wake.notify_all()

    def next_stage(self) -> None:
        with self._wake:
            self._next_stage = True
            self._wake.notify_all()

    def save(self) -> None:
        with self._wake:
            self._save = True
            self._wake.notify_all()

    def stop(self, reason: StopReason) -> None:
        """Ask the run to end at the next batch boundary, with a checkpoint; the first reason wins."""
        with self._wake:
            if self._stop is None:
                self._stop = reason
            self._wake.notify_all()

    # --- state, for the trainer -------------------------------------------
    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def stop_reason(self) -> StopReason | None:
        with self._lock:
            return self._stop

    def take_next_stage(self) -> bool:
        with self._lock:
            hit, self._next_stage = self._next_stage, False
            return hit

    def take_save(self) -> bool:
        with self._lock:
            hit, self._save = self._save, False
            return hit

    def take_changes(self, verb: str = "") -> list[tuple[Command, str]]:
        """The learning-rate and epoch changes asked for since the last call (only ``verb``'s
        when given, the others stay), with who asked."""
        with self._lock:
            taken = [c for c in self._changes if not verb or c[0].verb == verb]
            self._changes = [c for c in self._changes if verb and c[0].verb != verb]
            return taken

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` s, or until any verb is called (at once if a request is pending)."""
        with self._wake:
            if not (self._stop or self._save or self._next_stage or self._changes):
                self._wake.wait(timeout)
