"""The machine under the run: each GPU, and the training process; on view 3 also their
last minute as sparklines, and the other processes computing on each GPU."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from core.events import GpuProcess
from core.state import RunState
from tui.widgets.text_panel import TextPanel, wrap_phrases

GIB = 2**30
SPARKS = "▁▂▃▄▅▆▇█"
LABEL_W = 12  # "  gpu0 util " before a sparkline


class HardwarePanel(TextPanel):
    _last: tuple[RunState, str, bool, bool] | None = None

    def on_resize(self) -> None:
        if self._last is not None:  # its lines break where the new width needs them to
            self.update_from(*self._last)

    def update_from(self, state: RunState, ui: str = "", history: bool = False, running: bool = True) -> None:
        """``ui``: the dashboard's own cost, a line of its own; ``history``: the last minute's
        sparklines and each GPU's other processes (both on view 3); ``running``: whether the
        run is running now (a stopped or finished one is not read, and may never have been)."""
        self._last = (state, ui, history, running)
        s = state.system
        if s is None:
            said = "machine: no reading yet" if running else "machine: not read (the run is not running)"
            self.show(Text(said + (f"\n{ui}" if ui else ""), style="dim"))
            return
        lines = Text()
        if not running:
            lines.append("machine: its last reading, from while the run was running\n", style="dim")
        width = self.content_region.width
        for g in s.gpus:
            line = Text(f"gpu{g.index} ", style="bold")
            line.append(f"{g.utilization:3.0f}% ", style=_load(g.utilization))
            line.append(f"· {g.memory_used / GIB:.1f}/{g.memory_total / GIB:.1f} GiB")
            if g.power >= 0:
                line.append(f" · {g.power:.0f} W")
            if g.temperature >= 0:
                line.append(f" · {g.temperature:.0f}°C")
            line.append(f" · {g.name}", style="dim")  # a phrase of its own: it goes to the next line whole
            lines.append(wrap_phrases(line, width, len(f"gpu{g.index} ")))
            lines.append("\n")
            if history:
                lines.append(self._gpu_history(state, g.index))
        proc = Text("process ", style="bold")
        proc.append(f"cpu {s.cpu_percent:.0f}% · {s.rss / GIB:.1f} GiB resident")
        if s.cuda_peak:
            proc.append(f" · cuda peak {s.cuda_peak / GIB:.1f} GiB")
        proc.append(f" · batch prep {100 * state.data_share:.0f}% of a step")
        lines.append(wrap_phrases(proc, width, len("process ")))
        if history:  # against the CPUs it may use; where they are not known, against its busiest second
            cores = s.cpus
            lines.append("\n")
            lines.append(self._spark_line("cpu", [x.cpu_percent for x in state.system_history], 100 * cores,
                                          f"of {cores:g} CPU{'s' if cores != 1 else ''}, last minute" if cores > 0
                                          else "last minute"))
        cpu = cpu_line(state)
        if cpu is not None:
            lines.append("\n")
            lines.append(wrap_phrases(cpu, width, len("cpu ")))
        if s.note:
            lines.append("\n")
            lines.append(s.note, style="dim")
        if ui:
            lines.append("\n")
            lines.append(wrap_phrases(Text(ui, style="dim"), width, 2))
        self.show(lines)

    def _gpu_history(self, state: RunState, index: int) -> Text:
        readings = [g for x in state.system_history for g in x.gpus if g.index == index]
        out = Text()
        out.append(self._spark_line(f"gpu{index} util", [g.utilization for g in readings], 100.0, "last minute"))
        out.append("\n")
        out.append(self._spark_line(f"gpu{index} mem", [g.memory_used for g in readings],
                                    float(readings[-1].memory_total) if readings else 0.0, "of its memory"))
        out.append("\n")
        others = readings[-1].others if readings else ()
        if others:
            out.append(f"{'':>{LABEL_W}}also on gpu{index}: ", style="dim")
            out.append(" · ".join(_process_text(p) for p in others))
            out.append("\n")
        return out

    def _spark_line(self, label: str, values: Sequence[float], top: float, note: str) -> Text:
        """``  label ▁▂▃▅▇  note``, as many of the newest readings as the width holds."""
        room = max(self.content_region.width - LABEL_W - len(note) - 2, 8)
        line = Text(f"  {label:<{LABEL_W - 2}}", style="bold")
        line.append(sparkline(values[-room:], top), style="cyan")
        line.append(f"  {note}", style="dim")
        return line


def sparkline(values: Sequence[float], top: float) -> str:
    """One cell per value, its height the value's share of ``top`` (of the largest when
    ``top`` is not positive)."""
    top = top if top > 0 else max(values, default=0.0)
    if top <= 0:
        return SPARKS[0] * len(values)
    last = len(SPARKS) - 1
    return "".join(SPARKS[max(0, min(round(v / top * last), last))] for v in values)


def _process_text(p: GpuProcess) -> str:
    who = f"{p.name} (pid {p.pid})" if p.name else f"pid {p.pid}"
    return who + (f" {p.memory / GIB:.1f} GiB" if p.memory >= 0 else "")


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
