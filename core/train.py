"""The training loop. It knows nothing of any UI: it emits events and obeys a Control.

Hot-path rules: no host sync per batch (losses and correct counts stay on the
device and are read at log points), batches are index slices of a uint8 tensor
already on the device, augmentation is batched tensor ops.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core import checkpoint as ckpt_mod
from core.augment import Augmenter
from core.channel import Inbox
from core.checkpoint import Position
from core.config import RunConfig, validate
from core.control import Control
from core.data import Dataset, DataSpec, batch_indices, epoch_generator, load_data
from core.device import autocast, describe, prefers_channels_last, resolve_device, resolve_precision
from core.errors import CbamError, CheckpointError
from core.events import (
    BatchLogged,
    CheckpointSaved,
    CommandTaken,
    EpochEnded,
    Event,
    IterLosses,
    Loading,
    ModuleState,
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
)
from core.layout import MODULES, NEW_MODULES
from core.model import ResNet18CBAM, build_model, module_parameters
from core.plan import Stage, assign_groups
from core.run_dir import RunDir
from core.summary import summarize

Emit = Callable[[Event], None]

FINISHED, STOPPED = "finished", "stopped"
PROGRESS_EVERY_S = 0.5
_NEXT, _STOP, _DONE = "next", "stop", "done"


class Trainer:
    def __init__(self, config: RunConfig, emit: Emit, control: Control | None = None) -> None:
        self.config = config
        self._emit_to = emit
        self.control = control or Control()
        self.run_dir: RunDir | None = None
        self.inbox: Inbox | None = None
        self._write_failed = False
        self.best_acc = 0.0
        self.best_epoch = 0
        self.global_step = 0
        self.last_acc = 0.0
        self._nonfinite = False  # weights are no longer finite: never save them over good ones
        self._t_start = time.perf_counter()
        # Per-epoch bookkeeping; paused time is left out of the speed figures.
        self._epoch_t0 = self._t_start
        self._train_s = 0.0  # training time of the epoch, without evaluation or pauses
        self._epoch_seen0 = 0
        self._epoch_batches = 0
        self._paused_s = 0.0
        self._log_paused_s = 0.0
        self._t_log, self._seen_log = self._t_start, 0  # the last loss line: time and images seen
        self.channels_last = False
        self._stage_index = -1  # the stage the optimizer was built for
        self._live: tuple[Position, torch.Tensor, torch.Tensor, int] | None = None
        self.device = torch.device("cpu")
        self.optimizer: torch.optim.Optimizer | None = None

    # --- entry point -----------------------------------------------------------
    def run(self) -> str:
        """Train to the plan's end (FINISHED) or until stopped (STOPPED); raises on failure."""
        self._t_start = time.perf_counter()
        try:
            self._setup()
            return self._loop()
        except CbamError as exc:
            self._emit(RunFailed(str(exc), self._save_on_failure()))
            raise
        except torch.OutOfMemoryError as exc:
            message = (
                f"out of {self.device.type.upper()} memory at batch size {self.config.batch_size}: "
                "try a smaller --batch-size"
            )
            self._emit(RunFailed(message, self._save_on_failure()))
            raise CbamError(message) from exc
        except Exception as exc:
            if self.run_dir is not None:
                log = self.run_dir.path / "error.log"
                log.write_text(traceback.format_exc())
                exc.add_note(f"the traceback is in {log}")
            self._emit(RunFailed(f"{type(exc).__name__}: {exc}", self._save_on_failure()))
            raise
        finally:
            if self.run_dir is not None:
                self.run_dir.close()

    def _emit(self, event: Event) -> None:
        if self.run_dir is not None:
            try:
                self.run_dir.write(event)
            except OSError as exc:
                if not self._write_failed:  # say it once; training goes on
                    self._write_failed = True
                    self._emit_to(SaveFailed(str(self.run_dir.events_path), exc.strerror or str(exc)))
        self._emit_to(event)

    # --- setup -------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        saved: dict[str, Any] | None = None
        if cfg.resume:
            path = ckpt_mod.find_checkpoint(Path(cfg.resume))
            saved = ckpt_mod.load_checkpoint(path)
            base = RunConfig.from_dict(saved["config"])
            cfg = base.replace(
                device=cfg.device, precision=cfg.precision, compile=cfg.compile, log_every=cfg.log_every,
                on_nonfinite=cfg.on_nonfinite, resume=str(path), cache_dir=cfg.cache_dir or base.cache_dir,
            )
            home = ckpt_mod.run_dir_of(path)
            self.run_dir = RunDir.open(home) if home else RunDir.create(Path(cfg.runs_root), cfg.name)
        else:
            validate(cfg)
            explicit = Path(cfg.run_dir) if cfg.run_dir else None
            self.run_dir = RunDir.create(Path(cfg.runs_root), cfg.name, explicit)
        self.config = cfg
        self.inbox = Inbox(self.run_dir.path, self.control, lambda verb, origin: self._emit(CommandTaken(verb, origin)))
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = autocast(self.device, self.precision)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        self._emit(Loading(f"loading {cfg.dataset} data"))
        spec = DataSpec(
            cfg.dataset, cfg.data_dir, cfg.download, cfg.image_size,
            cfg.limit_train, cfg.limit_test, cfg.seed, cfg.cache_dir,
        )
        self.data: Dataset = load_data(spec, lambda m, d, t: self._emit(Loading(m, d, t)))
        num_classes = len(self.data.classes)

        self._emit(Loading("building the model"))
        torch.manual_seed(cfg.seed)
        self.model: ResNet18CBAM = build_model(num_classes, "none" if saved else cfg.weights)
        self.model.frozen_bn = cfg.plan.frozen_bn
        self.position = Position(0, 1)
        self._sums = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        self._opt_state: dict[str, Any] | None = None
        if saved is not None:
            self._restore(saved, num_classes)
        rows = summarize(self.model, cfg.image_size)
        self.model.to(self.device)
        self.channels_last = prefers_channels_last(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Compiled for the training step only: evaluation (inference mode) would be one
        # more guard failure per epoch, and dynamo gives up after a few of those.
        self.step_model: nn.Module = torch.compile(self.model) if cfg.compile else self.model  # type: ignore[assignment]
        self.augment = Augmenter(cfg.augment, self.device)
        self.train_x, self.train_y = self._place(self.data.train.images), self._place(self.data.train.labels)
        self.test_x, self.test_y = self._place(self.data.test.images), self._place(self.data.test.labels)
        n = len(self.data.train)
        self.batches_per_epoch = -(-n // cfg.batch_size)
        self.run_dir.write_config({**cfg.to_dict(), "classes": list(self.data.classes)})
        plan = cfg.plan
        self._emit(
            RunStarted(
                run_name=self.run_dir.path.name, run_dir=str(self.run_dir.path), dataset=cfg.dataset,
                device=describe(self.device), precision=self.precision, train_size=n,
                test_size=len(self.data.test), classes=self.data.classes, batch_size=cfg.batch_size,
                batches_per_epoch=self.batches_per_epoch, total_epochs=plan.total_epochs,
                stages=tuple((s.name, s.epochs) for s in plan.stages), plan_label=plan.label,
                frozen_bn=plan.frozen_bn, total_params=sum(p.numel() for p in self.model.parameters()),
                model_rows=tuple(r.as_tuple() for r in rows), config=cfg.to_dict(),
                resumed_from=cfg.resume, start_stage=self.position.stage + 1,
                start_epoch=self.position.epoch, start_batch=self.position.batch,
                global_step=self.global_step,
            )
        )

    def _place(self, t: torch.Tensor) -> torch.Tensor:
        """Keep a split on the device when it fits comfortably (CIFAR-10 train is 150 MB)."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if t.numel() * t.element_size() > free // 4:
                return t.pin_memory()
        return t.to(self.device)

    def _restore(self, saved: dict[str, Any], num_classes: int) -> None:
        path = self.config.resume
        if len(saved["classes"]) != num_classes or list(saved["classes"]) != list(self.data.classes):
            raise CheckpointError(
                f"checkpoint {path} was trained on {len(saved['classes'])} classes, "
                f"but the data set now has {num_classes}"
            )
        try:
            self.model.load_state_dict(saved["model"], strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise CheckpointError(f"checkpoint {path} does not fit the model: {first}") from None
        pos = saved["position"]
        self.position = Position(int(pos["stage"]), int(pos["epoch"]), int(pos["batch"]), bool(pos["trained"]))
        if self.position.stage >= len(self.config.plan.stages):
            raise CheckpointError(f"the run in {path} has already finished every stage; nothing to resume")
        self._sums = dict(saved["sums"])
        self.best_acc = float(saved["best_acc"])
        self.best_epoch = int(saved["best_epoch"])
        self.global_step = int(saved["global_step"])
        if saved.get("optimizer_stage") == self.position.stage:
            self._opt_state = saved["optimizer"]
        torch.set_rng_state(saved["rng"])

    # --- stages and epochs -------------------------------------------------
    def _loop(self) -> str:
        plan = self.config.plan
        start = self.position
        for si, stage in enumerate(plan.stages):
            if si < start.stage:
                continue
            first, last = plan.epoch_range(si)
            if stage.epochs == 0:
                self._emit(StageSkipped(si + 1, stage.name, "0 epochs"))
                continue
            pos = start if si == start.stage else Position(si, first)
            self._start_stage(si, stage, first, last)
            for epoch in range(pos.epoch, last + 1):
                here = pos if epoch == pos.epoch else Position(si, epoch)
                if not here.trained:
                    result = self._train_epoch(here)
                    if result == _STOP:
                        return STOPPED
                else:  # resumed with only the evaluation of this epoch left
                    self._epoch_t0, self._paused_s, self._train_s = time.perf_counter(), 0.0, 0.0
                    self._epoch_batches, self._epoch_seen0 = here.batch, int(self._sums["seen"])
                    result = _NEXT if here.batch < self.batches_per_epoch else _DONE
                if not self._end_epoch(si, epoch, result == _NEXT):
                    return STOPPED
                if result == _NEXT:
                    break
            start = Position(si + 1, last + 1)
        self._emit(RunFinished(self.last_acc, self.best_acc, self.best_epoch, self._elapsed()))
        return FINISHED

    def _start_stage(self, si: int, stage: Stage, first: int, last: int) -> None:
        groups = assign_groups(self.model, stage)
        param_groups = [{"params": ps, "lr": g.lr, "name": g.name} for g, ps in groups]
        self.optimizer = torch.optim.Adam(param_groups, fused=self.device.type == "cuda")
        if self._opt_state is not None:
            self.optimizer.load_state_dict(self._opt_state)
            self._opt_state = None
        self._stage_index = si
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.model.train()
        lr_of = {id(p): g for g, ps in groups for p in ps}
        self._emit(
            StageStarted(
                stage=si + 1, num_stages=len(self.config.plan.stages), name=stage.name,
                first_epoch=first, last_epoch=last, total_epochs=self.config.plan.total_epochs,
                modules=tuple(self._module_state(n, lr_of) for n in MODULES),
                groups=tuple((g.name, g.lr) for g, _ in groups),
                trainable_params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                total_params=sum(p.numel() for p in self.model.parameters()),
                global_step=self.global_step,
            )
        )

    def _module_state(self, name: str, lr_of: dict[int, Any]) -> ModuleState:
        path = MODULES[name]
        params = [p for _, p in module_parameters(self.model, path)]
        on = [p for p in params if p.requires_grad]
        trainable = "yes" if len(on) == len(params) else "no" if not on else "partial"
        group = lr_of[id(on[0])] if on else None
        module = self.model.get_submodule(path)
        bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        modes = {"train" if m.training else "eval" for m in bns}
        bn_mode = None if not bns else modes.pop() if len(modes) == 1 else "mixed"
        return ModuleState(
            name, path, trainable, group.lr if group else None, group.name if group else None,
            sum(p.numel() for p in params), bn_mode, name in NEW_MODULES,
        )

    def _train_epoch(self, pos: Position) -> str:
        cfg, dev = self.config, self.device
        si, epoch = pos.stage, pos.epoch
        self.model.train()
        batches = list(batch_indices(len(self.train_y), cfg.batch_size, cfg.seed, epoch, self.train_y.device))
        loss_sum = torch.tensor(float(self._sums["loss_sum"]), device=dev)
        correct = torch.tensor(int(self._sums["correct"]), device=dev)
        seen = int(self._sums["seen"])
        pending: list[torch.Tensor] = []
        self._epoch_t0 = time.perf_counter()
        self._paused_s = 0.0
        self._epoch_seen0 = seen
        self._t_log, self._seen_log = self._epoch_t0, seen
        t_progress = 0.0
        channels_last = self.channels_last
        opt = self.optimizer
        assert opt is not None, "a stage builds the optimizer before its epochs"
        for b in range(pos.batch, self.batches_per_epoch):
            self._live = (Position(si, epoch, b), loss_sum, correct, seen)
            signal = self._boundary(self._live[0])
            if signal is not None:
                self._flush(pending, si)
                if signal == _STOP:
                    self._stop(self._live[0], loss_sum, correct, seen)
                    return _STOP
                self._sums = self._host_sums(loss_sum, correct, seen)
                self._epoch_batches = b
                self._train_s = time.perf_counter() - self._epoch_t0 - self._paused_s
                return _NEXT
            idx = batches[b]
            x = self.train_x[idx.to(self.train_x.device)].to(dev, non_blocking=True)
            y = self.train_y[idx.to(self.train_y.device)].to(dev, non_blocking=True)
            x = self.augment.train(x, epoch_generator(cfg.seed, epoch, b, dev))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                out = self.step_model(x)
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            self.scaler.step(opt)
            self.scaler.update()
            d = loss.detach().float()
            loss_sum += d * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            pending.append(d)
            self.global_step += 1
            done = b + 1
            now = time.perf_counter()
            if now - t_progress >= PROGRESS_EVERY_S:  # host-side counters only: no sync
                t_progress = now
                ips = (seen - self._epoch_seen0) / max(now - self._epoch_t0 - self._paused_s, 1e-9)
                self._emit(Progress(si + 1, epoch, done, self.batches_per_epoch, ips))
            at_log = done % cfg.log_every == 0 or done == self.batches_per_epoch
            if at_log and not self._log_point(Position(si, epoch, done), pending, loss_sum, seen):
                return self._on_nonfinite(Position(si, epoch, done), loss_sum, correct, seen)
        self._sums = self._host_sums(loss_sum, correct, seen)
        self._epoch_batches = self.batches_per_epoch
        self._train_s = time.perf_counter() - self._epoch_t0 - self._paused_s
        return _DONE

    def _log_point(self, pos: Position, pending: list[torch.Tensor], loss_sum: torch.Tensor, seen: int) -> bool:
        """The only host syncs of the step loop: iteration losses, and every --log-every
        batches the loss line. False if a loss is not finite."""
        losses = self._flush(pending, pos.stage)
        if not all(torch.isfinite(torch.tensor(losses))):
            return False
        if pos.batch % self.config.log_every == 0:
            now = time.perf_counter()
            ips = (seen - self._seen_log) / max(now - self._t_log - self._log_paused_s, 1e-9)
            self._log_paused_s = 0.0
            self._t_log, self._seen_log = now, seen
            self._emit(
                BatchLogged(
                    pos.stage + 1, pos.epoch, self.config.plan.total_epochs, pos.batch, self.batches_per_epoch,
                    losses[-1], loss_sum.item() / seen, ips, self.global_step,
                )
            )
        return True

    def _flush(self, pending: list[torch.Tensor], si: int) -> list[float]:
        """Send the iteration losses since the last chunk: one host sync per log point."""
        if not pending:
            return []
        losses = torch.stack(pending).tolist()
        self._emit(IterLosses(self.global_step - len(losses) + 1, tuple(losses), si + 1))
        pending.clear()
        return losses

    @staticmethod
    def _host_sums(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> dict[str, Any]:
        return {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "seen": seen}

    def _boundary(self, pos: Position, pause_reason: str = "user") -> str | None:
        """Obey the Control at a batch boundary: stop, save, next stage, pause."""
        was_paused = False
        t0 = time.perf_counter()
        try:
            while True:
                if self.inbox is not None:
                    self.inbox.poll()
                if self.control.stop_reason is not None:
                    return _STOP
                if self.control.take_save() and self._live is not None:
                    _, loss_sum, correct, seen = self._live
                    self._save(pos, self._host_sums(loss_sum, correct, seen), "save")
                if self.control.take_next_stage():
                    return _NEXT
                if not self.control.paused:
                    if was_paused:
                        self._emit(Resumed(pos.stage + 1, pos.epoch, pos.batch))
                    return None
                if not was_paused:
                    was_paused = True
                    self._emit(Paused(pos.stage + 1, pos.epoch, pos.batch, pause_reason))
                self.control.wait_while_paused(0.25)
        finally:
            if was_paused:
                spent = time.perf_counter() - t0
                self._paused_s += spent
                self._log_paused_s += spent

    def _on_nonfinite(self, pos: Position, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> str:
        self._nonfinite = True
        where = f"non-finite loss at epoch {pos.epoch}, batch {pos.batch}"
        last = self.run_dir.last_checkpoint if self.run_dir else None
        kept = str(last) if last is not None and last.exists() else None
        if self.config.on_nonfinite == "pause":
            # The weights are no longer finite: stay paused (resume and next stage
            # would train on garbage) until the person stops the run.
            self._live = (pos, loss_sum, correct, seen)
            self.control.pause()
            while self._boundary(pos, f"{where}; the last finite checkpoint is kept") != _STOP:
                self.control.pause()
            self._stop(pos, loss_sum, correct, seen, reason=where)
            return _STOP
        self._emit(RunStopped(where, pos.stage + 1, pos.epoch, pos.batch, kept))
        return _STOP

    def _end_epoch(self, si: int, epoch: int, cut: bool) -> bool:
        """Evaluate, report, checkpoint. False when a stop arrived during evaluation."""
        plan = self.config.plan
        first, last = plan.epoch_range(si)
        trained_pos = Position(si, epoch, self._epoch_batches, trained=True)
        result = self._evaluate()
        if result is None:
            self._stop(trained_pos, None, None, 0)
            return False
        test_loss, test_acc = result
        s = self._sums
        seconds = time.perf_counter() - self._epoch_t0 - self._paused_s
        seen_now = s["seen"] - self._epoch_seen0
        improved = test_acc > self.best_acc or self.best_epoch == 0
        if improved:
            self.best_acc, self.best_epoch = test_acc, epoch
        self.last_acc = test_acc
        self._emit(
            EpochEnded(
                si + 1, epoch, plan.total_epochs, epoch - first + 1, last - first + 1, self._epoch_batches,
                s["loss_sum"] / max(s["seen"], 1), 100.0 * s["correct"] / max(s["seen"], 1), test_loss, test_acc,
                seconds, seen_now / self._train_s if self._train_s > 0 else 0.0, self.best_acc, self.global_step,
            )
        )
        self._sums = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        nxt = Position(si + 1, last + 1) if cut or epoch == last else Position(si, epoch + 1)
        self._save(nxt, self._sums, "epoch")
        if improved:
            self._save(nxt, self._sums, "best", name="best.pt")
        return True

    def _evaluate(self) -> tuple[float, float] | None:
        """Test loss (per-image mean) and accuracy in percent; None if a stop arrived."""
        self.model.eval()
        dev = self.device
        eval_batch = min(max(self.config.batch_size * 4, 256), 2048)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        n = len(self.test_y)
        with torch.inference_mode(), self.autocast():
            for i in range(0, n, eval_batch):
                if self.inbox is not None:
                    self.inbox.poll()
                if self.control.stop_reason is not None:
                    return None
                x = self.augment.test(self.test_x[i : i + eval_batch].to(dev, non_blocking=True))
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = self.test_y[i : i + eval_batch].to(dev, non_blocking=True)
                out = self.model(x).float()
                loss_sum += F.cross_entropy(out, y, reduction="sum")
                correct += (out.argmax(1) == y).sum()
        self.model.train()
        return loss_sum.item() / n, 100.0 * correct.item() / n

    # --- checkpoints ---------------------------------------------------------
    def _state(self, pos: Position, sums: dict[str, Any]) -> dict[str, Any]:
        assert self.optimizer is not None
        return {
            "format": ckpt_mod.FORMAT,
            "version": 1,
            "arch": ckpt_mod.ARCH,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_stage": self._stage_index,
            "config": self.config.to_dict(),
            "classes": list(self.data.classes),
            "position": {"stage": pos.stage, "epoch": pos.epoch, "batch": pos.batch, "trained": pos.trained},
            "sums": dict(sums),
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "global_step": self.global_step,
            "rng": torch.get_rng_state(),
        }

    def _save(self, pos: Position, sums: dict[str, Any], reason: str, name: str = "last.pt") -> str | None:
        if self.run_dir is None or self._nonfinite or self.optimizer is None:
            return None
        target = self.run_dir.checkpoints / name
        try:
            path = self.run_dir.save_checkpoint(self._state(pos, sums), name)
        except OSError as exc:
            self._emit(SaveFailed(str(target), f"{exc.strerror or exc}; the previous checkpoint is kept"))
            return None
        self._emit(CheckpointSaved(str(path), reason, pos.stage + 1, pos.epoch, pos.batch))
        return str(path)

    def _stop(
        self, pos: Position, loss_sum: torch.Tensor | None, correct: torch.Tensor | None, seen: int,
        reason: str | None = None,
    ) -> None:
        sums = self._sums if loss_sum is None or correct is None else self._host_sums(loss_sum, correct, seen)
        path = self._save(pos, sums, "stop")
        why = reason or self.control.stop_reason or "stopped"
        self._emit(RunStopped(why, pos.stage + 1, pos.epoch, pos.batch, path))

    def _save_on_failure(self) -> str | None:
        if self._live is None:
            return None
        try:
            pos, loss_sum, correct, seen = self._live
            return self._save(pos, self._host_sums(loss_sum, correct, seen), "failure")
        except Exception:
            return None

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t_start
