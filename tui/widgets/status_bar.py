"""The top line: run name, data set, device, precision and the run's state."""

from __future__ import annotations

from rich.text import Text

from core.state import RunState
from core.vocab import Status
from tui.widgets.text_panel import TextPanel

STATE_STYLES = {
    Status.LOADING: "bold black on yellow",
    Status.RUNNING: "bold black on green",
    Status.PAUSED: "bold black on yellow",
    Status.STOPPING: "bold black on yellow",
    Status.FINISHED: "bold black on cyan",
    Status.STOPPED: "bold white on blue",
    Status.FAILED: "bold white on red",
}


SEPARATOR = " · "
# The run's details, in the order they show, each with its rank: where the line is too
# narrow the lowest rank goes first, whole (the badge and the message never go).
DROP_FIRST = ("precision", "device", "dataset", "plan", "name", "watching")


class StatusBar(TextPanel):
    _state: RunState | None = None

    def on_resize(self) -> None:
        if self._state is not None:  # a new width: segments come back, or go
            self.update_from(self._state)

    def update_from(self, state: RunState) -> None:
        self._state = state
        parts = status_parts(state)
        width = self.content_region.width
        for name in DROP_FIRST:
            if width <= 0 or join_parts(parts, state).cell_len <= width:
                break
            parts.pop(name, None)
        line = join_parts(parts, state)
        if width > 0:
            line.truncate(width, overflow="ellipsis")  # only a message too long for the line itself
        self.show(line)


def status_parts(state: RunState) -> dict[str, str]:
    """The line's segments by name, in the order they show."""
    parts: dict[str, str] = {}
    w = state.watching
    if w is not None:  # attached through the run directory: can the keys steer it?
        parts["watching"] = "◉ attached" if w.can_control else "○ watching only"
    s = state.started
    if s is None:
        parts["name"] = "cbam-tui"
        return parts
    parts["name"] = s.run_name
    parts["dataset"] = s.dataset
    parts["device"] = f"{s.device} x {s.world_size} processes" if s.world_size > 1 else s.device
    parts["precision"] = s.precision
    parts["plan"] = f"plan {s.plan_label}"
    return parts


def join_parts(parts: dict[str, str], state: RunState) -> Text:
    """The status badge, then the segments (the run's details apart by `` · ``), then the message."""
    line = Text(f" {state.status} ", style=STATE_STYLES.get(state.status, "bold"))
    details = [value for name, value in parts.items() if name not in ("watching", "name")]
    for name in ("watching", "name"):
        if name in parts:
            line.append(f" {parts[name]}", style="bold")
    if details:
        line.append((SEPARATOR if "name" in parts else " ") + SEPARATOR.join(details))
    if state.message:  # why it paused itself, stopped or failed
        line.append(f"  {state.message}", style="bold yellow")
    return line
