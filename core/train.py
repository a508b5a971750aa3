"""The training loop. It knows nothing of any UI: it emits events and obeys a Control.

`prepare` (core.prepare) readies the data, model and run directory; this file is
the loop, read top to bottom: `run` -> `_loop` (stages) -> `_epoch` -> `_train`
(the step loop) -> `_end_epoch` (evaluate, checkpoint, report). The steering
obeyed at each batch boundary is core.steering's, the test pass core.evaluate's,
the events are built in core.reporting, what is saved and when in core.saving,
and the checkpoint's contents are core.checkpoint's.

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
import gc
import math
import time
import traceback
from collections.abc import Callable, Iterator
from enum import Enum

import torch
import torch.nn.functional as F

from core import faults, reporting
from core.attention import pick_images
from core.checkpoint import Position
from core.config import RunConfig
from core.control import Control
from core.data import batch_indices, count_batches, epoch_generator
from core.dist import Group
from core.errors import CbamError
from core.evaluate import PROGRESS_EVERY_S, attention, evaluate
from core.events import (
    CheckpointSaved,
    ClassAccuracy,
    EpochEnded,
    Event,
    IterLosses,
    Progress,
    RunFailed,
    RunFinished,
    SaveFailed,
    StageSkipped,
)
from core.hardware import SystemMonitor
from core.meter import Clock, EpochMeter, EpochRun, Sums, grad_norms
from core.optim import load_saved, restore_optimizer, stage_optimizer
from core.prepare import Setup, prepare
from core.rundir import RunDir
from core.saving import Saving
from core.schedule import factor as schedule_factor
from core.steering import Order, Steering
from core.vocab import StopReason

Emit = Callable[[Event], None]

DRAIN_EVERY_S = 1.0  # iteration losses to the host (and the non-finite check) at least this often


class Ended(Enum):
    """How an epoch's training ended, when the run goes on."""

    DONE = "done"  # its last batch trained
    CUT = "next"  # "next stage" cut it short: its stage ends with it


@contextlib.contextmanager
def settled_heap() -> Iterator[None]:
    """For the loop's duration, keep the collector off what was built before it.

    Everything alive when training starts (torch's own objects, the model, the data, a
    dashboard's widgets) lives as long as the run. Left in the collector's oldest
    generation, each full collection walks all of it with the GIL held: one took 150 ms
    mid-run under the dashboard, every thread stalled (bench/README.md). Frozen, a full
    collection walks only what training made since. Garbage is collected first, so
    nothing unreachable is kept; the freeze ends with the loop, for a process that goes
    on to other work. A process that froze its heap itself has chosen what the collector
    walks: the loop leaves that alone (unfreezing at its end would undo the process's own
    freeze)."""
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Trainer:
    def __init__(
        self, config: RunConfig, emit: Emit, control: Control | None = None, rundir: RunDir | None = None,
        group: Group | None = None, cpu_reserve: int = 0,
    ):
        self.config = config
        self._consumer = emit
        self.control = control or Control()  # what this process is asked (keys, signals)
        self.rundir = rundir
        self.group = group
        self.cpu_reserve = cpu_reserve  # cores left for this process's other threads (a dashboard's)
        self.steering = Steering(self, self.control, group)
        self.saving = Saving(self)
        self.s: Setup | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.opt_stage = -1
        self.base_lrs: list[float] = []  # each group's rate before its schedule's factor; live changes move it
        self.scaler: torch.amp.GradScaler | None = None
        self.best_acc, self.best_epoch, self.last_acc, self.global_step = 0.0, 0, 0.0, 0
        self.history: list[EpochEnded] = []
        self.epoch: EpochRun | None = None  # the one being trained, for a save on request or failure
        self.write_error: str | None = None
        self._clock = Clock()
        self.monitor: SystemMonitor | None = None
        self._attention_ids: list[int] = []

    # --- entry point -----------------------------------------------------------
    def run(self) -> StopReason:
        """Train to the plan's end (FINISHED) or until stopped (the reason); raises
        CbamError (one sentence) or the unexpected exception on failure."""
        self._clock = Clock()
        try:
            self.s = prepare(self.config, self.emit, self.rundir, self.group, self.cpu_reserve)
            self.rundir, self.config = self.s.rundir, self.s.config
            if self.leader:  # the machine of rank 0 (with its GPU), where the run directory is
                self.monitor = SystemMonitor(
                    self.emit, self.s.device if self.s.device.type == "cuda" else None,
                    self.s.threads.cpus if self.s.threads else 0.0,
                )
                self.monitor.start()
            self._start()
            with settled_heap():
                return self._loop()
        except CbamError as exc:
            self.emit(RunFailed(str(exc), self.saving.on_failure()))
            raise
        except torch.OutOfMemoryError as exc:
            device = self.s.device.type.upper() if self.s else "device"
            message = f"out of {device} memory at batch size {self.config.batch_size}: try a smaller --batch-size"
            self.emit(RunFailed(message, self.saving.on_failure()))
            raise CbamError(message) from exc
        except Exception as exc:
            lost = self.group.lost(exc) if self.group is not None else None
            if lost is not None:  # a peer died or went silent: that, not the broken collective, is the news
                message = f"{lost}; the group stopped"
                self.emit(RunFailed(message, self.saving.on_failure()))
                raise CbamError(message) from exc
            if self.rundir is not None:
                log = self.rundir.write_error_log(traceback.format_exc())
                if log is not None:
                    exc.add_note(f"the traceback is in {log}")
            self.emit(RunFailed(f"{type(exc).__name__}: {exc}", self.saving.on_failure()))
            raise
        finally:
            if self.monitor is not None:
                self.monitor.stop()
            if self.rundir is not None:
                self.rundir.close()

    @property
    def leader(self) -> bool:
        return self.group is None or self.group.leader

    @property
    def setup(self) -> Setup:
        assert self.s is not None, "prepare() runs first"
        return self.s

    def emit(self, event: Event) -> None:
        if self.rundir is not None:
            try:
                self.rundir.write(event)
            except OSError as exc:
                if self.write_error is None:  # stop at the next boundary, with a checkpoint if the disk allows
                    path, why = self.rundir.events_path, exc.strerror or str(exc)
                    self.write_error = f"could not write {path}: {why}"
                    self.control.stop(StopReason.WRITE_FAILED)
                    self._consumer(SaveFailed(str(path), why))
        self._consumer(event)

    def write_config(self) -> None:
        """config.json: the run's config as it stands (live changes move it), with its classes."""
        if self.rundir is not None:
            self.rundir.write_config({**self.setup.config.to_dict(), "classes": list(self.setup.data.classes)})

    # --- the run -----------------------------------------------------------------
    def _start(self) -> None:
        s, r = self.setup, self.setup.restored
        if r is not None:
            self.history = list(r.history)
            self.best_acc, self.best_epoch, self.global_step = r.best_acc, r.best_epoch, r.global_step
            self.last_acc = r.history[-1].test_acc if r.history else 0.0
            for missing in self.rundir.reconcile(self.history) if self.rundir else ():
                self._consumer(missing)  # a kill between a checkpoint and its event
        self._attention_ids = pick_images(s.test_y, len(s.data.classes))
        self.scaler = torch.amp.GradScaler(s.device.type, enabled=s.precision == "fp16")
        if r is not None and r.scaler:
            self.scaler.load_state_dict(r.scaler)
        if self.rundir is None:  # ranks other than 0
            return
        self.write_config()
        self.steering.listen(self.rundir)
        self.emit(reporting.run_started(s, self.rundir, r.position if r else Position(0, 1), self.global_step))

    def _loop(self) -> StopReason:
        r = self.setup.restored
        start = r.position if r else Position(0, 1)
        for si in range(len(self.setup.config.plan.stages)):
            plan = self.setup.config.plan
            stage = plan.stages[si]
            if si < start.stage:
                continue
            first, _ = plan.epoch_range(si)
            if stage.epochs == 0:
                self.emit(StageSkipped(si + 1, stage.name, "0 epochs"))
                continue
            self._start_stage(si)
            resumed_here = start if si == start.stage else Position(si, first)
            epoch = resumed_here.epoch
            while epoch <= self.setup.config.plan.epoch_range(si)[1]:  # a live change can move the stage's end
                outcome = self._epoch(resumed_here if epoch == resumed_here.epoch else Position(si, epoch))
                if isinstance(outcome, StopReason):
                    return outcome
                if outcome is Ended.CUT:
                    break
                epoch += 1
        seconds = self.rundir.run_seconds() if self.rundir is not None else None  # every process's, if resumed
        self.emit(RunFinished(self.last_acc, self.best_acc, self.best_epoch, seconds or self._clock.elapsed()))
        if self.rundir is not None:
            reporting.write_curves(self.rundir)
        return StopReason.FINISHED

    def _start_stage(self, si: int) -> None:
        s = self.setup
        plan, r = s.config.plan, s.restored
        previous = self.optimizer
        if previous is None and r is not None and r.optimizer_stage >= 0 and r.optimizer_stage != si:
            previous = restore_optimizer(s.model, plan, r.optimizer_stage, r.optimizer, s.device)
        self.optimizer, groups, kept = stage_optimizer(s.model, plan, si, s.device, previous)
        self.base_lrs = [g.lr for g, _ in groups]  # each stage starts from its plan (live changes end here)
        if self.opt_stage < 0 and r is not None and r.optimizer_stage == si:
            load_saved(self.optimizer, r.optimizer)  # the same stage, continued
            kept = sum(p.numel() for p in self.optimizer.state)
            if r.base_lrs and len(r.base_lrs) == len(self.base_lrs):
                self.base_lrs = list(r.base_lrs)
        self.opt_stage = si
        s.model.train()
        if self.group is not None:
            s.step_model = self.group.wrap(s.model, s.config.compile)
        self.emit(reporting.stage_started(s, si, groups, self.base_lrs, kept, self.global_step))

    def _epoch(self, pos: Position) -> Ended | StopReason:
        """Train the epoch from ``pos`` (unless only its evaluation is left), then end it."""
        s = self.setup
        r = s.restored
        continued = r is not None and self.global_step == r.global_step and pos == r.position
        sums = r.sums if continued and self.leader and r is not None else Sums()  # rank 0 holds the totals so far
        reduce, world = (self.group.sum, self.group.world) if self.group is not None else (None, 1)
        self.epoch = EpochRun(
            pos, EpochMeter(s.device, sums, reduce, world), seconds_before=sums.seconds or 0.0, first_seen=sums.seen,
            untimed=sums.seen if sums.seconds is None else 0, batch=pos.batch,
        )
        self.epoch.log_seen = r.sums.seen if continued and r is not None else 0
        if pos.trained:
            self.epoch.end_training()  # in an earlier process: only the test pass is left
        cut = pos.batch < self._batches(pos)
        if not pos.trained:
            outcome = self._train(self.epoch)
            if isinstance(outcome, StopReason):
                return outcome
            cut = outcome is Ended.CUT
        return self._end_epoch(self.epoch, cut)

    def _batches(self, pos: Position) -> int:
        """Batches in the epoch of ``pos``: fewer in one cut from an offset (a change of world size)."""
        s = self.setup
        if not pos.offset:
            return s.batches_per_epoch
        return count_batches(len(s.train_y) - pos.offset, s.global_batch, 2 * s.world)

    def _train(self, ep: EpochRun) -> Ended | StopReason:
        s = self.setup
        cfg, dev, model, opt, scaler = s.config, s.device, s.step_model, self.optimizer, self.scaler
        assert opt is not None and scaler is not None, "a stage builds the optimizer before its epochs"
        si, epoch, offset = ep.position.stage, ep.position.epoch, ep.position.offset
        world = s.world
        s.model.train()
        batches = batch_indices(len(s.train_y), s.global_batch, cfg.seed, epoch, s.train_y.device, offset, 2 * world)
        n = len(batches)
        t_progress = t_drain = 0.0
        for b in range(ep.batch, n):
            order = self.steering.boundary(ep)
            if order is not None:
                ep.end_training()
                return self.saving.stop(ep.here(), ep) if order is Order.STOP else Ended.CUT
            t0 = time.perf_counter()
            self.rates_at(si, epoch, b + offset // s.global_batch)
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
                ep.grad_norms = grad_norms(opt, scaler)
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
                self.emit(Progress(si + 1, epoch, ep.batch, n, ips, ep.data_s / max(ep.step_s, 1e-9)))
                ep.data_s = ep.step_s = 0.0
            # A group reads its losses (a collective) at steps every rank knows: the exchanges'.
            due = self.steering.due(self.global_step) if self.group else now - t_drain >= DRAIN_EVERY_S
            if line or due:
                t_drain = now
                if not self._drain(ep, line):
                    return self.steering.on_nonfinite(ep)
        ep.end_training()
        return Ended.DONE

    def rates_at(self, si: int, epoch: int, batch: int) -> None:
        """Each group's rate for this batch: its base rate times the stage's schedule."""
        plan = self.setup.config.plan
        stage, n = plan.stages[si], self.setup.batches_per_epoch
        f = schedule_factor(stage.schedule, (epoch - plan.epoch_range(si)[0]) * n + batch, stage.epochs * n)
        assert self.optimizer is not None
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def _drain(self, ep: EpochRun, line: bool) -> bool:
        """The step loop's only host syncs: the iteration losses (at least once a second),
        and the loss line (mean of the batches since the last one). False if a loss is not finite."""
        losses = ep.meter.drain()
        if losses:
            self.emit(IterLosses(self.global_step - len(losses) + 1, tuple(losses), ep.position.stage + 1))
        if not all(math.isfinite(v) for v in losses):
            return False
        if line:
            assert self.optimizer is not None
            lrs = tuple(float(g["lr"]) for g in self.optimizer.param_groups)
            record = reporting.loss_line(self.setup, ep, self._batches(ep.position), lrs, self.global_step)
            if record is not None:
                self.emit(record)
        return True

    def _end_epoch(self, ep: EpochRun, cut: bool) -> Ended | StopReason:
        """Evaluate, checkpoint, then report: the epoch_ended event follows its checkpoint,
        so after a kill at any instant a resume repeats no reported epoch."""
        s = self.setup
        si, epoch = ep.position.stage, ep.position.epoch
        trained = Position(si, epoch, ep.batch, True, ep.position.offset)
        result = evaluate(s, si, epoch, self.emit, self.steering.interrupted, self.group)
        if result is None:
            return self.saving.stop(trained, ep)
        if not cut:
            self.steering.at_epoch_end(ep)
        _, last = s.config.plan.epoch_range(si)
        maps = attention(s, self._attention_ids, si, epoch) if self.leader else None
        record = reporting.epoch_ended(s, ep, ep.sums(), result, self.best_acc, self.best_epoch,
                                       self.global_step)
        improved = result.accuracy > self.best_acc or self.best_epoch == 0
        best_before = self.best_acc, self.best_epoch
        if improved:
            self.best_acc, self.best_epoch = result.accuracy, epoch
        self.history.append(record)
        nxt = Position(si + 1, last + 1) if cut or epoch == last else Position(si, epoch + 1)
        written, detail = self.saving.epoch_end(nxt, improved, epoch, result.accuracy)
        if self.group is not None:
            detail = self.group.from_leader(detail)  # every rank stops if rank 0 could not keep the epoch
        if detail is not None:
            self.history.pop()
            self.best_acc, self.best_epoch = best_before
            return self.saving.write_failed(trained, detail)
        faults.hit("epoch-end:before-event")
        for path, reason in written:
            self.emit(CheckpointSaved(path, reason, nxt.stage + 1, nxt.epoch, nxt.batch))
        self.emit(ClassAccuracy(si + 1, epoch, result.correct, result.total, result.confusion))
        if maps is not None:
            self.emit(maps)
        self.emit(record)
        self.last_acc = result.accuracy
        return Ended.CUT if cut else Ended.DONE
