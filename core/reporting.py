"""The events the loop reports, built from what it holds: a run's start, a stage's
start with each module's state, a loss line, an epoch's end, and the curves a
finished run leaves. Events carry plain values, never tensors or modules.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import TYPE_CHECKING

import torch

from core.checkpoint import Position
from core.device import describe
from core.events import BatchLogged, EpochEnded, ModuleState, RunStarted, StageStarted
from core.layout import MODULES, NEW_MODULES
from core.meter import Clock, EpochRun, Sums
from core.model import module_parameters

if TYPE_CHECKING:
    from core.evaluate import Evaluation
    from core.plan import Group
    from core.prepare import Setup
    from core.rundir import RunDir


def run_started(s: Setup, rundir: RunDir, start: Position, global_step: int) -> RunStarted:
    cfg, plan = s.config, s.config.plan
    return RunStarted(
        run_name=rundir.path.name, run_dir=str(rundir.path), dataset=cfg.dataset, device=describe(s.device),
        precision=s.precision, train_size=len(s.data.train), test_size=len(s.data.test),
        classes=s.data.classes, batch_size=cfg.batch_size, batches_per_epoch=s.batches_per_epoch,
        total_epochs=plan.total_epochs, stages=tuple((st.name, st.epochs) for st in plan.stages),
        plan_label=plan.label, frozen_bn=plan.frozen_bn, moments=plan.moments,
        total_params=sum(p.numel() for p in s.model.parameters()), model_rows=tuple(s.rows),
        config=cfg.to_dict(), skipped_files=s.data.skipped, resumed_from=cfg.resume,
        start_stage=start.stage + 1, start_epoch=start.epoch, start_batch=start.batch,
        global_step=global_step, world_size=s.world,
        threads=s.threads.threads if s.threads else 0, threads_why=s.threads.why if s.threads else "",
    )


def stage_started(
    s: Setup, si: int, groups: list[tuple[Group, list[torch.nn.Parameter]]], rates: list[float], kept: int,
    global_step: int,
) -> StageStarted:
    """Stage ``si`` (0-based) as its optimizer made it: which modules train, in which group, at
    what rate (``rates``: each group's base rate in force, a resumed live change included)."""
    plan = s.config.plan
    group_of = {id(p): (g.name, rate) for (g, ps), rate in zip(groups, rates, strict=True) for p in ps}
    trainable = {n: p.numel() for n, p in s.model.named_parameters() if p.requires_grad}
    first, last = plan.epoch_range(si)
    return StageStarted(
        stage=si + 1, num_stages=len(plan.stages), name=plan.stages[si].name, first_epoch=first,
        last_epoch=last, total_epochs=plan.total_epochs,
        modules=tuple(_module_state(s.model, name, group_of) for name in MODULES),
        groups=tuple((g.name, rate) for (g, _), rate in zip(groups, rates, strict=True)),
        trainable_params=sum(trainable.values()), total_params=sum(p.numel() for p in s.model.parameters()),
        global_step=global_step, kept_moments=kept,
        row_trainable=tuple(
            sum(n for name, n in trainable.items() if not row.path or name.startswith(row.path + "."))
            for row in s.rows
        ),
    )


def _module_state(model: torch.nn.Module, name: str, group_of: dict[int, tuple[str, float]]) -> ModuleState:
    path = MODULES[name]
    params = [p for _, p in module_parameters(model, path)]
    on = [p for p in params if p.requires_grad]
    trainable = "yes" if len(on) == len(params) else "no" if not on else "partial"
    group = group_of[id(on[0])] if on else None
    bns = [m for m in model.get_submodule(path).modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    modes = {"train" if m.training else "eval" for m in bns}
    bn_mode = None if not bns else modes.pop() if len(modes) == 1 else "mixed"
    return ModuleState(
        name, path, trainable, group[1] if group else None, group[0] if group else None,
        sum(p.numel() for p in params), bn_mode, name in NEW_MODULES,
    )


def loss_line(
    s: Setup, ep: EpochRun, batches: int, lrs: tuple[float, ...], global_step: int,
) -> BatchLogged | None:
    """The loss line of the batches since the last one (None if there were none); its reads
    are host syncs, and in a group collectives that every rank makes at the same step."""
    if not ep.meter.window_batches:
        return None
    mean = ep.meter.take_window()
    sums = ep.meter.host()
    seen = sums.seen
    ips = (seen - ep.log_seen) / ep.log_clock.elapsed()
    ep.log_clock, ep.log_seen = Clock(), seen
    norms: tuple[float, ...] = tuple(ep.grad_norms.tolist()) if ep.grad_norms is not None else ()
    return BatchLogged(
        ep.position.stage + 1, ep.position.epoch, s.config.plan.total_epochs, ep.batch, batches, mean,
        sums.loss_sum / max(seen, 1), ips, global_step, lrs, norms,
    )


def epoch_ended(
    s: Setup, ep: EpochRun, sums: Sums, result: Evaluation, best_acc: float, best_epoch: int, global_step: int,
) -> EpochEnded:
    """The record of an epoch: its training figures (``sums``) and its test pass."""
    plan = s.config.plan
    si, epoch = ep.position.stage, ep.position.epoch
    first, last = plan.epoch_range(si)
    return EpochEnded(
        si + 1, epoch, plan.total_epochs, epoch - first + 1, last - first + 1, ep.batch,
        sums.loss_sum / max(sums.seen, 1), 100.0 * sums.correct / max(sums.seen, 1), result.loss, result.accuracy,
        ep.seconds_before + ep.clock.elapsed(), _rate(sums.seen - ep.untimed, ep.training_seconds()),
        max(best_acc, result.accuracy) if best_epoch else result.accuracy, global_step,
    )


def _rate(images: int, seconds: float) -> float:
    return images / seconds if images and seconds > 0 else 0.0


def write_curves(rundir: RunDir) -> None:
    """curves.png in the run directory, when matplotlib is installed; a finished run
    stays finished whatever happens here."""
    if importlib.util.find_spec("matplotlib") is None:
        return
    from core.export import png_bytes

    with contextlib.suppress(Exception):
        rundir.write_curves(png_bytes(rundir.path))
