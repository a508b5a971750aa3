"""The run directory: the one contract between the trainer, the dashboards,
`watch`, `ctl`, `runs` and `--resume`, and the only module that spells its paths.

    runs/<YYYYmmdd-HHMMSS>-<name>/          0700
        config.json          the resolved RunConfig and plan
        events.jsonl         every event, one JSON object a line, appended as it happens
        metrics.csv          one row per evaluated epoch (rebuilt from the checkpoint on resume)
        checkpoints/last.pt  at every epoch end, on save, on stop (atomic, digested)
        checkpoints/best.pt  the best test accuracy so far
        progress.json        the latest batch (or evaluation) position, for attached dashboards
        index.json           events.jsonl summed up to a byte offset, so that listing runs stays cheap
        system.json          the latest reading of the machine (GPUs, CPU, memory)
        control/             the command inbox: one file per command
        .lock                flock()ed by the process that owns the run, for as long as it lives
        run.pid              that process's pid: a hint for people, never proof of life
        train.log, error.log the output of a detached run; a failure's traceback
        curves.png           the seed's two figures, when a run finishes (with the export extra)
        workers/             with --nproc-per-node: each training process's stdout and stderr

Everything read from here is untrusted: entries are reached through one open
directory and never through a link, only regular files are read, each up to a
size limit, and every event and command is validated (core.events). Whether a
run is alive is whether its lock is held, not what run.pid says.

The command inbox (control/) is core.inbox's; index.json and the listing of the
runs under a root are core.runs'. Both reach the directory through this module.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import faults
from core.errors import RunDirError
from core.events import (
    BadEvent,
    EpochEnded,
    Evaluating,
    Event,
    Progress,
    RunFailed,
    RunFinished,
    RunStopped,
    SystemSample,
    clean_text,
    from_json,
    read_line,
)
from core.safefs import DIR_MODE, FILE_MODE, Dir, UnsafeFile, release, reserve, write_all
from core.state import RunState

if TYPE_CHECKING:
    from core.runs import Summary

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
INDEX = "index.json"  # a summary of events.jsonl (core.runs)
WORKERS = "workers"
_FILES = (CONFIG, EVENTS, METRICS, PROGRESS, SYSTEM, LOCK, PID, CURVES, INDEX)
_FINAL_EVENTS = (RunFinished, RunStopped, RunFailed)
_DIRS = (CHECKPOINTS, CONTROL, WORKERS)

MAX_CONFIG = 1 << 20
MAX_LINE = 8 << 20  # an event line longer than this is not one of ours
MAX_READ = 4 << 20  # of events.jsonl per read, so a huge file is folded in steps
MAX_PROGRESS = 4096
MAX_SYSTEM = 1 << 16
PROGRESS_EVERY_S = 1.0
# With --group-control; control/ is set-group-ID, so that a command a group member drops
# there belongs to the run's group whatever the member's own primary group is.
GROUP_DIR_MODE, GROUP_CONTROL_MODE, GROUP_FILE_MODE = 0o750, 0o2770, 0o640
EVENTS_RESERVE = 256 << 10  # bytes kept free past events.jsonl's end: a full disk cannot cut an event

METRICS_COLUMNS = (
    "stage", "epoch", "epoch_in_stage", "batches_done", "train_loss", "train_acc",
    "test_loss", "test_acc", "seconds", "images_per_second",
)


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


def check_owned(run: Dir) -> None:
    """Refuse to write a run directory that belongs to another user: under a shared runs
    root, it may have been made to look like one of ours, with its entries pointing anywhere."""
    uid = os.fstat(run.fd).st_uid
    if uid != os.getuid():
        raise RunDirError(f"{run.path} belongs to another user (uid {uid}): cbam-tui writes only your own runs")


def root_notes(root: Path, group_control: bool) -> list[str]:
    """One line for each thing about a runs root that lets other users in, or keeps the
    run's group out with --group-control. A run is safe there either way (it is reached
    through its own directory, never through a link, and never resumed if it is not
    yours): the notes are for the person to decide where runs should live."""
    try:
        st = os.stat(root)
    except OSError:
        return []
    mode = stat.S_IMODE(st.st_mode)
    notes = []
    if st.st_uid not in (os.getuid(), 0):
        notes.append(f"the runs root {root} belongs to another user (uid {st.st_uid}), who can rename or remove "
                     "the runs in it: use a runs root of your own (--runs-root)")
    elif mode & 0o002:
        notes.append(f"the runs root {root} is writable by every user (mode {mode:04o}): others can plant runs "
                     "there (never resumed, since they are not yours); a runs root of your own is safer")
    if group_control and (mode & 0o050) != 0o050:
        notes.append(f"--group-control: the runs root {root} (mode {mode:04o}) keeps the group out, so its members "
                     f"cannot reach this run: chmod g+rx {root}")
    return notes


def record_failure(run_path: Path, message: str, wait_s: float) -> bool:
    """Append ``message`` as the run's failure when the process that wrote it is gone
    (rank 0 of a group whose survivor says why): only once its lock is free (within
    ``wait_s``), and only if the run's latest start has no final event yet. True if written."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open_run(run_path, follow=False) as run:
                group_control = read_config(run).get("group_control") is True
            rundir = RunDir.open(run_path, group_control)
            break
        except RunDirError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
    try:
        if RunState(keep_losses=False).fold(EventReader(rundir.dir).events(final=True)).status.ended:
            return False
        kept = str(rundir.checkpoint_path()) if rundir.has_checkpoint() else None
        rundir.write(RunFailed(message, kept))
        return True
    except OSError:
        return False
    finally:
        rundir.close()


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
    except RecursionError:
        raise RunDirError(f"cannot read {run.path / CONFIG}: nested too deeply to be a configuration") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{run.path / CONFIG} does not hold a run's configuration")
    return data


# --- the owner's side: one process writes a run -------------------------------------


class RunDir:
    """A run directory held by this process: locked, written, closed."""

    def __init__(self, run: Dir, lock_fd: int, group_control: bool = False) -> None:
        self.dir = run
        self._lock_fd = lock_fd
        self.group_control = group_control
        self.locked_at_ns = time.time_ns()
        self.checkpoints = run.sub(CHECKPOINTS, create=True, mode=self._dir_mode)
        self.control = run.sub(CONTROL, create=True, mode=GROUP_CONTROL_MODE if group_control else DIR_MODE)
        self._apply_modes()
        self._events: int | None = None
        self._reserved = 0  # of EVENTS_RESERVE, what the appends since the last reservation have not used
        self._metrics: int | None = None
        self._cut = False  # the last event write failed half-way: start the next on a new line
        self._live_at: dict[str, tuple[float, str]] = {}
        self._summary: Summary | None = None  # the light fold behind index.json, kept up at epoch ends
        self._index_due = 0.0

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS

    @property
    def _dir_mode(self) -> int:
        return GROUP_DIR_MODE if self.group_control else DIR_MODE

    @property
    def _file_mode(self) -> int:
        return GROUP_FILE_MODE if self.group_control else FILE_MODE

    # --- claiming ------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, name: str, group_control: bool = False) -> RunDir:
        """A new run directory ``<root>/<stamp>-<name>``, locked."""
        mode = GROUP_DIR_MODE if group_control else DIR_MODE
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            parent = Dir.open(root, create=True, mode=mode, follow=True)  # a new root gets ``mode`` exactly
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
                return cls._claim(parent.sub(candidate), group_control)
        raise RunDirError(f"cannot create a new run directory under {root}: too many runs named {name!r} this second")

    @classmethod
    def create_at(cls, path: Path, group_control: bool = False) -> RunDir:
        """Exactly ``path`` (--run-dir): a new or empty directory, never someone else's files."""
        mode = GROUP_DIR_MODE if group_control else DIR_MODE
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
        try:
            check_owned(run)
        except RunDirError:
            run.close()
            raise
        return cls._claim(run, group_control)

    @classmethod
    def open(cls, path: Path, group_control: bool = False) -> RunDir:
        """An existing run, to append to on resume; its own entries must be intact."""
        run = open_run(path)
        try:
            check_entries(run)
            check_owned(run)
        except BaseException:
            run.close()
            raise
        claimed = cls._claim(run, group_control)
        claimed.dir.remove_temps()
        claimed.checkpoints.remove_temps()
        return claimed

    @classmethod
    def adopt(cls, path: Path, lock_fd: int, locked_at_ns: int, group_control: bool = False) -> RunDir:
        """The run a parent process claimed for us (``run --detach``): the inherited
        descriptor already holds the lock, so there is no moment without an owner."""
        run = open_run(path)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: a no-op that proves it
        except OSError:
            run.close()
            raise RunDirError(f"run directory {path} is in use by another cbam-tui process") from None
        claimed = cls(run, lock_fd, group_control)
        claimed.locked_at_ns = locked_at_ns
        claimed._write_pid()
        return claimed

    @classmethod
    def join(cls, path: Path, owner_pid: int, locked_at_ns: int, group_control: bool = False) -> RunDir:
        """The run that the launcher of several training processes holds (``--nproc-per-node``):
        rank 0 writes it while the launcher keeps the lock, so the run is live exactly as
        long as the launcher, which is also what reports a rank that died."""
        run = open_run(path)
        owner = probe_owner(run)
        if not owner.alive or owner.pid != owner_pid:
            run.close()
            raise RunDirError(f"run directory {path} is not held by its launcher (pid {owner_pid})")
        try:
            joined = cls(run, -1, group_control)
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
    def _claim(cls, run: Dir, group_control: bool) -> RunDir:
        try:
            # The group may take a shared lock on it (read access is enough for flock):
            # that is how a member's `ctl` or `watch` tells a live run from a dead one.
            fd = run.open_file(LOCK, os.O_RDWR | os.O_CREAT, GROUP_FILE_MODE if group_control else FILE_MODE)
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
            claimed = cls(run, fd, group_control)
        except OSError as exc:
            os.close(fd)
            raise RunDirError(f"cannot write to run directory {run.path}: {exc.strerror or exc}") from None
        try:
            claimed._write_pid()
            claimed._reserve_events(starting=True)
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
        if self._events is not None and self._reserved:
            release(self._events, EVENTS_RESERVE)
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
        self._reserved = max(0, self._reserved - len(data))
        if self._reserved < EVENTS_RESERVE // 2:
            self._reserve_events()
        if isinstance(event, (EpochEnded, *_FINAL_EVENTS)):
            self._refresh_index(last=not isinstance(event, EpochEnded))

    def _refresh_index(self, last: bool) -> None:
        """Keep index.json up with the log: at epoch ends, spending at most about 1% of the
        time on it, and at the run's last event. Best effort: an index is never worth a run."""
        start = time.monotonic()
        if not last and start < self._index_due:
            return
        from core.runs import write_index  # the index is the listing's; it reads through here

        with contextlib.suppress(OSError, ValueError):
            write_index(self.dir, self._folded())
        self._index_due = time.monotonic() + 100 * (time.monotonic() - start)

    def run_seconds(self) -> float | None:
        """The run's time to now, summed over the processes that took it (its events say; None
        when they cannot be read)."""
        with contextlib.suppress(OSError, ValueError):
            return self._folded().state.run_seconds(time.time())
        return None

    def _folded(self) -> Summary:
        """The light fold of events.jsonl, brought up to its end."""
        from core.runs import summarize

        if self._summary is None:
            self._summary = summarize(self.dir)
        else:
            self._summary.state.fold(self._summary.reader.events())
        return self._summary

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
        reader = EventReader(self.dir, skip=lambda kind: kind != EpochEnded.kind)  # a long log: epochs only
        logged = {(e.epoch, e.global_step) for e, _ in reader.events(final=True) if isinstance(e, EpochEnded)}
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

    # --- modes, room for the events, the files written besides them -----------------
    def _apply_modes(self) -> None:
        """The modes --group-control promises (or owner-only without it), set on what this
        user owns, whatever the umask and whichever flag the run had before a resume."""
        self.dir.file_mode = self.checkpoints.file_mode = self._file_mode
        for d, mode in ((self.dir, self._dir_mode), (self.checkpoints, self._dir_mode),
                        (self.control, GROUP_CONTROL_MODE if self.group_control else DIR_MODE)):
            d.set_mode(mode)
        for name in (CONFIG, EVENTS, METRICS, PROGRESS, SYSTEM, PID, LOCK, TRAIN_LOG, ERROR_LOG, CURVES):
            with contextlib.suppress(OSError):
                fd = self.dir.open_file(name, os.O_RDONLY)
                try:
                    if os.fstat(fd).st_uid == os.getuid():
                        os.fchmod(fd, self._file_mode)
                finally:
                    os.close(fd)

    def _reserve_events(self, starting: bool = False) -> None:
        """Keep EVENTS_RESERVE bytes of disk past events.jsonl's end, so the events that
        say how a run began and ended are never cut by a full disk. At the start, no room
        is one sentence before anything else is written; later, OSError(ENOSPC) from
        `write`, which stops the run while the reserve still holds its last events."""
        made = self._events is None and self.dir.lstat(EVENTS) is None
        if self._events is None:
            self._events = self._open_appending(EVENTS)
        try:
            reserve(self._events, EVENTS_RESERVE)  # where the file system cannot, look again 128 KiB on
            self._reserved = EVENTS_RESERVE
        except OSError as exc:
            if not starting:
                raise
            if made:
                self.dir.unlink(EVENTS)  # not a run yet: nothing for `runs` to list
            raise RunDirError(
                f"no room in {self.path} for the run's events ({EVENTS_RESERVE >> 10} KiB): "
                f"{exc.strerror or exc}"
            ) from None

    def write_curves(self, data: bytes) -> Path:
        """curves.png, replaced atomically through the run's directory: a link planted
        under that name is replaced, never followed."""
        self.dir.write_atomic(CURVES, data, durable=False)
        return self.path / CURVES

    def open_workers(self) -> Dir:
        """workers/, where the training processes' output goes: created with the run's
        directory mode; a link or a file there is UnsafeFile, never followed."""
        return self.dir.sub(WORKERS, create=True, mode=self._dir_mode)


def _csv_rows(rows: list[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode()


def _metrics_row(e: EpochEnded) -> tuple[object, ...]:
    return (
        e.stage, e.epoch, e.epoch_in_stage, e.batches_done, f"{e.train_loss:.6f}", f"{e.train_acc:.4f}",
        f"{e.test_loss:.6f}", f"{e.test_acc:.4f}", f"{e.seconds:.3f}", f"{e.images_per_second:.1f}",
    )

def deleted(d: Dir) -> bool:
    """The directory was removed (rm -rf) while held open: it has no name left."""
    try:
        return os.fstat(d.fd).st_nlink == 0
    except OSError:
        return True

# --- reading: tolerant of anything ---------------------------------------------------


class EventReader:
    """Reads events.jsonl as it grows. A line that is not a valid event (cut short by a
    crash, garbled, planted, another version's) is counted in ``bad`` and skipped.

    However long the file, it is read in steps of MAX_READ, and `events` yields as it
    goes, so nothing but what the caller keeps grows with it. A reader that folds only
    part of a run passes the rest over unparsed: ``skip`` is asked about each line's kind
    (as the trainer writes it, at the start of the line: any other line is parsed to be
    judged), and of a row of ``latest`` kinds, with only skipped lines between them, only
    the last is read. A line passed over is judged only by its end (one cut short is bad).
    """

    def __init__(self, run: Dir, skip: Callable[[str], bool] | None = None,
                 latest: frozenset[str] = frozenset()) -> None:
        self.run = run
        self.offset = 0
        self.size = 0  # of events.jsonl at the last read
        self.bad = 0
        self.last_bad = ""
        self.skip = skip
        self.latest = latest
        self._partial = b""
        self._skipping = False  # inside an over-long line, until its newline
        self._held = b""  # the last line of a row of ``latest`` kinds, not yet read

    @property
    def consumed(self) -> int:
        """Bytes of whole lines read (the unfinished last line not counted)."""
        return self.offset - len(self._partial)

    def read(self, final: bool = False) -> list[tuple[Event, float | None]]:
        """New events with their wall-clock stamps. ``final``: the writer is gone, so an
        unfinished last line is a cut one."""
        try:
            fd = self.run.open_file(EVENTS, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            size = self.size = os.fstat(fd).st_size
            if size < self.offset:  # replaced or truncated under us: read it afresh
                self.offset, self._partial, self._skipping, self._held = 0, b"", False, b""
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
        out: list[tuple[Event, float | None]] = []
        for line in lines:
            if not line.strip():
                continue
            kind = _kind_of(line)
            if kind is not None and (kind in self.latest or (self.skip is not None and self.skip(kind))):
                if not line.rstrip().endswith(b"}"):  # cut short: a line passed over is judged this far
                    self._bad(f"a {kind} line cut short")
                    continue
                if kind not in self.latest:
                    continue
            if kind in self.latest:
                self._held = line
                continue
            if self._held:
                self._parse(self._held, out)
                self._held = b""
            self._parse(line, out)
        if self._held and self.offset >= size:  # the last there is: nothing supersedes it yet
            self._parse(self._held, out)
            self._held = b""
        return out

    def _parse(self, line: bytes, out: list[tuple[Event, float | None]]) -> None:
        try:
            out.append(read_line(line))
        except BadEvent as exc:
            self._bad(str(exc))

    def events(self, final: bool = False) -> Iterator[tuple[Event, float | None]]:
        """Everything there is now, however large, one bounded step at a time."""
        while True:
            before = self.offset
            yield from self.read(final)
            if self.offset == before:
                return

    def read_all(self, final: bool = False) -> list[tuple[Event, float | None]]:
        """Everything there is now, as one list (a fold should iterate `events` instead)."""
        return list(self.events(final))

    def _bad(self, why: str) -> None:
        self.bad += 1
        self.last_bad = clean_text(why[:120])


_KIND = re.compile(rb'\{"event":"([a-z_]{1,40})"')


def _kind_of(line: bytes) -> str | None:
    """The event kind at the start of a line as the trainer writes it, without parsing it."""
    m = _KIND.match(line)
    return m[1].decode("ascii") if m else None


def read_live(run: Dir) -> tuple[Progress | Evaluating | None, SystemSample | None]:
    """The latest position (training or evaluating) and machine reading a live run left."""
    found: list[Event | None] = []
    for name, size in ((PROGRESS, MAX_PROGRESS), (SYSTEM, MAX_SYSTEM)):
        try:
            raw = run.read(name, size)
            found.append(from_json(raw) if raw else None)
        except (OSError, ValueError, BadEvent):
            found.append(None)
    position, system = found
    return (
        position if isinstance(position, (Progress, Evaluating)) else None,
        system if isinstance(system, SystemSample) else None,
    )

