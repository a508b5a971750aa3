"""The control channel: commands to a running trainer through its run directory.

    <run dir>/control/<time_ns>-<pid>-<verb>     one file per command

A writer (`cbam-tui ctl`, an attached dashboard) drops a file there, atomically.
The trainer claims each file by renaming it, at batch boundaries and at most
every 0.2 s, applies it to its Control and records a `command` event, so every
attached dashboard sees who asked for what. A writer that gives up waiting
takes its file back; rename and unlink cannot both succeed, so a command is
applied exactly once or not at all. No socket and no port: the run directory's
permissions decide who may steer a run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from core.control import Control
from core.errors import RunDirError
from core.runs import ENDINGS, inspect_run, owner_alive, process_start

CONTROL_DIR = "control"
VERBS = ("pause", "resume", "next", "save", "stop")
STOP_COMMAND = "stop command"  # the stop reason a command gives; not a failure
POLL_S = 0.2


def can_control(run: Path, ended: str | None = None) -> tuple[bool, str]:
    """Whether this process may steer the run, and if not, why (one sentence).
    ``ended``: how the run ended, when the caller already knows (saves reading its events)."""
    pid = owner_alive(run)
    if pid is None:
        state = ended or inspect_run(run).state
        why = f"the run has {state}" if state in ENDINGS.values() else "no live process owns the run"
        return False, f"{why}: watching only"
    inbox = run / CONTROL_DIR
    if not inbox.is_dir():
        return False, "the run takes no commands (no control directory yet): watching only"
    if not os.access(inbox, os.W_OK | os.X_OK):
        return False, f"no permission to write to {inbox}: watching only"
    return True, f"controlling pid {pid}"


def send(run: Path, verb: str, origin: str) -> Path:
    """Queue one command for the run's trainer; returns the command file."""
    if verb not in VERBS:
        raise RunDirError(f"unknown command {verb!r}: use one of {', '.join(VERBS)}")
    ok, why = can_control(run)
    if not ok:
        raise RunDirError(f"cannot control {run}: {why.removesuffix(': watching only')}")
    name = f"{time.time_ns():020d}-{os.getpid()}-{verb}"
    tmp = run / CONTROL_DIR / f".{name}.tmp"
    target = run / CONTROL_DIR / name
    try:
        tmp.write_text(origin + "\n", encoding="utf-8")
        os.rename(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write a command to {run / CONTROL_DIR}: {exc.strerror or exc}") from None
    return target


def wait_taken(command: Path, timeout: float) -> bool:
    """True once the trainer has claimed ``command``; False if it was taken back unclaimed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not command.exists():
            return True
        time.sleep(0.05)
    try:
        command.unlink()
    except FileNotFoundError:
        return True  # claimed at the last moment
    return False


class Inbox:
    """The trainer's end: polled at batch boundaries, cheap when nothing is queued."""

    def __init__(self, run: Path, control: Control, on_command: Callable[[str, str], None]) -> None:
        self.dir = run / CONTROL_DIR
        self.control = control
        self.on_command = on_command
        self._next_poll = 0.0
        self.dir.mkdir(exist_ok=True)
        # Commands from before this process began were meant for one that is gone;
        # those sent while it started up (a `ctl` right after --detach) still count.
        born = process_start(os.getpid()) or time.time()
        for entry in os.scandir(self.dir):
            try:
                if entry.stat().st_mtime < born - 1.0:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue

    def poll(self) -> None:
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + POLL_S
        try:
            names = sorted(e.name for e in os.scandir(self.dir) if not e.name.startswith("."))
        except OSError:
            return
        for name in names:
            self._take(name)

    def _take(self, name: str) -> None:
        claimed = self.dir / f".{name}.taken"
        try:
            os.rename(self.dir / name, claimed)
        except OSError:
            return  # taken back by its writer
        try:
            origin = claimed.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            origin = "unknown"
        claimed.unlink(missing_ok=True)
        verb = name.rsplit("-", 1)[-1]
        if verb not in VERBS:
            return
        self.on_command(verb, origin)
        if verb == "pause":
            self.control.pause()
        elif verb == "resume":
            self.control.resume()
        elif verb == "next":
            self.control.next_stage()
        elif verb == "save":
            self.control.save()
        else:
            self.control.stop(STOP_COMMAND)
