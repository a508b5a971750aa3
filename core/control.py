"""Thread-safe steering of a running Trainer: pause, resume, next stage, save, stop.

Any thread (the UI, a signal handler, a control channel) calls the verbs; the
trainer polls at batch boundaries, so nothing here ever blocks the caller.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType


class Control:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._paused = False
        self._next_stage = False
        self._save = False
        self._stop_reason: str | None = None

    # --- verbs, for any thread -------------------------------------------
    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._wake:
            self._paused = False
            self._wake.notify_all()

    def toggle_pause(self) -> bool:
        """Flip pause; returns the new paused state."""
        with self._wake:
            self._paused = not self._paused
            self._wake.notify_all()
            return self._paused

    def next_stage(self) -> None:
        with self._wake:
            self._next_stage = True
            self._wake.notify_all()

    def save(self) -> None:
        with self._wake:
            self._save = True
            self._wake.notify_all()

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to end at the next batch boundary, with a checkpoint."""
        with self._wake:
            if self._stop_reason is None:
                self._stop_reason = reason
            self._wake.notify_all()

    # --- state, for the trainer -------------------------------------------
    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def stop_reason(self) -> str | None:
        with self._lock:
            return self._stop_reason

    def take_next_stage(self) -> bool:
        with self._lock:
            hit, self._next_stage = self._next_stage, False
            return hit

    def take_save(self) -> bool:
        with self._lock:
            hit, self._save = self._save, False
            return hit

    def wait_while_paused(self, timeout: float) -> bool:
        """Block up to ``timeout`` s while paused and nothing else is asked; True if still paused."""
        with self._wake:
            if self._paused and not (self._stop_reason or self._save or self._next_stage):
                self._wake.wait(timeout)
            return self._paused


SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


def stop_on_signals(control: Control) -> Callable[[], None]:
    """Ctrl-C, SIGTERM and SIGHUP (SSH dropped) stop the run with a checkpoint at the
    next batch boundary; a second one exits at once (atomic writes keep the last
    complete checkpoint whole). Returns a function that restores the old handlers.
    """
    received = 0

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received > 1:
            os._exit(128 + signum)
        control.stop(signal.Signals(signum).name)

    wanted = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {sig: signal.signal(sig, handler) for sig in wanted}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
