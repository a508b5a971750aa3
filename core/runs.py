"""The runs under a root, as `runs`, `compare`, `watch` and `--resume auto` see them: each
run's light state, summed up in its index so that listing stays cheap however long the
history, and what `runs` shows of it. Every file is reached through core.rundir.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import RunDirError
from core.events import clean_text
from core.rundir import (
    EVENTS,
    INDEX,
    LOCK,
    EventReader,
    check_owned,
    has_checkpoint,
    is_run,
    open_run,
    probe_owner,
    read_config,
)
from core.safefs import Dir
from core.state import RunState
from core.vocab import Status, judge

# --- the index: a long history summed up ---------------------------------------------
#
# index.json holds the light fold of events.jsonl (what `runs`, `compare` and `--resume auto`
# show: no curves, no maps) up to a byte offset, with what ties it to those bytes: the file's
# inode and a digest of the 4 KiB before the offset. Whoever folded the log writes it (the
# trainer at epoch ends, a reader of a run no process holds); a reader trusts it only when
# it holds for the file as it is now, checks every value in it like an event's, and folds
# the lines after it. Anything else (absent, damaged, another file, a log cut shorter) and
# the log is folded from its first line, which is always right, only slower.

INDEX_VERSION = 2  # 2: a run's time is summed over its processes
MAX_INDEX = 64 << 20
_INDEX_TAIL = 4096
LIGHT_SKIP = frozenset({"iter_losses", "attention", "class_accuracy"})  # a light fold keeps none of them
LIGHT_LATEST = frozenset({"batch_logged"})  # of a row of loss lines, a light fold needs the last one
STALE_INDEX = 1 << 20  # bytes folded past the index that make a reader write a new one


@dataclass
class Summary:
    """A run's light state and the reader that folded it, positioned after the last line."""

    state: RunState  # light
    reader: EventReader
    indexed: bool  # it began from the run's index
    folded: int  # bytes of events.jsonl read here

    @property
    def stale(self) -> bool:
        """Worth a new index: there was none to trust, or much was folded past it."""
        return not self.indexed or self.folded > STALE_INDEX


def light_reader(run: Dir) -> EventReader:
    return EventReader(run, skip=LIGHT_SKIP.__contains__, latest=LIGHT_LATEST)


def summarize(run: Dir, final: bool = False) -> Summary:
    """The run's light state: from its index and the lines after it when the index holds,
    else from every line. ``final``: the writer is gone (see EventReader.read)."""
    found = _read_index(run)
    state, reader = found if found is not None else (RunState(keep_losses=False), light_reader(run))
    start = reader.offset
    state.fold(reader.events(final))
    return Summary(state, reader, found is not None, reader.offset - start)


def write_index(run: Dir, summary: Summary) -> None:
    """Keep ``summary`` as the run's index (OSError when it cannot be written)."""
    reader = summary.reader
    if reader._skipping or reader._held:
        return  # not at a line's end: the next fold writes one
    tie = _events_tie(run, reader.consumed)
    if tie is None:
        return
    data = {"index": INDEX_VERSION, "events": tie, "bad": reader.bad, "last_bad": reader.last_bad,
            "state": summary.state.snapshot()}
    run.write_atomic(INDEX, json.dumps(data, separators=(",", ":")).encode(), durable=False)


def _events_tie(run: Dir, size: int) -> dict[str, Any] | None:
    """What ties an index to the first ``size`` bytes of events.jsonl as they are now."""
    try:
        fd = run.open_file(EVENTS, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size < size:
            return None
        start = max(size - _INDEX_TAIL, 0)
        tail = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    if len(tail) != size - start:
        return None
    return {"size": size, "ino": st.st_ino, "dev": st.st_dev, "tail": hashlib.sha256(tail).hexdigest()}


def _read_index(run: Dir) -> tuple[RunState, EventReader] | None:
    """The index's state and a reader positioned after what it folded, or None when there
    is no index that holds for events.jsonl as it is now."""
    try:
        raw = run.read(INDEX, MAX_INDEX)
        if raw is None:
            return None
        data = json.loads(raw)
        tie = data["events"]
        if data["index"] != INDEX_VERSION or not isinstance(tie, dict):
            return None
        size, bad, last_bad = tie["size"], data["bad"], data["last_bad"]
        if not (isinstance(size, int) and isinstance(bad, int) and isinstance(last_bad, str)) or size < 0 or bad < 0:
            return None
        if _events_tie(run, size) != tie:
            return None
        state = RunState.restore(data["state"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None  # no index, or none to trust: the log is folded from its start
    reader = light_reader(run)
    reader.offset, reader.bad, reader.last_bad = size, bad, clean_text(last_bad[:120])
    return state, reader



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
    state: Status  # as the run's events leave it, DEAD as `judge` finds it, or UNREADABLE
    stage: str = "-"  # "2/3"
    epoch: str = "-"  # "7/50"
    best_acc: float | None = None
    started: float | None = None  # wall-clock seconds
    seconds: float | None = None  # each process's time on it, first event to last (to now while one runs)
    pid: int | None = None  # of the live owner
    message: str = ""  # why it stopped, failed or cannot be read
    bad_lines: int = 0  # lines of events.jsonl that are no valid event
    resumable: bool = False  # it has a checkpoint, has not finished and is not running
    epochs_done: int = 0
    live: bool = False  # a live process holds it (its lock)


def inspect_run(path: Path, follow: bool = True) -> RunInfo:
    """Everything `runs` shows about one run directory; never raises for a broken one.
    A run no process holds gets an index when it lacked a good one (if it is ours to write)."""
    try:
        with open_run(path, follow) as run:
            owner = probe_owner(run)
            summary = summarize(run, final=not owner.alive)
            if summary.stale and not owner.alive:
                _keep_index(run, summary)
            state, reader = summary.state, summary.reader
            resumable = has_checkpoint(run) and state.status is not Status.FINISHED
            if state.first_t is None:
                st = run.lstat(EVENTS) or run.lstat(LOCK)
                state.first_t = state.last_t = state.session_t = st.st_mtime if st else None
    except (RunDirError, OSError) as exc:
        message = str(exc) if isinstance(exc, RunDirError) else f"cannot be read: {exc.strerror or exc}"
        return RunInfo(path, Status.UNREADABLE, message=message)
    status = judge(state.status, owner.alive)
    message = "the process is gone without a final event" if status is Status.DEAD else state.message or ""
    if reader.bad:
        note = f"{reader.bad} unreadable line{'s' if reader.bad > 1 else ''} in {EVENTS} ({reader.last_bad})"
        message = f"{message}; {note}" if message else note
    seconds = state.run_seconds(time.time() if owner.alive else None)
    return RunInfo(
        path, status, state.stage_text, state.epoch_text, state.best_acc, state.first_t, seconds,
        owner.pid if owner.alive else None, message, reader.bad, resumable and not owner.alive, len(state.epochs),
        owner.alive,
    )


def _keep_index(run: Dir, summary: Summary) -> None:
    """Best effort, and only in a run directory of this user's: another's is only read."""
    with contextlib.suppress(OSError):
        if os.fstat(run.fd).st_uid == os.getuid():
            write_index(run, summary)


def list_runs(root: Path) -> list[RunInfo]:
    """The runs directly under ``root``, oldest first; a broken one is listed, never fatal,
    and one deleted while it is listed is left out."""
    runs = [inspect_run(p, follow=False) for p in iter_run_dirs(root)]
    runs = [r for r in runs if r.state is not Status.UNREADABLE or os.path.lexists(r.path)]
    return sorted(runs, key=lambda r: (r.started or 0.0, r.path.name))


def remove_run(root: Path, name: str) -> None:
    """Delete the run directory ``root/name``, and only if it is a run that no process holds:
    never a link, never anything outside it."""
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
    (what a requeued job should go on with); None when there is none. Only the runs of
    that name are looked into (their config.json says it), so other runs cost a stat."""
    try:
        paths = [p for p in iter_run_dirs(root) if _config_name(p) == name]
    except RunDirError:
        return None
    runs = sorted((inspect_run(p, follow=False) for p in paths), key=lambda r: (r.started or 0.0, r.path.name))
    for info in reversed(runs):
        if info.state not in (Status.STOPPED, Status.DEAD) or not info.resumable:
            continue
        try:
            with open_run(info.path, follow=False) as run:
                check_owned(run)  # a run another user planted under a shared root is not ours to go on with
        except RunDirError:
            continue
        return info.path
    return None


def _config_name(path: Path) -> str | None:
    try:
        with open_run(path, follow=False) as run:
            name = read_config(run).get("name")
    except (RunDirError, OSError):
        return None
    return name if isinstance(name, str) else None


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
