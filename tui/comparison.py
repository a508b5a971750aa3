"""The comparison: several runs' curves of one scalar, their bests and the configuration
values that differ, side by side, none steered (a Textual Screen). Its view reads the runs'
directories itself and refreshes each second; the app's link only waits until the app
leaves, so no events come here."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Static

from core.comparison import DEFAULT_METRIC
from core.events import counted
from tui.app import RunScreen
from tui.widgets.compare_view import CompareView


class ComparisonScreen(RunScreen):
    BINDINGS = [
        Binding("m", "metric(1)", "next metric"),
        Binding("M", "metric(-1)", "previous metric"),
    ]

    def __init__(self, runs: list[Path], metric: str = DEFAULT_METRIC) -> None:
        super().__init__()
        self.runs = runs
        self.metric = metric

    def compose(self) -> ComposeResult:
        yield Static(self.head(), id="status")
        yield CompareView(self.runs, self.metric, id="compare")
        yield Footer()

    def head(self) -> Text:
        return Text(f" COMPARE  {counted(len(self.runs), 'run')} · {self.metric} (m/M: next/previous) · "
                    "refreshed every second · q leaves", style="bold")

    def action_metric(self, step: int) -> None:
        """Draw the next (or the previous) scalar the runs recorded."""
        self.metric = self.query_one(CompareView).cycle(step)
        self.query_one("#status", Static).update(self.head())
