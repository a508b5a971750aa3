"""View 4: test accuracy per class with its change since the last epoch, and the
confusion matrix with class names, from the evaluation every epoch already runs."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from core.state import RunState

BAR = 20
MIN_CUT = 4  # the shortest a cut class name gets: three letters and the mark
SCROLLBAR = 2


class ClassView(VerticalScroll):
    _state: RunState | None = None

    def compose(self):  # type: ignore[no-untyped-def]
        yield Static(id="class-body")

    def on_resize(self) -> None:
        """Shown, or a new size: the class names follow the width."""
        if self._state is not None:
            self.update_from(self._state)

    def update_from(self, state: RunState) -> None:
        self._state = state
        # Its own padding, and a scroll bar's gutter whether or not one is drawn: a matrix
        # laid out for a width a scroll bar then takes would be squeezed.
        width = self.size.width - self.styles.padding.width - SCROLLBAR if self.size.width else 0
        self.query_one("#class-body", Static).update(render_classes(state, width))


def render_classes(state: RunState, width: int = 0) -> RenderableType:
    """``width``: cells the confusion matrix may take (0: as many as it likes)."""
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
                       box=None, pad_edge=False, collapse_padding=True)
        matrix.add_column("")
        digits = max(len(str(v)) for row in now.confusion for v in row)
        rows, heads = matrix_labels(classes, digits, width)
        for head in heads:
            matrix.add_column(head, justify="right")
        for i, row in enumerate(now.confusion):
            total = max(sum(row), 1)
            cells = [Text(str(v), style=("bold " if j == i else "") + _tint(v / total, diagonal=j == i))
                     for j, v in enumerate(row)]
            matrix.add_row(rows[i], *cells)
        parts += [Text(""), matrix]
    return Group(*parts)


def _pct(correct: int, total: int) -> float:
    return 100.0 * correct / total if total else 0.0


def matrix_labels(classes: Sequence[str], digits: int, width: int) -> tuple[list[str], list[str]]:
    """The class names beside the matrix's rows and over its columns: whole where the matrix
    fits in ``width`` cells (0: any width); else the column heads, and where even that is
    not enough the row labels too, all cut to the one length that fits (marked …).
    ``digits``: the widest count; one cell between columns."""
    longest = max((len(name) for name in classes), default=0)

    def fits(row_w: int, head_w: int) -> bool:
        return width <= 0 or row_w + sum(max(len(_cut(n, head_w)), digits) + 1 for n in classes) <= width

    if fits(longest, longest):
        return list(classes), list(classes)
    cut = next((k for k in range(longest - 1, MIN_CUT - 1, -1) if fits(longest, k)), None)
    if cut is not None:
        return list(classes), [_cut(name, cut) for name in classes]
    cut = next((k for k in range(longest - 1, MIN_CUT - 1, -1) if fits(k, k)), MIN_CUT)
    return [_cut(name, cut) for name in classes], [_cut(name, cut) for name in classes]


def _cut(name: str, length: int) -> str:
    return name if len(name) <= length else name[: length - 1] + "…"


def _tint(share: float, diagonal: bool = True) -> str:
    if not diagonal:
        return "red" if share >= 0.2 else "yellow" if share >= 0.05 else "dim"
    return "green" if share >= 0.7 else "yellow" if share >= 0.4 else "red"
