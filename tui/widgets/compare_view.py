"""`cbam-tui compare`: several runs' test accuracy and loss per epoch on one set of axes
(stage switches marked), and a table of each run's best; live runs refresh each second."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from core.rundir import EventReader, open_run, probe_owner
from core.safefs import Dir
from core.state import RunState, fmt_seconds
from tui.widgets.curves import CachedPlot

REFRESH_S = 1.0


class Tracked:
    """One run being compared: its directory held open, its events folded as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir: Dir = open_run(path)
        self.reader = EventReader(self.dir)
        self.state = RunState(keep_losses=False)
        self.live = False

    def poll(self) -> bool:
        """Fold what is new; True when anything changed."""
        before = (self.state.version, self.live)
        for event, t in self.reader.read(final=not self.live):
            self.state.apply(event, t)
        self.live = probe_owner(self.dir).alive
        return (self.state.version, self.live) != before


class CompareCurve(CachedPlot):
    def __init__(self, metric: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.metric = metric  # "acc" or "loss"

    def update_from(self, runs: list[Tracked]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("test accuracy % per epoch" if self.metric == "acc" else "test loss per epoch")
        switches: set[int] = set()
        for run in runs:
            epochs = run.state.epochs
            if epochs:
                values = [e.test_acc if self.metric == "acc" else e.test_loss for e in epochs]
                plt.plot([e.epoch for e in epochs], values, label=run.path.name[-24:], marker="braille")
            if run.state.started is not None:
                first = 1
                for _, length in run.state.started.stages[:-1]:
                    first += length
                    switches.add(first)
        for epoch in sorted(switches):
            plt.vertical_line(epoch - 0.5, color="gray")
        self.replot()


class CompareView(Vertical):
    def __init__(self, paths: list[Path], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.runs = [Tracked(p) for p in paths]

    def compose(self) -> ComposeResult:
        with Horizontal(id="compare-curves"):
            yield CompareCurve("acc", id="compare-acc")
            yield CompareCurve("loss", id="compare-loss")
        yield Static(id="compare-table")

    def on_mount(self) -> None:
        self.refresh_runs(force=True)
        self.set_interval(REFRESH_S, self.refresh_runs)

    def on_unmount(self) -> None:
        for run in self.runs:
            run.dir.close()

    def refresh_runs(self, force: bool = False) -> None:
        changed = [run.poll() for run in self.runs]
        if force or any(changed):
            for curve in self.query(CompareCurve):
                curve.update_from(self.runs)
            self.query_one("#compare-table", Static).update(table(self.runs))


def table(runs: list[Tracked]) -> Table:
    out = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("run", "state", "best test acc", "at epoch", "epochs", "img/s", "time"):
        out.add_column(column, justify="left" if column in ("run", "state") else "right")
    for run in runs:
        s = run.state
        epochs = s.epochs
        state = "running" if run.live and s.status not in ("FINISHED", "STOPPED", "FAILED") else s.status.lower()
        if not run.live and s.status in ("RUNNING", "PAUSED", "EVALUATING", "LOADING", "STARTING"):
            state = "dead"
        out.add_row(
            Text(run.path.name), state,
            f"{s.best_acc:.2f}%" if s.best_acc is not None else "-", str(s.best_epoch or "-"),
            f"{len(epochs)}/{s.started.total_epochs if s.started else '-'}",
            f"{sum(e.images_per_second for e in epochs) / len(epochs):,.0f}" if epochs else "-",
            fmt_seconds(sum(e.seconds for e in epochs)) if epochs else "-",
        )
    return out
