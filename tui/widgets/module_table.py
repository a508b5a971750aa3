"""Which modules train, at which learning rate, with which BatchNorm mode."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from core.state import RunState, lr_text

COLUMNS = ("Module", "State", "LR", "Params", "BN")


def compact(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return f"{n:,}"


class ModuleTable(DataTable[Text]):
    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.zebra_stripes = False
        self.add_columns(*COLUMNS)
        self._shown: int | None = None

    def update_from(self, state: RunState) -> None:
        stage = state.stage
        if stage is None or self._shown == id(stage):
            return
        self._shown = id(stage)
        self.clear()
        for m in stage.modules:
            changed = m.name in state.changed
            mark = "▸ " if changed else "  "  # a change marker that needs no colour
            style = "bold" if changed else ""
            if m.trainable == "no":
                status = Text("frozen", style="dim " + style)
            else:
                status = Text("train" if m.trainable == "yes" else "part", style="green " + style)
            colour = "magenta " if m.name.startswith("cbam") else ""
            name = Text(mark + m.name + (" *" if m.new else ""), style=colour + style)
            self.add_row(
                name,
                status,
                Text(lr_text(m.lr) if m.lr is not None else "-", style=style),
                Text(compact(m.params), justify="right"),
                Text(m.bn_mode or "", style=style),
            )
