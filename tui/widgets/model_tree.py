"""View 2: the model as torchinfo shows it: column headers, aligned columns, the CBAM
blocks (◆, magenta) right after the layer they follow, and torchinfo's totals: trainable
and frozen parameters for the current stage, and their size. Arrows move, enter or
space opens a node."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static, Tree
from textual.widgets.tree import TreeNode

from core.events import LayerRow
from core.state import RunState
from tui.summary_view import row_label, shape_text
from tui.widgets.text_panel import PhraseText

SHAPE_W, PARAMS_W, TRAIN_W = 18, 12, 10
GUTTER = 2  # the tree's vertical scroll bar
TOTALS_SEPARATOR = "  ·  "


class ModelTree(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="tree-head")
        yield LayerTree(id="tree-body")
        yield PhraseText(separator=TOTALS_SEPARATOR, id="tree-totals")

    _state: RunState | None = None

    def on_resize(self) -> None:
        """Shown, or a new size: the columns follow the width."""
        if self._state is not None:
            self.update_from(self._state)

    @property
    def populated(self) -> bool:
        return self.query_one(LayerTree).populated

    def update_from(self, state: RunState) -> None:
        self._state = state
        tree = self.query_one(LayerTree)
        tree.update_from(state)
        if tree.populated:
            self.query_one("#tree-head", Static).update(tree.header())
            self.query_one("#tree-totals", PhraseText).show(totals(state))


def totals(state: RunState) -> Text:
    """torchinfo's totals, for the current stage."""
    if state.started is None:
        return Text("")
    root = state.started.model_rows[0]
    total = root.params
    trainable = state.stage.row_trainable[0] if state.stage is not None and state.stage.row_trainable else 0
    out = Text(f"Total params: {total:,}{TOTALS_SEPARATOR}", style="bold")
    out.append(f"Trainable params: {trainable:,}", style="bold green")
    out.append(f"{TOTALS_SEPARATOR}Non-trainable params: {total - trainable:,}", style="bold")
    if root.param_bytes:  # runs recorded before the size was kept do not have it
        out.append(f"{TOTALS_SEPARATOR}Params size (MB): {root.param_bytes / 1e6:,.2f}", style="bold")
    if state.stage is not None:
        out.append(f"  (stage {state.stage.stage}: {state.stage.name})", style="dim")
    return out


class LayerTree(Tree[LayerRow]):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("model (loading)", **kwargs)  # type: ignore[arg-type]
        self.populated = False
        self.name_width = 40
        self.shape_width = SHAPE_W  # 0 where the terminal is too narrow for the shapes: they go, whole
        self._shown_stage: object = None
        self._row_nodes: list[tuple[TreeNode[LayerRow], int]] = []
        self._parents: set[int] = set()

    def header(self) -> Text:
        shape = f"{'Output Shape':<{self.shape_width}}" if self.shape_width else ""
        head = f"{'Layer (type)':<{self.name_width}}{shape}{'Param #':>{PARAMS_W}}"
        return Text(f"{head}  {'Trainable':<{TRAIN_W}}", style="bold underline")

    def update_from(self, state: RunState) -> None:
        if state.started is None:
            return
        rows = state.started.model_rows
        if not self.populated:
            self._populate(list(rows))
        stage = state.stage
        needed = self.name_width + SHAPE_W + PARAMS_W + 2 + len("Partial") + GUTTER
        fits = self.size.width <= 0 or needed <= self.size.width
        relabelled = False
        if (SHAPE_W if fits else 0) != self.shape_width:
            self.shape_width = SHAPE_W if fits else 0
            self._shown_stage = None  # every row again, in the new columns
            if stage is None or len(stage.row_trainable) != len(rows):
                self.root.set_label(self._row_text(rows[0], None, 0))
                for node, i in self._row_nodes:
                    node.set_label(self._row_text(rows[i], None, i))
            relabelled = True
        if stage is not None and self._shown_stage is not stage and len(stage.row_trainable) == len(rows):
            self._shown_stage = stage
            self.root.set_label(self._row_text(rows[0], stage.row_trainable[0], 0))
            for node, i in self._row_nodes:
                node.set_label(self._row_text(rows[i], stage.row_trainable[i], i))
        if relabelled:
            # A label repaints its line but leaves the tree's width as the old columns made it
            # (a scroll bar for columns that are gone): measure the lines again (Tree's own
            # invalidation, as expanding a node does; no public call re-measures).
            self._invalidate()

    def _populate(self, rows: list[LayerRow]) -> None:
        self.populated = True
        self._parents = {i for i in range(len(rows) - 1) if rows[i + 1].depth > rows[i].depth}
        self.name_width = max(self._indent(i, row) + len(_name(row)) for i, row in enumerate(rows)) + 2
        self.root.data = rows[0]
        self.root.set_label(self._row_text(rows[0], None, 0))
        parents: list[TreeNode[LayerRow]] = [self.root]
        for i, row in enumerate(rows[1:], 1):
            del parents[row.depth :]
            node = parents[-1].add(self._row_text(row, None, i), data=row, expand=row.depth < 2,
                                   allow_expand=i in self._parents)
            parents.append(node)
            self._row_nodes.append((node, i))
        self.root.expand()

    def _indent(self, i: int, row: LayerRow) -> int:
        """Columns before a row's label: the guides, and the open/close mark of a node with children."""
        return row.depth * self.guide_depth + (2 if i in self._parents else 0)

    def _row_text(self, row: LayerRow, trainable: int | None, i: int) -> Text:
        label = row_label(row.path, row.type, row.is_cbam)
        label.pad_right(max(self.name_width - self._indent(i, row) - len(label.plain), 1))
        if self.shape_width:
            label.append(f"{shape_text(row.output_shape):<{self.shape_width}}", style="dim")
        label.append(f"{row.params:>{PARAMS_W},}" if row.params else f"{'--':>{PARAMS_W}}")
        if trainable is not None and row.params:
            on = trainable == row.params
            word = "True" if on else "False" if not trainable else "Partial"
            label.append(f"  {word:<{TRAIN_W}}", style="green" if on else "dim")
        return label


def _name(row: LayerRow) -> str:
    return row_label(row.path, row.type, row.is_cbam).plain
