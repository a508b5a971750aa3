"""The top line: run name, data set, device, precision and the run's state."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from core.state import RunState

STATE_STYLES = {
    "LOADING": "bold black on yellow",
    "RUNNING": "bold black on green",
    "PAUSED": "bold black on yellow",
    "STOPPING": "bold black on yellow",
    "FINISHED": "bold black on cyan",
    "STOPPED": "bold white on blue",
    "FAILED": "bold white on red",
}


class StatusBar(Static):
    def update_from(self, state: RunState) -> None:
        line = Text(f" {state.status} ", style=STATE_STYLES.get(state.status, "bold"))
        w = state.watching
        if w is not None:  # attached through the run directory: can the keys steer it?
            line.append(" ◉ attached" if w.can_control else " ○ watching only", style="bold")
        s = state.started
        if s is None:
            line.append(" cbam-tui", style="bold")
        else:
            line.append(f" {s.run_name}", style="bold")
            device = f"{s.device} x {s.world_size} processes" if s.world_size > 1 else s.device
            line.append(f" · {s.dataset} · {device} · {s.precision} · plan {s.plan_label}")
        if state.message:  # why it paused itself, stopped or failed
            line.append(f"  {state.message}", style="bold yellow")
        self.update(line)
