"""`cbam-tui compare`: several runs' test accuracy and loss per epoch on one set of axes
(stage switches marked), and a table of each run's best; live runs refresh each second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static
from textual_plotext.plot import Plot as Figure

from core.comparison import from_state
from core.rundir import EventReader, open_run, probe_owner
from core.runs import summarize
from core.safefs import Dir
from core.state import RunState
from tui.widgets.curves import Plot

REFRESH_S = 1.0


class Tracked:
    """One run being compared: its directory held open, its light state (epochs, plan, status:
    no curves or maps) taken from its index and the lines after it, then folded as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir: Dir = open_run(path)
        self.live = probe_owner(self.dir).alive
        summary = summarize(self.dir, final=not self.live)
        self.reader: EventReader = summary.reader
        self.state: RunState = summary.state

    def poll(self) -> bool:
        """Fold what is new; True when anything changed."""
        before = (self.state.version, self.live)
        self.state.fold(self.reader.events(final=not self.live))
        self.live = probe_owner(self.dir).alive
        return (self.state.version, self.live) != before


class CompareCurve(Plot):
    def __init__(self, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric  # "acc" or "loss"
        self.runs: list[Tracked] = []

    def show(self, runs: list[Tracked]) -> None:
        self.runs = runs
        self.invalidate()

    def draw(self, plt: Figure) -> None:
        plt.title("test accuracy % per epoch" if self.metric == "acc" else "test loss per epoch")
        switches: set[int] = set()
        for run in self.runs:
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
                curve.show(self.runs)
            self.query_one("#compare-table", Static).update(table(self.runs))


def table(runs: list[Tracked]) -> Table:
    from tui.formats import COMPARE_COLUMNS, compare_cells

    out = Table(box=None, pad_edge=False, header_style="bold")
    for column in COMPARE_COLUMNS:
        out.add_column(column, justify="left" if column in ("run", "state") else "right")
    for run in runs:
        out.add_row(*(Text(cell) for cell in compare_cells(from_state(run.path, run.state, run.live))))
    return out
