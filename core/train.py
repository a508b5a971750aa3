"""The training loop. It knows nothing of any UI: it emits events and obeys a Control.

`prepare` (core.prepare) readies the data, model and run directory; this file is
the loop: stages, epochs, a flat step loop, evaluation and checkpoints.

Hot-path rules: no host sync per batch (losses and correct counts stay on the
device in an EpochMeter and are read at log points and at most once a second),
batches are index slices of a uint8 tensor already on the device, augmentation
is batched tensor ops.

Several processes (a `Group`): each trains on its slice of every global batch
(batch_size x world images) under DistributedDataParallel, wrapped again at each
stage since the trainable set changes; rank 0 alone writes the run directory and
reads its inbox; the steering every rank obeys is the Coordinator's agreed Control,
changed at exchanges that all ranks make at the same step. The loss sums are added
up over the ranks at the same points where one process reads them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from core import checkpoint as ckpt_mod
from core import faults
from core.attention import attention_maps, pick_images
from core.checkpoint import Position
from core.config import RunConfig
from core.control import Control
from core.data import batch_indices, count_batches, epoch_generator
from core.device import describe
from core.dist import PAUSED_SYNC_S, Coordinator, Group
from core.errors import CbamError
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
    ModuleState,
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
)
from core.hardware import SystemMonitor
from core.layout import MODULES, NEW_MODULES
from core.meter import Clock, EpochMeter, Sums
from core.model import module_parameters
from core.optim import restore_optimizer, stage_optimizer
from core.prepare import Setup, prepare
from core.rundir import BEST, LAST, Command, Inbox, RunDir, StopReason
from core.schedule import factor as schedule_factor

Emit = Callable[[Event], None]

PROGRESS_EVERY_S = 0.5  # Progress events: host-side counters only
DRAIN_EVERY_S = 1.0  # iteration losses to the host (and the non-finite check) at least this often
PAUSED_POLL_S = 0.01  # a paused run looks at its inbox this often: an attached key acts within a frame
CONFUSION_MAX = 50  # classes up to which the confusion matrix is kept (it grows as classes squared)
_NEXT, _DONE = "next", "done"


@dataclass(frozen=True)
class Evaluation:
    """What the test pass of an epoch found."""

    loss: float  # per-image mean
    accuracy: float  # percent
    correct: tuple[int, ...]  # per class
    total: tuple[int, ...]
    confusion: tuple[tuple[int, ...], ...]  # [true][predicted], or () beyond CONFUSION_MAX classes


@dataclass
class EpochRun:
    """One epoch in progress: its device-side sums and its pause-aware clock."""

    position: Position
    meter: EpochMeter
    clock: Clock = field(default_factory=Clock)
    train_seconds: float = 0.0  # training time only: no evaluation, no pauses
    first_seen: int = 0  # images already counted when this process began the epoch
    batch: int = 0  # batches done
    log_clock: Clock = field(default_factory=Clock)  # since the last loss line
    log_seen: int = 0
    grad_norms: torch.Tensor | None = None  # each group's, at the last loss line's batch (on the device)
    data_s: float = 0.0  # host time preparing batches, and in whole steps, since the last Progress
    step_s: float = 0.0

    def here(self) -> Position:
        return Position(self.position.stage, self.position.epoch, self.batch, offset=self.position.offset)

    def pause(self, seconds: float) -> None:
        self.clock.add_pause(seconds)
        self.log_clock.add_pause(seconds)


class Trainer:
    def __init__(
        self, config: RunConfig, emit: Emit, control: Control | None = None, rundir: RunDir | None = None,
        group: Group | None = None,
    ):
        self.config = config
        self._consumer = emit
        self.control = control or Control()  # what this process is asked (keys, signals)
        self.rundir = rundir
        self.group = group
        self.coord = Coordinator(group, self.control) if group is not None else None
        self.steer = self.coord.agreed if self.coord else self.control  # what the loop obeys
        self.s: Setup | None = None
        self.inbox: Inbox | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.opt_stage = -1
        self.base_lrs: list[float] = []  # each group's rate before its schedule's factor; live changes move it
        self.scaler: torch.amp.GradScaler | None = None
        self.best_acc, self.best_epoch, self.last_acc, self.global_step = 0.0, 0, 0.0, 0
        self.history: list[EpochEnded] = []
        self.epoch: EpochRun | None = None  # the one being trained, for a save on request or failure
        self._nonfinite = False  # the weights are no longer finite: never save them over good ones
        self._write_error: str | None = None
        self._clock = Clock()
        self.monitor: SystemMonitor | None = None
        self._attention_ids: list[int] = []

    # --- entry point -----------------------------------------------------------
    def run(self) -> StopReason:
        """Train to the plan's end (FINISHED) or until stopped (the reason); raises
        CbamError (one sentence) or the unexpected exception on failure."""
        self._clock = Clock()
        try:
            self.s = prepare(self.config, self._emit, self.rundir, self.group)
            self.rundir, self.config = self.s.rundir, self.s.config
            if self.leader:  # the machine of rank 0 (with its GPU), where the run directory is
                self.monitor = SystemMonitor(self._emit, self.s.device if self.s.device.type == "cuda" else None)
                self.monitor.start()
            self._start()
            return self._loop()
        except CbamError as exc:
            self._emit(RunFailed(str(exc), self._save_on_failure()))
            raise
        except torch.OutOfMemoryError as exc:
            device = self.s.device.type.upper() if self.s else "device"
            message = f"out of {device} memory at batch size {self.config.batch_size}: try a smaller --batch-size"
            self._emit(RunFailed(message, self._save_on_failure()))
            raise CbamError(message) from exc
        except Exception as exc:
            if self.rundir is not None:
                log = self.rundir.write_error_log(traceback.format_exc())
                if log is not None:
                    exc.add_note(f"the traceback is in {log}")
            self._emit(RunFailed(f"{type(exc).__name__}: {exc}", self._save_on_failure()))
            raise
        finally:
            if self.monitor is not None:
                self.monitor.stop()
            if self.rundir is not None:
                self.rundir.close()

    @property
    def leader(self) -> bool:
        return self.group is None or self.group.leader

    def _emit(self, event: Event) -> None:
        if self.rundir is not None:
            try:
                self.rundir.write(event)
            except OSError as exc:
                if self._write_error is None:  # stop at the next boundary, with a checkpoint if the disk allows
                    path, why = self.rundir.events_path, exc.strerror or str(exc)
                    self._write_error = f"could not write {path}: {why}"
                    self.control.stop(StopReason.WRITE_FAILED)
                    self._consumer(SaveFailed(str(path), why))
        self._consumer(event)

    def _on_command(self, command: Command, origin: str) -> None:
        self._emit(CommandTaken(command.verb, origin, self.global_step, command.value, command.group))
        self.control.apply(command, origin)

    # --- the run -----------------------------------------------------------------
    def _start(self) -> None:
        s = self._setup
        cfg, rundir, r = s.config, self.rundir, s.restored  # rundir: None on ranks other than 0
        if r is not None:
            self.history = list(r.history)
            self.best_acc, self.best_epoch, self.global_step = r.best_acc, r.best_epoch, r.global_step
            self.last_acc = r.history[-1].test_acc if r.history else 0.0
            for missing in rundir.reconcile(self.history) if rundir else ():
                self._consumer(missing)  # a kill between a checkpoint and its event
        self._attention_ids = pick_images(s.test_y, len(s.data.classes))
        self.scaler = torch.amp.GradScaler(s.device.type, enabled=s.precision == "fp16")
        if r is not None and r.scaler:
            self.scaler.load_state_dict(r.scaler)
        if rundir is None:
            return
        rundir.write_config({**cfg.to_dict(), "classes": list(s.data.classes)})
        self.inbox = Inbox(rundir, self.coord.take if self.coord else self._on_command)
        plan, start = cfg.plan, r.position if r else Position(0, 1)
        self._emit(
            RunStarted(
                run_name=rundir.path.name, run_dir=str(rundir.path), dataset=cfg.dataset, device=describe(s.device),
                precision=s.precision, train_size=len(s.data.train), test_size=len(s.data.test),
                classes=s.data.classes, batch_size=cfg.batch_size, batches_per_epoch=s.batches_per_epoch,
                total_epochs=plan.total_epochs, stages=tuple((st.name, st.epochs) for st in plan.stages),
                plan_label=plan.label, frozen_bn=plan.frozen_bn, moments=plan.moments,
                total_params=sum(p.numel() for p in s.model.parameters()), model_rows=tuple(s.rows),
                config=cfg.to_dict(), skipped_files=s.data.skipped, resumed_from=cfg.resume,
                start_stage=start.stage + 1, start_epoch=start.epoch, start_batch=start.batch,
                global_step=self.global_step, world_size=s.world,
            )
        )

    def _loop(self) -> StopReason:
        plan = self._setup.config.plan
        r = self._setup.restored
        start = r.position if r else Position(0, 1)
        for si in range(len(plan.stages)):
            plan = self._setup.config.plan
            stage = plan.stages[si]
            if si < start.stage:
                continue
            first, _ = plan.epoch_range(si)
            if stage.epochs == 0:
                self._emit(StageSkipped(si + 1, stage.name, "0 epochs"))
                continue
            self._start_stage(si)
            resumed_here = start if si == start.stage else Position(si, first)
            epoch = resumed_here.epoch
            while epoch <= plan.epoch_range(si)[1]:  # the plan: a live change can move the stage's end
                pos = resumed_here if epoch == resumed_here.epoch else Position(si, epoch)
                outcome = self._epoch(pos)
                if isinstance(outcome, StopReason):
                    return outcome
                if outcome == _NEXT:
                    break
                plan = self._setup.config.plan
                epoch += 1
        self._emit(RunFinished(self.last_acc, self.best_acc, self.best_epoch, self._clock.elapsed()))
        self._write_curves()
        return StopReason.FINISHED

    def _write_curves(self) -> None:
        """curves.png in the run directory, when matplotlib is installed; a finished run
        stays finished whatever happens here."""
        if self.rundir is None or importlib.util.find_spec("matplotlib") is None:
            return
        from core.export import png

        with contextlib.suppress(Exception):
            png(self._rundir.path, self._rundir.curves_path)

    def _rates_at(self, si: int, epoch: int, batch: int) -> None:
        """Each group's rate for this batch: its base rate times the stage's schedule."""
        plan = self._setup.config.plan
        stage, n = plan.stages[si], self._setup.batches_per_epoch
        f = schedule_factor(stage.schedule, (epoch - plan.epoch_range(si)[0]) * n + batch, stage.epochs * n)
        assert self.optimizer is not None
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def _change(self, command: Command, origin: str, ep: EpochRun) -> None:
        """A live change of the learning rates or of the stage's length, at a batch boundary."""
        si = ep.position.stage
        if command.verb == "lr":
            assert self.optimizer is not None
            names = tuple(str(g["name"]) for g in self.optimizer.param_groups)
            scale, number = command.lr_change()
            before = tuple(self.base_lrs)
            note = ""
            if command.group and command.group not in names:
                note = f"this stage has no group {command.group!r} (it has {', '.join(names)})"
            else:
                for i, name in enumerate(names):
                    if not command.group or name == command.group:
                        self.base_lrs[i] = min(self.base_lrs[i] * number if scale else number, 10.0)
            self._emit(RatesChanged(origin, si + 1, names, before, tuple(self.base_lrs), self.global_step, note))
            self._rates_at(si, ep.position.epoch, ep.batch)
            return
        cfg = self._setup.config
        stage = cfg.plan.stages[si]
        first, _ = cfg.plan.epoch_range(si)
        in_progress = ep.position.epoch - first + 1  # epochs of this stage begun: the floor
        wanted = stage.epochs + command.epoch_change()
        epochs = max(wanted, in_progress)
        note = "the epoch in progress is now the stage's last" if epochs > wanted else ""
        if epochs != stage.epochs:
            stages = list(cfg.plan.stages)
            stages[si] = dataclasses.replace(stage, epochs=epochs)
            self._setup.config = self.config = cfg.replace(plan=dataclasses.replace(cfg.plan, stages=tuple(stages)))
            if self.rundir is not None:
                self.rundir.write_config({**self.config.to_dict(), "classes": list(self._setup.data.classes)})
        plan = self._setup.config.plan
        first, last = plan.epoch_range(si)
        self._emit(PlanChanged(origin, si + 1, epochs, first, last, plan.total_epochs, note))

    def _start_stage(self, si: int) -> None:
        s = self._setup
        plan, r = s.config.plan, s.restored
        previous = self.optimizer
        if previous is None and r is not None and r.optimizer_stage >= 0 and r.optimizer_stage != si:
            previous = restore_optimizer(s.model, plan, r.optimizer_stage, r.optimizer, s.device)
        self.optimizer, groups, kept = stage_optimizer(s.model, plan, si, s.device, previous)
        self.base_lrs = [g.lr for g, _ in groups]  # each stage starts from its plan (live changes end here)
        if self.opt_stage < 0 and r is not None and r.optimizer_stage == si:
            self.optimizer.load_state_dict(r.optimizer)  # the same stage, continued
            kept = sum(p.numel() for p in self.optimizer.state)
            if r.base_lrs and len(r.base_lrs) == len(self.base_lrs):
                self.base_lrs = list(r.base_lrs)
        self.opt_stage = si
        s.model.train()
        if self.coord is not None:
            self._wrap(s)
        group_of = {id(p): g for g, ps in groups for p in ps}
        trainable = {n: p.numel() for n, p in s.model.named_parameters() if p.requires_grad}
        first, last = plan.epoch_range(si)
        self._emit(
            StageStarted(
                stage=si + 1, num_stages=len(plan.stages), name=plan.stages[si].name, first_epoch=first,
                last_epoch=last, total_epochs=plan.total_epochs,
                modules=tuple(self._module_state(name, group_of) for name in MODULES),
                groups=tuple((g.name, g.lr) for g, _ in groups), trainable_params=sum(trainable.values()),
                total_params=sum(p.numel() for p in s.model.parameters()), global_step=self.global_step,
                kept_moments=kept,
                row_trainable=tuple(
                    sum(n for name, n in trainable.items() if not row.path or name.startswith(row.path + "."))
                    for row in s.rows
                ),
            )
        )

    def _wrap(self, s: Setup) -> None:
        """DistributedDataParallel over this stage's trainable set: built again at each
        stage (it registers the parameters that need gradients when it is made), which
        also hands every rank rank 0's weights and buffers."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [s.device.index] if s.device.type == "cuda" else None
        ddp = DistributedDataParallel(s.model, device_ids=ids, gradient_as_bucket_view=True)
        s.step_model = torch.compile(ddp) if s.config.compile else ddp  # type: ignore[assignment]

    def _module_state(self, name: str, group_of: dict[int, Any]) -> ModuleState:
        model = self._setup.model
        path = MODULES[name]
        params = [p for _, p in module_parameters(model, path)]
        on = [p for p in params if p.requires_grad]
        trainable = "yes" if len(on) == len(params) else "no" if not on else "partial"
        group = group_of[id(on[0])] if on else None
        bns = [m for m in model.get_submodule(path).modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        modes = {"train" if m.training else "eval" for m in bns}
        bn_mode = None if not bns else modes.pop() if len(modes) == 1 else "mixed"
        return ModuleState(
            name, path, trainable, group.lr if group else None, group.name if group else None,
            sum(p.numel() for p in params), bn_mode, name in NEW_MODULES,
        )

    def _epoch(self, pos: Position) -> str | StopReason:
        """Train the epoch from ``pos`` (unless only its evaluation is left), then end it."""
        s = self._setup
        r = s.restored
        continued = r is not None and self.global_step == r.global_step and pos == r.position
        sums = r.sums if continued and self.leader and r is not None else Sums()  # rank 0 holds the totals so far
        reduce, world = (self.group.sum, self.group.world) if self.coord and self.group else (None, 1)
        self.epoch = EpochRun(pos, EpochMeter(s.device, sums, reduce, world), first_seen=sums.seen, batch=pos.batch)
        self.epoch.log_seen = r.sums.seen if continued and r is not None else 0
        cut = pos.batch < self._batches(pos)
        if not pos.trained:
            outcome = self._train(self.epoch)
            if isinstance(outcome, StopReason):
                return outcome
            cut = outcome == _NEXT
        return self._end_epoch(self.epoch, cut)

    def _batches(self, pos: Position) -> int:
        """Batches in the epoch of ``pos``: fewer in one cut from an offset (a change of world size)."""
        s = self._setup
        if not pos.offset:
            return s.batches_per_epoch
        return count_batches(len(s.train_y) - pos.offset, s.global_batch, 2 * s.world)

    def _train(self, ep: EpochRun) -> str | StopReason:
        s = self._setup
        cfg, dev, model, opt, scaler = s.config, s.device, s.step_model, self.optimizer, self.scaler
        assert opt is not None and scaler is not None, "a stage builds the optimizer before its epochs"
        si, epoch, offset = ep.position.stage, ep.position.epoch, ep.position.offset
        world = s.world
        s.model.train()
        batches = batch_indices(len(s.train_y), s.global_batch, cfg.seed, epoch, s.train_y.device, offset, 2 * world)
        n = len(batches)
        t_progress = t_drain = 0.0
        for b in range(ep.batch, n):
            signal = self._boundary(ep)
            if signal is not None:
                ep.train_seconds = ep.clock.elapsed()
                return self._stop(ep.here(), ep) if signal == "stop" else _NEXT
            t0 = time.perf_counter()
            self._rates_at(si, epoch, b + offset // s.global_batch)
            idx, first, total = batches[b], 0, None
            if self.group is not None and world > 1:  # this rank's slice of the global batch
                first, last = self.group.shard(len(idx))
                idx, total = idx[first:last], len(idx)
            x = s.train_x[idx.to(s.train_x.device)].to(dev, non_blocking=True)
            y = s.train_y[idx.to(s.train_y.device)].to(dev, non_blocking=True)
            x = s.augment.train(x, epoch_generator(cfg.seed, epoch, b, dev), first, total)
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t1 = time.perf_counter()
            line = (b + 1) % cfg.log_every == 0 or b + 1 == n
            with s.autocast():
                out = model(x)
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            if line:
                ep.grad_norms = self._grad_norms(opt, scaler)
            scaler.step(opt)
            scaler.update()
            ep.meter.add(loss, out, y)
            self.global_step += 1
            ep.batch = b + 1
            now = time.perf_counter()
            ep.data_s, ep.step_s = ep.data_s + t1 - t0, ep.step_s + now - t0
            if now - t_progress >= PROGRESS_EVERY_S and self.leader:  # host-side counters only: no sync
                t_progress = now
                ips = (ep.meter.seen - ep.first_seen) * world / ep.clock.elapsed()  # the ranks keep step
                self._emit(Progress(si + 1, epoch, ep.batch, n, ips, ep.data_s / max(ep.step_s, 1e-9)))
                ep.data_s = ep.step_s = 0.0
            # A group reads its losses (a collective) at steps every rank knows: the exchanges'.
            due = self.coord.due(self.global_step) if self.coord else now - t_drain >= DRAIN_EVERY_S
            if line or due:
                t_drain = now
                if not self._drain(ep, line):
                    return self._on_nonfinite(ep)
        ep.train_seconds = ep.clock.elapsed()
        return _DONE

    @staticmethod
    def _grad_norms(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> torch.Tensor:
        """Each param group's gradient L2 norm, on the device (read at the loss line)."""
        if scaler.is_enabled():
            scaler.unscale_(opt)  # step() then skips it: the norms are of the real gradients
        norms = []
        for group in opt.param_groups:
            grads = [p.grad.detach().float().norm() for p in group["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(()))
        return torch.stack([n.to(norms[0].device) for n in norms])

    def _drain(self, ep: EpochRun, line: bool) -> bool:
        """The step loop's only host syncs: the iteration losses (at least once a second),
        and the loss line (mean of the batches since the last one). False if a loss is not finite."""
        losses = ep.meter.drain()
        if losses:
            self._emit(IterLosses(self.global_step - len(losses) + 1, tuple(losses), ep.position.stage + 1))
        if not all(math.isfinite(v) for v in losses):
            return False
        if line and ep.meter.window_batches:
            mean = ep.meter.take_window()
            sums = ep.meter.host()
            seen = sums.seen
            ips = (seen - ep.log_seen) / ep.log_clock.elapsed()
            ep.log_clock, ep.log_seen = Clock(), seen
            avg = sums.loss_sum / max(seen, 1)
            plan = self._setup.config.plan
            assert self.optimizer is not None
            lrs = tuple(float(g["lr"]) for g in self.optimizer.param_groups)
            norms: tuple[float, ...] = tuple(ep.grad_norms.tolist()) if ep.grad_norms is not None else ()
            self._emit(
                BatchLogged(
                    ep.position.stage + 1, ep.position.epoch, plan.total_epochs, ep.batch,
                    self._batches(ep.position), mean, avg, ips, self.global_step, lrs, norms,
                )
            )
        return True

    def _boundary(self, ep: EpochRun, pause_reason: str = "user") -> str | None:
        """Obey the steering (and the inbox) at a batch boundary: "stop", "next", or None to go on."""
        steer = self.steer
        paused_at: float | None = None
        try:
            while True:
                if not self._take_commands(waiting=paused_at is not None):
                    return None  # a group between its exchanges: nothing can have changed
                if steer.stop_reason is not None:
                    return "stop"
                if steer.take_save():
                    self._save(ep.here(), ep.meter.host(), "save")
                for command, origin in steer.take_changes():
                    self._change(command, origin, ep)
                if steer.take_next_stage():
                    return "next"
                if not steer.paused:
                    if paused_at is not None:
                        here = ep.here()
                        self._emit(Resumed(here.stage + 1, here.epoch, here.batch))
                    return None
                if paused_at is None:
                    paused_at = time.perf_counter()
                    here = ep.here()
                    self._emit(Paused(here.stage + 1, here.epoch, here.batch, pause_reason))
                if self.coord is None:
                    self.control.wait(PAUSED_POLL_S)
                else:
                    self.control.wait(PAUSED_SYNC_S)  # a signal here still waits for the exchange
        finally:
            if paused_at is not None:
                ep.pause(time.perf_counter() - paused_at)

    def _take_commands(self, waiting: bool) -> bool:
        """Bring the steering up to date; False when it cannot have changed."""
        if self.coord is None:
            if self.inbox is not None:
                self.inbox.poll(force=waiting)  # paused, nothing else costs a thing
            return True
        if not (waiting or self.coord.due(self.global_step)):
            return False
        if self.inbox is not None:
            self.inbox.poll(force=True)  # the exchanges are few: read the inbox at each
        commands, steps = self.coord.exchange(self.global_step)
        for command, origin in commands:
            self._emit(CommandTaken(command.verb, origin, self.global_step, command.value, command.group, steps))
        return True

    def _on_nonfinite(self, ep: EpochRun) -> StopReason:
        self._nonfinite = True
        pos = ep.here()
        where = f"non-finite loss at epoch {pos.epoch}, batch {pos.batch}"
        kept = str(self.rundir.checkpoint_path(LAST)) if self.rundir and self.rundir.has_checkpoint() else None
        if self._setup.config.on_nonfinite == "pause":
            # The weights are no longer finite: stay paused (resume and next stage would
            # train on garbage) until the person stops the run.
            self.steer.pause()
            while self._boundary(ep, f"{where}; the last finite checkpoint is kept") != "stop":
                self.steer.pause()
        self._emit(RunStopped(StopReason.NONFINITE, pos.stage + 1, pos.epoch, pos.batch, kept, where))
        return StopReason.NONFINITE

    def _end_epoch(self, ep: EpochRun, cut: bool) -> str | StopReason:
        """Evaluate, checkpoint, then report: the epoch_ended event follows its checkpoint,
        so after a kill at any instant a resume repeats no reported epoch."""
        s = self._setup
        plan = s.config.plan
        si, epoch = ep.position.stage, ep.position.epoch
        first, last = plan.epoch_range(si)
        trained = Position(si, epoch, ep.batch, True, ep.position.offset)
        result = self._evaluate(si, epoch)
        if result is None:
            return self._stop(trained, ep)
        test_loss, test_acc = result.loss, result.accuracy
        attention = self._attention(si, epoch) if self.leader else None
        sums = ep.meter.host()
        improved = test_acc > self.best_acc or self.best_epoch == 0
        record = EpochEnded(
            si + 1, epoch, plan.total_epochs, epoch - first + 1, last - first + 1, ep.batch,
            sums.loss_sum / max(sums.seen, 1), 100.0 * sums.correct / max(sums.seen, 1), test_loss, test_acc,
            ep.clock.elapsed(), (sums.seen - ep.first_seen) / ep.train_seconds if ep.train_seconds > 0 else 0.0,
            max(self.best_acc, test_acc) if self.best_epoch else test_acc, self.global_step,
        )
        best_before = self.best_acc, self.best_epoch
        if improved:
            self.best_acc, self.best_epoch = test_acc, epoch
        self.history.append(record)
        nxt = Position(si + 1, last + 1) if cut or epoch == last else Position(si, epoch + 1)
        written: list[tuple[str, str]] = []
        detail: str | None = None
        if self.rundir is not None:
            data = ckpt_mod.serialize(self._state(nxt, Sums()))
            try:
                for name, reason in ((BEST, "best"), (LAST, "epoch")) if improved else ((LAST, "epoch"),):
                    faults.hit(f"epoch-end:before-{name}")
                    same = BEST if written else None  # last.pt of a best epoch: one file, two names
                    written.append((str(self.rundir.save_checkpoint(data, name, same)), reason))
            except OSError as exc:
                detail = (
                    f"could not save {self.rundir.checkpoint_path(name)}: {exc.strerror or exc} "
                    f"(epoch {epoch}: test acc {test_acc:.2f}%, not kept)"
                )
        if self.coord is not None and self.group is not None:
            detail = self.group.from_leader(detail)  # every rank stops if rank 0 could not keep the epoch
        if detail is not None:
            self.history.pop()
            self.best_acc, self.best_epoch = best_before
            return self._write_failed(trained, detail)
        faults.hit("epoch-end:before-event")
        for path, reason in written:
            self._emit(CheckpointSaved(path, reason, nxt.stage + 1, nxt.epoch, nxt.batch))
        self._emit(ClassAccuracy(si + 1, epoch, result.correct, result.total, result.confusion))
        if attention is not None:
            self._emit(attention)
        self._emit(record)
        self.last_acc = test_acc
        return _NEXT if cut else _DONE

    def _evaluate(self, si: int, epoch: int) -> Evaluation | None:
        """The test pass: loss, accuracy and per-class counts, summed on the device and read
        once at the end; None if a stop arrived."""
        s = self._setup
        s.model.eval()
        eval_batch = min(max(s.config.batch_size * 4, 256), 2048)
        classes = len(s.data.classes)
        loss_sum = torch.zeros((), device=s.device)
        per_class = torch.zeros(2, classes, device=s.device, dtype=torch.long)  # correct, total
        confusion = torch.zeros(classes * classes if classes <= CONFUSION_MAX else 1, device=s.device, dtype=torch.long)
        n = len(s.test_y)
        lo, hi = self.group.shard(n) if self.coord and self.group else (0, n)  # each rank its part, once
        self._emit(Evaluating(si + 1, epoch, 0, n))
        shown = time.perf_counter()
        with torch.inference_mode(), s.autocast():
            for i in range(lo, hi, eval_batch):
                if self.inbox is not None:
                    self.inbox.poll()  # a group takes them at its next exchange
                if self.coord is None and self.control.stop_reason is not None:
                    return None
                if time.perf_counter() - shown >= PROGRESS_EVERY_S:
                    shown = time.perf_counter()
                    self._emit(Evaluating(si + 1, epoch, (i - lo) * s.world, n))
                j = min(i + eval_batch, hi)
                x = s.augment.test(s.test_x[i:j].to(s.device, non_blocking=True))
                if s.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = s.test_y[i:j].to(s.device, non_blocking=True)
                out = s.model(x).float()
                loss_sum += F.cross_entropy(out, y, reduction="sum")
                pred = out.argmax(1)
                per_class[0] += torch.bincount(y[pred == y], minlength=classes)
                per_class[1] += torch.bincount(y, minlength=classes)
                if classes <= CONFUSION_MAX:
                    confusion += torch.bincount(y * classes + pred, minlength=classes * classes)
        s.model.train()
        if self.coord is not None and self.group is not None:
            for t in (loss_sum, per_class, confusion):
                self.group.sum(t)
        counts = per_class.tolist()
        matrix = confusion.view(classes, classes).tolist() if classes <= CONFUSION_MAX else []
        return Evaluation(
            loss_sum.item() / n, 100.0 * sum(counts[0]) / n, tuple(counts[0]), tuple(counts[1]),
            tuple(tuple(row) for row in matrix),
        )

    def _attention(self, si: int, epoch: int) -> AttentionMaps | None:
        """What the CBAM blocks do to the fixed test images, after this epoch."""
        s = self._setup
        if not self._attention_ids:
            return None
        ids = torch.tensor(self._attention_ids)
        images = s.test_x[ids.to(s.test_x.device)].to(s.device)
        labels = s.test_y[ids.to(s.test_y.device)].tolist()
        maps = attention_maps(s.model, images, labels, s.data.classes, s.augment, s.autocast, s.channels_last)
        return AttentionMaps(si + 1, epoch, maps)

    # --- checkpoints and stops ---------------------------------------------------------
    def _state(self, pos: Position, sums: Sums) -> dict[str, Any]:
        s = self._setup
        assert self.optimizer is not None and self.scaler is not None
        return {
            "format": ckpt_mod.FORMAT,
            "version": ckpt_mod.VERSION,
            "arch": ckpt_mod.ARCH,
            "model": s.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_stage": self.opt_stage,
            "scaler": self.scaler.state_dict(),
            "config": s.config.to_dict(),
            "classes": list(s.data.classes),
            "position": {
                "stage": pos.stage, "epoch": pos.epoch, "batch": pos.batch, "trained": pos.trained,
                "offset": pos.offset,
            },
            "sums": sums.to_dict(),
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "global_step": self.global_step,
            "rng": torch.get_rng_state(),
            "history": [e.to_dict() for e in self.history],
            "base_lrs": list(self.base_lrs),
            "world_size": s.world,
            "global_batch": s.global_batch,
        }

    def _save(self, pos: Position, sums: Sums, reason: str) -> str | None:
        """last.pt at ``pos``; None (and a save_failed event) when it cannot be written."""
        if self._nonfinite or self.optimizer is None or self.rundir is None:
            return None
        try:
            faults.hit(f"save:{reason}")
            path = self.rundir.save_checkpoint(ckpt_mod.serialize(self._state(pos, sums)), LAST)
        except OSError as exc:
            self._emit(SaveFailed(str(self.rundir.checkpoint_path(LAST)), exc.strerror or str(exc)))
            return None
        self._emit(CheckpointSaved(str(path), reason, pos.stage + 1, pos.epoch, pos.batch))
        return str(path)

    def _stop(self, pos: Position, ep: EpochRun) -> StopReason:
        reason = self.steer.stop_reason or StopReason.QUIT
        if reason == StopReason.WRITE_FAILED:
            return self._write_failed(pos, self._write_error or "a write failed", ep)
        sums = ep.meter.host()  # on every rank: a collective in a group
        if self.rundir is None:
            return reason
        path = self._save(pos, sums, "stop")
        if path is None:
            return self._write_failed(pos, f"{reason}: the checkpoint could not be saved")
        self._emit(RunStopped(reason, pos.stage + 1, pos.epoch, pos.batch, path))
        return reason

    def _write_failed(self, pos: Position, detail: str, ep: EpochRun | None = None) -> StopReason:
        """Stop, saying which checkpoint is the last good one (if any): never a claimed success."""
        sums = ep.meter.host() if ep is not None else None  # on every rank: a collective in a group
        if self.rundir is None:
            return StopReason.WRITE_FAILED
        path = self._save(pos, sums, "stop") if sums is not None else None
        if path is None and self.rundir.has_checkpoint():
            path = str(self.rundir.checkpoint_path(LAST))
        self._emit(RunStopped(StopReason.WRITE_FAILED, pos.stage + 1, pos.epoch, pos.batch, path, detail))
        return StopReason.WRITE_FAILED

    def _save_on_failure(self) -> str | None:
        if self.coord is not None:  # a rank may be gone mid-collective: keep the last complete checkpoint
            return str(self.rundir.checkpoint_path(LAST)) if self.rundir and self.rundir.has_checkpoint() else None
        if self.epoch is None or self.s is None:
            return None
        try:
            return self._save(self.epoch.here(), self.epoch.meter.host(), "failure")
        except Exception:
            return None

    # --- typed access to what `prepare` made ------------------------------------------
    @property
    def _setup(self) -> Setup:
        assert self.s is not None, "prepare() runs first"
        return self.s

    @property
    def _rundir(self) -> RunDir:
        assert self.rundir is not None, "prepare() claims the run directory"
        return self.rundir
