"""The machine under the run: each GPU, and the training process."""

from __future__ import annotations

from rich.text import Text

from core.state import RunState
from tui.widgets.text_panel import TextPanel

GIB = 2**30


class HardwarePanel(TextPanel):
    def update_from(self, state: RunState, ui: str = "") -> None:
        """``ui``: the dashboard's own cost, a line of its own (view 3)."""
        s = state.system
        if s is None:
            self.show(Text("machine: no reading yet" + (f"\n{ui}" if ui else ""), style="dim"))
            return
        lines = Text()
        for g in s.gpus:
            line = Text(f"gpu{g.index} ", style="bold")
            line.append(f"{g.utilization:3.0f}% ", style=_load(g.utilization))
            line.append(f"· {g.memory_used / GIB:.1f}/{g.memory_total / GIB:.1f} GiB")
            if g.power >= 0:
                line.append(f" · {g.power:.0f} W")
            if g.temperature >= 0:
                line.append(f" · {g.temperature:.0f}°C")
            line.append(f"  {g.name}", style="dim")
            lines.append(line)
            lines.append("\n")
        proc = Text("process ", style="bold")
        proc.append(f"cpu {s.cpu_percent:.0f}% · {s.rss / GIB:.1f} GiB resident")
        if s.cuda_peak:
            proc.append(f" · cuda peak {s.cuda_peak / GIB:.1f} GiB")
        proc.append(f" · batch prep {100 * state.data_share:.0f}% of a step")
        lines.append(proc)
        cpu = cpu_line(state)
        if cpu is not None:
            lines.append("\n")
            lines.append(cpu)
        if s.note:
            lines.append("\n")
            lines.append(s.note, style="dim")
        if ui:
            lines.append("\n")
            lines.append(ui, style="dim")
        self.show(lines)


def _load(percent: float) -> str:
    return "green" if percent >= 80 else "yellow" if percent >= 40 else "red"


def cpu_line(state: RunState) -> Text | None:
    """torch's threads against the CPUs this process may use and what other processes
    keep busy on them; oversubscribed (threads spinning for cores they do not get) in bold."""
    s, started = state.system, state.started
    if s is None or started is None or not started.threads or s.cpus <= 0:
        return None
    line = Text("cpu ", style="bold")
    line.append(f"torch {started.threads} thread{'s' if started.threads > 1 else ''} · ")
    line.append(f"other processes {s.busy_elsewhere:.1f} of {s.cpus:g} CPUs")
    free = max(1, int(s.cpus - s.busy_elsewhere + 0.5))
    if started.threads + s.busy_elsewhere > s.cpus + 0.5 and free < started.threads:
        line.append(f" · oversubscribed: try --threads {free}", style="bold yellow")
    return line
