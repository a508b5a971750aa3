"""The event stream: the only thing a consumer (headless reporter, run directory,
dashboard) ever sees of a run. Events hold plain ints, floats, strings, tuples,
small frozen dataclasses and JSON-able dicts, never tensors, and each
serialises to one JSON object.

Reading one back (`from_dict`) treats the JSON as untrusted input: every field
is checked against its declared type, strings lose their control characters,
and anything that does not fit is a `BadEvent`, never a crash further on.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

_REGISTRY: dict[str, type[Event]] = {}
MAX_TEXT = 4096  # characters of any one string read back


class BadEvent(ValueError):
    """A JSON object that is not a valid event of this version."""


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


def from_dict(data: object) -> Event:
    """Rebuild an event from its JSON form; BadEvent says why it cannot be one."""
    if not isinstance(data, dict):
        raise BadEvent("not a JSON object")
    kind = data.get("event")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BadEvent(f"unknown event {str(kind)[:40]!r}")
    return typing.cast(Event, _build(cls, data, cls.kind))


def from_json(line: str | bytes) -> Event:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise BadEvent(f"not JSON ({exc.__class__.__name__})") from None
    return from_dict(data)


def clean_text(text: str) -> str:
    """Control characters shown escaped, so a hostile string cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type, data: dict[str, Any], where: str) -> object:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BadEvent(f"{where} lacks {f.name!r}")
    return cls(**kwargs)


def _check(value: Any, tp: Any, where: str) -> Any:
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(value, inner[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return clean_text(value[:MAX_TEXT])
    elif origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], where) for v in value)
        if len(args) == len(value):
            return tuple(_check(v, a, where) for v, a in zip(value, args, strict=True))
    elif origin is dict and isinstance(value, dict):
        return value
    elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return _build(typing.cast(type, tp), value, where)
    raise BadEvent(f"{where} is not a valid {getattr(tp, '__name__', tp)}")


# --- plain records carried by events --------------------------------------------


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
class LayerRow:
    """One row of the torchinfo-style model tree."""

    path: str  # "" for the root, else the dotted module path
    type: str
    depth: int  # 0 for the root
    output_shape: tuple[int, ...]  # () when the module is not called in forward
    params: int  # all parameters under this module (recursive, as torchinfo counts)
    is_cbam: bool  # a CBAM block or inside one


# --- the events ------------------------------------------------------------------


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
    batch_size: int  # per process
    batches_per_epoch: int
    total_epochs: int
    stages: tuple[tuple[str, int], ...]  # (name, epochs)
    plan_label: str
    frozen_bn: str
    moments: str  # optimizer state at a stage switch: "fresh" or "keep"
    total_params: int
    model_rows: tuple[LayerRow, ...]
    config: dict[str, Any]
    skipped_files: int = 0  # unreadable image files left out
    resumed_from: str | None = None
    start_stage: int = 1
    start_epoch: int = 1
    start_batch: int = 0
    global_step: int = 0  # iterations already done (resume)
    world_size: int = 1  # training processes; the global batch is batch_size x world_size


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
    kept_moments: int = 0  # parameters whose Adam moments carried over from the last stage
    row_trainable: tuple[int, ...] = ()  # trainable parameters under each RunStarted.model_rows row


@dataclass(frozen=True)
class StageSkipped(Event):
    kind: ClassVar[str] = "stage_skipped"
    stage: int
    name: str
    reason: str  # "0 epochs" or "next stage"


@dataclass(frozen=True)
class BatchLogged(Event):
    """Every --log-every batches (and at an epoch's end): the seed's per-100-batch line."""

    kind: ClassVar[str] = "batch_logged"
    stage: int
    epoch: int
    total_epochs: int
    batch: int  # 1-based, within the epoch
    batches: int
    loss: float  # mean over the batches since the last line
    avg_loss: float  # running mean over the epoch so far
    images_per_second: float
    global_step: int
    lrs: tuple[float, ...] = ()  # each optimizer group's learning rate now (StageStarted.groups order)
    grad_norms: tuple[float, ...] = ()  # each group's gradient L2 norm at this batch


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
    data_share: float = 0.0  # of the host's time per step, the part spent preparing the batch


@dataclass(frozen=True)
class Evaluating(Event):
    """The test set's evaluation under way after an epoch (or a cut one); live only."""

    kind: ClassVar[str] = "evaluating"
    transient: ClassVar[bool] = True
    stage: int
    epoch: int
    done: int  # test images evaluated
    total: int


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    utilization: float  # percent
    memory_used: int  # bytes
    memory_total: int
    power: float  # watts; -1 when the device does not say
    temperature: float  # degrees C; -1 when unknown


@dataclass(frozen=True)
class SystemSample(Event):
    """The machine as the training process sees it, at most once a second; live only."""

    kind: ClassVar[str] = "system"
    transient: ClassVar[bool] = True
    cpu_percent: float  # of one core, this process
    rss: int  # bytes resident, this process
    gpus: tuple[GpuSample, ...] = ()
    cuda_peak: int = 0  # bytes: the most this process's tensors held on its CUDA device
    note: str = ""  # why there are no GPU figures


@dataclass(frozen=True)
class ClassAccuracy(Event):
    """Per-class test results of an epoch, from the evaluation that already runs."""

    kind: ClassVar[str] = "class_accuracy"
    stage: int
    epoch: int
    correct: tuple[int, ...]  # per class (RunStarted.classes order)
    total: tuple[int, ...]
    confusion: tuple[tuple[int, ...], ...] = ()  # [true][predicted]; () beyond 50 classes


@dataclass(frozen=True)
class BlockAttention:
    """What one CBAM block does to one image."""

    block: str  # cbam1 ... cbam4
    size: int  # the spatial map is size x size
    spatial: tuple[int, ...]  # the map, row-major, 0-255 for 0.0-1.0
    channel_mean: float  # of the channel weights (0-1)
    channel_std: float
    channel_above_half: float  # share of channels weighted above 0.5


@dataclass(frozen=True)
class AttentionImage:
    label: str  # the image's class
    predicted: str
    size: int  # the thumbnail is size x size
    pixels: tuple[int, ...]  # RGB, row-major, 3 values a pixel
    blocks: tuple[BlockAttention, ...]


@dataclass(frozen=True)
class AttentionMaps(Event):
    """At an epoch's end, what the CBAM blocks attend to in a fixed handful of test images."""

    kind: ClassVar[str] = "attention"
    stage: int
    epoch: int
    images: tuple[AttentionImage, ...]


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
    """A command from the run directory's inbox (`ctl`, an attached dashboard)."""

    kind: ClassVar[str] = "command"
    verb: str  # pause, resume, next, save, stop, lr or epochs
    origin: str  # who sent it: "ctl pid 123", "watch pid 456"
    global_step: int = 0  # the step at whose end it took effect
    value: str = ""  # lr: "3e-4" or "x0.5"; epochs: "+2"
    group: str = ""  # lr: the one group it is for, if not all
    rank_steps: tuple[int, ...] = ()  # several processes: the step at which each rank applied it


@dataclass(frozen=True)
class RatesChanged(Event):
    """The stage's learning rates changed live (a key, `ctl lr`); a schedule goes on from them."""

    kind: ClassVar[str] = "rates_changed"
    origin: str
    stage: int
    groups: tuple[str, ...]
    before: tuple[float, ...]  # each group's base rate (before its schedule's factor)
    after: tuple[float, ...]
    global_step: int
    note: str = ""  # why nothing changed, when nothing did


@dataclass(frozen=True)
class PlanChanged(Event):
    """The current stage was made longer or shorter live (a key, `ctl epochs`)."""

    kind: ClassVar[str] = "plan_changed"
    origin: str
    stage: int
    epochs: int  # the stage's epochs now
    first_epoch: int
    last_epoch: int
    total_epochs: int
    note: str = ""  # when the change was cut to what is possible


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
    batch: int  # batches done in the epoch
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
    reason: str  # "epoch", "best", "save", "stop", "failure"
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
    """Stopped before the plan's end; resumable from ``checkpoint`` when there is one."""

    kind: ClassVar[str] = "run_stopped"
    reason: str  # a core.rundir.StopReason value
    stage: int
    epoch: int
    batch: int
    checkpoint: str | None
    detail: str = ""  # what happened, when the reason alone does not say


@dataclass(frozen=True)
class RunFailed(Event):
    kind: ClassVar[str] = "run_failed"
    message: str
    checkpoint: str | None = None
