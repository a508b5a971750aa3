"""Runs on disk, as a reader sees them: which directories are runs, what state
each is in, and whether the process that owns one is still alive.

No torch here: `cbam-tui runs`, `watch` and `ctl` answer without loading it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import RunDirError

EVENTS = "events.jsonl"
PID_FILE = "run.pid"
ENDINGS = {"run_finished": "finished", "run_stopped": "stopped", "run_failed": "failed"}
_SKIP = '{"event":"iter_losses"'  # the bulk of a long run's events, and nothing a summary needs


def is_run(path: Path) -> bool:
    """A run directory: it has events, or a process has claimed it and is starting."""
    return (path / EVENTS).is_file() or (path / PID_FILE).is_file()


def read_pid(path: Path) -> int | None:
    try:
        return int((path / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def owner_alive(path: Path) -> int | None:
    """The pid of the live process that owns the run, or None.

    A pid file outlives a process killed with -9; the pid may since have gone to
    another process, so one started after the pid file was written does not count,
    and neither does a zombie that nobody has reaped yet.
    """
    pid = read_pid(path)
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    status = _proc_stat(pid)
    if status is not None and status[0] == "Z":
        return None
    started = process_start(pid)
    try:
        written = (path / PID_FILE).stat().st_mtime
    except OSError:
        return None
    if started is not None and started > written + 1.0:
        return None
    return pid


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (Linux); None elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> float | None:
    """Wall-clock start time of a process (Linux /proc); None where unknown."""
    fields = _proc_stat(pid)
    try:
        ticks = int(fields[19]) if fields else None
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")


def read_events(path: Path, skip_losses: bool = False) -> Iterator[dict[str, Any]]:
    """The events of a run, skipping a last line cut short by a crash."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or (skip_losses and line.startswith(_SKIP)):
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


@dataclass(frozen=True)
class RunInfo:
    path: Path
    state: str  # starting, running, paused, finished, stopped, failed, dead
    stage: str  # "2/3"
    epoch: str  # "7/50"
    best_acc: float | None
    started: float | None  # wall-clock seconds
    seconds: float | None  # from the start to the last event, or to now while it runs
    pid: int | None  # of the live owner
    message: str = ""

    @property
    def live(self) -> bool:
        return self.pid is not None


def inspect_run(path: Path) -> RunInfo:
    """Everything `runs` shows about one run directory."""
    pid = owner_alive(path)
    state, message = "starting", ""
    stage = epoch = "-"
    best: float | None = None
    first_t = last_t = None
    num_stages, total_epochs = 0, 0
    events = path / EVENTS
    if events.is_file():
        for e in read_events(events, skip_losses=True):
            kind = e.get("event")
            t = e.get("t")
            if isinstance(t, (int, float)):
                first_t = t if first_t is None else first_t
                last_t = t
            if kind == "run_started":
                state, message = "running", ""
                total_epochs = e["total_epochs"]
                num_stages = len(e["stages"])
                stage, epoch = f"{e['start_stage']}/{num_stages}", f"{e['start_epoch']}/{total_epochs}"
            elif kind == "stage_started":
                stage = f"{e['stage']}/{e['num_stages']}"
                epoch = f"{e['first_epoch']}/{e['total_epochs']}" if state != "starting" else epoch
            elif kind in ("batch_logged", "epoch_ended"):
                epoch = f"{e['epoch']}/{e['total_epochs']}"
                if kind == "epoch_ended":
                    best = e["test_acc"] if best is None else max(best, e["test_acc"])
            elif kind == "paused":
                state = "paused"
            elif kind == "resumed":
                state = "running"
            elif kind in ENDINGS:
                state = ENDINGS[kind]
                message = e.get("reason") or e.get("message") or ""
        if first_t is None:
            first_t = last_t = events.stat().st_mtime
    elif (path / PID_FILE).is_file():
        first_t = last_t = (path / PID_FILE).stat().st_mtime
    if state in ("starting", "running", "paused") and pid is None:
        state, message = "dead", "the process is gone without a final event"
    seconds = None
    if first_t is not None and last_t is not None:
        seconds = (time.time() if pid is not None and state not in ENDINGS.values() else last_t) - first_t
    return RunInfo(path, state, stage, epoch, best, first_t, seconds, pid, message)


def list_runs(root: Path) -> list[RunInfo]:
    """The runs directly under ``root``, oldest first."""
    if not root.is_dir():
        raise RunDirError(f"no runs yet: {root} does not exist")
    runs = [inspect_run(p) for p in root.iterdir() if p.is_dir() and is_run(p)]
    return sorted(runs, key=lambda r: (r.started or 0.0, r.path.name))


def resolve_run(arg: str | None, root: Path) -> Path:
    """The run a user means: the directory given, or the newest under ``root``."""
    if arg is None:
        runs = list_runs(root)
        if not runs:
            raise RunDirError(f"no runs under {root}: start one with cbam-tui run, or name a run directory")
        return runs[-1].path
    path = Path(arg)
    if not path.exists():
        raise RunDirError(f"{path} does not exist")
    if not path.is_dir():
        raise RunDirError(f"{path} is a file, not a run directory")
    if not is_run(path):
        raise RunDirError(f"{path} is not a cbam-tui run directory (no {EVENTS})")
    return path
