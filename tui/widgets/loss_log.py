"""The seed's per-100-batch lines, epoch summaries and stage banners; newest at the bottom."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog


class LossLog(RichLog):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=5000, wrap=False, markup=False, auto_scroll=True, **kwargs)  # type: ignore[arg-type]

    def add_lines(self, lines: list[str]) -> None:
        for line in lines:
            style = "bold" if line.startswith("===") else "cyan" if " done |" in line else ""
            self.write(Text(line, style=style))
