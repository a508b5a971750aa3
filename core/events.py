"""The event stream: the only thing a consumer (headless reporter, run directory,
dashboard) ever sees of a run. Events hold plain ints, floats, strings, tuples
and JSON-able dicts, never tensors, and each serialises to one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

_REGISTRY: dict[str, type[Event]] = {}


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = ""
    transient: ClassVar[bool] = False  # True: shown live, never written to events.jsonl

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its JSON form (lists become tuples again)."""
    cls = _REGISTRY[data["event"]]
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _tuples(data[f.name])
    if cls is StageStarted:
        kwargs["modules"] = tuple(ModuleState(**m) for m in data["modules"])
    return cls(**kwargs)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


@dataclass(frozen=True)
class ModuleState:
    """One row of the module table for a stage."""

    name: str  # display name: conv1, bn1, layer1, cbam1, ... fc
    path: str  # module path in the state dict: backbone.layer1
    trainable: str  # "yes", "no" or "partial"
    lr: float | None  # of its group; None when frozen
    group: str | None
    params: int
    bn_mode: str | None  # "train"/"eval" for modules holding BatchNorm, else None
    new: bool  # not from the pretrained weights


@dataclass(frozen=True)
class Loading(Event):
    """Progress before training starts (building the model, decoding images)."""

    kind: ClassVar[str] = "loading"
    message: str
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_name: str
    run_dir: str
    dataset: str
    device: str
    precision: str
    train_size: int
    test_size: int
    classes: tuple[str, ...]
    batch_size: int
    batches_per_epoch: int
    total_epochs: int
    stages: tuple[tuple[str, int], ...]  # (name, epochs)
    plan_label: str
    frozen_bn: str
    total_params: int
    model_rows: tuple[tuple[Any, ...], ...]  # core.summary.Row as tuples
    config: dict[str, Any]
    resumed_from: str | None = None
    start_stage: int = 1
    start_epoch: int = 1
    start_batch: int = 0
    global_step: int = 0  # iterations already done (resume)


@dataclass(frozen=True)
class StageStarted(Event):
    kind: ClassVar[str] = "stage_started"
    stage: int  # 1-based
    num_stages: int
    name: str
    first_epoch: int
    last_epoch: int
    total_epochs: int
    modules: tuple[ModuleState, ...]
    groups: tuple[tuple[str, float], ...]  # (group name, lr)
    trainable_params: int
    total_params: int
    global_step: int


@dataclass(frozen=True)
class StageSkipped(Event):
    kind: ClassVar[str] = "stage_skipped"
    stage: int
    name: str
    reason: str  # "0 epochs" or "next stage"


@dataclass(frozen=True)
class BatchLogged(Event):
    """Every --log-every batches: the seed's per-100-batch line."""

    kind: ClassVar[str] = "batch_logged"
    stage: int
    epoch: int
    total_epochs: int
    batch: int  # 1-based, within the epoch
    batches: int
    loss: float  # this batch
    avg_loss: float  # running mean over the epoch so far
    images_per_second: float
    global_step: int


@dataclass(frozen=True)
class Progress(Event):
    """Where the loop is, at most twice a second; for live displays, not kept on disk."""

    kind: ClassVar[str] = "progress"
    transient: ClassVar[bool] = True
    stage: int
    epoch: int
    batch: int  # batches done in this epoch
    batches: int
    images_per_second: float  # since the epoch (or the resume) started


@dataclass(frozen=True)
class IterLosses(Event):
    """The loss of every iteration since the last chunk (for the iteration curve)."""

    kind: ClassVar[str] = "iter_losses"
    first_step: int  # global iteration number of losses[0], 1-based
    losses: tuple[float, ...]
    stage: int


@dataclass(frozen=True)
class EpochEnded(Event):
    kind: ClassVar[str] = "epoch_ended"
    stage: int
    epoch: int
    total_epochs: int
    epoch_in_stage: int
    stage_epochs: int
    batches_done: int  # fewer than an epoch when "next stage" cut it short
    train_loss: float
    train_acc: float  # percent
    test_loss: float
    test_acc: float  # percent
    seconds: float  # wall time of the epoch, evaluation included, pauses not
    images_per_second: float  # training images per second of training time
    best_acc: float
    global_step: int


@dataclass(frozen=True)
class CommandTaken(Event):
    """A command from the run directory's control channel (`ctl`, an attached dashboard)."""

    kind: ClassVar[str] = "command"
    verb: str  # pause, resume, next, save or stop
    origin: str  # who sent it: "ctl pid 123", "watch pid 456"


@dataclass(frozen=True)
class Watching(Event):
    """An attached dashboard's own news: whether it can steer the run it follows."""

    kind: ClassVar[str] = "watching"
    transient: ClassVar[bool] = True
    run_dir: str
    can_control: bool
    detail: str  # "controlling pid 123", or why it only watches


@dataclass(frozen=True)
class Paused(Event):
    kind: ClassVar[str] = "paused"
    stage: int
    epoch: int
    batch: int
    reason: str  # "user" or why the run paused itself


@dataclass(frozen=True)
class Resumed(Event):
    kind: ClassVar[str] = "resumed"
    stage: int
    epoch: int
    batch: int


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint_saved"
    path: str
    reason: str  # "epoch", "best", "save", "stop"
    stage: int
    epoch: int
    batch: int


@dataclass(frozen=True)
class SaveFailed(Event):
    kind: ClassVar[str] = "save_failed"
    path: str
    message: str


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    final_acc: float
    best_acc: float
    best_epoch: int
    seconds: float


@dataclass(frozen=True)
class RunStopped(Event):
    """Stopped before the plan's end (stop key, Ctrl-C, SIGTERM, SIGHUP); resumable."""

    kind: ClassVar[str] = "run_stopped"
    reason: str
    stage: int
    epoch: int
    batch: int
    checkpoint: str | None


@dataclass(frozen=True)
class RunFailed(Event):
    kind: ClassVar[str] = "run_failed"
    message: str
    checkpoint: str | None = None
