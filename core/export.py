"""A run's numbers for other tools: TensorBoard event files, and the seed's two figures
as a PNG. Both writers are an optional extra (``pip install 'cbam-tui[export]'``:
tensorboard, matplotlib); without it, one sentence says what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from core.errors import CbamError
from core.rundir import EventReader, open_run
from core.state import RunState

EXTRA = "pip install 'cbam-tui[export]'"
PNG_INCHES, PNG_DPI = (16.0, 6.0), 100  # 1600 x 600 pixels


def read(run: Path) -> RunState:
    """A run's whole story, folded (the iteration losses included)."""
    state = RunState()
    with open_run(run) as d:
        for event, t in EventReader(d).read_all(final=True):
            state.apply(event, t)
    if state.started is None:
        raise CbamError(f"{run} has no run_started event yet: nothing to export")
    return state


def _need(module: str, what: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CbamError(f"{what} needs {module.split('.')[0]}: {EXTRA}") from None


def tensorboard(run: Path, out: Path) -> int:
    """Write the run's scalars as TensorBoard event files under ``out``; returns how many."""
    _need("tensorboard", "export --tensorboard")
    writer_module = _need("torch.utils.tensorboard", "export --tensorboard")
    state = read(run)
    writer = writer_module.SummaryWriter(log_dir=str(out))  # type: ignore[attr-defined]
    count = 0
    try:
        for i, loss in enumerate(state.iter_losses):
            writer.add_scalar("loss/iteration", float(loss), state.first_step + i)
            count += 1
        for e in state.epochs:
            for tag, value in (("loss/train", e.train_loss), ("loss/test", e.test_loss),
                               ("accuracy/train", e.train_acc), ("accuracy/test", e.test_acc)):
                writer.add_scalar(tag, value, e.epoch)
                count += 1
        for step, stage, lrs, _ in state.group_curves:
            for name, lr in zip(state.stage_groups.get(stage, ()), lrs, strict=False):
                writer.add_scalar(f"lr/{name}", lr, step)
                count += 1
        classes = state.started.classes if state.started else ()
        for report in state.class_reports:
            for name, correct, total in zip(classes, report.correct, report.total, strict=False):
                writer.add_scalar(f"accuracy_per_class/{name}", 100.0 * correct / max(total, 1), report.epoch)
                count += 1
    finally:
        writer.close()
    return count


def png(run: Path, out: Path) -> Path:
    """The seed's two figures, side by side: every iteration's loss (with the epochs'
    train and test loss), and train and test accuracy per epoch; stage switches dashed."""
    _need("matplotlib", "export --png")
    from matplotlib.figure import Figure  # not pyplot: no global backend, no GUI, safe off the main thread

    state = read(run)
    steps_per_epoch = state.started.batches_per_epoch if state.started else 1
    fig = Figure(figsize=PNG_INCHES, dpi=PNG_DPI)
    loss_ax, acc_ax = fig.subplots(1, 2)
    name = state.started.run_name if state.started else run.name
    fig.suptitle(f"{name}: {state.status.lower()}, best test accuracy "
                 + (f"{state.best_acc:.2f}% (epoch {state.best_epoch})" if state.best_acc is not None else "-"))
    if len(state.iter_losses):
        x = [(state.first_step + i) / steps_per_epoch for i in range(len(state.iter_losses))]
        loss_ax.plot(x, list(state.iter_losses), lw=0.6, alpha=0.5, label="every iteration")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
