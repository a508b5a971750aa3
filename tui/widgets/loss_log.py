"""The seed's per-100-batch lines, epoch summaries and stage banners; newest at the bottom.

Each line carries its kind from where it is made (an event's lines, or the app's own
note), and the log styles it by that kind: nothing here reads a line's text.

A line wider than the log loses whole fields from its end, never half a number.

A line costs nothing until it is on screen: adding one appends it to a bounded
deque, and only the rows in view are rendered (Textual's line API), each once.
A log in a view that is not shown renders nothing at all.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.cache import LRUCache
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from core.events import EpochEnded, Event, StageStarted
from core.state import describe

MAX_LINES = 5000


class LineKind(enum.Enum):
    TEXT = enum.auto()  # a run's line, as `describe` says it
    BANNER = enum.auto()  # a stage's first line
    EPOCH = enum.auto()  # an epoch's summary
    NOTE = enum.auto()  # the dashboard's own: what a key sent, or why it did nothing


STYLES = {
    LineKind.TEXT: Style.null(),
    LineKind.BANNER: Style(bold=True),
    LineKind.EPOCH: Style(color="cyan"),
    LineKind.NOTE: Style.null(),
}


@dataclass(frozen=True, slots=True)
class LogLine:
    kind: LineKind
    text: str  # shown as is


def log_lines(event: Event) -> list[LogLine]:
    """An event's log lines, each with its kind, which the event decides."""
    lines = describe(event)
    if isinstance(event, StageStarted):
        return [LogLine(LineKind.BANNER if i == 0 else LineKind.TEXT, line) for i, line in enumerate(lines)]
    kind = LineKind.EPOCH if isinstance(event, EpochEnded) else LineKind.TEXT
    return [LogLine(kind, line) for line in lines]


def note(text: str) -> LogLine:
    """A line of the dashboard's own, set apart from the run's."""
    return LogLine(LineKind.NOTE, f"> {text}")


def fit_line(text: str, width: int) -> str:
    """``text`` within ``width`` cells: a line too long loses whole fields (`` | ``), or
    whole words, from its end, marked with an ellipsis; a number is never cut."""
    if cell_len(text) <= width:
        return text
    for separator in (" | ", " "):
        cut = len(text)
        while (cut := text.rfind(separator, 0, cut)) > 0:
            if cell_len(text[:cut]) + 2 <= width:
                return text[:cut] + " …"
    return ""


class LossLog(ScrollView):
    DEFAULT_CSS = """
    LossLog {
        overflow-x: hidden;
    }
    """

    def __init__(self, max_lines: int = MAX_LINES, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._lines: deque[LogLine] = deque(maxlen=max_lines)
        self._dropped = 0  # lines pushed out at the top: keeps cache keys stable
        self._strips: LRUCache[tuple[int, int, Style], Strip] = LRUCache(256)
        self._follow = True  # at the newest line; scrolling up stops following, scrolling back resumes

    def add_lines(self, lines: list[LogLine]) -> None:
        if not lines:
            return
        for line in lines:
            if len(self._lines) == self._lines.maxlen:
                self._dropped += 1
            self._lines.append(line)
        size = Size(self.size.width, len(self._lines))
        if (size.height > self.size.height) != (self.virtual_size.height > self.size.height):
            self.virtual_size = size  # the scroll bar comes or goes: the screen is laid out again
        else:
            # As Textual does when only a scroll view's content grew: no layout of the whole
            # screen, only the scroll bar's window (a layout per line costs more than the line).
            self.set_reactive(LossLog.virtual_size, size)
            self._scroll_update(size)
        if self._follow:
            self.scroll_end(animate=False, immediate=False, x_axis=False)
        self.refresh()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.size.height:  # a hidden log has no scroll position worth keeping
            self._follow = new_value >= self.max_scroll_y

    def on_resize(self) -> None:
        if self._follow:  # shown again, or a new size: still at the newest line
            self.scroll_end(animate=False, immediate=False, x_axis=False)

    @property
    def caught_up(self) -> bool:
        """Shows its newest line, if it follows them (its scroll to the end runs after a refresh)."""
        return not (self._follow and self.size.height) or self.scroll_y >= self.max_scroll_y

    @property
    def plain_lines(self) -> list[str]:
        return [line.text for line in self._lines]

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if index >= len(self._lines) or width <= 0:
            return Strip.blank(max(width, 0), self.rich_style)
        base = self.rich_style
        key = (index + self._dropped, width, base)
        strip = self._strips.get(key)
        if strip is None:
            line = self._lines[index]
            text = fit_line(line.text, width)
            strip = Strip([Segment(text, STYLES[line.kind])], cell_len(text)).crop_extend(0, width, base)
            strip = strip.apply_style(base)
            self._strips[key] = strip
        return strip

