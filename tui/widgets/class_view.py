"""View 4: test accuracy per class with its change since the last epoch, and the
confusion matrix with class names, from the evaluation every epoch already runs."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from core.state import RunState

BAR = 20


class ClassView(VerticalScroll):
    def compose(self):  # type: ignore[no-untyped-def]
        yield Static(id="class-body")

    def update_from(self, state: RunState) -> None:
        self.query_one("#class-body", Static).update(render_classes(state))


def render_classes(state: RunState) -> RenderableType:
    reports = state.class_reports
    if not reports or state.started is None:
        return Text("per-class accuracy: after the first epoch", style="dim")
    classes = state.started.classes
    now = reports[-1]
    before = reports[-2] if len(reports) > 1 else None
    acc = Table(title=f"per-class accuracy (epoch {now.epoch})", title_justify="left", box=None, pad_edge=False)
    acc.add_column("class")
    acc.add_column("test acc", justify="right")
    acc.add_column("change", justify="right")
    acc.add_column("")
    for i, name in enumerate(classes):
        a = _pct(now.correct[i], now.total[i])
        change = Text("")
        if before is not None:
            d = a - _pct(before.correct[i], before.total[i])
            change = Text(f"{d:+.1f}", style="green" if d > 0 else "red" if d < 0 else "dim")
        filled = round(a / 100 * BAR)
        acc.add_row(name, f"{a:.1f}%", change, Text("█" * filled + "·" * (BAR - filled), style=_tint(a / 100)))
    parts: list[RenderableType] = [acc]
    if now.confusion:
        matrix = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left",
                       box=None, pad_edge=False)
        matrix.add_column("")
        short = [_short(n) for n in classes]
        for s in short:
            matrix.add_column(s, justify="right")
        for i, row in enumerate(now.confusion):
            total = max(sum(row), 1)
            cells = [Text(str(v), style=("bold " if j == i else "") + _tint(v / total, diagonal=j == i))
                     for j, v in enumerate(row)]
            matrix.add_row(short[i], *cells)
        parts += [Text(""), matrix]
    return Group(*parts)


def _pct(correct: int, total: int) -> float:
    return 100.0 * correct / total if total else 0.0


def _short(name: str) -> str:
    return name[:5]


def _tint(share: float, diagonal: bool = True) -> str:
    if not diagonal:
        return "red" if share >= 0.2 else "yellow" if share >= 0.05 else "dim"
    return "green" if share >= 0.7 else "yellow" if share >= 0.4 else "red"
