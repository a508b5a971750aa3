"""A Static that redraws only when its text changed, and lays the screen out again only
when its height changed: most updates (a batch count, a speed) keep the line count,
and a layout pass of the whole screen costs more than the line itself."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import Static


class TextPanel(Static):
    def __init__(self, content: str | Text = "", **kwargs: object) -> None:
        super().__init__(content, **kwargs)  # type: ignore[arg-type]
        self._shown: tuple[str, str] | None = None
        self._rows = -1

    def show(self, content: str | Text) -> None:
        text = content if isinstance(content, Text) else Text(content)
        key = (text.plain, text.markup)
        if key == self._shown:
            return
        self._shown = key
        width = self.content_region.width
        rows = sum(max(1, -(-cell_len(line) // width)) for line in text.plain.split("\n")) if width > 0 else -1
        self.update(text, layout=rows != self._rows or rows < 0)
        self._rows = rows

    def show_first_fitting(self, *variants: str | Text) -> None:
        """The first of ``variants`` (longest first) that fits on one line: a line that would
        wrap or be cut loses whole parts instead."""
        width = self.content_region.width
        chosen = variants[-1]
        for variant in variants:
            if width <= 0 or cell_len(variant.plain if isinstance(variant, Text) else variant) <= width:
                chosen = variant
                break
        self.show(chosen)
