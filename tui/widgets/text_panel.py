"""A Static that redraws only when its text changed, and lays the screen out again only
when its height changed: most updates (a batch count, a speed) keep the line count,
and a layout pass of the whole screen costs more than the line itself."""

from __future__ import annotations

import itertools

from rich.cells import cell_len
from rich.text import Text
from textual.geometry import Size
from textual.widgets import Static


def rows_at(text: Text, width: int) -> int:
    """The lines ``text`` takes at ``width`` cells (> 0), its own line breaks and wrapping."""
    return sum(max(1, -(-cell_len(line) // width)) for line in text.plain.split("\n"))


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
        rows = rows_at(text, width) if width > 0 else -1
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


class PhraseText(Static):
    """A Text broken only at its separators (`wrap_phrases`) at the width the widget is laid
    out at, not the width it had when the text came: its first frame after being shown or
    resized already has its lines and its height."""

    def __init__(self, separator: str = " · ", indent: int = 0, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.separator, self.indent = separator, indent
        self._text = Text("")

    def show(self, text: Text) -> None:
        if (text.plain, text.markup) != (self._text.plain, self._text.markup):
            self._text = text
            self.refresh(layout=True)

    def _wrapped(self, width: int) -> Text:
        return wrap_phrases(self._text, width, self.indent, self.separator)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        if not width or not self._text.plain:
            return 0
        return rows_at(self._wrapped(width), width)

    def render(self) -> Text:
        return self._wrapped(self.content_size.width)


def wrap_phrases(text: Text, width: int, indent: int = 0, separator: str = " · ") -> Text:
    """``text`` within ``width`` cells, broken only at its separators: a phrase stays on one
    line, and each line after the first is indented by ``indent`` (under the first phrase,
    past its label). A phrase wider than the line itself is left to wrap."""
    plain = text.plain
    if width <= 0 or cell_len(plain) <= width:
        return text
    bounds, start = [], 0
    while (at := plain.find(separator, start)) >= 0:
        bounds.append((start, at))
        start = at + len(separator)
    bounds.append((start, len(plain)))
    out = text[bounds[0][0] : bounds[0][1]]
    used = out.cell_len
    for (_, end), (start, stop) in itertools.pairwise(bounds):
        phrase, sep = text[start:stop], text[end:start]
        if used + sep.cell_len + phrase.cell_len <= width:
            out.append_text(sep)
            used += sep.cell_len
        else:
            out.append("\n" + " " * indent)
            used = indent
        out.append_text(phrase)
        used += phrase.cell_len
    return out
