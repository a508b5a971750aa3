"""The machine under the run: each GPU, and the training process."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from core.state import RunState

GIB = 2**30


class HardwarePanel(Static):
    def update_from(self, state: RunState) -> None:
        s = state.system
        if s is None:
            self.update(Text("machine: no reading yet", style="dim"))
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
        if s.note:
            lines.append("\n")
            lines.append(s.note, style="dim")
        self.update(lines)


def _load(percent: float) -> str:
    return "green" if percent >= 80 else "yellow" if percent >= 40 else "red"
