"""What `compare` tells about several runs, as plain values: each run's figures and
per-epoch test results, and the configuration values that differ between the runs.

Everything is read through the run directory's own tolerant readers; a run that
cannot be read, or only in part, comes back with a note, never an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import RunDirError
from core.events import clean_text
from core.rundir import EVENTS, open_run, probe_owner, read_config
from core.runs import summarize
from core.vocab import Status, judge

MAX_DEPTH = 8  # of a config's nesting; deeper is no config of ours
MAX_KEYS = 2000  # flattened keys kept from one config.json
MAX_SHOWN = 80  # characters of a config value in a line of text


@dataclass(frozen=True)
class Compared:
    """One run as `compare` reports it (seconds: training time, summed over its epochs)."""

    path: Path
    state: Status  # RUNNING, PAUSED, FINISHED, STOPPED, FAILED, DEAD ... or UNREADABLE
    best_acc: float | None = None  # % on the test set
    best_epoch: int | None = None
    epochs_done: int = 0
    total_epochs: int | None = None
    images_per_second: float | None = None  # mean over its epochs
    seconds: float | None = None
    epochs: tuple[int, ...] = ()
    test_acc: tuple[float, ...] = ()
    test_loss: tuple[float, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # flattened: "plan.stages.0.epochs" -> 5
    note: str = ""  # what could not be read

    @property
    def name(self) -> str:
        return self.path.name


def compared_status(status: Status, live: bool) -> Status:
    """A run's status as `compare` shows it: dead as `judge` finds it, and a run at work on
    any step of its loop (loading, evaluating, ...) simply running, unless it is paused."""
    status = judge(status, live)
    if status.live and status is not Status.PAUSED:
        return Status.RUNNING
    return status


def from_state(path: Path, state: Any, live: bool, config: dict[str, Any] | None = None, note: str = "") -> Compared:
    """``state``: a core.state.RunState, light or whole."""
    epochs = state.epochs
    return Compared(
        path, compared_status(state.status, live), state.best_acc, state.best_epoch, len(epochs),
        state.started.total_epochs if state.started else None,
        sum(e.images_per_second for e in epochs) / len(epochs) if epochs else None,
        sum(e.seconds for e in epochs) if epochs else None,
        tuple(e.epoch for e in epochs), tuple(e.test_acc for e in epochs), tuple(e.test_loss for e in epochs),
        config or {}, note,
    )


def read_compared(path: Path) -> Compared:
    """One run, whatever its directory holds."""
    notes = []
    try:
        with open_run(path) as run:
            live = probe_owner(run).alive
            summary = summarize(run, final=not live)
            try:
                config = flatten(read_config(run))
            except RunDirError as exc:
                config = {}
                notes.append(str(exc))
    except (RunDirError, OSError) as exc:
        return Compared(path, Status.UNREADABLE, note=str(exc) if isinstance(exc, RunDirError) else
                        f"{path} cannot be read: {exc.strerror or exc}")
    reader = summary.reader
    if reader.bad:
        notes.append(f"{reader.bad} unreadable line{'s' if reader.bad > 1 else ''} in {EVENTS} ({reader.last_bad})")
    return from_state(path, summary.state, live, config, "; ".join(notes))


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts (and lists of them, by index) as one level of dotted keys; lists of plain
    values stay whole. Bounded, since config.json is input like any other."""
    out: dict[str, Any] = {}

    def walk(value: Any, key: str, depth: int) -> None:
        if len(out) >= MAX_KEYS:
            return
        if isinstance(value, dict) and depth < MAX_DEPTH:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k), depth + 1)
        elif isinstance(value, list) and depth < MAX_DEPTH and any(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}" if key else str(i), depth + 1)
        else:
            out[key] = value

    walk(data, "", 0)
    return out


def differences(runs: list[Compared]) -> dict[str, list[Any]]:
    """The configuration keys whose values are not the same in every run whose config was
    read, with each run's value (None where it has none), in the order they first appear."""
    read = [r.config for r in runs if r.config]
    keys = dict.fromkeys(k for config in read for k in config)
    out = {}
    for key in keys:
        values = [config.get(key) for config in read]
        if any(v != values[0] or type(v) is not type(values[0]) for v in values):
            out[key] = [r.config.get(key) for r in runs]
    return out


def shown(value: Any) -> str:
    """A config value in a line of text: terminal-safe and short."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = clean_text(text)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
