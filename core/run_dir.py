"""The run directory: everything a run learns, kept on disk as it happens.

    runs/<YYYYmmdd-HHMMSS>-<name>/
        config.json          the resolved RunConfig and plan
        events.jsonl         every event, one JSON object a line, flushed as written
        metrics.csv          one row per evaluated epoch
        checkpoints/last.pt  written atomically at each epoch end, on save and on stop
        checkpoints/best.pt  the best test accuracy so far
        progress.json        the latest batch progress, for attached dashboards
        control/             commands for the trainer (see core.channel)
        run.pid, .lock       the process that owns the run (others are refused)
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from core.errors import RunDirError
from core.events import EpochEnded, Event, Progress
from core.runs import read_pid

PROGRESS_EVERY_S = 1.0

METRICS_COLUMNS = (
    "stage", "epoch", "epoch_in_stage", "batches_done", "train_loss", "train_acc",
    "test_loss", "test_acc", "seconds", "images_per_second",
)


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._events: IO[str] | None = None
        self._lock_fd: int | None = None
        self._progress_at = 0.0

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @classmethod
    def create(cls, root: Path, name: str, explicit: Path | None = None) -> RunDir:
        """A new run directory under ``root`` (or exactly ``explicit``), locked."""
        run = cls(cls.prepare(root, name, explicit))
        run.lock()
        return run

    @staticmethod
    def prepare(root: Path, name: str, explicit: Path | None = None) -> Path:
        """Make a new run's directory, not yet claimed by any process."""
        if explicit is not None:
            path = explicit
            if path.exists() and not path.is_dir():
                raise RunDirError(f"--run-dir {path} is a file, not a directory")
            if (path / "events.jsonl").exists():
                raise RunDirError(f"{path} already holds a run: use --resume {path} or another --run-dir")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = root / f"{stamp}-{name}"
            n = 2
            while path.exists():
                path = root / f"{stamp}-{name}-{n}"
                n += 1
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory, to append to on resume; locked."""
        if not (path / "events.jsonl").is_file():
            raise RunDirError(f"{path} is not a cbam-tui run directory (no events.jsonl)")
        run = cls(path)
        run.lock()
        return run

    def lock(self) -> None:
        """Refuse a second process on the same run instead of interleaving writes."""
        try:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot write to run directory {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = read_pid(self.path)
            raise RunDirError(
                f"run directory {self.path} is in use by another cbam-tui process"
                + (f" (pid {pid})" if pid else "")
            ) from None
        self._lock_fd = fd
        (self.path / "run.pid").write_text(f"{os.getpid()}\n")

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._lock_fd is not None:
            (self.path / "run.pid").unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_config(self, config: dict[str, Any]) -> None:
        _atomic_write_bytes(self.path / "config.json", json.dumps(config, indent=2).encode() + b"\n")

    def write(self, event: Event) -> None:
        """Append one event, stamped with the wall clock; flushed at once so a
        watcher or a crash loses nothing. Progress only replaces progress.json."""
        if event.transient:
            if isinstance(event, Progress):
                self._write_progress(event)
            return
        if self._events is None:
            self._events = self._open_events()
        self._events.write(json.dumps({**event.to_dict(), "t": round(time.time(), 3)}, separators=(",", ":")) + "\n")
        self._events.flush()
        if isinstance(event, EpochEnded):
            self._append_metrics(event)

    def _write_progress(self, event: Progress) -> None:
        now = time.monotonic()
        if now - self._progress_at < PROGRESS_EVERY_S:
            return
        self._progress_at = now
        target = self.path / "progress.json"
        tmp = target.with_name(f".progress.json.tmp-{os.getpid()}")
        tmp.write_text(event.to_json())  # no fsync: it is stale within a second anyway
        os.replace(tmp, target)

    def _open_events(self) -> IO[str]:
        path = self.events_path
        needs_newline = False
        if path.exists() and path.stat().st_size:
            with path.open("rb") as tail:
                tail.seek(-1, os.SEEK_END)
                needs_newline = tail.read(1) != b"\n"  # a line cut short by a crash
        out = path.open("a", encoding="utf-8")
        if needs_newline:
            out.write("\n")
        return out

    def _append_metrics(self, e: EpochEnded) -> None:
        path = self.path / "metrics.csv"
        new = not path.exists()
        buf = io.StringIO()
        writer = csv.writer(buf)
        if new:
            writer.writerow(METRICS_COLUMNS)
        writer.writerow([
            e.stage, e.epoch, e.epoch_in_stage, e.batches_done, f"{e.train_loss:.6f}", f"{e.train_acc:.4f}",
            f"{e.test_loss:.6f}", f"{e.test_acc:.4f}", f"{e.seconds:.3f}", f"{e.images_per_second:.1f}",
        ])
        with path.open("a", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())

    def save_checkpoint(self, state: dict[str, Any], name: str = "last.pt") -> Path:
        import torch

        target = self.checkpoints / name
        buf = io.BytesIO()
        torch.save(state, buf)
        _atomic_write_bytes(target, buf.getbuffer())
        return target


def _atomic_write_bytes(target: Path, data: bytes | memoryview) -> None:
    """Write to a temp file, fsync, rename: a crash leaves the old file or the new, never half."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
