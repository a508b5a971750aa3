"""Plain line-by-line output of a run: the seed's lines, for --headless and pipes."""

from __future__ import annotations

import sys
from typing import TextIO

from core.channel import STOP_COMMAND
from core.config import RunConfig
from core.control import SIGNAL_EXIT, Control, stop_on_signals
from core.events import (
    BatchLogged,
    CheckpointSaved,
    CommandTaken,
    EpochEnded,
    Event,
    Loading,
    Paused,
    Resumed,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStopped,
    SaveFailed,
    StageSkipped,
    StageStarted,
)
from core.train import FINISHED, Trainer
from tui.state import lr_text

RULE = "=" * 60


class Reporter:
    """Turns events into lines; one instance per run."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._loading = ""

    def __call__(self, e: Event) -> None:
        text = self.format(e)
        if text is not None:
            print(text, file=self.out, flush=True)

    def format(self, e: Event) -> str | None:
        if isinstance(e, Loading):
            return self._format_loading(e)
        if isinstance(e, RunStarted):
            head = "resuming" if e.resumed_from else "run"
            return (
                f"cbam-tui {head} {e.run_name}: {e.dataset}, {e.train_size} train / {e.test_size} test images, "
                f"{len(e.classes)} classes | {e.device}, {e.precision} | batch {e.batch_size}, "
                f"{e.batches_per_epoch} batches per epoch, {e.total_epochs} epochs\nrun directory: {e.run_dir}"
            )
        if isinstance(e, StageStarted):
            trainable = [m.name for m in e.modules if m.trainable != "no"]
            frozen = [m.name for m in e.modules if m.trainable == "no"]
            groups = ", ".join(f"{name}={lr_text(lr)}" for name, lr in e.groups)
            bn = sorted({m.bn_mode for m in e.modules if m.trainable == "no" and m.bn_mode})
            return "\n".join(
                [
                    RULE,
                    f" Stage {e.stage}/{e.num_stages}: {e.name} (epochs {e.first_epoch}-{e.last_epoch})",
                    f" trainable: {', '.join(trainable)} ({e.trainable_params:,} of {e.total_params:,} params)",
                    f" frozen: {', '.join(frozen) or 'nothing'}"
                    + (f" (BatchNorm in {'/'.join(bn)} mode)" if bn else ""),
                    f" learning rates: {groups}",
                    RULE,
                ]
            )
        if isinstance(e, BatchLogged):
            return (
                f"Epoch: {e.epoch}/{e.total_epochs} | Batch: {e.batch}/{e.batches} | Batch loss: {e.loss:.4f} "
                f"| Avg loss: {e.avg_loss:.4f} | {e.images_per_second:.0f} img/s"
            )
        if isinstance(e, EpochEnded):
            return (
                f"Epoch {e.epoch}/{e.total_epochs} done | {e.seconds:.1f}s | train loss {e.train_loss:.4f} "
                f"| train acc {e.train_acc:.2f}% | test loss {e.test_loss:.4f} | test acc {e.test_acc:.2f}%"
            )
        if isinstance(e, StageSkipped):
            return f"Stage {e.stage} ({e.name}) skipped: {e.reason}"
        if isinstance(e, CommandTaken):
            return f"command {e.verb} from {e.origin}"
        if isinstance(e, Paused):
            return f"paused at epoch {e.epoch}, batch {e.batch}" + ("" if e.reason == "user" else f": {e.reason}")
        if isinstance(e, Resumed):
            return f"resumed at epoch {e.epoch}, batch {e.batch}"
        if isinstance(e, CheckpointSaved):
            return None if e.reason in ("epoch", "best") else f"checkpoint saved: {e.path}"
        if isinstance(e, SaveFailed):
            return f"could not save {e.path}: {e.message}"
        if isinstance(e, RunFinished):
            return (
                f"finished in {e.seconds:.1f}s | final test acc {e.final_acc:.2f}% "
                f"| best {e.best_acc:.2f}% (epoch {e.best_epoch})"
            )
        if isinstance(e, RunStopped):
            kept = f"; resume with --resume {e.checkpoint}" if e.checkpoint else ""
            return f"stopped ({e.reason}) at epoch {e.epoch}, batch {e.batch}{kept}"
        if isinstance(e, RunFailed):
            return None  # the CLI prints the error once, as its last line
        return None

    def _format_loading(self, e: Loading) -> str | None:
        if e.total == 0 or e.message != self._loading:
            self._loading = e.message
            return e.message + ("..." if e.total == 0 or e.done < e.total else "")
        if e.done == e.total:
            return f"{e.message}: {e.total} done"
        return None


def run_headless(config: RunConfig, out: TextIO = sys.stdout) -> int:
    control = Control()
    restore = stop_on_signals(control)
    try:
        outcome = Trainer(config, Reporter(out), control).run()
    finally:
        restore()
    reason = control.stop_reason or ""
    if outcome == FINISHED or reason == STOP_COMMAND:  # a stop asked for is no failure
        return 0
    return SIGNAL_EXIT.get(reason, 1)
