"""What the loop obeys at a batch boundary: keys and signals (a Control), the run
directory's inbox, and in a group the exchanges that hand every rank the same
commands at the same step.

``control`` is what this process is asked; ``steer`` is what the loop obeys: the
same Control for one process, the Coordinator's agreed one in a group. Live
changes (learning rates, a stage's length) apply here, at a boundary, or are
refused with the reason when a resume could not reproduce them.
"""

from __future__ import annotations

import dataclasses
import time
from enum import Enum
from typing import TYPE_CHECKING

import msgspec

from core.control import Control
from core.dist import PAUSED_SYNC_S, Coordinator
from core.events import (
    CommandRefused,
    CommandTaken,
    Note,
    Paused,
    PlanChanged,
    RatesChanged,
    Resumed,
    RunStopped,
    counted,
)
from core.inbox import Inbox
from core.meter import EpochRun
from core.plan import MAX_EPOCHS, MAX_LR, MIN_LR
from core.rundir import LAST, RunDir
from core.state import lr_text
from core.vocab import Command, StopReason

if TYPE_CHECKING:
    from core.dist import Group
    from core.train import Trainer

PAUSED_POLL_S = 0.01  # a paused run looks at its inbox this often: an attached key acts within a frame


class Order(Enum):
    """What the steering asks of the loop at a batch boundary (None: train on)."""

    NEXT_STAGE = "next"  # end the epoch here, evaluate it, and start the next stage
    STOP = "stop"  # save and stop (the reason is the steering's stop_reason)


class Steering:
    def __init__(self, trainer: Trainer, control: Control, group: Group | None) -> None:
        self.t = trainer
        self.control = control
        self.coord = Coordinator(group, control) if group is not None else None
        self.steer = self.coord.agreed if self.coord else control
        self.inbox: Inbox | None = None  # rank 0's, once the run directory is claimed
        self.nonfinite = False  # the weights are no longer finite: never save them over good ones

    def listen(self, rundir: RunDir) -> None:
        """Take commands from the run directory's inbox from now on."""
        self.inbox = Inbox(rundir, self._claimed, self._refused_file, on_note=lambda text: self.t.emit(Note(text)))

    def boundary(self, ep: EpochRun, pause_reason: str = "user") -> Order | None:
        """Obey the steering (and the inbox) at a batch boundary; while paused, wait here."""
        steer = self.steer
        paused_at: float | None = None
        try:
            while True:
                if not self._take_commands(waiting=paused_at is not None):
                    return None  # a group between its exchanges: nothing can have changed
                if steer.stop_reason is not None:
                    return Order.STOP
                if steer.take_save():
                    self.t.saving.save(ep.here(), ep.sums(), "save")
                for command, origin in steer.take_changes():
                    self._change(command, origin, ep)
                if steer.take_next_stage():
                    return Order.NEXT_STAGE
                if not steer.paused:
                    if paused_at is not None:
                        here = ep.here()
                        self.t.emit(Resumed(here.stage + 1, here.epoch, here.batch))
                    return None
                if paused_at is None:
                    paused_at = time.perf_counter()
                    here = ep.here()
                    self.t.emit(Paused(here.stage + 1, here.epoch, here.batch, pause_reason, not self.nonfinite))
                if self.coord is None:
                    self.control.wait(PAUSED_POLL_S)
                else:
                    self.control.wait(PAUSED_SYNC_S)  # a signal here still waits for the exchange
        finally:
            if paused_at is not None:
                ep.pause(time.perf_counter() - paused_at)

    def at_epoch_end(self, ep: EpochRun) -> None:
        """Stage lengths asked for on the epoch's last batch or during its test pass change the
        stage of this epoch, before the run decides whether that stage is over (`+` on a stage's
        last batch lengthens that stage); rate changes wait for the next batch."""
        if self.coord is None and self.inbox is not None:
            self.inbox.poll(force=True)
        for command, origin in self.steer.take_changes("epochs"):
            self._change(command, origin, ep)

    def due(self, step: int) -> bool:
        """Whether a group exchanges at ``step`` (its ranks read their losses there, together)."""
        return self.coord is not None and self.coord.due(step)

    def interrupted(self) -> bool:
        """During the test pass: whether a stop arrived (a group takes it at its next exchange)."""
        if self.inbox is not None:
            self.inbox.poll()
        return self.coord is None and self.control.stop_reason is not None

    def on_nonfinite(self, ep: EpochRun) -> StopReason:
        """A loss that is not finite: paused (or stopped, as the config says) for good."""
        self.nonfinite = True
        rundir = self.t.rundir
        pos = ep.here()
        where = f"non-finite loss at epoch {pos.epoch}, batch {pos.batch}"
        kept = str(rundir.checkpoint_path(LAST)) if rundir and rundir.has_checkpoint() else None
        if self.t.setup.config.on_nonfinite == "pause":
            # The weights are no longer finite: stay paused (resume and next stage would
            # train on garbage) until the person stops the run.
            self.steer.pause()
            while self.boundary(ep, f"{where}; the last finite checkpoint is kept") is not Order.STOP:
                self.steer.pause()
        self.t.emit(RunStopped(StopReason.NONFINITE, pos.stage + 1, pos.epoch, pos.batch, kept, where))
        return StopReason.NONFINITE

    def _take_commands(self, waiting: bool) -> bool:
        """Bring the steering up to date; False when it cannot have changed."""
        if self.coord is None:
            if self.inbox is not None:
                self.inbox.poll(force=waiting)  # paused, nothing else costs a thing
            return True
        if not (waiting or self.coord.due(self.t.global_step)):
            return False
        if self.inbox is not None:
            self.inbox.poll(force=True)  # the exchanges are few: read the inbox at each
        commands, steps = self.coord.exchange(self.t.global_step)
        for command, origin in commands:
            self.t.emit(CommandTaken(command.verb, origin, self.t.global_step, command.value, command.group, steps,
                                     command.ref))
        return True

    def _claimed(self, command: Command, origin: str) -> None:
        """A command from the inbox (rank 0): refused at once when the run cannot obey it,
        else applied at this boundary (one process) or at the group's next exchange."""
        if self.nonfinite and command.verb in ("resume", "next"):
            self._refuse(command, origin, "the loss is no longer finite, so the run stays paused until it is "
                         "stopped (its last finite checkpoint is kept)")
        elif self.coord is not None:
            self.coord.take(command, origin)
        else:
            self.t.emit(CommandTaken(command.verb, origin, self.t.global_step, command.value, command.group,
                                     command_id=command.ref))
            self.control.apply(command, origin)

    def _refuse(self, command: Command, origin: str, reason: str) -> None:
        self.t.emit(CommandRefused(command.verb, origin, reason, self.t.global_step, command.value, command.group,
                                   command.ref))

    def _refused_file(self, event: CommandRefused) -> None:
        """A command file in the inbox that holds no command a run takes."""
        self.t.emit(msgspec.structs.replace(event, global_step=self.t.global_step))

    def _change(self, command: Command, origin: str, ep: EpochRun) -> None:
        """A live change of the learning rates or of the stage's length, at a batch boundary;
        refused (a command_refused event) when the run could not be resumed with it."""
        t, si = self.t, ep.position.stage
        if command.verb == "lr":
            assert t.optimizer is not None
            names = tuple(str(g["name"]) for g in t.optimizer.param_groups)
            scale, number = command.lr_change()
            if command.group and command.group not in names:
                self._refuse(command, origin, f"this stage has no group {command.group!r} (it has {', '.join(names)})")
                return
            before = tuple(t.base_lrs)
            after = tuple(
                (base * number if scale else number) if not command.group or name == command.group else base
                for name, base in zip(names, before, strict=True)
            )
            for name, rate in zip(names, after, strict=True):
                if not MIN_LR <= rate <= MAX_LR:
                    self._refuse(command, origin, f"it would take group {name!r} to {lr_text(rate)}, outside the rates "
                                 f"a run takes ({MIN_LR:g} to {MAX_LR:g})")
                    return
            t.base_lrs = list(after)
            final = all(later.epochs == 0 for later in t.setup.config.plan.stages[si + 1:])
            t.emit(RatesChanged(origin, si + 1, names, before, after, t.global_step, command.ref, final))
            t.rates_at(si, ep.position.epoch, ep.batch)
            return
        s = t.setup
        cfg = s.config
        stage = cfg.plan.stages[si]
        first, _ = cfg.plan.epoch_range(si)
        in_progress = ep.position.epoch - first + 1  # epochs of this stage begun: the floor
        wanted = stage.epochs + command.epoch_change()
        if wanted > MAX_EPOCHS:
            self._refuse(command, origin, f"stage {si + 1} would have {counted(wanted, 'epoch')}, and a stage has at "
                         f"most {counted(MAX_EPOCHS, 'epoch')} (it has {counted(stage.epochs, 'epoch')})")
            return
        epochs = max(wanted, in_progress)
        if epochs == stage.epochs and wanted < epochs:  # a shorter stage asked, and nothing could be taken away
            self._refuse(command, origin, f"stage {si + 1} cannot end before the epoch in progress: epoch "
                         f"{ep.position.epoch} is already its last ({counted(stage.epochs, 'epoch')})")
            return
        note = "the epoch in progress is now the stage's last" if epochs > wanted else ""
        if epochs != stage.epochs:
            stages = list(cfg.plan.stages)
            stages[si] = dataclasses.replace(stage, epochs=epochs)
            s.config = t.config = cfg.replace(plan=dataclasses.replace(cfg.plan, stages=tuple(stages)))
            t.write_config()
        plan = s.config.plan
        first, last = plan.epoch_range(si)
        t.emit(PlanChanged(origin, si + 1, epochs, first, last, plan.total_epochs, note, command.ref,
                           command.epoch_change()))
