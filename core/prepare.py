"""Preparing a run: its config (and checkpoint, on resume), device, data, model and
run directory, in an order that writes nothing until everything a user can get
wrong has been checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core import checkpoint as ckpt_mod
from core.augment import Augmenter
from core.checkpoint import Position
from core.config import SYNC_BN_NEEDS_CUDA, RunConfig, merge_resume, parse_classes, validate
from core.data import Dataset, DataSpec, count_batches, load_data
from core.device import autocast, prefers_channels_last, resolve_device, resolve_precision
from core.errors import CheckpointError, ConfigError
from core.events import EpochEnded, LayerRow, Loading
from core.meter import Sums
from core.model import ResNet18CBAM, build_model
from core.rundir import RunDir
from core.threads import ThreadChoice, choose_threads
from core.tree import summarize

if TYPE_CHECKING:
    from core.dist import Group


@dataclass
class Restored:
    """What a checkpoint hands back to a resumed run."""

    path: Path
    position: Position
    sums: Sums
    best_acc: float
    best_epoch: int
    global_step: int
    optimizer: dict[str, Any]
    optimizer_stage: int
    scaler: dict[str, Any] | None
    history: list[EpochEnded]
    base_lrs: list[float]  # the stage's rates as live changes left them


@dataclass
class Setup:
    config: RunConfig
    device: torch.device
    precision: str
    autocast: Callable[[], Any]
    channels_last: bool
    data: Dataset
    model: ResNet18CBAM
    step_model: nn.Module  # the compiled model under --compile, else the model itself
    augment: Augmenter
    batches_per_epoch: int
    rows: list[LayerRow]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    restored: Restored | None = None
    rundir: RunDir | None = field(default=None, repr=False)
    world: int = 1  # training processes; a batch of the loop is batch_size x world images
    threads: ThreadChoice | None = None  # torch's CPU threads, and why that many

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.world


def prepare(
    config: RunConfig, emit: Callable[[Loading], None], rundir: RunDir | None = None, group: Group | None = None,
    cpu_reserve: int = 0,
) -> Setup:
    """Everything a Trainer needs; ``rundir`` when the caller already holds the run
    (a detached child, rank 0 of a launched group). With a ``group``, only rank 0 claims
    a run directory. ``cpu_reserve``: cores left for this process's other threads when
    torch's threads are chosen. Raises CbamError with one sentence for anything a user can fix."""
    saved: ckpt_mod.Saved | None = None
    if config.resume:
        where = config.resume
        path = ckpt_mod.find_checkpoint(Path(where))
        saved = ckpt_mod.read(path)
        config = merge_resume(saved.config, config, str(path))
        ckpt_mod.check_unfinished(saved.position.stage, config, where)
    else:
        validate(config)
    world = group.world if group else 1
    if config.sync_bn and group is None:
        raise ConfigError("--sync-bn needs several processes (--nproc-per-node N, torchrun or srun)")
    device = group.device if group else resolve_device(config.device)
    if config.sync_bn and device.type != "cuda":
        raise ConfigError(SYNC_BN_NEEDS_CUDA)
    precision = resolve_precision(config.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    threads = choose_threads(config.threads, cpu_reserve, "this process's other threads")
    torch.set_num_threads(threads.threads)

    emit(Loading(f"loading {config.dataset} data"))
    spec = DataSpec(
        config.dataset, config.data_dir, config.download, config.image_size,
        config.limit_train, config.limit_test, config.seed, config.cache_dir,
        parse_classes(config.classes) if config.classes else (),
    )
    if group is not None and not group.leader:
        group.wait_leader("data")  # rank 0 fills the decoded-image cache; the others read it after
    data = load_data(spec, lambda m, d, t: emit(Loading(m, d, t)))
    if group is not None and group.leader:
        group.leader_done("data")
    if len(data.train) < 2 * world:
        raise ConfigError(f"{len(data.train)} training images cannot be shared by {world} processes (2 each at least)")

    emit(Loading("building the model"))
    torch.manual_seed(config.seed)
    model = build_model(len(data.classes), "none" if saved else config.weights)
    model.frozen_bn = config.plan.frozen_bn
    restored = _restore(saved, model, data, config, world) if saved is not None else None
    if config.sync_bn:  # BatchNorm layers in train mode compute their statistics over every process
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]  # in place
    rows = summarize(model, config.image_size)
    model.to(device)
    channels_last = prefers_channels_last(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # Compiled for the training step only: evaluation (inference mode) would be one
    # more guard failure per epoch, and dynamo gives up after a few of those.
    step_model: nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]

    setup = Setup(
        config=config, device=device, precision=precision, autocast=autocast(device, precision),
        channels_last=channels_last, data=data, model=model, step_model=step_model,
        augment=Augmenter(config.augment, device),
        batches_per_epoch=count_batches(len(data.train), config.batch_size * world, 2 * world),
        rows=rows, train_x=_place(data.train.images, device), train_y=_place(data.train.labels, device),
        test_x=_place(data.test.images, device), test_y=_place(data.test.labels, device), restored=restored,
        world=world, threads=threads,
    )
    if group is None or group.leader:
        setup.rundir = rundir or _claim_run_dir(config, restored)
    return setup


def _claim_run_dir(config: RunConfig, restored: Restored | None) -> RunDir:
    if restored is not None:
        home = ckpt_mod.run_dir_of(restored.path)
        if home is not None:
            return RunDir.open(home, config.group_control)
    if config.run_dir:
        return RunDir.create_at(Path(config.run_dir), config.group_control)
    return RunDir.create(Path(config.runs_root), config.name, config.group_control)


def _restore(saved: ckpt_mod.Saved, model: ResNet18CBAM, data: Dataset, config: RunConfig, world: int) -> Restored:
    path = Path(str(config.resume))
    classes = saved.classes
    if list(classes) != list(data.classes):
        raise CheckpointError(
            f"checkpoint {path} was trained on {len(classes)} classes ({', '.join(classes[:3])}...), "
            f"but the data set now has {len(data.classes)} ({', '.join(data.classes[:3])}...)"
        )
    try:
        model.load_state_dict(saved.model, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else lines[0]
        raise CheckpointError(f"checkpoint {path} does not fit the model: {first}") from None
    position = saved.position
    before = saved.global_batch or saved.config.batch_size
    _check_restorable(saved, config, len(data.train), before, path)
    torch.set_rng_state(saved.rng)
    if position.batch and not position.trained and before != config.batch_size * world:
        position = position.regrouped(before, config.batch_size * world)  # another number of processes
    return Restored(
        path=path,
        position=position,
        sums=saved.sums,
        best_acc=saved.best_acc,
        best_epoch=saved.best_epoch,
        global_step=saved.global_step,
        optimizer=saved.optimizer,
        optimizer_stage=saved.optimizer_stage,
        scaler=saved.scaler,
        history=list(saved.history),
        base_lrs=list(saved.base_lrs),
    )


def _check_restorable(saved: ckpt_mod.Saved, config: RunConfig, images: int, global_batch: int, path: Path) -> None:
    """One sentence for fields whose digest matches but that no run of this plan and data
    could have saved (the digest proves the bytes whole, not who wrote them)."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a usable checkpoint: {what}")

    pos, stages = saved.position, config.plan.stages
    if not 1 <= pos.epoch <= sum(st.epochs for st in stages) + 1:
        raise bad(f"its position's epoch {pos.epoch} is not one of the plan's")
    if pos.images(global_batch) > images + global_batch:
        raise bad(f"its position's batch {pos.batch} lies beyond an epoch of {images} images")
    if not 0 <= saved.best_epoch <= pos.epoch or not 0 <= saved.best_acc <= 100:
        raise bad("its best epoch is not one it trained")
    if not -1 <= saved.optimizer_stage <= min(pos.stage, len(stages) - 1):
        raise bad(f"its optimizer's stage {saved.optimizer_stage} is not one the run has reached")
    if saved.optimizer_stage >= 0:
        groups = saved.optimizer.get("param_groups") if isinstance(saved.optimizer, dict) else None
        if not isinstance(groups, list) or len(groups) != len(stages[saved.optimizer_stage].groups):
            raise bad(f"its optimizer does not hold stage {saved.optimizer_stage + 1}'s groups")
    rng = torch.get_rng_state()
    if saved.rng.shape != rng.shape:
        raise bad("its random state is not torch's")


def _place(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep a split on the device when it fits comfortably (CIFAR-10 train is 150 MB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if t.numel() * t.element_size() > free // 4:
            return t.pin_memory()
    return t.to(device)
