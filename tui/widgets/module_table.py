"""Which modules train, at which learning rate now, with which BatchNorm mode."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from core.events import ModuleState
from core.state import RunState, lr_text

COLUMNS = (("Module", 10), ("State", 6), ("LR", 7), ("Params", 6), ("BN", 5))


def compact(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return f"{n:,}"


def live_rates(state: RunState) -> dict[str, float]:
    """Each group's learning rate at the latest loss line of this stage (a schedule or a
    live change moves it), by group name."""
    if state.stage is None or not state.group_curves or state.group_curves[-1][1] != state.stage.stage:
        return {}
    names = state.stage_groups.get(state.stage.stage, ())
    return dict(zip(names, state.group_curves[-1][2], strict=False))


class ModuleTable(DataTable[Text]):
    """One row per module, made once; afterwards only the cells whose text changed are
    updated (a schedule moves the rates at every loss line)."""

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.zebra_stripes = False
        self._columns = [self.add_column(label, width=width) for label, width in COLUMNS]
        self._cells: dict[str, tuple[Text, ...]] = {}
        self._shown: tuple[object, ...] | None = None

    def update_from(self, state: RunState) -> None:
        stage = state.stage
        rates = live_rates(state)
        key = (id(stage), tuple(sorted(rates.items())))
        if stage is None or self._shown == key:
            return
        self._shown = key
        names = [m.name for m in stage.modules]
        if list(self._cells) != names:  # the first stage, or another model: rows made anew
            self.clear()
            self._cells = {}
            for m in stage.modules:
                self._cells[m.name] = cells = _cells(m, state, rates)
                self.add_row(*cells, key=m.name)
            return
        for m in stage.modules:
            cells = _cells(m, state, rates)
            for column, old, new in zip(self._columns, self._cells[m.name], cells, strict=True):
                if _looks(old) != _looks(new):
                    self.update_cell(m.name, column, new)
            self._cells[m.name] = cells


def _cells(m: ModuleState, state: RunState, rates: dict[str, float]) -> tuple[Text, ...]:
    changed = m.name in state.changed
    mark = "▸ " if changed else "  "  # a change marker that needs no colour
    style = "bold" if changed else ""
    if m.trainable == "no":
        status = Text("frozen", style="dim " + style)
    else:
        status = Text("train" if m.trainable == "yes" else "part", style="green " + style)
    colour = "magenta " if m.name.startswith("cbam") else ""
    lr = rates.get(m.group or "", m.lr) if m.lr is not None else None
    return (
        Text(mark + m.name + (" *" if m.new else ""), style=colour + style),
        status,
        Text(lr_text(lr) if lr is not None else "-", style=style),
        Text(compact(m.params), justify="right"),
        Text(m.bn_mode or "", style=style),
    )


def _looks(text: Text) -> tuple[str, str, str | None]:
    """What a cell shows (Text's own == ignores its style)."""
    return text.plain, str(text.style), text.justify
