"""The command inbox: commands in, exactly once or not at all.

A run's control/ directory is where `ctl`, an attached dashboard and a launcher leave
commands for the process that owns the run; the trainer takes them at batch boundaries
(`Inbox`). `send` leaves one, `wait_taken` waits until it is claimed, and `steer` until
the run says what became of it. The run directory itself is reached through core.rundir.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import CbamError, ConfigError, RunDirError
from core.events import (
    CommandRefused,
    CommandTaken,
    Event,
    PlanChanged,
    RatesChanged,
    RunFailed,
    RunFinished,
    RunStopped,
    clean_text,
)
from core.rundir import CONTROL, EVENTS, GROUP_FILE_MODE, EventReader, Owner, RunDir, deleted, open_run, probe_owner
from core.safefs import Dir
from core.vocab import MAX_VALUE, VERBS, Command

MAX_COMMAND = 4096  # bytes of a command's file
POLL_S = 0.05  # at batch boundaries and while paused
INBOX_NAMES_PER_POLL = 1000  # entries of control/ looked at in one poll, however many there are
INBOX_RELIST_S = 10.0  # control/ is listed again this often even when its mtime says it did not change
INBOX_RACY_NS = 50_000_000  # a listing this soon after the last change may have missed one made in its tick
INBOX_JUNK_NOTE = 100  # this many entries that are no commands are worth one line
_COMMAND_NAME = re.compile(r"(\d{1,20})-(\d{1,10})-([a-z]{1,16})")  # <time_ns>-<pid>-<verb>


class Inbox:
    """The trainer's end of the control channel: polled at batch boundaries.

    A sender drops ``control/<time_ns>-<pid>-<verb>`` (JSON: who sent it) atomically;
    the trainer claims a file by renaming it, reads it and removes it. A sender that
    gives up takes its file back; rename and unlink cannot both succeed, so a command
    applies once or never. Only regular files named like commands, made by this user
    (or its group, with --group-control), are ever read; anything else is left alone.
    """

    def __init__(
        self, run: RunDir, on_command: Callable[[Command, str], None],
        on_refused: Callable[[CommandRefused], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.dir = run.control
        self.group_control = run.group_control
        self.on_command = on_command
        self.on_refused = on_refused  # a claimed file that is no command a run takes
        self.on_note = on_note  # told once when control/ holds junk
        self._next_poll = 0.0
        self._ignored: set[str] = set()
        self._queue: list[str] = []  # names listed and not looked at yet, commands first
        self._stamp: int | None = None  # control/'s mtime when it was last listed, unless that was racy
        self._listed_at = 0.0
        self._junk_said = False
        # Commands from before this process held the run were meant for one that is gone;
        # those sent while it started (a `ctl` right after --detach) still count.
        since = run.locked_at_ns - 1_000_000_000
        for name in self.dir.names():
            m = _COMMAND_NAME.fullmatch(name.removeprefix(".").removesuffix(".taken"))
            st = self.dir.lstat(name) if m else None  # junk is not even looked at
            if m and st and stat.S_ISREG(st.st_mode) and self._trusted(st) and (
                name.endswith(".taken") or int(m[1]) < since
            ):
                self.dir.unlink(name)

    def _trusted(self, st: os.stat_result) -> bool:
        return st.st_uid == os.getuid() or (self.group_control and st.st_gid == os.fstat(self.dir.fd).st_gid)

    def poll(self, force: bool = False) -> None:
        """Take the commands waiting. What a poll costs is bounded however much junk control/
        holds: it is listed only when it changed (its mtime), and at most INBOX_NAMES_PER_POLL
        names are looked at per poll, command-like names first."""
        now = time.monotonic()
        if now < self._next_poll and not force:
            return
        self._next_poll = now + POLL_S
        try:
            self._list(now)
        except OSError:
            return
        batch, self._queue = self._queue[:INBOX_NAMES_PER_POLL], self._queue[INBOX_NAMES_PER_POLL:]
        for name in batch:
            self._take(name)

    def _list(self, now: float) -> None:
        stamp = os.fstat(self.dir.fd).st_mtime_ns
        if stamp == self._stamp and now - self._listed_at < INBOX_RELIST_S:
            return
        wall = time.time_ns()
        names = self.dir.names()
        # An entry made in the same clock tick as the listing leaves the mtime as it was: an mtime
        # that recent proves nothing, so the next poll lists again.
        self._stamp = stamp if wall - stamp > INBOX_RACY_NS else None
        self._listed_at = now
        self._ignored.intersection_update(names)
        fresh = [n for n in names if not n.startswith(".") and n not in self._ignored]
        self._queue = sorted(fresh, key=lambda n: _COMMAND_NAME.fullmatch(n) is None)  # stable: in order
        junk = len(self._ignored) + sum(1 for n in fresh if _COMMAND_NAME.fullmatch(n) is None)
        if junk >= INBOX_JUNK_NOTE and not self._junk_said and self.on_note is not None:
            self._junk_said = True
            self.on_note(f"{self.dir.path} holds {junk:,} entries that are no commands: they are left alone, "
                         "never read (remove them; commands are found as quickly all the same)")

    def _take(self, name: str) -> None:
        m = _COMMAND_NAME.fullmatch(name)
        if m is None:
            self._ignored.add(name)  # not a command's name: not even looked at
            return
        st = self.dir.lstat(name)
        if st is None:
            return  # taken back by its sender
        if m is None or m[3] not in VERBS or not stat.S_ISREG(st.st_mode) or not self._trusted(st):
            self._ignored.add(name)  # not a command of ours: left alone, never read
            return
        claimed = f".{name}.taken"
        try:
            self.dir.rename(name, claimed)
        except OSError:
            return
        body: object = None
        try:
            body = json.loads(self.dir.read(claimed, MAX_COMMAND) or b"")
            command, origin = Command.from_body(m[3], body, name)
        except ConfigError as exc:
            self._refuse(m[3], name, body, str(exc))
            return
        except (OSError, ValueError, RecursionError):
            self._refuse(m[3], name, body, "its file holds no command (not the JSON a sender writes)")
            return
        finally:
            self.dir.unlink(claimed)
        self.on_command(command, origin)

    def _refuse(self, verb: str, name: str, body: object, reason: str) -> None:
        if self.on_refused is None:
            return
        fields = body if isinstance(body, dict) else {}
        origin, value, group = (fields.get(k) for k in ("origin", "value", "group"))
        self.on_refused(CommandRefused(
            verb, clean_text(origin[:200]) if isinstance(origin, str) else "an unknown sender", reason,
            value=clean_text(value[:MAX_VALUE]) if isinstance(value, str) else "",
            group=clean_text(group[:100]) if isinstance(group, str) else "", command_id=name,
        ))


def can_control(run: Dir, owner: Owner | None = None, ended: str | None = None) -> tuple[bool, str]:
    """Whether this process may steer the run, and if not, why (one sentence)."""
    owner = owner or probe_owner(run)
    if not owner.alive:
        why = f"the run has {ended}" if ended else "no live process owns the run"
        return False, f"{why}: watching only"
    try:
        with run.sub(CONTROL) as inbox:
            if not os.access(inbox.path, os.W_OK | os.X_OK):
                return False, f"no permission to write to {inbox.path}: watching only"
    except FileNotFoundError:
        return False, "the run takes no commands (no control directory yet): watching only"
    except OSError as exc:
        return False, f"the run's control directory is unusable ({exc.strerror or exc}): watching only"
    return True, "controlling" + (f" pid {owner.pid}" if owner.pid else " the run")


_sent_lock = threading.Lock()
_sent_ns = 0  # the last command name's time in this process: names stay unique and in order


def _command_name(verb: str) -> str:
    """``<time_ns>-<pid>-<verb>``: the inbox takes commands in the order of these names, and
    two commands of one process never get the same one (a clock step back included)."""
    global _sent_ns
    with _sent_lock:
        _sent_ns = max(time.time_ns(), _sent_ns + 1)
        return f"{_sent_ns:020d}-{os.getpid()}-{verb}"


def send(run_path: Path, command: Command, origin: str, ended: str | None = None) -> str:
    """Queue one command for the run's trainer; returns the command's name for `wait_taken`."""
    with open_run(run_path) as run:
        ok, why = can_control(run, ended=ended)
        if not ok:
            raise RunDirError(f"cannot control {run_path}: {why.removesuffix(': watching only')}")
        name = _command_name(command.verb)
        try:
            with run.sub(CONTROL) as inbox:
                if os.fstat(inbox.fd).st_mode & 0o020:  # --group-control: the owner reads it through the group
                    inbox.file_mode = GROUP_FILE_MODE
                inbox.write_atomic(name, json.dumps(command.to_body(origin)).encode(), durable=False)
        except OSError as exc:
            raise RunDirError(f"cannot write a command to {run_path / CONTROL}: {exc.strerror or exc}") from None
    return name


RM_SETTLE_POLLS = 5  # 100 ms for a deletion under way to reach the inbox itself


OWNER_POLLS = 25  # every half second, whether a process still holds the run to take it


def wait_taken(run_path: Path, name: str, timeout: float) -> bool:
    """True once the trainer has claimed command ``name``; False if it was taken back unclaimed.
    RunDirError when the run's process ends first (the command is taken back)."""
    with open_run(run_path) as run, run.sub(CONTROL) as inbox:
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            polls += 1
            if polls % OWNER_POLLS == 0 and not probe_owner(run).alive:
                try:
                    os.unlink(name, dir_fd=inbox.fd)
                except FileNotFoundError:
                    return True  # claimed as the run ended
                raise RunDirError(f"{run_path} is no longer running: the command was not taken; withdrawn")
            if inbox.lstat(name) is None:
                # Claimed, or the first file an rm -rf of the run took: its folders go a moment later.
                for _ in range(RM_SETTLE_POLLS):
                    if deleted(inbox):
                        raise RunDirError(f"{run_path} was deleted before the run took the command")
                    time.sleep(0.02)
                return True
            time.sleep(0.02)
        try:
            os.unlink(name, dir_fd=inbox.fd)
        except FileNotFoundError:
            return True  # claimed at the last moment
        return False


_OUTCOMES: dict[str, type[Event]] = {"lr": RatesChanged, "epochs": PlanChanged}


def steer(run_path: Path, command: Command, origin: str, timeout: float) -> Event:
    """Send ``command`` and wait until the run has applied it: the event that says what
    it did (`rates_changed`, `plan_changed`, or `command` for the other verbs). CbamError
    (one sentence) when it did not: refused (the run's reason), not taken within
    ``timeout`` (withdrawn), or the run ended before it applied it."""
    with open_run(run_path) as run:
        reader = EventReader(run)
        st = run.lstat(EVENTS)
        reader.offset = st.st_size if st is not None else 0  # what the command causes comes after
        deadline = time.monotonic() + timeout
        name = send(run_path, command, origin)
        if not wait_taken(run_path, name, timeout):
            raise CbamError(
                f"the run did not take {command} within {timeout:g} s (it reads commands between batches); withdrawn"
            )
        outcome = _OUTCOMES.get(command.verb, CommandTaken)
        while True:
            for event, _ in reader.read_all():
                if isinstance(event, CommandRefused) and event.command_id == name:
                    raise CbamError(f"the run refused {command}: {event.reason}")
                if isinstance(event, outcome) and getattr(event, "command_id", "") == name:
                    return event
                if isinstance(event, (RunFinished, RunStopped, RunFailed)):
                    raise CbamError(f"the run took {command} but ended before it applied it")
            if not probe_owner(run).alive:
                raise CbamError(f"the run took {command}, but its process is gone: it was not applied")
            if time.monotonic() >= deadline:
                raise CbamError(
                    f"the run took {command} but has not applied it within {timeout:g} s "
                    "(it applies at its next batch; its log will say)"
                )
            time.sleep(0.02)
