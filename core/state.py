"""The one fold of the event stream: what is known about a run after its events.

The dashboard (live or attached), the headless reporter, `runs` and the
follower all read a run through `RunState.apply` and its log lines through
`describe`, so a run looks the same whichever way it is seen. Pure Python: no
torch, no UI.
"""

from __future__ import annotations

import dataclasses
from array import array
from dataclasses import dataclass, field

from core.events import (
    AttentionMaps,
    BatchLogged,
    CheckpointSaved,
    ClassAccuracy,
    CommandTaken,
    EpochEnded,
    Evaluating,
    Event,
    IterLosses,
    Loading,
    Paused,
    PlanChanged,
    Progress,
    RatesChanged,
    Resumed,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStopped,
    SaveFailed,
    StageSkipped,
    StageStarted,
    SystemSample,
    Watching,
)

STARTING, LOADING, RUNNING, EVALUATING, PAUSED, STOPPING, FINISHED, STOPPED, FAILED = (
    "STARTING", "LOADING", "RUNNING", "EVALUATING", "PAUSED", "STOPPING", "FINISHED", "STOPPED", "FAILED",
)
ENDED = (FINISHED, STOPPED, FAILED)


@dataclass
class RunState:
    keep_losses: bool = True  # the iteration curve; `runs` needs none of it
    status: str = STARTING
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
    iter_losses: array[float] = field(default_factory=lambda: array("f"))
    first_step: int = 1  # global step of iter_losses[0]
    stage_steps: list[tuple[int, int]] = field(default_factory=list)  # (global step, stage) at each switch
    epochs: list[EpochEnded] = field(default_factory=list)  # each epoch once, as the latest start left it
    class_reports: list[ClassAccuracy] = field(default_factory=list)  # per epoch, likewise
    attention: list[AttentionMaps] = field(default_factory=list)
    # At each loss line: (global step, stage, each group's learning rate, each group's gradient norm).
    group_curves: list[tuple[int, int, tuple[float, ...], tuple[float, ...]]] = field(default_factory=list)
    stage_groups: dict[int, tuple[str, ...]] = field(default_factory=dict)  # stage -> its group names
    last_checkpoint: str | None = None
    message: str | None = None  # why it paused itself, stopped or failed
    ended: RunFinished | RunStopped | RunFailed | None = None
    watching: Watching | None = None  # set when attached to a run through its directory
    commands: int = 0
    first_t: float | None = None  # wall clock of the first and the latest event
    last_t: float | None = None
    version: int = 0  # bumped on every change, so widgets redraw only when needed

    def apply(self, e: Event, t: float | None = None) -> None:
        """Fold one event in (``t``: its wall-clock stamp, when read from disk)."""
        self.version += 1
        if t is not None:
            self.first_t = t if self.first_t is None else self.first_t
            self.last_t = t
        if isinstance(e, Loading):
            self.status = LOADING if self.status in (STARTING, LOADING) else self.status
            self.loading, self.loading_done, self.loading_total = e.message, e.done, e.total
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
            self.stage_groups[e.stage] = tuple(name for name, _ in e.groups)
            if not self.stage_steps or self.stage_steps[-1][1] != e.stage:
                self.stage_steps.append((e.global_step, e.stage))
            self.epoch, self.batch = max(self.epoch, e.first_epoch), 0 if e.first_epoch > self.epoch else self.batch
        elif isinstance(e, (Progress, BatchLogged)):
            self.epoch, self.batch, self.batches = e.epoch, e.batch, e.batches
            self.images_per_second = e.images_per_second
            if isinstance(e, Progress):
                self.data_share = e.data_share
            elif e.lrs:
                self.group_curves.append((e.global_step, e.stage, e.lrs, e.grad_norms))
        elif isinstance(e, Evaluating):
            self.evaluating = e
            if self.status == RUNNING:
                self.status = EVALUATING
        elif isinstance(e, SystemSample):
            self.system = e
        elif isinstance(e, ClassAccuracy):
            self.class_reports.append(e)
        elif isinstance(e, AttentionMaps):
            self.attention.append(e)
        elif isinstance(e, IterLosses):
            if self.keep_losses:
                if not self.iter_losses:
                    self.first_step = e.first_step
                gap = e.first_step - (self.first_step + len(self.iter_losses))
                if gap < 0:  # steps seen before (a resumed run redoes them): the newest count
                    del self.iter_losses[len(self.iter_losses) + gap :]
                self.iter_losses.extend(e.losses)
        elif isinstance(e, EpochEnded):
            self.epochs.append(e)
            self.epoch, self.batch = e.epoch, e.batches_done
            self.evaluating = None
            if self.status == EVALUATING:
                self.status = RUNNING
        elif isinstance(e, Paused):
            self.status = PAUSED
            self.epoch, self.batch = e.epoch, e.batch
            self.message = None if e.reason == "user" else e.reason
        elif isinstance(e, Resumed):
            self.status, self.message = (EVALUATING if self.evaluating else RUNNING), None
        elif isinstance(e, Watching):
            self.watching = e
        elif isinstance(e, CommandTaken):
            self.commands += 1
        elif isinstance(e, PlanChanged):
            self._replan(e)
        elif isinstance(e, CheckpointSaved):
            self.last_checkpoint = e.path
        elif isinstance(e, RunFinished):
            self.status, self.ended = FINISHED, e
        elif isinstance(e, RunStopped):
            self.status, self.ended = STOPPED, e
            self.message = e.detail or e.reason
            self.last_checkpoint = e.checkpoint or self.last_checkpoint
        elif isinstance(e, RunFailed):
            self.status, self.ended, self.message = FAILED, e, e.message
            self.last_checkpoint = e.checkpoint or self.last_checkpoint

    def _replan(self, e: PlanChanged) -> None:
        """A stage made longer or shorter: its range and the run's length move."""
        if self.stage is not None and self.stage.stage == e.stage:
            self.stage = dataclasses.replace(self.stage, last_epoch=e.last_epoch, total_epochs=e.total_epochs)
        if self.started is not None:
            stages = list(self.started.stages)
            if 0 < e.stage <= len(stages):
                stages[e.stage - 1] = (stages[e.stage - 1][0], e.epochs)
            self.started = dataclasses.replace(self.started, stages=tuple(stages), total_epochs=e.total_epochs)

    def _start(self, e: RunStarted) -> None:
        self.first = self.first or e
        self.started = e
        self.status, self.message, self.ended, self.evaluating = RUNNING, None, None, None
        self.batches = e.batches_per_epoch
        self.epoch, self.batch = e.start_epoch, e.start_batch
        # A resume continues from its checkpoint: what came after it is superseded.
        self.epochs = [x for x in self.epochs if x.epoch < e.start_epoch]
        self.class_reports = [x for x in self.class_reports if x.epoch < e.start_epoch]
        self.attention = [x for x in self.attention if x.epoch < e.start_epoch]
        self.group_curves = [x for x in self.group_curves if x[0] <= e.global_step]
        self.stage_steps = [x for x in self.stage_steps if x[0] <= e.global_step]
        if self.iter_losses:
            del self.iter_losses[max(e.global_step - self.first_step + 1, 0) :]
        else:
            self.first_step = e.global_step + 1

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


# --- log lines ----------------------------------------------------------------------


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
            f"{e.batches_per_epoch} batches per epoch, {e.total_epochs} epochs",
            f"run directory: {e.run_dir}",
        ]
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
    if isinstance(e, RatesChanged):
        if e.note:
            return [f"learning rates unchanged: {e.note}"]
        moved = [f"{name} {lr_text(a)} → {lr_text(b)}" for name, a, b in zip(e.groups, e.before, e.after, strict=True)
                 if a != b]
        return [f"learning rates ({e.origin}): {', '.join(moved) or 'unchanged'}; the next stage starts from its plan"]
    if isinstance(e, PlanChanged):
        note = f" ({e.note})" if e.note else ""
        return [f"stage {e.stage} now has {e.epochs} epochs (epochs {e.first_epoch}-{e.last_epoch}), "
                f"the run {e.total_epochs}{note}"]
    if isinstance(e, Paused):
        return [f"paused at epoch {e.epoch}, batch {e.batch}" + ("" if e.reason == "user" else f": {e.reason}")]
    if isinstance(e, Resumed):
        return [f"resumed at epoch {e.epoch}, batch {e.batch}"]
    if isinstance(e, Watching):
        return [f"{'attached to' if e.can_control else 'watching'} {e.run_dir}: {e.detail}"]
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
        kept = f"; resume with --resume {e.checkpoint}" if e.checkpoint else "; no checkpoint was kept"
        return [f"stopped ({what}) at epoch {e.epoch}, batch {e.batch}{kept}"]
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
    """1e-3 rather than 1.000000e-03; 2.5e-4 keeps its digit."""
    text = f"{lr:.1e}".replace(".0e", "e")
    return text.replace("e-0", "e-").replace("e+0", "e")
