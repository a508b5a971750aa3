"""The one fold of the event stream: what is known about a run after its events.

The dashboard (live or attached), the headless reporter, `runs` and the
follower all read a run through `RunState.apply` and its log lines through
`describe`, so a run looks the same whichever way it is seen. Pure Python: no
torch, no UI.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from core.events import (
    MAX_TIME,
    AttentionMaps,
    BatchLogged,
    CheckpointSaved,
    ClassAccuracy,
    CommandRefused,
    CommandTaken,
    EpochEnded,
    Evaluating,
    Event,
    IterLosses,
    Loading,
    Note,
    Paused,
    PlanChanged,
    Progress,
    RatesChanged,
    Replayed,
    Replaying,
    Resumed,
    RunFailed,
    RunFinished,
    RunGone,
    RunStarted,
    RunStopped,
    SaveFailed,
    StageSkipped,
    StageStarted,
    SystemSample,
    Watching,
    check,
    counted,
    from_dict,
    plausible_time,
)
from core.vocab import Status

# However long the history, what is kept of it stays this size (a 1 GB events.jsonl holds
# about 20 million iterations and 25,000 epochs).
MAX_LOSSES = 1 << 20  # iteration-loss points; beyond, neighbours are averaged and loss_stride doubles
MAX_CURVE_POINTS = 1 << 16  # loss lines' rates and gradient norms; beyond, every other one is dropped
KEEP_EPOCH_VIEWS = 100  # the newest epochs whose attention maps and per-class results are kept
MAX_EPOCHS = 300_000  # epochs kept (three stages of a plan's most); only a crafted log has more
MAX_STAGE_MARKS = 1024
KEEP_SAMPLES = 60  # readings of the machine kept for its sparklines: a minute at one a second


@dataclass
class RunState:
    keep_losses: bool = True  # the views' histories (curves, per-class results, attention); `runs` needs none
    status: Status = Status.STARTING
    loading: str = "starting"
    loading_done: int = 0
    loading_total: int = 0
    first: RunStarted | None = None  # how the run began
    started: RunStarted | None = None  # the latest start (a resume starts again)
    stage: StageStarted | None = None
    changed: frozenset[str] = frozenset()  # modules whose state changed at the last stage switch
    # One position, used everywhere: the epoch, and batches done in it.
    epoch: int = 0
    batch: int = 0
    batches: int = 0
    images_per_second: float = 0.0
    data_share: float = 0.0  # of the host's step time, preparing batches
    evaluating: Evaluating | None = None  # the test pass under way
    system: SystemSample | None = None  # the latest reading of the machine
    # The iteration losses: point i is the mean loss of steps first_step + i * loss_stride onwards
    # (loss_stride of them); the steps after the last full point wait in a partial one.
    iter_losses: array[float] = field(default_factory=lambda: array("f"))
    first_step: int = 1  # global step of iter_losses[0]
    loss_stride: int = 1  # 1 until a run has more than MAX_LOSSES iterations
    loss_partial: tuple[float, int] = (0.0, 0)  # (sum, count) of the steps not yet a full point
    curve_stride: int = 1  # 1 until a run has more than MAX_CURVE_POINTS loss lines
    curve_seen: int = 0  # loss lines seen, to keep one in curve_stride
    stage_steps: list[tuple[int, int]] = field(default_factory=list)  # (global step, stage) at each switch
    epochs: list[EpochEnded] = field(default_factory=list)  # each epoch once, as the latest start left it
    class_reports: list[ClassAccuracy] = field(default_factory=list)  # per epoch, likewise
    attention: list[AttentionMaps] = field(default_factory=list)
    system_history: list[SystemSample] = field(default_factory=list)  # the last KEEP_SAMPLES readings
    # At each loss line: (global step, stage, each group's learning rate, each group's gradient norm).
    group_curves: list[tuple[int, int, tuple[float, ...], tuple[float, ...]]] = field(default_factory=list)
    stage_groups: dict[int, tuple[str, ...]] = field(default_factory=dict)  # stage -> its group names
    last_checkpoint: str | None = None
    message: str | None = None  # why it paused itself, stopped or failed
    may_resume: bool = True  # False while paused for a loss that is no longer finite
    ended: RunFinished | RunStopped | RunFailed | None = None
    watching: Watching | None = None  # set when attached to a run through its directory
    commands: int = 0
    refused: int = 0  # commands the run did not apply (each said why in the log)
    first_t: float | None = None  # wall clock of the first and the latest event
    last_t: float | None = None
    # A run's time is its processes' (each from its first event to its last), never the time it lay stopped.
    session_t: float | None = None  # the first event of the latest process that took the run
    earlier_seconds: float = 0.0  # the processes before it
    starting: bool = False  # the latest event was a loading one: a process begins with them
    version: int = 0  # bumped on every change, so widgets redraw only when needed

    def apply(self, e: Event, t: float | None = None) -> None:
        """Fold one event in (``t``: its wall-clock stamp, when read from disk)."""
        self.version += 1
        if t is not None:
            self._stamp(e, t)
        if isinstance(e, Loading):
            self.status = Status.LOADING if self.status in (Status.STARTING, Status.LOADING) else self.status
            self.loading, self.loading_done, self.loading_total = e.message, e.done, e.total
        elif isinstance(e, Replaying):
            if self.status in (Status.STARTING, Status.LOADING, Status.REPLAYING):
                self.status = Status.REPLAYING
                self.loading = f"replaying the run's history ({e.total / 2**20:,.0f} MB)"
                self.loading_done, self.loading_total = e.done, e.total
        elif isinstance(e, Replayed):
            self._adopt(e.state)
        elif isinstance(e, RunGone):
            self.status, self.message = Status.GONE, f"{e.run_dir} was deleted"
        elif isinstance(e, RunStarted):
            self._start(e)
        elif isinstance(e, StageStarted):
            before = {m.name: m for m in self.stage.modules} if self.stage else {}
            self.changed = frozenset(
                m.name
                for m in e.modules
                if m.name in before and (before[m.name].trainable, before[m.name].lr) != (m.trainable, m.lr)
            )
            self.stage = e
            if e.stage in self.stage_groups or len(self.stage_groups) < MAX_STAGE_MARKS:
                self.stage_groups[e.stage] = tuple(name for name, _ in e.groups)
            if not self.stage_steps or self.stage_steps[-1][1] != e.stage:
                self.stage_steps.append((e.global_step, e.stage))
                del self.stage_steps[:-MAX_STAGE_MARKS]
            self.epoch, self.batch = max(self.epoch, e.first_epoch), 0 if e.first_epoch > self.epoch else self.batch
        elif isinstance(e, (Progress, BatchLogged)):
            self.epoch, self.batch, self.batches = e.epoch, e.batch, e.batches
            self.images_per_second = e.images_per_second
            if isinstance(e, Progress):
                self.data_share = e.data_share
            elif e.lrs and self.keep_losses:
                self._add_curve_point((e.global_step, e.stage, e.lrs, e.grad_norms))
        elif isinstance(e, Evaluating):
            self.evaluating = e
            if self.status is Status.RUNNING:
                self.status = Status.EVALUATING
        elif isinstance(e, SystemSample):
            self.system = e
            if self.keep_losses:
                self.system_history.append(e)
                del self.system_history[:-KEEP_SAMPLES]
        elif isinstance(e, ClassAccuracy):
            if self.keep_losses:
                self.class_reports.append(e)
                del self.class_reports[:-KEEP_EPOCH_VIEWS]
        elif isinstance(e, AttentionMaps):
            if self.keep_losses:
                self.attention.append(e)
                del self.attention[:-KEEP_EPOCH_VIEWS]
        elif isinstance(e, IterLosses):
            if self.keep_losses:
                self._add_losses(e)
        elif isinstance(e, EpochEnded):
            self.epochs.append(e)
            del self.epochs[:-MAX_EPOCHS]
            self.epoch, self.batch = e.epoch, e.batches_done
            self.evaluating = None
            if self.status is Status.EVALUATING:
                self.status = Status.RUNNING
        elif isinstance(e, Paused):
            self.status = Status.PAUSED
            self.epoch, self.batch = e.epoch, e.batch
            self.message = None if e.reason == "user" else e.reason
            self.may_resume = e.resumable
        elif isinstance(e, Resumed):
            self.status, self.message = (Status.EVALUATING if self.evaluating else Status.RUNNING), None
            self.may_resume = True
        elif isinstance(e, Watching):
            self.watching = e
        elif isinstance(e, Note):
            pass
        elif isinstance(e, CommandTaken):
            self.commands += 1
        elif isinstance(e, CommandRefused):
            self.refused += 1
        elif isinstance(e, PlanChanged):
            self._replan(e)
        elif isinstance(e, CheckpointSaved):
            self.last_checkpoint = e.path
        elif isinstance(e, RunFinished):
            self.status, self.ended = Status.FINISHED, e
        elif isinstance(e, RunStopped):
            self.status, self.ended = Status.STOPPED, e
            self.message = e.detail or e.reason
            self.last_checkpoint = e.checkpoint or self.last_checkpoint
        elif isinstance(e, RunFailed):
            self.status, self.ended, self.message = Status.FAILED, e, e.message
            self.last_checkpoint = e.checkpoint or self.last_checkpoint

    def _stamp(self, e: Event, t: float) -> None:
        if self.session_t is None or (isinstance(e, (Loading, RunStarted)) and not self.starting):
            if self.session_t is not None and self.last_t is not None:
                self.earlier_seconds += max(self.last_t - self.session_t, 0.0)
            self.session_t = t
        self.starting = isinstance(e, Loading)
        self.first_t = t if self.first_t is None else self.first_t
        self.last_t = t

    def run_seconds(self, now: float | None = None) -> float | None:
        """The run's time: the sum over the processes that took it, each from its first event to
        its last (the latest to ``now`` while it runs); None before any stamped event."""
        if self.session_t is None or self.last_t is None:
            return None
        return self.earlier_seconds + max((self.last_t if now is None else now) - self.session_t, 0.0)

    def fold(self, events: Iterable[tuple[Event, float | None]]) -> RunState:
        """Fold in each event with its stamp, as an `EventReader` yields them; returns this state."""
        for event, t in events:
            self.apply(event, t)
        return self

    def expect(self, status: Status) -> None:
        """Show ``status`` before the run reports it: what a command given to a run in this
        process makes of it (its Control takes the command at the next batch boundary, and
        the run's own event confirms it)."""
        self.status = status
        self.version += 1

    def _replan(self, e: PlanChanged) -> None:
        """A stage made longer or shorter: its range and the run's length move."""
        if self.stage is not None and self.stage.stage == e.stage:
            self.stage = msgspec.structs.replace(self.stage, last_epoch=e.last_epoch, total_epochs=e.total_epochs)
        if self.started is not None:
            stages = list(self.started.stages)
            if 0 < e.stage <= len(stages):
                stages[e.stage - 1] = (stages[e.stage - 1][0], e.epochs)
            self.started = msgspec.structs.replace(self.started, stages=tuple(stages), total_epochs=e.total_epochs)

    def _start(self, e: RunStarted) -> None:
        self.first = self.first or e
        self.started = e
        self.status, self.message, self.ended, self.evaluating = Status.RUNNING, None, None, None
        self.may_resume = True
        self.batches = e.batches_per_epoch
        self.epoch, self.batch = e.start_epoch, e.start_batch
        # A resume continues from its checkpoint: what came after it is superseded.
        self.epochs = [x for x in self.epochs if x.epoch < e.start_epoch]
        self.class_reports = [x for x in self.class_reports if x.epoch < e.start_epoch]
        self.attention = [x for x in self.attention if x.epoch < e.start_epoch]
        self.group_curves = [x for x in self.group_curves if x[0] <= e.global_step]
        self.stage_steps = [x for x in self.stage_steps if x[0] <= e.global_step]
        if self.iter_losses or self.loss_partial[1]:
            self._cut_losses(e.global_step + 1)
        else:
            self.first_step = e.global_step + 1

    # --- bounded histories --------------------------------------------------------
    @property
    def losses_end(self) -> int:
        """The global step after the last iteration loss folded in."""
        return self.first_step + len(self.iter_losses) * self.loss_stride + self.loss_partial[1]

    def _add_losses(self, e: IterLosses) -> None:
        if not self.iter_losses and not self.loss_partial[1]:
            self.first_step = e.first_step
        if e.first_step < self.losses_end:  # steps seen before (a resumed run redoes them): the newest count
            self._cut_losses(e.first_step)
        losses = e.losses
        stride = self.loss_stride
        if stride == 1:
            self.iter_losses.extend(losses)
        else:
            total, count = self.loss_partial
            take = min(stride - count, len(losses))
            total, count = total + sum(losses[:take]), count + take
            if count == stride:
                self.iter_losses.append(total / stride)
                end = take + (len(losses) - take) // stride * stride
                self.iter_losses.extend(sum(losses[i : i + stride]) / stride for i in range(take, end, stride))
                total, count = sum(losses[end:]), len(losses) - end
            self.loss_partial = (total, count)
        while len(self.iter_losses) > MAX_LOSSES:
            self._halve_losses()

    def _halve_losses(self) -> None:
        old, stride = self.iter_losses, self.loss_stride
        self.iter_losses = array("f", ((a + b) / 2 for a, b in zip(old[0::2], old[1::2], strict=False)))
        total, count = self.loss_partial
        if len(old) % 2:  # the odd point out joins the partial one
            total, count = total + old[-1] * stride, count + stride
        self.loss_stride, self.loss_partial = stride * 2, (total, count)

    def _cut_losses(self, step: int) -> None:
        """Forget the losses of ``step`` on (a resume redoes them)."""
        stride = self.loss_stride
        keep = max(step - self.first_step, 0)
        full, rest = divmod(keep, stride)
        if full < len(self.iter_losses):
            mean = self.iter_losses[full]
        else:
            total, count = self.loss_partial
            full, rest = len(self.iter_losses), min(rest, count) if full == len(self.iter_losses) else count
            mean = total / count if count else 0.0
        del self.iter_losses[full:]
        self.loss_partial = (mean * rest, rest)  # a split point keeps its mean for the steps before the cut

    def _add_curve_point(self, point: tuple[int, int, tuple[float, ...], tuple[float, ...]]) -> None:
        self.curve_seen += 1
        if (self.curve_seen - 1) % self.curve_stride:
            return
        self.group_curves.append(point)
        if len(self.group_curves) > MAX_CURVE_POINTS:
            self.group_curves = self.group_curves[::2]
            self.curve_stride *= 2

    def _adopt(self, other: object) -> None:
        """Take over a history folded elsewhere (a follower's replay), as if its events came here."""
        if not isinstance(other, RunState):
            return
        keep, version = self.keep_losses, self.version
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(other, f.name))
        self.keep_losses, self.version = keep, version
        if not keep:
            self._drop_histories()

    def _drop_histories(self) -> None:
        self.iter_losses, self.loss_partial, self.loss_stride = array("f"), (0.0, 0), 1
        self.class_reports, self.attention, self.group_curves, self.system_history = [], [], [], []
        self.curve_seen, self.curve_stride = 0, 1

    def light(self) -> RunState:
        """A copy without the views' histories (what `runs` and a follower keep); the lists
        are copies, so either state may be folded on."""
        copy = dataclasses.replace(
            self, keep_losses=False, epochs=list(self.epochs), stage_steps=list(self.stage_steps),
            stage_groups=dict(self.stage_groups),
        )
        copy._drop_histories()
        return copy

    # --- a light state as JSON: the run directory's index keeps one --------------------
    def snapshot(self) -> dict[str, Any]:
        """This state (without the views' histories) as plain JSON values; `restore` reads it back.
        The model's rows and the config in the run's starts are left out (config.json has them)."""
        light = self.light()
        for name in ("first", "started"):
            start = getattr(light, name)
            if start is not None:
                setattr(light, name, msgspec.structs.replace(start, model_rows=(), config={}))
        return {f.name: _encode(getattr(light, f.name)) for f in dataclasses.fields(light)}

    @classmethod
    def restore(cls, data: object) -> RunState:
        """A light state from `snapshot`'s JSON, every value checked like an event's;
        ValueError if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a state")
        hints = _state_hints()
        state = cls(keep_losses=False)
        for f in dataclasses.fields(cls):
            if f.name in data:
                setattr(state, f.name, _decode(data[f.name], hints[f.name], f.name))
        if not state.status.folded or state.loss_stride < 1 or state.curve_stride < 1:
            raise ValueError("not a state")
        stamps = (state.first_t, state.last_t, state.session_t)
        forged = any(t is not None and plausible_time(t) is None for t in stamps)
        if forged or not 0 <= state.earlier_seconds < MAX_TIME:
            raise ValueError("not a state")  # a forged clock: the log is folded again instead
        state.keep_losses = False
        state._drop_histories()
        return state

    # --- derived figures ---------------------------------------------------------
    @property
    def best_acc(self) -> float | None:
        return max((e.test_acc for e in self.epochs), default=None)

    @property
    def best_epoch(self) -> int | None:
        best = max(self.epochs, key=lambda e: e.test_acc, default=None)
        return best.epoch if best else None

    def seconds_left(self) -> tuple[float, float, float] | None:
        """Estimated seconds left in the epoch, the stage and the run (training time only)."""
        if self.started is None or self.stage is None or self.images_per_second <= 0:
            return None
        per_batch = self.started.batch_size * self.started.world_size / self.images_per_second
        in_epoch = max(self.batches - self.batch, 0)
        in_stage = in_epoch + max(self.stage.last_epoch - self.epoch, 0) * self.batches
        in_run = in_epoch + max(self.started.total_epochs - self.epoch, 0) * self.batches
        return in_epoch * per_batch, in_stage * per_batch, in_run * per_batch

    @property
    def stage_text(self) -> str:
        return f"{self.stage.stage}/{self.stage.num_stages}" if self.stage else "-"

    @property
    def epoch_text(self) -> str:
        total = self.started.total_epochs if self.started else 0
        return f"{self.epoch}/{total}" if total else "-"


class _FloatArray:
    """Stands for array[float] where type hints are evaluated (array is not subscriptable)."""

    def __class_getitem__(cls, item: object) -> type[_FloatArray]:
        return cls


_HINTS: dict[str, Any] = {}


def _state_hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(RunState, localns={"array": _FloatArray}))
    return _HINTS


def _encode(value: object) -> object:
    if isinstance(value, Event):
        return value.to_dict()
    if isinstance(value, dict):
        return [[_encode(k), _encode(v)] for k, v in value.items()]
    if isinstance(value, (list, tuple, frozenset, array)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot keep a {type(value).__name__} in a snapshot")


def _decode(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp``, checked; ValueError (BadEvent) when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = tuple(a for a in args if a is not type(None))
        if all(isinstance(a, type) and issubclass(a, Event) for a in inner):
            event = from_dict(value)
            if not isinstance(event, inner):
                raise ValueError(f"{where} is not a {' or '.join(a.__name__ for a in inner)}")
            return event
        return _decode(value, inner[0], where)
    if isinstance(tp, type) and issubclass(tp, Event):
        return _decode(value, tp | None, where)
    if tp is Status:
        try:
            return Status(value)
        except ValueError:
            raise ValueError(f"{where} is not a status") from None
    if tp is _FloatArray:
        return array("f", check(value, tuple[float, ...], where))
    if origin in (list, frozenset) and isinstance(value, list):
        items = [_decode(v, args[0], where) for v in value]
        return items if origin is list else frozenset(items)
    if origin is dict and isinstance(value, list):
        pairs = [check(pair, tuple[Any, Any], where) for pair in value]
        return {_decode(k, args[0], where): _decode(v, args[1], where) for k, v in pairs}
    return check(value, tp, where)


# --- log lines ----------------------------------------------------------------------


def resume_target(checkpoint: str) -> str:
    """What to give --resume for a checkpoint: its run directory (the hint the dashboard and
    `runs` give too), or the checkpoint itself when it lies outside one."""
    path = Path(checkpoint)
    return str(path.parent.parent) if path.parent.name == "checkpoints" else checkpoint


def describe(e: Event) -> list[str]:
    """The log lines an event adds, the same in the dashboard, headless and `watch`."""
    if isinstance(e, Loading):
        if e.total == 0 or e.done == 0:
            return [f"{e.message}..."]
        return [f"{e.message}: {e.done}/{e.total}"] if e.done == e.total else []
    if isinstance(e, RunStarted):
        head = "resumed" if e.resumed_from else "started"
        where = f" at epoch {e.start_epoch}, batch {e.start_batch}" if e.resumed_from else ""
        world = f" x {e.world_size} processes" if e.world_size > 1 else ""
        lines = [
            f"run {e.run_name} {head}{where}: {e.dataset}, {e.train_size} train / {e.test_size} test images, "
            f"{len(e.classes)} classes | {e.device}, {e.precision} | batch {e.batch_size}{world}, "
            f"{counted(e.batches_per_epoch, 'batch', 'batches')} per epoch, {counted(e.total_epochs, 'epoch')}",
            f"run directory: {e.run_dir}",
        ]
        if e.threads_why:
            lines.append(f"torch threads: {e.threads_why}")
        if e.skipped_files:
            lines.append(f"{e.skipped_files} unreadable image files were skipped")
        return lines
    if isinstance(e, StageStarted):
        trainable = [m.name for m in e.modules if m.trainable != "no"]
        frozen = [m.name for m in e.modules if m.trainable == "no"]
        bn = sorted({m.bn_mode for m in e.modules if m.trainable == "no" and m.bn_mode})
        groups = ", ".join(f"{name}={lr_text(lr)}" for name, lr in e.groups)
        moments = f"Adam moments kept for {e.kept_moments:,} params" if e.kept_moments else "fresh Adam state"
        return [
            f"=== Stage {e.stage}/{e.num_stages}: {e.name} (epochs {e.first_epoch}-{e.last_epoch}) ===",
            f"    trainable: {', '.join(trainable)} ({e.trainable_params:,} of {e.total_params:,} params)",
            f"    frozen: {', '.join(frozen) or 'nothing'}" + (f" (BatchNorm in {'/'.join(bn)} mode)" if bn else ""),
            f"    learning rates: {groups} · {moments}",
        ]
    if isinstance(e, BatchLogged):
        return [
            f"Epoch: {e.epoch}/{e.total_epochs} | Batch: {e.batch}/{e.batches} | Batch loss: {e.loss:.4f} "
            f"| Avg loss: {e.avg_loss:.4f} | {e.images_per_second:.0f} img/s"
        ]
    if isinstance(e, EpochEnded):
        return [
            f"Epoch {e.epoch}/{e.total_epochs} done | {e.seconds:.1f}s | train loss {e.train_loss:.4f} "
            f"| train acc {e.train_acc:.2f}% | test loss {e.test_loss:.4f} | test acc {e.test_acc:.2f}%"
        ]
    if isinstance(e, StageSkipped):
        return [f"Stage {e.stage} ({e.name}) skipped: {e.reason}"]
    if isinstance(e, CommandTaken):
        what = " ".join(x for x in (e.verb, e.value, f"(group {e.group})" if e.group else "") if x)
        return [f"command {what} from {e.origin}"]
    if isinstance(e, CommandRefused):
        what = " ".join(x for x in (e.verb, e.value, f"(group {e.group})" if e.group else "") if x)
        return [f"command {what} from {e.origin} refused: {e.reason}"]
    if isinstance(e, RatesChanged):
        moved = [f"{name} {lr_text(a)} → {lr_text(b)}" for name, a, b in zip(e.groups, e.before, e.after, strict=True)
                 if a != b]
        then = "" if e.last_stage else "; the next stage starts from its plan"
        return [f"learning rates ({e.origin}): {', '.join(moved) or 'unchanged'}{then}"]
    if isinstance(e, PlanChanged):
        note = f" ({e.note})" if e.note else ""
        asked = f"{'+' if e.change > 0 else '-'}{counted(abs(e.change), 'epoch')}: now has" if e.change else "now has"
        return [f"stage {e.stage} {asked} {counted(e.epochs, 'epoch')} (epochs {e.first_epoch}-{e.last_epoch}), "
                f"the run {counted(e.total_epochs, 'epoch')}{note}"]
    if isinstance(e, Paused):
        return [f"paused at epoch {e.epoch}, batch {e.batch}" + ("" if e.reason == "user" else f": {e.reason}")]
    if isinstance(e, Resumed):
        return [f"resumed at epoch {e.epoch}, batch {e.batch}"]
    if isinstance(e, Watching):
        return [f"{'attached to' if e.can_control else 'watching'} {e.run_dir}: {e.detail}"]
    if isinstance(e, Note):
        return [e.text]
    if isinstance(e, Replayed):
        return list(e.lines)
    if isinstance(e, RunGone):
        return [f"{e.run_dir} was deleted: nothing more will come"]
    if isinstance(e, CheckpointSaved):
        return [] if e.reason in ("epoch", "best") else [f"checkpoint saved: {e.path}"]
    if isinstance(e, SaveFailed):
        return [f"could not save {e.path}: {e.message}"]
    if isinstance(e, RunFinished):
        return [
            f"finished in {fmt_seconds(e.seconds)} | final test acc {e.final_acc:.2f}% "
            f"| best {e.best_acc:.2f}% (epoch {e.best_epoch})"
        ]
    if isinstance(e, RunStopped):
        what = e.detail or e.reason
        stopped = f"stopped ({what}) at epoch {e.epoch}, batch {e.batch}"
        if not e.checkpoint:
            return [f"{stopped}; no checkpoint was kept"]
        # The command on a line of its own: a narrow log cuts a line's end, and this one is to copy.
        return [stopped, f"continue with: cbam-tui run --resume {resume_target(e.checkpoint)}"]
    if isinstance(e, RunFailed):
        kept = f"; last checkpoint {e.checkpoint}" if e.checkpoint else ""
        return [f"failed: {e.message}{kept}"]
    return []


def fmt_seconds(s: float) -> str:
    """Whole and short: 45s, 12m05s, 3h07m, 2d04h."""
    s = int(max(s, 0))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def lr_text(lr: float) -> str:
    """A rate as one types it, to two digits: 1e-3 rather than 1.000000e-03, 2.5e-4 keeps its
    digit, 3 and 3e3 rather than 3e0 and 3e+03."""
    if not math.isfinite(lr):
        return str(lr)
    mantissa, exponent = f"{lr:.1e}".split("e")
    mantissa = mantissa.removesuffix(".0")
    return mantissa if int(exponent) == 0 else f"{mantissa}e{int(exponent)}"
