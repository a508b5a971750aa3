"""The comparison: several runs' curves and bests side by side, none steered (a Textual
Screen). Its view reads the runs' directories itself and refreshes each second; the
app's link only waits until the app leaves, so no events come here."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Footer, Static

from tui.app import RunScreen
from tui.widgets.compare_view import CompareView


class ComparisonScreen(RunScreen):
    def __init__(self, runs: list[Path]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        head = f" COMPARE  {len(self.runs)} runs · refreshed every second · q leaves"
        yield Static(Text(head, style="bold"), id="status")
        yield CompareView(self.runs, id="compare")
        yield Footer()
