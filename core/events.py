"""The event stream: the only thing a consumer (headless reporter, run directory,
dashboard) ever sees of a run. Events are frozen `msgspec.Struct`s holding plain
ints, floats, strings, tuples, small frozen records and JSON-able dicts, never
tensors; each serialises to one JSON object whose "event" key names its kind.

Reading one back (`from_json`, `read_line`, `from_dict`) treats the JSON as
untrusted input: msgspec checks every field against its declared type (a tagged
union on "event" picks the class), strings lose their control characters, and
anything that does not fit is a `BadEvent` saying where, never a crash further on.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Union

import msgspec
from msgspec import Meta, Struct

MAX_TEXT = 4096  # characters of any one string read back
MAX_COUNT = 10**12  # epochs, steps, batches: far beyond any run, well inside what a plot's axis can hold
MAX_TIME = 2.0**35  # a wall-clock stamp past this (the year 3058) is not one
# Read back, a count, a percentage or a machine figure outside these is a bad line, not a view that crashes.
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Measure = Annotated[float, Meta(ge=-1, le=1e9)]  # CPUs, watts, degrees; -1 where unknown


class BadEvent(ValueError):
    """A JSON object that is not a valid event of this version."""


class Event(Struct, frozen=True, tag_field="event"):
    kind: ClassVar[str] = ""  # the "event" tag, set for every kind below
    transient: ClassVar[bool] = False  # True: shown live, never written to events.jsonl
    local: ClassVar[bool] = False  # True: passed within one process only, never read from JSON

    def to_dict(self) -> dict[str, Any]:
        """The JSON form as plain values, "event" first (what events.jsonl holds)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    def to_json(self) -> str:
        # json, not msgspec's encoder: the bytes stay those of every run written so far
        # (ASCII escapes, and NaN for a non-finite loss)
        return json.dumps(self.to_dict(), separators=(",", ":"))


def clean_text(text: str) -> str:
    """Control characters shown escaped, so a hostile string cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def counted(n: int, noun: str, plural: str = "") -> str:
    """``1 epoch``, ``2 epochs``, ``100,000 epochs`` (``plural`` where an s is not enough)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


# --- plain records carried by events --------------------------------------------


class ModuleState(Struct, frozen=True):
    """One row of the module table for a stage."""

    name: str  # display name: conv1, bn1, layer1, cbam1, ... fc
    path: str  # module path in the state dict: backbone.layer1
    trainable: str  # "yes", "no" or "partial"
    lr: float | None  # of its group; None when frozen
    group: str | None
    params: int
    bn_mode: str | None  # "train"/"eval" for modules holding BatchNorm, else None
    new: bool  # not from the pretrained weights


class LayerRow(Struct, frozen=True, omit_defaults=True):  # a line without param_bytes stays as it was
    """One row of the torchinfo-style model tree."""

    path: str  # "" for the root, else the dotted module path
    type: str
    depth: int  # 0 for the root
    output_shape: tuple[int, ...]  # () when the module is not called in forward
    params: int  # all parameters under this module (recursive, as torchinfo counts)
    is_cbam: bool  # a CBAM block or inside one
    param_bytes: int = 0  # the memory those parameters take, as torchinfo counts; 0: not recorded


# --- the events ------------------------------------------------------------------


class Loading(Event, frozen=True, tag="loading"):
    """Progress before training starts (building the model, decoding images)."""

    message: str
    done: int = 0
    total: int = 0


class RunStarted(Event, frozen=True, tag="run_started"):
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
    threads: int = 0  # torch's CPU threads in the training process (0: not recorded)
    threads_why: str = ""  # how that number came about, one line


class StageStarted(Event, frozen=True, tag="stage_started"):
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


class StageSkipped(Event, frozen=True, tag="stage_skipped"):
    stage: int
    name: str
    reason: str  # "0 epochs" or "next stage"


class BatchLogged(Event, frozen=True, tag="batch_logged"):
    """Every --log-every batches (and at an epoch's end): the seed's per-100-batch line."""

    stage: int
    epoch: Count
    total_epochs: Count
    batch: Count  # 1-based, within the epoch
    batches: Count
    loss: float  # mean over the batches since the last line
    avg_loss: float  # running mean over the epoch so far
    images_per_second: float
    global_step: Count
    lrs: tuple[float, ...] = ()  # each optimizer group's learning rate now (StageStarted.groups order)
    grad_norms: tuple[float, ...] = ()  # each group's gradient L2 norm at this batch


class Progress(Event, frozen=True, tag="progress"):
    """Where the loop is, at most twice a second; for live displays, not kept on disk."""

    transient: ClassVar[bool] = True
    stage: int
    epoch: int
    batch: int  # batches done in this epoch
    batches: int
    images_per_second: float  # since the epoch (or the resume) started
    data_share: float = 0.0  # of the host's time per step, the part spent preparing the batch


class Evaluating(Event, frozen=True, tag="evaluating"):
    """The test set's evaluation under way after an epoch (or a cut one); live only."""

    transient: ClassVar[bool] = True
    stage: int
    epoch: int
    done: int  # test images evaluated
    total: int


class GpuProcess(Struct, frozen=True):
    """Another process computing on the same GPU, as NVML names it."""

    pid: int
    name: str  # the process's name where this process can see it, else ""
    memory: int  # bytes of the GPU's memory it holds; -1 when NVML does not say


class GpuSample(Struct, frozen=True):
    index: int
    name: str
    utilization: Percent  # percent
    memory_used: int  # bytes
    memory_total: int
    power: Measure  # watts; -1 when the device does not say
    temperature: Measure  # degrees C; -1 when unknown
    others: tuple[GpuProcess, ...] = ()  # other processes on this GPU (not this one)


class SystemSample(Event, frozen=True, tag="system"):
    """The machine as the training process sees it, at most once a second; live only."""

    transient: ClassVar[bool] = True
    cpu_percent: float  # of one core, this process
    rss: int  # bytes resident, this process
    gpus: tuple[GpuSample, ...] = ()
    cuda_peak: int = 0  # bytes: the most this process's tensors held on its CUDA device
    note: str = ""  # why there are no GPU figures
    cpus: Measure = 0.0  # CPUs this process may use (affinity and quota); 0: not known
    busy_elsewhere: Measure = 0.0  # cores other processes kept busy since the last sample


class ClassAccuracy(Event, frozen=True, tag="class_accuracy"):
    """Per-class test results of an epoch, from the evaluation that already runs."""

    stage: int
    epoch: int
    correct: tuple[int, ...]  # per class (RunStarted.classes order)
    total: tuple[int, ...]
    confusion: tuple[tuple[int, ...], ...] = ()  # [true][predicted]; () beyond 50 classes


class BlockAttention(Struct, frozen=True):
    """What one CBAM block does to one image."""

    block: str  # cbam1 ... cbam4
    size: int  # the spatial map is size x size
    spatial: tuple[int, ...]  # the map, row-major, 0-255 for 0.0-1.0
    channel_mean: float  # of the channel weights (0-1)
    channel_std: float
    channel_above_half: float  # share of channels weighted above 0.5


class AttentionImage(Struct, frozen=True):
    label: str  # the image's class
    predicted: str
    size: int  # the thumbnail is size x size
    pixels: tuple[int, ...]  # RGB, row-major, 3 values a pixel
    blocks: tuple[BlockAttention, ...]


class AttentionMaps(Event, frozen=True, tag="attention"):
    """At an epoch's end, what the CBAM blocks attend to in a fixed handful of test images."""

    stage: int
    epoch: int
    images: tuple[AttentionImage, ...]


class IterLosses(Event, frozen=True, tag="iter_losses"):
    """The loss of every iteration since the last chunk (for the iteration curve)."""

    first_step: Count  # global iteration number of losses[0], 1-based
    losses: tuple[float, ...]
    stage: int


class EpochEnded(Event, frozen=True, tag="epoch_ended"):
    stage: int
    epoch: Count
    total_epochs: Count
    epoch_in_stage: int
    stage_epochs: int
    batches_done: Count  # fewer than an epoch when "next stage" cut it short
    train_loss: float
    train_acc: Percent  # percent
    test_loss: float
    test_acc: Percent  # percent
    seconds: float  # the epoch's time in every process that trained it: training (no pauses) and its test pass
    images_per_second: float  # the epoch's training images per second of its training time, every process's
    best_acc: Percent
    global_step: Count


class CommandTaken(Event, frozen=True, tag="command"):
    """A command from the run directory's inbox (`ctl`, an attached dashboard)."""

    verb: str  # pause, resume, next, save, stop, lr or epochs
    origin: str  # who sent it: "ctl pid 123", "watch pid 456"
    global_step: int = 0  # the step at whose end it took effect
    value: str = ""  # lr: "3e-4" or "x0.5"; epochs: "+2"
    group: str = ""  # lr: the one group it is for, if not all
    rank_steps: tuple[int, ...] = ()  # several processes: the step at which each rank applied it
    command_id: str = ""  # the inbox file it came in (`ctl` looks for it); "" for keys


class CommandRefused(Event, frozen=True, tag="command_refused"):
    """A command the run did not apply, and why: `ctl` reads it back and exits non-zero."""

    verb: str
    origin: str
    reason: str  # one sentence
    global_step: int = 0
    value: str = ""
    group: str = ""
    command_id: str = ""  # as in CommandTaken


class RatesChanged(Event, frozen=True, tag="rates_changed"):
    """The stage's learning rates changed live (a key, `ctl lr`); a schedule goes on from them."""

    origin: str
    stage: int
    groups: tuple[str, ...]
    before: tuple[float, ...]  # each group's base rate (before its schedule's factor)
    after: tuple[float, ...]
    global_step: int
    command_id: str = ""  # as in CommandTaken
    last_stage: bool = False  # no stage with epochs follows: no plan takes over from these rates


class PlanChanged(Event, frozen=True, tag="plan_changed"):
    """The current stage was made longer or shorter live (a key, `ctl epochs`)."""

    origin: str
    stage: int
    epochs: int  # the stage's epochs now
    first_epoch: int
    last_epoch: int
    total_epochs: int
    note: str = ""  # when the change was cut to what is possible
    command_id: str = ""  # as in CommandTaken
    change: int = 0  # the epochs asked for (+N or -N); 0 in logs written before it was kept


class Watching(Event, frozen=True, tag="watching"):
    """An attached dashboard's own news: whether it can steer the run it follows."""

    transient: ClassVar[bool] = True
    run_dir: str
    can_control: bool
    detail: str  # "controlling pid 123", or why it only watches


class Paused(Event, frozen=True, tag="paused"):
    stage: int
    epoch: int
    batch: int  # batches done in the epoch
    reason: str  # "user" or why the run paused itself
    resumable: bool = True  # False once the loss is not finite: only a stop ends this pause


class Resumed(Event, frozen=True, tag="resumed"):
    stage: int
    epoch: int
    batch: int


class CheckpointSaved(Event, frozen=True, tag="checkpoint_saved"):
    path: str
    reason: str  # "epoch", "best", "save", "stop", "failure"
    stage: int
    epoch: int
    batch: int


class SaveFailed(Event, frozen=True, tag="save_failed"):
    path: str
    message: str


class RunFinished(Event, frozen=True, tag="run_finished"):
    final_acc: float
    best_acc: float
    best_epoch: int
    seconds: float  # the run's time: every process's that took it, never the time it lay stopped


class RunStopped(Event, frozen=True, tag="run_stopped"):
    """Stopped before the plan's end; resumable from ``checkpoint`` when there is one."""

    reason: str  # a core.vocab.StopReason value
    stage: int
    epoch: int
    batch: int
    checkpoint: str | None
    detail: str = ""  # what happened, when the reason alone does not say


class RunFailed(Event, frozen=True, tag="run_failed"):
    message: str
    checkpoint: str | None = None


class Note(Event, frozen=True, tag="note"):
    """Something the run wants its watchers to know that is no event of its own (junk in its inbox)."""

    text: str


class Replaying(Event, frozen=True, tag="replaying"):
    """A dashboard attached to a run is folding its history before it shows it; live only."""

    transient: ClassVar[bool] = True
    done: int  # bytes of events.jsonl folded so far
    total: int


class Replayed(Event, frozen=True, tag="replayed"):
    """A run's history, folded, handed over in one piece: a `core.state.RunState` and the
    newest of the log lines its events make. In-process only (it is never JSON)."""

    transient: ClassVar[bool] = True
    local: ClassVar[bool] = True
    state: Any
    lines: tuple[str, ...]


class RunGone(Event, frozen=True, tag="run_gone"):
    """The run directory being followed was deleted: nothing more will come; live only."""

    transient: ClassVar[bool] = True
    run_dir: str


# --- reading events back -----------------------------------------------------------

for _cls in Event.__subclasses__():
    _cls.kind = _cls.__struct_config__.tag  # type: ignore[assignment]
_KINDS = tuple(c for c in Event.__subclasses__() if not c.local)
_ANY_EVENT: Any = Union[_KINDS]  # noqa: UP007 (a runtime union of the classes)
_DECODER = msgspec.json.Decoder(_ANY_EVENT)
_STAMP = re.compile(rb',"t":(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\}\s*$')


class _Stamped(Struct):
    """What a line says besides its event's fields: its kind (named when it is refused) and its stamp."""

    event: object = None
    t: object = None


def from_json(line: str | bytes) -> Event:
    """The event one line of JSON holds; BadEvent says why it holds none."""
    try:
        event = _DECODER.decode(line)
    except msgspec.ValidationError as exc:
        raise BadEvent(_why(exc, lambda: _stamped(line).event)) from None
    except (msgspec.DecodeError, RecursionError):
        return _from_loose_json(line)
    return _clean(event)


def read_line(line: bytes) -> tuple[Event, float | None]:
    """One line of events.jsonl: the event and its wall-clock stamp ("t", when it is a number)."""
    event = from_json(line)
    m = _STAMP.search(line)
    if m is not None:  # the stamp RunDir.write puts last
        return event, plausible_time(float(m[1]))
    t = _stamped(line).t if b'"t"' in line else None
    return event, plausible_time(float(t)) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def plausible_time(t: float) -> float | None:
    """``t`` when it can be a wall-clock stamp (finite, from 1970 to the year 3058), else None."""
    return t if 0.0 <= t < MAX_TIME else None


def from_dict(data: object) -> Event:
    """Rebuild an event from its JSON form as plain values; BadEvent says why it cannot be one."""
    try:
        event: Event = msgspec.convert(data, _ANY_EVENT)
    except msgspec.ValidationError as exc:
        raise BadEvent(_why(exc, lambda: data.get("event") if isinstance(data, dict) else None)) from None
    except RecursionError:
        raise BadEvent("nested too deeply to be an event") from None
    return _clean(event)


def check(value: object, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (a plain type, a tuple of them, an optional one), checked like
    an event's field; BadEvent says where it does not fit."""
    try:
        out = msgspec.convert(value, tp)
    except (msgspec.ValidationError, RecursionError):
        raise BadEvent(f"{where} is not a valid {getattr(tp, '__name__', tp)}") from None
    cleaner = _cleaner(tp)
    return out if cleaner is None else cleaner(out)


def _from_loose_json(line: str | bytes) -> Event:
    """A line strict JSON refuses: json.dumps writes a non-finite float (a loss gone NaN) as
    NaN or Infinity, so such lines are read as the json module reads them."""
    try:
        data = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except (ValueError, RecursionError) as exc:  # the file's encoding: json would guess UTF-16 from a BOM
        raise BadEvent(f"not JSON ({exc.__class__.__name__})") from None
    return from_dict(data)


def _stamped(line: str | bytes) -> _Stamped:
    try:
        return msgspec.json.decode(line, type=_Stamped)
    except (msgspec.DecodeError, RecursionError):
        return _Stamped()


_AT = re.compile(r"(.*?)(?: - at `\$(.*)`)?")


def _why(exc: msgspec.ValidationError, kind_of: Callable[[], object]) -> str:
    """msgspec's reason as one line naming the event and the field: ``epoch_ended.epoch:
    expected int, got float``."""
    m = _AT.fullmatch(str(exc))
    said, path = (m[1], m[2] or "") if m else (str(exc), "")
    if path == "" and said.startswith("Expected `object`"):
        return "not a JSON object"
    kind = kind_of()
    if path == ".event" or said == "Object missing required field `event`" or not isinstance(kind, str):
        return f"unknown event {clean_text(str(kind)[:40])!r}"
    where = kind + path
    missing = re.fullmatch(r"Object missing required field `(.*)`", said)
    if missing:
        return f"{where} lacks {missing[1]!r}"
    return clean_text(f"{where}: {said[:1].lower()}{said[1:].replace('`', '')}"[:300])


# --- strings read back: cut to MAX_TEXT, control characters escaped -----------------

_CLEANERS: dict[Any, Callable[[Any], Any] | None] = {}


def _clean(event: Event) -> Event:
    cleaner = _cleaner(type(event))
    return event if cleaner is None else cleaner(event)


def _clean_str(text: str) -> str:
    if len(text) <= MAX_TEXT and text.isprintable():
        return text
    return clean_text(text[:MAX_TEXT])


def _cleaner(tp: Any) -> Callable[[Any], Any] | None:
    """What cleans the strings in a value of type ``tp``, worked out once per type; None
    for types that hold no strings (most events: losses, epochs, steps)."""
    if tp not in _CLEANERS:
        _CLEANERS[tp] = _make_cleaner(tp)
    return _CLEANERS[tp]


def _make_cleaner(tp: Any) -> Callable[[Any], Any] | None:
    if tp is str:
        return _clean_str
    if isinstance(tp, type) and issubclass(tp, Struct):
        fields = [(f.name, c) for f in msgspec.structs.fields(tp) if (c := _cleaner(f.type)) is not None]
        if not fields:
            return None

        def record(value: Any) -> Any:
            changed = {n: new for n, c in fields if (new := c(old := getattr(value, n))) is not old}
            return msgspec.structs.replace(value, **changed) if changed else value

        return record
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [c for t in args if (c := _cleaner(t)) is not None]
        return (lambda value: None if value is None else inner[0](value)) if inner else None
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _cleaner(args[0])
        return None if item is None else (lambda value: tuple(map(item, value)))
    if origin is tuple:
        items = [_cleaner(t) for t in args]
        if not any(items):
            return None
        return lambda value: tuple(v if c is None else c(v) for v, c in zip(value, items, strict=True))
    return None  # numbers, bools, and dicts (a run's config, checked where it is used)
