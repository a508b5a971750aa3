"""A run's numbers for other tools: TensorBoard event files, and the seed's two figures
as a PNG. Both writers are an optional extra (``pip install 'cbam-tui[export]'``:
tensorboard, matplotlib); without it, one sentence says what to install.

Exporting is idempotent: the same run exported again gives the same bytes under the
same name. Each writer replaces only its own earlier output, atomically (a temporary
file renamed over it), and never writes through a link:

- TensorBoard: ``DIR/events.out.tfevents.cbam-tui.<run>``; a directory that already
  holds another event file is refused (TensorBoard would merge both into one run).
- PNG: a new file, or one this export wrote (its ``Software`` text says cbam-tui);
  any other existing file is refused.

Every point carries the time of the run's last event, so the files do not depend on
when they were written.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.errors import CbamError
from core.events import AttentionMaps, ClassAccuracy, Event
from core.rundir import EventReader, open_run
from core.safefs import Dir
from core.state import RunState

EXTRA = "export"  # the optional extra that brings tensorboard and matplotlib
PNG_INCHES, PNG_DPI = (16.0, 6.0), 100  # 1600 x 600 pixels
SOFTWARE = "cbam-tui"  # the PNG's Software text: how an export knows its own file
TB_PREFIX = "events.out.tfevents.cbam-tui."
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD = 1 << 16  # bytes read of an existing PNG to find its text chunks


def install_hint(extra: str) -> str:
    """How to add an optional extra to this installation: from the registry, or, when this
    code runs from a source tree (a clone installed with ``pip install -e``), from that tree,
    where the published name would install another copy."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "core").is_dir():
        return f"pip install -e '{root}[{extra}]'"
    return f"pip install 'cbam-tui[{extra}]'"


def read(run: Path) -> tuple[RunState, dict[int, tuple[float, ...]]]:
    """A run's whole story, folded in bounded memory however long it is (the iteration losses
    averaged in buckets beyond RunState.MAX_LOSSES; attention maps, which no export shows, not
    even parsed), and each epoch's per-class test accuracy (%), by epoch."""
    per_class: dict[int, tuple[float, ...]] = {}

    def keeping_classes(events: Iterator[tuple[Event, float | None]]) -> Iterator[tuple[Event, float | None]]:
        """The state keeps the newest epochs' reports only; an export shows them all."""
        for event, t in events:
            if isinstance(event, ClassAccuracy):  # a redone epoch's report replaces the first one's
                per_class[event.epoch] = tuple(100.0 * c / max(n, 1)
                                               for c, n in zip(event.correct, event.total, strict=False))
            yield event, t

    try:
        with open_run(run) as d:
            reader = EventReader(d, skip=lambda kind: kind == AttentionMaps.kind)
            state = RunState().fold(keeping_classes(reader.events(final=True)))
    except OSError as exc:
        raise CbamError(f"cannot read the events of {run}: {exc.strerror or exc}") from None
    if state.started is None:
        raise CbamError(f"{run} has no run_started event yet: nothing to export")
    kept = {e.epoch for e in state.epochs}
    return state, {epoch: acc for epoch, acc in per_class.items() if epoch in kept}


def loss_points(state: RunState) -> tuple[list[int], list[float]]:
    """The iteration losses as (step, loss): every step, or bucket means at their first step."""
    stride = state.loss_stride
    return [state.first_step + i * stride for i in range(len(state.iter_losses))], list(state.iter_losses)


def _need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CbamError(f"{what} needs {module.split('.')[0]}: {install_hint(EXTRA)}") from None


def tensorboard(run: Path, out: Path) -> tuple[int, Path]:
    """Write the run's scalars as one TensorBoard event file in ``out``; returns how many and the file."""
    name, count, data = _event_file(run)
    _write_events(out, name, data, subdirectories=False)
    return count, out / name


def tensorboard_runs(runs: list[Path], out: Path) -> list[tuple[int, Path]]:
    """Several runs for TensorBoard to overlay: each one's event file in ``out/<run name>/``
    (TensorBoard's runs are the directories under its logdir). Every run is read before
    anything is written; returns how many scalars each has and its file."""
    names = [run_name(run) for run in runs]
    for name in names:
        if names.count(name) > 1:
            raise CbamError(f"--tensorboard {out}: two of the runs are named {name}, which would share "
                            f"{out / name}: export them into different directories")
    files = [_event_file(run) for run in runs]
    _check_top(out)
    written = []
    for name, (file, count, data) in zip(names, files, strict=True):
        _write_events(out / name, file, data, subdirectories=True)
        written.append((count, out / name / file))
    return written


def run_name(run: Path) -> str:
    """A run's directory's own name, never a path, safe as a file or directory name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", run.resolve().name)


def _event_file(run: Path) -> tuple[str, int, bytes]:
    """The run's scalars as TensorBoard event records: the file's name, how many, its bytes."""
    event_pb2 = _need("tensorboard.compat.proto.event_pb2", "export --tensorboard")
    summary_pb2 = _need("tensorboard.compat.proto.summary_pb2", "export --tensorboard")
    record_writer = _need("tensorboard.summary.writer.record_writer", "export --tensorboard")
    state, per_class = read(run)
    when = state.last_t or 0.0
    buffer = io.BytesIO()
    records = record_writer.RecordWriter(buffer)
    records.write(event_pb2.Event(wall_time=when, file_version="brain.Event:2").SerializeToString())
    count = 0

    def scalar(tag: str, value: float, step: int) -> None:
        nonlocal count
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
        records.write(event_pb2.Event(wall_time=when, step=step, summary=summary).SerializeToString())
        count += 1

    for step, loss in zip(*loss_points(state), strict=True):
        scalar("loss/iteration", loss, step)
    for e in state.epochs:
        for tag, value in (("loss/train", e.train_loss), ("loss/test", e.test_loss),
                           ("accuracy/train", e.train_acc), ("accuracy/test", e.test_acc)):
            scalar(tag, value, e.epoch)
    for step, stage, lrs, _ in state.group_curves:
        for group, lr in zip(state.stage_groups.get(stage, ()), lrs, strict=False):
            scalar(f"lr/{group}", lr, step)
    classes = state.started.classes if state.started else ()
    for epoch, accuracies in sorted(per_class.items()):
        for label, accuracy in zip(classes, accuracies, strict=False):
            scalar(f"accuracy_per_class/{label}", accuracy, epoch)
    return TB_PREFIX + run_name(run), count, buffer.getvalue()


def _write_events(out: Path, name: str, data: bytes, subdirectories: bool) -> None:
    """``data`` as ``out/name``; refused where TensorBoard would show it merged with another
    run's events, or (one run into ``out`` itself) beside runs exported into its subdirectories."""

    def others(d: Dir) -> None:
        for entry, st in d.entries():
            if "tfevents" in entry and entry != name:
                raise CbamError(
                    f"{out} already holds the TensorBoard events of something else ({entry[:80]}), which TensorBoard "
                    "would show as one run with this one: export each run into a directory of its own"
                )
            if not subdirectories and stat.S_ISDIR(st.st_mode) and _holds_export(d, entry):
                raise CbamError(
                    f"{out} holds runs exported into its subdirectories ({entry[:80]}): this run's events at its top "
                    "would be one more run beside them: export it with the others, or into another directory"
                )

    _write(out / name, data, "--tensorboard", lambda fd: True, others)


def _holds_export(d: Dir, entry: str) -> bool:
    """Whether the subdirectory ``entry`` of ``d`` holds an event file that export wrote."""
    try:
        with d.sub(entry) as sub:
            return any(n.startswith(TB_PREFIX) for n in sub.names())
    except OSError:
        return False


def _check_top(out: Path) -> None:
    """Several runs go into subdirectories: event files at the top would be one more run beside them."""
    try:
        where = Dir.open(out, follow=True)
    except OSError:
        return  # a missing directory is made; one that cannot be used is said when written
    with where:
        for entry in where.names():
            if "tfevents" in entry:
                raise CbamError(
                    f"{out} holds TensorBoard events at its top ({entry[:80]}), which TensorBoard would show as one "
                    "more run beside these: export several runs into a directory of their own"
                )


def png(run: Path, out: Path) -> Path:
    """The seed's two figures, side by side, into the file ``out`` (a new file, or an
    earlier export of cbam-tui's, replaced atomically; never through a link)."""
    _write(out, png_bytes(run), "--png", _is_our_png, lambda d: None)
    return out


def png_bytes(run: Path) -> bytes:
    """The same figures as PNG bytes, for a caller that writes them where it trusts."""
    return _png(_figure(run))


def png_runs(runs: list[Path], out: Path) -> Path:
    """Several runs overlaid in one figure (as `compare` draws them), into the file ``out``,
    under the same rules as `png`."""
    _write(out, _png(_overlay(runs)), "--png", _is_our_png, lambda d: None)
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": SOFTWARE})
    return buf.getvalue()


def _overlay(runs: list[Path]) -> Any:
    """Loss and accuracy per epoch of every run, one colour each: test solid, train dashed;
    each run's stage switches dotted in its colour. Every run is read before anything is drawn."""
    _need("matplotlib", "export --png")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    states = [(run, read(run)[0]) for run in runs]
    fig = Figure(figsize=PNG_INCHES, dpi=PNG_DPI)
    loss_ax, acc_ax = fig.subplots(1, 2)
    fig.suptitle(f"{len(runs)} runs: test (solid) and train (dashed) per epoch")
    for i, (run, state) in enumerate(states):
        colour = f"C{i % 10}"
        name = state.started.run_name if state.started else run.name
        best = f"{state.best_acc:.2f}% (epoch {state.best_epoch})" if state.best_acc is not None else "-"
        epochs = [e.epoch for e in state.epochs]
        steps_per_epoch = state.started.batches_per_epoch if state.started else 1
        for ax, train, test in ((loss_ax, [e.train_loss for e in state.epochs], [e.test_loss for e in state.epochs]),
                                (acc_ax, [e.train_acc for e in state.epochs], [e.test_acc for e in state.epochs])):
            ax.plot(epochs, test, "s-", color=colour, label=f"{name}: best {best}")
            ax.plot(epochs, train, "o--", color=colour, alpha=0.6)
            for step, _ in state.stage_steps[1:]:
                ax.axvline(step / steps_per_epoch, ls=":", color=colour, lw=1)
    for ax, title, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy %")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, not 1.25
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _figure(run: Path) -> Any:
    """The seed's two figures, side by side: every iteration's loss (with the epochs'
    train and test loss), and train and test accuracy per epoch; stage switches dashed."""
    _need("matplotlib", "export --png")
    from matplotlib.figure import Figure  # not pyplot: no global backend, no GUI, safe off the main thread

    state, _ = read(run)
    steps_per_epoch = state.started.batches_per_epoch if state.started else 1
    fig = Figure(figsize=PNG_INCHES, dpi=PNG_DPI)
    loss_ax, acc_ax = fig.subplots(1, 2)
    name = state.started.run_name if state.started else run.name
    fig.suptitle(f"{name}: {state.status.word}, best test accuracy "
                 + (f"{state.best_acc:.2f}% (epoch {state.best_epoch})" if state.best_acc is not None else "-"))
    if len(state.iter_losses):
        steps, losses = loss_points(state)
        label = "every iteration" if state.loss_stride == 1 else f"mean of every {state.loss_stride} iterations"
        loss_ax.plot([step / steps_per_epoch for step in steps], losses, lw=0.6, alpha=0.5, label=label)
    epochs = state.epochs
    if epochs:
        loss_ax.plot([e.epoch for e in epochs], [e.train_loss for e in epochs], "o-", label="train (epoch)")
        loss_ax.plot([e.epoch for e in epochs], [e.test_loss for e in epochs], "s-", label="test (epoch)")
        acc_ax.plot([e.epoch for e in epochs], [e.train_acc for e in epochs], "o-", label="train")
        acc_ax.plot([e.epoch for e in epochs], [e.test_acc for e in epochs], "s-", label="test")
    for ax, title, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy %")):
        for step, stage in state.stage_steps[1:]:
            ax.axvline(step / steps_per_epoch, ls="--", color="grey", lw=1)
            ax.text(step / steps_per_epoch, 1.0, f" stage {stage}", transform=ax.get_xaxis_transform(),
                    va="top", fontsize=9, color="grey")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return fig


def _write(path: Path, data: bytes, flag: str, ours: Callable[[int], bool], check: Callable[[Dir], None]) -> None:
    """``data`` as ``path``, atomically: a new file, or one ``ours`` recognises (given its fd);
    never through a link. The directory is made when missing; ``check`` looks at it first."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        where = Dir.open(parent, follow=True)  # the directory as typed: it may go through the user's links
    except (FileExistsError, NotADirectoryError):
        raise CbamError(f"{flag} {path}: {parent} is not a directory") from None
    except OSError as exc:
        raise CbamError(f"{flag} {path}: cannot use the directory {parent}: {exc.strerror or exc}") from None
    with where:
        check(where)
        st = where.lstat(path.name)
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else (
                    "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
                raise CbamError(f"{flag} {path} is {kind}: export writes only regular files, never through a link")
            try:
                fd = where.open_file(path.name, os.O_RDONLY)
            except OSError as exc:
                raise CbamError(f"{flag} {path} exists and cannot be read: {exc.strerror or exc}") from None
            try:
                mine = ours(fd)
            finally:
                os.close(fd)
            if not mine:
                raise CbamError(f"{flag} {path} exists and is not a cbam-tui export: not overwritten "
                                "(remove it or choose another name)")
        try:
            where.write_atomic(path.name, data)
        except OSError as exc:
            raise CbamError(f"cannot write {path}: {exc.strerror or exc}") from None


def _is_our_png(fd: int) -> bool:
    """Whether the PNG open on ``fd`` says, in a text chunk before its image data, that cbam-tui made it."""
    head = os.pread(fd, _PNG_HEAD, 0)
    if not head.startswith(_PNG_SIGNATURE):
        return False
    at = len(_PNG_SIGNATURE)
    while at + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[at : at + 8])
        body = head[at + 8 : at + 8 + length]
        if kind == b"IDAT" or len(body) < length:
            return False
        if kind == b"tEXt" and body.partition(b"\0") == (b"Software", b"\0", SOFTWARE.encode()):
            return True
        at += 12 + length
    return False
