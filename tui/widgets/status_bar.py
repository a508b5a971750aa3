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


class StatusBar(TextPanel):
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
        self.show(line)
