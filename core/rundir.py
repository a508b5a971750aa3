"""The run directory: the one contract between the trainer, the dashboards,
`watch`, `ctl`, `runs` and `--resume`, and the only module that spells its paths.

    runs/<YYYYmmdd-HHMMSS>-<name>/          0700
        config.json          the resolved RunConfig and plan
        events.jsonl         every event, one JSON object a line, appended as it happens
        metrics.csv          one row per evaluated epoch (rebuilt from the checkpoint on resume)
        checkpoints/last.pt  at every epoch end, on save, on stop (atomic, digested)
        checkpoints/best.pt  the best test accuracy so far
        progress.json        the latest batch (or evaluation) position, for attached dashboards
        system.json          the latest reading of the machine (GPUs, CPU, memory)
        control/             the command inbox: one file per command
        .lock                flock()ed by the process that owns the run, for as long as it lives
        run.pid              that process's pid: a hint for people, never proof of life
        train.log, error.log the output of a detached run; a failure's traceback
        curves.png           the seed's two figures, when a run finishes (with the export extra)

Everything read from here is untrusted: entries are reached through one open
directory and never through a link, only regular files are read, each up to a
size limit, and every event and command is validated (core.events). Whether a
run is alive is whether its lock is held, not what run.pid says.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import errno
import fcntl
import io
import json
import math
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import faults
from core.errors import ConfigError, RunDirError
from core.events import BadEvent, EpochEnded, Evaluating, Event, Progress, SystemSample, clean_text, from_dict
from core.safefs import DIR_MODE, FILE_MODE, Dir, UnsafeFile, write_all

CONFIG = "config.json"
EVENTS = "events.jsonl"
METRICS = "metrics.csv"
PROGRESS = "progress.json"
SYSTEM = "system.json"
_NO_LINKS = {errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}  # file systems without hard links
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
CONTROL = "control"
LOCK = ".lock"
PID = "run.pid"
TRAIN_LOG = "train.log"
CURVES = "curves.png"
ERROR_LOG = "error.log"
_FILES = (CONFIG, EVENTS, METRICS, PROGRESS, SYSTEM, LOCK, PID)
_DIRS = (CHECKPOINTS, CONTROL)

MAX_CONFIG = 1 << 20
MAX_LINE = 8 << 20  # an event line longer than this is not one of ours
MAX_READ = 64 << 20  # of events.jsonl per read, so a huge file is folded in steps
MAX_COMMAND = 4096
MAX_PROGRESS = 4096
MAX_SYSTEM = 1 << 16
PROGRESS_EVERY_S = 1.0
POLL_S = 0.05  # the inbox, at batch boundaries and while paused
GROUP_DIR_MODE, GROUP_CONTROL_MODE, GROUP_FILE_MODE = 0o750, 0o770, 0o640

METRICS_COLUMNS = (
    "stage", "epoch", "epoch_in_stage", "batches_done", "train_loss", "train_acc",
    "test_loss", "test_acc", "seconds", "images_per_second",
)


# --- why a run (or a process attached to one) stopped, and its exit code ------------


class StopReason(enum.StrEnum):
    FINISHED = "finished"
    QUIT = "quit"  # q in the dashboard that owns the run
    COMMAND = "stop command"  # `ctl stop`, or x in an attached dashboard
    LEFT = "left"  # an attached dashboard left; the run goes on
    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"
    SIGHUP = "SIGHUP"  # the terminal (an SSH connection) went away
    SIGUSR1 = "SIGUSR1"  # a scheduler's warning before preemption (SLURM --signal=USR1@90)
    NONFINITE = "non-finite loss"
    WRITE_FAILED = "write failed"  # a full or failing disk: no good checkpoint could be kept
    FAILED = "failed"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]

    @classmethod
    def of_signal(cls, signum: int) -> StopReason:
        return cls(signal.Signals(signum).name)


REQUEUE_EXIT = 75  # EX_TEMPFAIL: stopped for preemption with a checkpoint; requeue and --resume
_EXIT_CODES = {
    StopReason.FINISHED: 0, StopReason.QUIT: 0, StopReason.COMMAND: 0, StopReason.LEFT: 0,
    StopReason.SIGINT: 128 + signal.SIGINT, StopReason.SIGTERM: 128 + signal.SIGTERM,
    StopReason.SIGHUP: 128 + signal.SIGHUP, StopReason.SIGUSR1: REQUEUE_EXIT,
    StopReason.NONFINITE: 1, StopReason.WRITE_FAILED: 1, StopReason.FAILED: 1,
}


# --- commands: the inbox's messages ------------------------------------------------

STOP_VALUES = ("quit", "SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1")  # why a launcher stops its ranks
VERBS = ("pause", "resume", "next", "save", "stop", "lr", "epochs")
MAX_LR = 10.0
MAX_EPOCH_CHANGE = 10_000
_COMMAND_NAME = re.compile(r"(\d{1,20})-(\d{1,10})-([a-z]{1,16})")
_GROUP = re.compile(r"[A-Za-z0-9+._-]{1,100}")


@dataclass(frozen=True)
class Command:
    """One request to a run, from a key, `ctl` or a dashboard attached to its directory.

    ``lr``: ``value`` is a rate (``3e-4``) or a factor (``x0.5``), for every group of the
    stage or only ``group``. ``epochs``: ``value`` is ``+N`` or ``-N`` for this stage.
    """

    verb: str
    value: str = ""
    group: str = ""

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ConfigError(f"unknown command {clean_text(self.verb)!r}: use one of {', '.join(VERBS)}")
        if self.verb == "lr":
            self.lr_change()
        elif self.verb == "epochs":
            self.epoch_change()
        elif self.verb == "stop" and self.value:
            self.stop_reason()
        elif self.value or self.group:
            raise ConfigError(f"{self.verb} takes no value")
        if self.group and (self.verb != "lr" or not _GROUP.fullmatch(self.group)):
            shown = clean_text(self.group)
            raise ConfigError(f"--group names an optimizer group (letters, digits, + . _ -), not {shown!r}")

    def lr_change(self) -> tuple[bool, float]:
        """(scale?, number): ``x0.5`` scales the rates, ``3e-4`` sets them."""
        scale = self.value.startswith("x")
        try:
            number = float(self.value[1:] if scale else self.value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and 0 < number <= (1000.0 if scale else MAX_LR)):
            shown = clean_text(self.value)
            raise ConfigError(f"lr takes a rate (like 3e-4, at most {MAX_LR:g}) or a factor (like x0.5), not {shown!r}")
        return scale, number

    def epoch_change(self) -> int:
        text = self.value
        if not (text[:1] in "+-" and text[1:].isdigit() and 0 < int(text[1:]) <= MAX_EPOCH_CHANGE):
            raise ConfigError(f"epochs takes +N or -N (like +2), not {clean_text(text)!r}")
        return int(text)

    def stop_reason(self) -> StopReason:
        """stop: why a launcher stops its ranks (``SIGUSR1``: checkpoint and requeue), else a command."""
        if not self.value:
            return StopReason.COMMAND
        if self.value not in STOP_VALUES:
            raise ConfigError(f"stop takes no value or one of {', '.join(STOP_VALUES)}, not {clean_text(self.value)!r}")
        return StopReason(self.value)

    def __str__(self) -> str:
        return " ".join(x for x in (self.verb, self.value, f"(group {self.group})" if self.group else "") if x)

    def to_body(self, origin: str) -> dict[str, Any]:
        return {"origin": origin, "value": self.value, "group": self.group}

    @classmethod
    def from_body(cls, verb: str, body: object) -> tuple[Command, str]:
        """The command and its origin from a claimed file; ValueError if it is not one."""
        if not isinstance(body, dict) or not isinstance(body.get("origin"), str):
            raise ValueError("not a command")
        value, group = body.get("value", ""), body.get("group", "")
        if not isinstance(value, str) or not isinstance(group, str) or len(value) > 40 or len(group) > 100:
            raise ValueError("not a command")
        return cls(verb, value, group), clean_text(body["origin"][:200])


# --- who owns a run --------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    alive: bool
    pid: int | None  # from run.pid: shown to people, never trusted for liveness


def probe_owner(run: Dir) -> Owner:
    """Whether a live process holds the run's lock. A kill -9 releases it at once; a
    reused pid or a planted run.pid proves nothing."""
    pid = _read_pid(run)
    try:
        fd = run.open_file(LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return Owner(False, None)
    except PermissionError:  # another user's run: their pid is all there is to go on
        return Owner(pid is not None and _pid_exists(pid), pid)
    except OSError:
        return Owner(False, None)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Owner(True, pid)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return Owner(False, None)
    finally:
        os.close(fd)


def _read_pid(run: Dir) -> int | None:
    try:
        raw = run.read(PID, 32)
    except OSError:
        return None
    text = raw.decode("ascii", "replace").strip() if raw else ""
    return int(text) if text.isdigit() and 0 < int(text) < 1 << 31 else None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- opening runs -----------------------------------------------------------------


def is_run(run: Dir) -> bool:
    """A directory a cbam-tui process made: its lock file and its config or events."""
    lock = run.lstat(LOCK)
    if lock is None or not stat.S_ISREG(lock.st_mode):
        return False
    return any(run.lstat(name) is not None for name in (EVENTS, CONFIG))


def open_run(path: Path, follow: bool = True) -> Dir:
    """A run directory, for reading; RunDirError with one sentence if it is not one.
    ``follow``: the path came from the user, who may reach it through links of their own."""
    try:
        run = Dir.open(path, follow=follow)
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist") from None
    except NotADirectoryError:
        raise RunDirError(f"{path} is a file, not a run directory") from None
    except UnsafeFile as exc:
        raise RunDirError(str(exc)) from None
    except OSError as exc:
        raise RunDirError(f"cannot open {path}: {exc.strerror or exc}") from None
    if not is_run(run):
        run.close()
        raise RunDirError(f"{path} is not a cbam-tui run directory (no {EVENTS})")
    return run


def check_entries(run: Dir) -> None:
    """Refuse a run whose own entries were replaced by links, FIFOs or the like."""
    for name in (*_FILES, *_DIRS):
        st = run.lstat(name)
        if st is None:
            continue
        want_dir = name in _DIRS
        if (stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)) is False or stat.S_ISLNK(st.st_mode):
            what = "directory" if want_dir else "regular file"
            raise RunDirError(
                f"{run.path / name} is not a {what} of this run (a link or something else was put there): "
                "move it away, then try again"
            )


def checkpoint_in(run_path: Path) -> Path:
    """Where a run keeps the checkpoint it resumes from."""
    return run_path / CHECKPOINTS / LAST


def has_checkpoint(run: Dir) -> bool:
    try:
        with run.sub(CHECKPOINTS) as ckpts:
            st = ckpts.lstat(LAST)
    except OSError:
        return False
    return st is not None and stat.S_ISREG(st.st_mode)


def home_of_checkpoint(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint file sits in, if it sits in one."""
    parent = checkpoint.parent
    if parent.name != CHECKPOINTS:
        return None
    try:
        with Dir.open(parent.parent, follow=True) as run:
            return parent.parent if is_run(run) else None
    except OSError:
        return None


def read_config(run: Dir) -> dict[str, Any]:
    try:
        raw = run.read(CONFIG, MAX_CONFIG)
        data = json.loads(raw) if raw is not None else None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot read {run.path / CONFIG}: {exc}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run.path / CONFIG} does not hold a run's configuration")
    return data


# --- the owner's side: one process writes a run -------------------------------------


class RunDir:
    """A run directory held by this process: locked, written, closed."""

    def __init__(self, run: Dir, lock_fd: int, group: bool = False) -> None:
        self.dir = run
        self._lock_fd = lock_fd
        self.group = group
        self.locked_at_ns = time.time_ns()
        self.checkpoints = run.sub(CHECKPOINTS, create=True, mode=self._dir_mode)
        self.control = run.sub(CONTROL, create=True, mode=GROUP_CONTROL_MODE if group else DIR_MODE)
        self._events: int | None = None
        self._metrics: int | None = None
        self._cut = False  # the last event write failed half-way: start the next on a new line
        self._live_at: dict[str, tuple[float, str]] = {}

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS

    @property
    def _dir_mode(self) -> int:
        return GROUP_DIR_MODE if self.group else DIR_MODE

    @property
    def _file_mode(self) -> int:
        return GROUP_FILE_MODE if self.group else FILE_MODE

    # --- claiming ------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, name: str, group: bool = False) -> RunDir:
        """A new run directory ``<root>/<stamp>-<name>``, locked."""
        mode = GROUP_DIR_MODE if group else DIR_MODE
        try:
            root.mkdir(parents=True, exist_ok=True, mode=mode)
            parent = Dir.open(root, follow=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory under {root}: {exc.strerror or exc}") from None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with parent:
            for n in range(1, 1000):
                candidate = f"{stamp}-{name}" if n == 1 else f"{stamp}-{name}-{n}"
                try:
                    os.mkdir(candidate, mode, dir_fd=parent.fd)
                except FileExistsError:
                    continue
                except OSError as exc:
                    why = exc.strerror or exc
                    raise RunDirError(f"cannot create run directory {root / candidate}: {why}") from None
                return cls._claim(parent.sub(candidate), group)
        raise RunDirError(f"cannot create a new run directory under {root}: too many runs named {name!r} this second")

    @classmethod
    def create_at(cls, path: Path, group: bool = False) -> RunDir:
        """Exactly ``path`` (--run-dir): a new or empty directory, never someone else's files."""
        mode = GROUP_DIR_MODE if group else DIR_MODE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, mode)
        except FileExistsError:
            pass
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
        try:
            run = Dir.open(path, follow=True)
        except NotADirectoryError:
            raise RunDirError(f"--run-dir {path} is a file, not a directory") from None
        except OSError as exc:
            raise RunDirError(f"cannot open run directory {path}: {exc.strerror or exc}") from None
        if is_run(run):
            run.close()
            raise RunDirError(f"{path} already holds a run: use --resume {path} or another --run-dir")
        if run.names():
            run.close()
            raise RunDirError(f"--run-dir {path} is not empty and holds no run: give a new or empty directory")
        return cls._claim(run, group)

    @classmethod
    def open(cls, path: Path, group: bool = False) -> RunDir:
        """An existing run, to append to on resume; its own entries must be intact."""
        run = open_run(path)
        try:
            check_entries(run)
        except BaseException:
            run.close()
            raise
        claimed = cls._claim(run, group)
        claimed.dir.remove_temps()
        claimed.checkpoints.remove_temps()
        return claimed

    @classmethod
    def adopt(cls, path: Path, lock_fd: int, locked_at_ns: int, group: bool = False) -> RunDir:
        """The run a parent process claimed for us (``run --detach``): the inherited
        descriptor already holds the lock, so there is no moment without an owner."""
        run = open_run(path)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: a no-op that proves it
        except OSError:
            run.close()
            raise RunDirError(f"run directory {path} is in use by another cbam-tui process") from None
        claimed = cls(run, lock_fd, group)
        claimed.locked_at_ns = locked_at_ns
        claimed._write_pid()
        return claimed

    @classmethod
    def join(cls, path: Path, owner_pid: int, locked_at_ns: int, group: bool = False) -> RunDir:
        """The run that the launcher of several training processes holds (``--nproc-per-node``):
        rank 0 writes it while the launcher keeps the lock, so the run is live exactly as
        long as the launcher, which is also what reports a rank that died."""
        run = open_run(path)
        owner = probe_owner(run)
        if not owner.alive or owner.pid != owner_pid:
            run.close()
            raise RunDirError(f"run directory {path} is not held by its launcher (pid {owner_pid})")
        try:
            joined = cls(run, -1, group)
        except OSError as exc:
            run.close()
            raise RunDirError(f"cannot write to run directory {path}: {exc.strerror or exc}") from None
        joined.locked_at_ns = locked_at_ns
        return joined

    def hand_over(self, pid: int) -> None:
        """Leave the run to a child that inherited the lock; this process lets go of it."""
        self._write_small(PID, f"{pid}\n".encode())
        os.close(self._lock_fd)
        self._lock_fd = -1
        self.close()

    def open_log(self) -> int:
        """train.log, for appending a detached run's output."""
        return self.dir.append_fd(TRAIN_LOG)

    @classmethod
    def _claim(cls, run: Dir, group: bool) -> RunDir:
        try:
            fd = run.open_file(LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            run.close()
            raise RunDirError(f"cannot write to run directory {run.path}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + 0.5  # a reader's probe holds a shared lock for an instant
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                os.close(fd)
                pid = _read_pid(run)
                run.close()
                raise RunDirError(
                    f"run directory {run.path} is in use by another cbam-tui process" + (f" (pid {pid})" if pid else "")
                ) from None
        try:
            claimed = cls(run, fd, group)
        except OSError as exc:
            os.close(fd)
            raise RunDirError(f"cannot write to run directory {run.path}: {exc.strerror or exc}") from None
        try:
            claimed._write_pid()
        except BaseException:
            claimed.close()
            raise
        return claimed

    @property
    def lock_fd(self) -> int:
        return self._lock_fd

    def _write_pid(self) -> None:
        self._write_small(PID, f"{os.getpid()}\n".encode())

    def _write_small(self, name: str, data: bytes, durable: bool = False) -> None:
        try:
            self.dir.write_atomic(name, data, durable=durable)
        except OSError as exc:
            raise RunDirError(f"cannot write {self.path / name}: {exc.strerror or exc}") from None

    def close(self) -> None:
        for fd in (self._events, self._metrics):
            if fd is not None:
                os.close(fd)
        self._events = self._metrics = None
        if self._lock_fd >= 0:
            self.dir.unlink(PID)
            os.close(self._lock_fd)
            self._lock_fd = -1
        self.checkpoints.close()
        self.control.close()
        self.dir.close()

    # --- writing ---------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        self._write_small(CONFIG, json.dumps(config, indent=2).encode() + b"\n", durable=True)

    def write(self, event: Event) -> None:
        """Append one event, stamped with the wall clock, in one write, so a watcher or a
        crash loses nothing; OSError when the disk refuses it. Progress only replaces
        progress.json, at most once a second, and may fail quietly."""
        if event.transient:
            if isinstance(event, (Progress, Evaluating)):
                self._write_live(PROGRESS, event)
            elif isinstance(event, SystemSample):
                self._write_live(SYSTEM, event)
            return
        line = json.dumps({**event.to_dict(), "t": round(time.time(), 3)}, separators=(",", ":")) + "\n"
        if self._events is None:
            self._events = self._open_appending(EVENTS)
        data = line.encode()
        if self._cut:
            data = b"\n" + data
        try:
            faults.hit(f"append:{EVENTS}")
            write_all(self._events, data)
        except OSError:
            self._cut = True
            raise
        self._cut = False
        if isinstance(event, EpochEnded):
            self._append_metrics(event)

    def _open_appending(self, name: str) -> int:
        fd = self.dir.append_fd(name)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            self._cut = self._cut or name == EVENTS  # a line cut short by a crash
        return fd

    def _write_live(self, name: str, event: Event) -> None:
        """The latest of a live stream, at most once a second (at once when its kind changes)."""
        now = time.monotonic()
        at, kind = self._live_at.get(name, (0.0, ""))
        if now - at < PROGRESS_EVERY_S and kind == event.kind:
            return
        self._live_at[name] = (now, event.kind)
        with contextlib.suppress(OSError):  # stale within a second anyway
            self.dir.write_atomic(name, event.to_json().encode(), durable=False)

    def _append_metrics(self, e: EpochEnded) -> None:
        if self._metrics is None:
            self._metrics = self._open_appending(METRICS)
            if os.fstat(self._metrics).st_size == 0:
                write_all(self._metrics, _csv_rows([METRICS_COLUMNS]))
        write_all(self._metrics, _csv_rows([_metrics_row(e)]))

    def rebuild_metrics(self, epochs: list[EpochEnded]) -> None:
        """metrics.csv from the epochs a checkpoint vouches for: no cut line, no duplicate."""
        if self._metrics is not None:
            os.close(self._metrics)
            self._metrics = None
        self.dir.write_atomic(METRICS, _csv_rows([METRICS_COLUMNS, *(_metrics_row(e) for e in epochs)]))

    def reconcile(self, epochs: list[EpochEnded]) -> list[EpochEnded]:
        """After a kill between a checkpoint and its epoch_ended event: the epochs the
        checkpoint holds that events.jsonl lacks are appended (and returned), and metrics.csv is
        rebuilt, so every epoch shows exactly once."""
        events = EventReader(self.dir).read_all(final=True)
        logged = {(e.epoch, e.global_step) for e, _ in events if isinstance(e, EpochEnded)}
        missing = [e for e in epochs if (e.epoch, e.global_step) not in logged]
        for e in missing:
            self.write(e)
        self.rebuild_metrics(epochs)
        return missing

    def save_checkpoint(self, data: bytes | memoryview, name: str, same_as: str | None = None) -> Path:
        """Write ``data`` as checkpoint ``name``; ``same_as``: a checkpoint just written with the
        same bytes, which ``name`` becomes a hard link to (the bytes are written once), where
        the file system allows it. Either name is later replaced by a new file, never edited."""
        if same_as is not None:
            try:
                self.checkpoints.link_atomic(same_as, name)
                return self.checkpoint_path(name)
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
        self.checkpoints.write_atomic(name, data)
        return self.checkpoint_path(name)

    @property
    def curves_path(self) -> Path:
        return self.path / CURVES

    def checkpoint_path(self, name: str = LAST) -> Path:
        return self.path / CHECKPOINTS / name

    def has_checkpoint(self) -> bool:
        st = self.checkpoints.lstat(LAST)
        return st is not None and stat.S_ISREG(st.st_mode)

    def write_error_log(self, text: str) -> Path | None:
        try:
            self.dir.write_atomic(ERROR_LOG, text.encode(), durable=False)
        except OSError:
            return None
        return self.path / ERROR_LOG


def _csv_rows(rows: list[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode()


def _metrics_row(e: EpochEnded) -> tuple[object, ...]:
    return (
        e.stage, e.epoch, e.epoch_in_stage, e.batches_done, f"{e.train_loss:.6f}", f"{e.train_acc:.4f}",
        f"{e.test_loss:.6f}", f"{e.test_acc:.4f}", f"{e.seconds:.3f}", f"{e.images_per_second:.1f}",
    )


# --- the inbox: commands in, exactly once or not at all ---------------------------


class Inbox:
    """The trainer's end of the control channel: polled at batch boundaries.

    A sender drops ``control/<time_ns>-<pid>-<verb>`` (JSON: who sent it) atomically;
    the trainer claims a file by renaming it, reads it and removes it. A sender that
    gives up takes its file back; rename and unlink cannot both succeed, so a command
    applies once or never. Only regular files named like commands, made by this user
    (or its group, with --group-control), are ever read; anything else is left alone.
    """

    def __init__(self, run: RunDir, on_command: Callable[[Command, str], None]) -> None:
        self.dir = run.control
        self.group = run.group
        self.on_command = on_command
        self._next_poll = 0.0
        self._ignored: set[str] = set()
        # Commands from before this process held the run were meant for one that is gone;
        # those sent while it started (a `ctl` right after --detach) still count.
        since = run.locked_at_ns - 1_000_000_000
        for name, st in self.dir.entries():
            m = _COMMAND_NAME.fullmatch(name.removeprefix(".").removesuffix(".taken"))
            if m and stat.S_ISREG(st.st_mode) and self._trusted(st) and (name.endswith(".taken") or int(m[1]) < since):
                self.dir.unlink(name)

    def _trusted(self, st: os.stat_result) -> bool:
        return st.st_uid == os.getuid() or (self.group and st.st_gid == os.fstat(self.dir.fd).st_gid)

    def poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if now < self._next_poll and not force:
            return
        self._next_poll = now + POLL_S
        try:
            names = self.dir.names()
        except OSError:
            return
        for name in names:
            if not name.startswith(".") and name not in self._ignored:
                self._take(name)

    def _take(self, name: str) -> None:
        m = _COMMAND_NAME.fullmatch(name)
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
        try:
            raw = self.dir.read(claimed, MAX_COMMAND)
            command, origin = Command.from_body(m[3], json.loads(raw or b""))
        except (OSError, ValueError, ConfigError):
            return
        finally:
            self.dir.unlink(claimed)
        self.on_command(command, origin)


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


def send(run_path: Path, command: Command, origin: str, ended: str | None = None) -> str:
    """Queue one command for the run's trainer; returns the command's name for `wait_taken`."""
    with open_run(run_path) as run:
        ok, why = can_control(run, ended=ended)
        if not ok:
            raise RunDirError(f"cannot control {run_path}: {why.removesuffix(': watching only')}")
        name = f"{time.time_ns():020d}-{os.getpid()}-{command.verb}"
        try:
            with run.sub(CONTROL) as inbox:
                inbox.write_atomic(name, json.dumps(command.to_body(origin)).encode(), durable=False)
        except OSError as exc:
            raise RunDirError(f"cannot write a command to {run_path / CONTROL}: {exc.strerror or exc}") from None
    return name


def wait_taken(run_path: Path, name: str, timeout: float) -> bool:
    """True once the trainer has claimed command ``name``; False if it was taken back unclaimed."""
    with open_run(run_path) as run, run.sub(CONTROL) as inbox:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if inbox.lstat(name) is None:
                return True
            time.sleep(0.02)
        try:
            os.unlink(name, dir_fd=inbox.fd)
        except FileNotFoundError:
            return True  # claimed at the last moment
        return False


# --- reading: tolerant of anything ---------------------------------------------------


class EventReader:
    """Reads events.jsonl as it grows. A line that is not a valid event (cut short by a
    crash, garbled, planted, another version's) is counted in ``bad`` and skipped."""

    def __init__(self, run: Dir) -> None:
        self.run = run
        self.offset = 0
        self.bad = 0
        self.last_bad = ""
        self._partial = b""
        self._skipping = False  # inside an over-long line, until its newline

    def read(self, final: bool = False) -> list[tuple[Event, float | None]]:
        """New events with their wall-clock stamps. ``final``: the writer is gone, so an
        unfinished last line is a cut one."""
        try:
            fd = self.run.open_file(EVENTS, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            size = os.fstat(fd).st_size
            if size < self.offset:  # replaced or truncated under us: read it afresh
                self.offset, self._partial, self._skipping = 0, b"", False
            chunk = os.pread(fd, min(size - self.offset, MAX_READ), self.offset) if size > self.offset else b""
        finally:
            os.close(fd)
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if self._skipping and lines:
            lines.pop(0)
            self._skipping = False
        if len(self._partial) > MAX_LINE:
            self._bad("a line longer than 8 MiB")
            self._partial, self._skipping = b"", True
        if final and self._partial.strip() and self.offset >= size:
            lines.append(self._partial)
            self._partial = b""
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                data = json.loads(line.decode("utf-8"))  # the file's encoding: json would guess UTF-16 from a BOM
                event = from_dict(data)
            except (ValueError, BadEvent, RecursionError) as exc:
                self._bad(str(exc))
                continue
            t = data.get("t")
            out.append((event, float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None))
        return out

    def read_all(self, final: bool = False) -> list[tuple[Event, float | None]]:
        """Everything there is now, however large, in bounded steps."""
        out: list[tuple[Event, float | None]] = []
        while True:
            before = self.offset
            out.extend(self.read(final))
            if self.offset == before:
                return out

    def _bad(self, why: str) -> None:
        self.bad += 1
        self.last_bad = clean_text(why[:120])


def read_live(run: Dir) -> tuple[Progress | Evaluating | None, SystemSample | None]:
    """The latest position (training or evaluating) and machine reading a live run left."""
    found: list[Event | None] = []
    for name, size in ((PROGRESS, MAX_PROGRESS), (SYSTEM, MAX_SYSTEM)):
        try:
            raw = run.read(name, size)
            found.append(from_dict(json.loads(raw)) if raw else None)
        except (OSError, ValueError, BadEvent):
            found.append(None)
    position, system = found
    return (
        position if isinstance(position, (Progress, Evaluating)) else None,
        system if isinstance(system, SystemSample) else None,
    )


def iter_run_dirs(root: Path) -> Iterator[Path]:
    """The run directories directly under ``root`` (links to elsewhere are not ours)."""
    try:
        parent = Dir.open(root, follow=True)
    except FileNotFoundError:
        raise RunDirError(f"no runs yet: {root} does not exist") from None
    except OSError as exc:
        raise RunDirError(f"cannot read {root}: {exc.strerror or exc}") from None
    with parent:
        for name, st in parent.entries():
            if not stat.S_ISDIR(st.st_mode) or name.startswith("."):
                continue
            try:
                with parent.sub(name) as run:
                    if is_run(run):
                        yield root / name
            except OSError:
                continue


@dataclass(frozen=True)
class RunInfo:
    """A run as `runs` lists it."""

    path: Path
    state: str  # starting, loading, running, paused, finished, stopped, failed, dead or unreadable
    stage: str = "-"  # "2/3"
    epoch: str = "-"  # "7/50"
    best_acc: float | None = None
    started: float | None = None  # wall-clock seconds
    seconds: float | None = None  # from the first event to the last, or to now while it runs
    pid: int | None = None  # of the live owner
    message: str = ""  # why it stopped, failed or cannot be read
    bad_lines: int = 0  # lines of events.jsonl that are no valid event
    resumable: bool = False  # it has a checkpoint, has not finished and is not running
    epochs_done: int = 0

    @property
    def live(self) -> bool:
        return self.pid is not None or self.state in ("starting", "loading", "running", "paused")


def inspect_run(path: Path, follow: bool = True) -> RunInfo:
    """Everything `runs` shows about one run directory; never raises for a broken one."""
    from core.state import ENDED, FINISHED, RunState

    try:
        with open_run(path, follow) as run:
            owner = probe_owner(run)
            reader = EventReader(run)
            state = RunState(keep_losses=False)
            for event, t in reader.read_all(final=not owner.alive):
                state.apply(event, t)
            resumable = has_checkpoint(run) and state.status != FINISHED
            if state.first_t is None:
                st = run.lstat(EVENTS) or run.lstat(LOCK)
                state.first_t = state.last_t = st.st_mtime if st else None
    except (RunDirError, OSError) as exc:
        message = str(exc) if isinstance(exc, RunDirError) else f"cannot be read: {exc.strerror or exc}"
        return RunInfo(path, "unreadable", message=message)
    status = state.status.lower()
    message = state.message or ""
    if state.status not in ENDED and not owner.alive:
        status, message = "dead", "the process is gone without a final event"
    if reader.bad:
        note = f"{reader.bad} unreadable line{'s' if reader.bad > 1 else ''} in {EVENTS} ({reader.last_bad})"
        message = f"{message}; {note}" if message else note
    seconds = None
    if state.first_t is not None and state.last_t is not None:
        seconds = (time.time() if owner.alive else state.last_t) - state.first_t
    return RunInfo(
        path, status, state.stage_text, state.epoch_text, state.best_acc, state.first_t, seconds,
        owner.pid if owner.alive else None, message, reader.bad, resumable and not owner.alive, len(state.epochs),
    )


def list_runs(root: Path) -> list[RunInfo]:
    """The runs directly under ``root``, oldest first; a broken one is listed, never fatal."""
    runs = [inspect_run(p, follow=False) for p in iter_run_dirs(root)]
    return sorted(runs, key=lambda r: (r.started or 0.0, r.path.name))


def remove_run(root: Path, name: str) -> None:
    """Delete the run directory ``root/name``, and only if it is a run that no process holds:
    never a link, never anything outside it."""
    import shutil

    with Dir.open(root, follow=True) as parent:
        st = parent.lstat(name)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise RunDirError(f"{root / name} is not a run directory")
        with parent.sub(name) as run:
            if not is_run(run):
                raise RunDirError(f"{root / name} is not a cbam-tui run directory")
            if probe_owner(run).alive:
                raise RunDirError(f"{root / name} is in use by a live process")
        shutil.rmtree(name, dir_fd=parent.fd)


def unfinished_run(name: str, root: Path) -> Path | None:
    """The newest run named ``name`` under ``root`` that stopped or died with a checkpoint
    (what a requeued job should go on with); None when there is none."""
    try:
        runs = list_runs(root)
    except RunDirError:
        return None
    for info in reversed(runs):
        if info.state not in ("stopped", "dead") or not info.resumable:
            continue
        try:
            with open_run(info.path, follow=False) as run:
                config = read_config(run)
        except RunDirError:
            continue
        if config.get("name") == name:
            return info.path
    return None


def resolve_run(arg: str | None, root: Path) -> Path:
    """The run a user means: a run directory, a run's name (or a unique start of it)
    under ``root``, or with no argument the newest run there."""
    if arg is None:
        runs = list_runs(root)
        if not runs:
            raise RunDirError(f"no runs under {root}: start one with cbam-tui run, or name a run directory")
        return runs[-1].path
    path = Path(arg)
    if path.exists() or "/" in arg or not arg.strip(".") or not root.is_dir():
        open_run(path).close()
        return path
    names = [p for p in iter_run_dirs(root) if p.name == arg] or [
        p for p in iter_run_dirs(root) if p.name.startswith(arg)
    ]
    if not names:
        raise RunDirError(f"{arg} is neither a run directory nor the name of a run under {root}")
    if len(names) > 1:
        shown = ", ".join(p.name for p in sorted(names)[:4]) + (", ..." if len(names) > 4 else "")
        raise RunDirError(f"{arg!r} matches {len(names)} runs under {root} ({shown}): give more of the name")
    return names[0]
