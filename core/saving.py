"""What a run keeps: last.pt (and best.pt) at an epoch's end, on request, at a stop and
on a failure, and the stop that names the last good checkpoint when a write fails.

A run never claims success it did not have: when no checkpoint can be written, it
stops with one line and a non-zero exit. Weights that are no longer finite are never
saved over finite ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from core import checkpoint, faults
from core.checkpoint import Position, Saved
from core.events import CheckpointSaved, RunStopped, SaveFailed
from core.meter import EpochRun, Sums
from core.rundir import BEST, LAST
from core.vocab import StopReason

if TYPE_CHECKING:
    from core.train import Trainer


class Saving:
    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer

    def contents(self, pos: Position, sums: Sums) -> Saved:
        """What a checkpoint at ``pos`` holds, from the trainer as it stands."""
        t, s = self.t, self.t.setup
        assert t.optimizer is not None and t.scaler is not None
        return Saved(
            model=s.model.state_dict(), optimizer=t.optimizer.state_dict(), optimizer_stage=t.opt_stage,
            scaler=t.scaler.state_dict(), config=s.config, classes=tuple(s.data.classes), position=pos,
            sums=sums, best_acc=t.best_acc, best_epoch=t.best_epoch, global_step=t.global_step,
            rng=torch.get_rng_state(), history=tuple(t.history), base_lrs=tuple(t.base_lrs),
            world_size=s.world, global_batch=s.global_batch,
        )

    def epoch_end(
        self, nxt: Position, improved: bool, epoch: int, test_acc: float,
    ) -> tuple[list[tuple[str, str]], str | None]:
        """last.pt (and best.pt, when ``improved``) continuing at ``nxt``: the paths written with
        their reasons, and what went wrong (None when all were written)."""
        rundir = self.t.rundir
        written: list[tuple[str, str]] = []
        if rundir is None:
            return written, None
        data = checkpoint.write(self.contents(nxt, Sums()))
        try:
            for name, reason in ((BEST, "best"), (LAST, "epoch")) if improved else ((LAST, "epoch"),):
                faults.hit(f"epoch-end:before-{name}")
                same = BEST if written else None  # last.pt of a best epoch: one file, two names
                written.append((str(rundir.save_checkpoint(data, name, same)), reason))
        except OSError as exc:
            return written, (
                f"could not save {rundir.checkpoint_path(name)}: {exc.strerror or exc} "
                f"(epoch {epoch}: test acc {test_acc:.2f}%, not kept)"
            )
        return written, None

    def save(self, pos: Position, sums: Sums, reason: str) -> str | None:
        """last.pt at ``pos``; None (and a save_failed event) when it cannot be written."""
        t, rundir = self.t, self.t.rundir
        if t.steering.nonfinite or t.optimizer is None or rundir is None:
            return None
        try:
            faults.hit(f"save:{reason}")
            path = rundir.save_checkpoint(checkpoint.write(self.contents(pos, sums)), LAST)
        except OSError as exc:
            t.emit(SaveFailed(str(rundir.checkpoint_path(LAST)), exc.strerror or str(exc)))
            return None
        t.emit(CheckpointSaved(str(path), reason, pos.stage + 1, pos.epoch, pos.batch))
        return str(path)

    def stop(self, pos: Position, ep: EpochRun) -> StopReason:
        """The steering's stop at ``pos``: saved, then reported."""
        t = self.t
        reason = t.steering.steer.stop_reason or StopReason.QUIT
        if reason == StopReason.WRITE_FAILED:
            return self.write_failed(pos, t.write_error or "a write failed", ep)
        sums = ep.sums()  # on every rank: a collective in a group
        if t.rundir is None:
            return reason
        path = self.save(pos, sums, "stop")
        if path is None:
            return self.write_failed(pos, f"{reason}: the checkpoint could not be saved")
        t.emit(RunStopped(reason, pos.stage + 1, pos.epoch, pos.batch, path))
        return reason

    def write_failed(self, pos: Position, detail: str, ep: EpochRun | None = None) -> StopReason:
        """Stop, saying which checkpoint is the last good one (if any): never a claimed success."""
        t, rundir = self.t, self.t.rundir
        sums = ep.sums() if ep is not None else None  # on every rank: a collective in a group
        if rundir is None:
            return StopReason.WRITE_FAILED
        path = self.save(pos, sums, "stop") if sums is not None else None
        if path is None and rundir.has_checkpoint():
            path = str(rundir.checkpoint_path(LAST))
        t.emit(RunStopped(StopReason.WRITE_FAILED, pos.stage + 1, pos.epoch, pos.batch, path, detail))
        return StopReason.WRITE_FAILED

    def on_failure(self) -> str | None:
        """The checkpoint a failed run leaves: last.pt where the epoch in progress stood, if it can be written."""
        t, rundir = self.t, self.t.rundir
        if t.group is not None:  # a rank may be gone mid-collective: keep the last complete checkpoint
            return str(rundir.checkpoint_path(LAST)) if rundir and rundir.has_checkpoint() else None
        if t.epoch is None or t.s is None:
            return None
        try:
            return self.save(t.epoch.here(), t.epoch.sums(), "failure")
        except Exception:  # in the save, or in reporting it (a failing consumer): the last complete one stands
            return str(rundir.checkpoint_path(LAST)) if rundir is not None and rundir.has_checkpoint() else None
