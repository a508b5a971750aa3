"""Checkpoints: what a run needs to continue exactly where it stopped.

A checkpoint is a plain ``torch.save`` dict (tensors and plain data, loaded with
``weights_only=True``) that carries a SHA-256 digest of its own content: a
flipped byte anywhere in a tensor is one sentence on load, never a silently
different run. Its config is validated like typed options before anything uses it.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import RunConfig
from core.errors import CbamError, CheckpointError
from core.events import BadEvent, EpochEnded, from_dict
from core.plan import MAX_LR, MIN_LR
from core.rundir import check_entries, checkpoint_in, has_checkpoint, home_of_checkpoint, open_run
from core.safefs import Dir, UnsafeFile

if TYPE_CHECKING:
    from core.meter import Sums

FORMAT = "cbam-tui"
ARCH = "resnet18-cbam"
VERSION = 2
MAX_BYTES = 16 << 30
MAX_IMAGES = 1 << 53  # images an epoch's running sums can count (exact in a float)


@dataclass(frozen=True)
class Position:
    """Where a run continues: stage (0-based), run epoch (1-based), batches done.

    ``trained`` says the epoch's training is over (finished, or cut short by
    "next stage") and only its evaluation is left.
    """

    stage: int
    epoch: int
    batch: int = 0
    trained: bool = False
    offset: int = 0  # images of the epoch's order before its first batch (after a change of world size)

    def images(self, global_batch: int) -> int:
        """Images of the epoch's order done at this position (batches before the last are full)."""
        return self.offset + self.batch * global_batch

    def regrouped(self, before: int, after: int) -> Position:
        """The same place in the epoch's order, in batches of ``after`` images instead of ``before``:
        the rest of the epoch is cut from where the last batch ended, so no image is seen twice."""
        done = self.images(before)
        return Position(self.stage, self.epoch, done // after, self.trained, done % after)


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run directory's last checkpoint."""
    if not path.exists():
        raise CheckpointError(f"nothing to resume at {path}: no such run directory or checkpoint")
    if path.is_dir():
        with open_run(path) as run:
            check_entries(run)  # a planted link is named, not followed
            if not has_checkpoint(run):
                raise CheckpointError(f"{path} has no checkpoint to resume from (expected {checkpoint_in(path)})")
        return checkpoint_in(path)
    return path


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint was saved in, if it still is one."""
    return home_of_checkpoint(checkpoint)


# --- the digest ----------------------------------------------------------------------


def digest(obj: Any) -> str:
    """SHA-256 over a checkpoint's content in a canonical order: tensors by dtype, shape
    and bytes, containers by structure, scalars by value."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (str, int, float, bool)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds no {type(obj).__name__}")


def serialize(state: dict[str, Any]) -> bytes:
    """The checkpoint's bytes, its digest inside."""
    import torch

    buf = io.BytesIO()
    torch.save({**state, "digest": digest(state)}, buf)
    return buf.getvalue()


# --- writing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """What a checkpoint holds: everything a run needs to go on exactly where it stopped."""

    model: dict[str, Any]  # the model's state dict (tensors)
    optimizer: dict[str, Any]  # the optimizer's state dict, of stage ``optimizer_stage``
    optimizer_stage: int  # -1: no stage had begun
    scaler: dict[str, Any] | None  # the fp16 GradScaler's state (None in checkpoints that predate it)
    config: RunConfig
    classes: tuple[str, ...]
    position: Position  # where the run continues
    sums: Sums  # the epoch's running totals up to ``position``
    best_acc: float  # percent
    best_epoch: int  # 0: none yet
    global_step: int
    rng: Any  # torch's CPU generator state (a uint8 tensor)
    history: tuple[EpochEnded, ...]
    base_lrs: tuple[float, ...] = ()  # each group's rate as live changes left them (() in older checkpoints)
    world_size: int | None = None  # training processes (None in older checkpoints: one)
    global_batch: int | None = None  # images a batch of the loop took (None in older checkpoints: batch_size)


def write(saved: Saved) -> bytes:
    """A checkpoint's bytes: its fields as plain data and tensors, its digest inside.
    The one place that spells the format; `read` is its inverse."""
    pos = saved.position
    return serialize({
        "format": FORMAT,
        "version": VERSION,
        "arch": ARCH,
        "model": saved.model,
        "optimizer": saved.optimizer,
        "optimizer_stage": saved.optimizer_stage,
        "scaler": saved.scaler,
        "config": saved.config.to_dict(),
        "classes": list(saved.classes),
        "position": {
            "stage": pos.stage, "epoch": pos.epoch, "batch": pos.batch, "trained": pos.trained, "offset": pos.offset,
        },
        "sums": saved.sums.to_dict(),
        "best_acc": saved.best_acc,
        "best_epoch": saved.best_epoch,
        "global_step": saved.global_step,
        "rng": saved.rng,
        "history": [e.to_dict() for e in saved.history],
        "base_lrs": list(saved.base_lrs),
        **({"world_size": saved.world_size} if saved.world_size is not None else {}),
        **({"global_batch": saved.global_batch} if saved.global_batch is not None else {}),
    })


# --- reading, as untrusted input -----------------------------------------------------


def read_bytes(path: Path) -> bytes:
    """A checkpoint file's bytes; only a regular file (a link in its last component is refused)."""
    try:
        with Dir.open(path.parent, follow=True) as parent:
            data = parent.read(path.name, MAX_BYTES)
    except UnsafeFile as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if data is None:
        raise CheckpointError(f"nothing to resume at {path}: no such run directory or checkpoint")
    return data


def read(path: Path) -> Saved:
    """The checkpoint at ``path``, its digest matched and every field checked."""
    return _checked(_unpickle(path, lambda: load_untrusted(io.BytesIO(read_bytes(path)))), path)


def read_config(path: Path, where: str | None = None) -> RunConfig:
    """The run configuration a checkpoint holds, its digest matched, without reading its
    weights into memory: the file is mapped, so the digest reads its pages where they lie
    (the run loads the weights once, later, and checks them again then). With ``where``
    (what the user named), a run that has finished every stage is refused, as `read` then
    `check_unfinished` would: before a detached child or a launcher's ranks touch it."""
    try:
        with Dir.open(path.parent, follow=True) as parent:
            fd = parent.open_file(path.name, os.O_RDONLY)
    except UnsafeFile as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}") from None
    except FileNotFoundError:
        raise CheckpointError(f"nothing to resume at {path}: no such run directory or checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    try:
        if os.fstat(fd).st_size > MAX_BYTES:
            raise CheckpointError(f"cannot resume from {path}: it is larger than {MAX_BYTES} bytes")
        by_fd = Path(f"/proc/self/fd/{fd}")  # the file this fd opened, whatever the path now names
        if by_fd.exists():
            ckpt = _unpickle(path, lambda: load_untrusted(by_fd, mmap=True))
        else:  # no /proc: read it whole
            ckpt = _unpickle(path, lambda: load_untrusted(io.BytesIO(os.read(fd, MAX_BYTES + 1))))
        _check_digest(ckpt, path)
        config = _config(ckpt, path)
        pos = ckpt.get("position")
        if where is not None and isinstance(pos, dict) and _is_int(pos.get("stage")):
            check_unfinished(pos["stage"], config, where)
        return config
    finally:
        os.close(fd)


def check_unfinished(stage: int, config: RunConfig, where: str) -> None:
    """One sentence for a checkpoint past its plan's last stage: nothing is left to train."""
    if stage >= len(config.plan.stages):
        raise CheckpointError(f"the run in {where} has already finished every stage; nothing to resume")


def load_untrusted(source: Any, mmap: bool = False) -> Any:
    """torch.load of a file anyone may have written: tensors and plain data only (no code
    runs), and torch's warnings about the file's pickle kept off the terminal."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)


_UNPICKLER_SAID = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def load_failure(exc: BaseException) -> str:
    """Why `load_untrusted` failed, in one short line; never torch's advice to load the file
    with weights_only=False, which would run whatever code it holds."""
    text = str(getattr(exc, "reason", None) or exc).strip()
    if text.startswith("Weights only load failed"):
        said = _UNPICKLER_SAID.search(text)
        return "it holds more than tensors and plain data" + (f": {said[1].strip()[:120]}" if said else "")
    if "mmap can only be used" in text:
        return "it is not a file torch.save wrote in its zip format"
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _unpickle(path: Path, load: Callable[[], Any]) -> dict[str, Any]:
    """The checkpoint's dict, if it is one of ours; one sentence otherwise."""
    try:
        ckpt = load()
    except CbamError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} as a checkpoint ({load_failure(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cbam-tui checkpoint (use --weights to start from plain weights)")
    if ckpt.get("arch") != ARCH:
        raise CheckpointError(f"{path} is a checkpoint of architecture {str(ckpt.get('arch'))[:40]!r}, not {ARCH!r}")
    if ckpt.get("version") != VERSION:
        version = str(ckpt.get("version"))[:10]
        raise CheckpointError(f"{path} is a checkpoint of format version {version}, not {VERSION}")
    return ckpt


def _check_digest(ckpt: dict[str, Any], path: Path) -> None:
    stored = ckpt.pop("digest", None)
    try:
        actual = digest(ckpt)
    except TypeError as exc:
        raise CheckpointError(f"{path} is damaged: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not a usable checkpoint: it is nested too deeply") from None
    if stored != actual:
        raise CheckpointError(
            f"{path} is damaged: its content does not match its digest (a flipped byte or a cut write); "
            "resume from another checkpoint, such as checkpoints/best.pt"
        )


def _checked(ckpt: dict[str, Any], path: Path) -> Saved:
    import torch

    from core.meter import Sums

    _check_digest(ckpt, path)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a usable checkpoint: {what}")

    for key in ("model", "optimizer", "config", "classes", "position", "sums", "history", "rng"):
        if key not in ckpt:
            raise bad(f"it has no {key!r}")
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise bad("its model is not a state dict")
    classes = ckpt["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("its class names are not a list of strings")
    pos = ckpt["position"]
    if not isinstance(pos, dict) or not all(_is_int(pos.get(k)) and pos[k] >= 0 for k in ("stage", "epoch", "batch")):
        raise bad("its position is not a stage, epoch and batch")
    if not isinstance(pos.get("trained"), bool):
        raise bad("its position does not say whether the epoch was trained")
    if not (_is_int(pos.get("offset", 0)) and pos.get("offset", 0) >= 0):
        raise bad("its position's offset is not a whole number")
    for key in ("global_batch", "world_size"):
        if key in ckpt and not (_is_int(ckpt[key]) and ckpt[key] > 0):
            raise bad(f"its {key} is not a positive whole number")
    sums = ckpt["sums"]
    if not (isinstance(sums, dict) and _is_num(sums.get("loss_sum"))
            and all(_is_int(sums.get(k)) and 0 <= sums[k] <= MAX_IMAGES for k in ("correct", "seen"))):
        raise bad("its running sums are malformed")
    seconds = sums.get("seconds")
    if seconds is not None and not (_is_num(seconds) and seconds >= 0):
        raise bad("its epoch's training time is not a number of seconds")
    for key in ("best_acc",):
        if not _is_num(ckpt.get(key)):
            raise bad(f"its {key} is not a number")
    for key in ("best_epoch", "global_step", "optimizer_stage"):
        if not _is_int(ckpt.get(key)):
            raise bad(f"its {key} is not a whole number")
    if not isinstance(ckpt["rng"], torch.Tensor) or ckpt["rng"].dtype != torch.uint8:
        raise bad("its random state is not a byte tensor")
    if not isinstance(ckpt["history"], list):
        raise bad("its history is not a list")
    rates = ckpt.get("base_lrs", [])
    if not isinstance(rates, list) or not all(_is_num(r) and MIN_LR <= r <= MAX_LR for r in rates):
        raise bad(f"its learning rates are not numbers from {MIN_LR:g} to {MAX_LR:g}")
    try:
        history = tuple(_epoch(e) for e in ckpt["history"])
    except BadEvent as exc:
        raise bad(f"its history holds a bad epoch ({exc})") from None
    return Saved(
        model=model, optimizer=ckpt["optimizer"], optimizer_stage=ckpt["optimizer_stage"], scaler=ckpt.get("scaler"),
        config=_config(ckpt, path), classes=tuple(classes),
        position=Position(pos["stage"], pos["epoch"], pos["batch"], pos["trained"], pos.get("offset", 0)),
        sums=Sums(float(sums["loss_sum"]), sums["correct"], sums["seen"], None if seconds is None else float(seconds)),
        best_acc=float(ckpt["best_acc"]), best_epoch=ckpt["best_epoch"], global_step=ckpt["global_step"],
        rng=ckpt["rng"], history=history, base_lrs=tuple(float(r) for r in rates),
        world_size=ckpt.get("world_size"), global_batch=ckpt.get("global_batch"),
    )


def _config(ckpt: dict[str, Any], path: Path) -> RunConfig:
    if "config" not in ckpt:
        raise CheckpointError(f"{path} is not a usable checkpoint: it has no 'config'")
    try:
        return RunConfig.from_dict(ckpt["config"], f"the configuration in {path}")
    except CbamError as exc:
        raise CheckpointError(str(exc)) from None


def _epoch(data: object) -> EpochEnded:
    event = from_dict(data)
    if not isinstance(event, EpochEnded):
        raise BadEvent("not an epoch_ended record")
    return event


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
