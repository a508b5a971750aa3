"""What `compare` tells about several runs, as plain values: each run's figures, every
scalar it recorded (per epoch, and at each loss line by step), and the configuration
values that differ between the runs.

Everything is read through the run directory's own tolerant readers; a run that
cannot be read, or only in part, comes back with a note, never an exception.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import RunDirError
from core.events import BatchLogged, EpochEnded, RunStarted, StageStarted, clean_text
from core.rundir import EVENTS, EventReader, open_run, probe_owner, read_config
from core.runs import summarize
from core.safefs import Dir
from core.state import MAX_CURVE_POINTS, MAX_STAGE_MARKS, RunState
from core.vocab import Status, judge

MAX_DEPTH = 8  # of a config's nesting; deeper is no config of ours
MAX_KEYS = 2000  # flattened keys kept from one config.json
MAX_SHOWN = 80  # characters of a config value in a line of text

# The scalars a run records, by the name `compare --metric` takes. Per epoch: the epoch
# events' numbers, named as metrics.csv's columns; by global step: each loss line's train
# loss, and each optimizer group's learning rate and gradient norm ("lr/new").
EPOCH_METRICS = {
    "test_acc": "test accuracy %",
    "test_loss": "test loss",
    "train_acc": "train accuracy %",
    "train_loss": "train loss",
    "images_per_second": "training images per second",
    "seconds": "epoch time (s)",
}
LINE_METRICS = {"batch_loss": "train loss of each loss line", "lr": "learning rate", "grad_norm": "gradient norm"}
PER_GROUP = ("lr", "grad_norm")
DEFAULT_METRIC = "test_acc"
LINE_KINDS = frozenset({RunStarted.kind, StageStarted.kind, BatchLogged.kind})  # what the loss lines' fold reads


@dataclass(frozen=True)
class Series:
    """One scalar of one run: ``axis`` is "epoch" or "step"; non-finite values are left out."""

    axis: str
    x: tuple[int, ...] = ()
    y: tuple[float, ...] = ()


def metric_names(groups: Iterable[str]) -> list[str]:
    """Every name `--metric` takes for runs whose optimizer groups are ``groups``."""
    named = list(dict.fromkeys(groups))
    return [*EPOCH_METRICS, "batch_loss", *(f"{kind}/{g}" for kind in PER_GROUP for g in named)]


def is_line_metric(name: str) -> bool:
    """Read from the loss lines (by step), not from the epochs."""
    return name not in EPOCH_METRICS


def metric_title(name: str) -> str:
    """What a chart calls ``name``: "learning rate of new per step"."""
    if name in EPOCH_METRICS:
        return f"{EPOCH_METRICS[name]} per epoch"
    kind, _, group = name.partition("/")
    return f"{LINE_METRICS.get(kind, kind)}{f' of {group}' if group else ''} per step"


def epoch_series(name: str, epochs: Sequence[EpochEnded]) -> Series:
    points = [(e.epoch, float(getattr(e, name))) for e in epochs]
    kept = [(x, y) for x, y in points if math.isfinite(y)]
    return Series("epoch", tuple(x for x, _ in kept), tuple(y for _, y in kept))


class LossLines:
    """A run's loss lines, by global step: each one's train loss and each optimizer group's
    learning rate and gradient norm, named through its stage's groups. Everything else in
    events.jsonl is passed over unparsed; a resume drops the lines past its checkpoint's
    step, and a long run keeps every other line as the dashboard's curves do."""

    def __init__(self, run: Dir) -> None:
        self.reader = EventReader(run, skip=lambda kind: kind not in LINE_KINDS)
        # (global step, stage, train loss, each group's rate, each group's gradient norm)
        self.points: list[tuple[int, int, float, tuple[float, ...], tuple[float, ...]]] = []
        self.groups: dict[int, tuple[str, ...]] = {}  # stage -> its group names
        self.stride = 1
        self.seen = 0

    def poll(self, final: bool = False) -> bool:
        """Fold what is new; True when anything was."""
        changed = False
        for event, _ in self.reader.events(final):
            changed = True
            if isinstance(event, RunStarted):
                self.points = [p for p in self.points if p[0] <= event.global_step]
            elif isinstance(event, StageStarted):
                if event.stage in self.groups or len(self.groups) < MAX_STAGE_MARKS:
                    self.groups[event.stage] = tuple(name for name, _ in event.groups)
            elif isinstance(event, BatchLogged):
                self.seen += 1
                if (self.seen - 1) % self.stride:
                    continue
                self.points.append((event.global_step, event.stage, event.loss, event.lrs, event.grad_norms))
                if len(self.points) > MAX_CURVE_POINTS:
                    self.points = self.points[::2]
                    self.stride *= 2
        return changed

    def series(self, name: str) -> Series:
        kind, _, group = name.partition("/")
        at = {stage: names.index(group) for stage, names in self.groups.items() if group in names}  # its place
        xs: list[int] = []
        ys: list[float] = []
        for step, stage, loss, lrs, norms in self.points:
            if kind == "batch_loss":
                value: float | None = loss
            else:
                values, i = lrs if kind == "lr" else norms, at.get(stage)
                value = values[i] if i is not None and i < len(values) else None
            if value is not None and math.isfinite(value):
                xs.append(step)
                ys.append(float(value))
        return Series("step", tuple(xs), tuple(ys))


def series_of(name: str, epochs: Sequence[EpochEnded], lines: LossLines | None) -> Series:
    """Scalar ``name`` of a run with these epochs and loss lines (none read: empty)."""
    if name in EPOCH_METRICS:
        return epoch_series(name, epochs)
    return lines.series(name) if lines is not None else Series("step")


def run_groups(state: RunState) -> tuple[str, ...]:
    """A run's optimizer group names, stage by stage, each once."""
    return tuple(dict.fromkeys(g for _, names in sorted(state.stage_groups.items()) for g in names))


@dataclass(frozen=True)
class Compared:
    """One run as `compare` reports it (seconds: the run's time as `runs` gives it, `RunState.run_seconds`)."""

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
    groups: tuple[str, ...] = ()  # its optimizer groups' names
    series: dict[str, Series] = field(default_factory=dict)  # the scalars read, by metric name

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


def from_state(path: Path, state: RunState, live: bool, config: dict[str, Any] | None = None, note: str = "",
               series: dict[str, Series] | None = None) -> Compared:
    """``state``: light or whole."""
    epochs = state.epochs
    return Compared(
        path, compared_status(state.status, live), state.best_acc, state.best_epoch, len(epochs),
        state.started.total_epochs if state.started else None,
        sum(e.images_per_second for e in epochs) / len(epochs) if epochs else None,
        state.run_seconds(time.time() if live else None),
        tuple(e.epoch for e in epochs), tuple(e.test_acc for e in epochs), tuple(e.test_loss for e in epochs),
        config or {}, note, run_groups(state), series or {},
    )


def read_compared(path: Path, lines: bool = False) -> Compared:
    """One run, whatever its directory holds, with its per-epoch scalars, and with ``lines``
    those of its loss lines too (which takes a pass over events.jsonl)."""
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
            folded = None
            if lines:
                folded = LossLines(run)
                folded.poll(final=not live)
    except (RunDirError, OSError) as exc:
        return Compared(path, Status.UNREADABLE, note=str(exc) if isinstance(exc, RunDirError) else
                        f"{path} cannot be read: {exc.strerror or exc}")
    reader = summary.reader
    if reader.bad:
        notes.append(f"{reader.bad} unreadable line{'s' if reader.bad > 1 else ''} in {EVENTS} ({reader.last_bad})")
    state = summary.state
    names = [m for m in metric_names(run_groups(state)) if lines or not is_line_metric(m)]
    series = {m: series_of(m, state.epochs, folded) for m in names}
    return from_state(path, state, live, config, "; ".join(notes), series)


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
