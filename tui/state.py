"""What the dashboard knows about a run, folded from the event stream.

Pure Python (no torch, no widgets): the app applies each event here as it
arrives and the widgets read from it at their own, throttled pace.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from core.events import (
    BatchLogged,
    CheckpointSaved,
    CommandTaken,
    EpochEnded,
    Event,
    IterLosses,
    Loading,
    Paused,
    Progress,
    Resumed,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStopped,
    SaveFailed,
    StageSkipped,
    StageStarted,
    Watching,
)

LOADING, RUNNING, PAUSED, STOPPING, FINISHED, STOPPED, FAILED = (
    "LOADING", "RUNNING", "PAUSED", "STOPPING", "FINISHED", "STOPPED", "FAILED",
)


@dataclass
class RunState:
    status: str = LOADING
    loading: str = "starting"
    loading_done: int = 0
    loading_total: int = 0
    started: RunStarted | None = None
    stage: StageStarted | None = None
    changed: frozenset[str] = frozenset()  # modules whose state changed at the last stage switch
    epoch: int = 0
    batch: int = 0
    batches: int = 0
    images_per_second: float = 0.0
    iter_losses: array[float] = field(default_factory=lambda: array("f"))
    first_step: int = 1  # global step of iter_losses[0]
    stage_steps: list[tuple[int, int]] = field(default_factory=list)  # (global step, stage) at each switch
    epochs: list[EpochEnded] = field(default_factory=list)
    last_checkpoint: str | None = None
    message: str | None = None  # why it paused, stopped or failed
    finished: RunFinished | None = None
    watching: Watching | None = None  # set when attached to a run through its directory
    version: int = 0  # bumped on every change, so widgets redraw only when needed

    def apply(self, e: Event) -> list[str]:
        """Fold one event in; return the log lines it adds."""
        self.version += 1
        if isinstance(e, Loading):
            self.loading, self.loading_done, self.loading_total = e.message, e.done, e.total
            return []
        if isinstance(e, RunStarted):
            self.started = e
            self.status = RUNNING
            self.batches = e.batches_per_epoch
            self.epoch, self.batch = e.start_epoch, e.start_batch
            self.first_step = e.global_step + 1 if not self.iter_losses else self.first_step
            verb = "resumed" if e.resumed_from else "started"
            return [f"run {e.run_name} {verb}: {e.dataset}, {e.train_size} train / {e.test_size} test, {e.device}"]
        if isinstance(e, StageStarted):
            before = {m.name: m for m in self.stage.modules} if self.stage else {}
            self.changed = frozenset(
                m.name
                for m in e.modules
                if m.name in before and (before[m.name].trainable, before[m.name].lr) != (m.trainable, m.lr)
            )
            self.stage = e
            self.stage_steps.append((e.global_step, e.stage))
            self.epoch, self.batch = max(self.epoch, e.first_epoch), 0
            trainable = ", ".join(m.name for m in e.modules if m.trainable != "no")
            return [
                f"=== Stage {e.stage}/{e.num_stages}: {e.name} (epochs {e.first_epoch}-{e.last_epoch}) ===",
                f"    trainable: {trainable}",
            ]
        if isinstance(e, Progress):
            self.epoch, self.batch, self.batches = e.epoch, e.batch, e.batches
            self.images_per_second = e.images_per_second
            return []
        if isinstance(e, IterLosses):
            if not self.iter_losses:
                self.first_step = e.first_step
            self.iter_losses.extend(e.losses)
            return []
        if isinstance(e, BatchLogged):
            self.epoch, self.batch, self.batches = e.epoch, e.batch, e.batches
            self.images_per_second = e.images_per_second
            return [
                f"Epoch: {e.epoch}/{e.total_epochs} | Batch: {e.batch}/{e.batches} | "
                f"Batch loss: {e.loss:.4f} | Avg loss: {e.avg_loss:.4f}"
            ]
        if isinstance(e, EpochEnded):
            self.epochs.append(e)
            return [
                f"Epoch {e.epoch}/{e.total_epochs} done | {e.seconds:.1f}s | train acc {e.train_acc:.2f}% "
                f"| test acc {e.test_acc:.2f}% | test loss {e.test_loss:.4f}"
            ]
        if isinstance(e, StageSkipped):
            return [f"Stage {e.stage} ({e.name}) skipped: {e.reason}"]
        if isinstance(e, Paused):
            self.status = PAUSED
            self.epoch, self.batch = e.epoch, e.batch
            self.message = None if e.reason == "user" else e.reason
            return [f"paused at epoch {e.epoch}, batch {e.batch}" + (f": {e.reason}" if self.message else "")]
        if isinstance(e, Resumed):
            self.status = RUNNING
            return [f"resumed at epoch {e.epoch}, batch {e.batch}"]
        if isinstance(e, Watching):
            self.watching = e
            return [f"{'attached' if e.can_control else 'watching'} {e.run_dir}: {e.detail}"]
        if isinstance(e, CommandTaken):
            return [f"command {e.verb} from {e.origin}"]
        if isinstance(e, CheckpointSaved):
            self.last_checkpoint = e.path
            return [] if e.reason in ("epoch", "best") else [f"checkpoint saved: {e.path}"]
        if isinstance(e, SaveFailed):
            return [f"could not save {e.path}: {e.message}"]
        if isinstance(e, RunFinished):
            self.status, self.finished = FINISHED, e
            return [f"finished: final test acc {e.final_acc:.2f}%, best {e.best_acc:.2f}% (epoch {e.best_epoch})"]
        if isinstance(e, RunStopped):
            self.status, self.message = STOPPED, e.reason
            return [f"stopped ({e.reason}) at epoch {e.epoch}, batch {e.batch}"]
        if isinstance(e, RunFailed):
            self.status, self.message = FAILED, e.message
            return [f"failed: {e.message}"]
        return []

    # --- derived figures for the stage panel -------------------------------
    def seconds_left(self) -> tuple[float, float, float] | None:
        """Estimated seconds left in the epoch, the stage and the run (training time only)."""
        if self.started is None or self.stage is None or self.images_per_second <= 0:
            return None
        per_batch = self.started.batch_size / self.images_per_second
        in_epoch = max(self.batches - self.batch, 0)
        in_stage = in_epoch + (self.stage.last_epoch - self.epoch) * self.batches
        in_run = in_epoch + (self.started.total_epochs - self.epoch) * self.batches
        return in_epoch * per_batch, in_stage * per_batch, in_run * per_batch

    @property
    def best_acc(self) -> float | None:
        return max((e.test_acc for e in self.epochs), default=None)


def fmt_seconds(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def lr_text(lr: float) -> str:
    """1e-3 rather than 1.000000e-03."""
    return f"{lr:.0e}".replace("e-0", "e-")
