"""The torchinfo-style model tree: expandable, CBAM blocks marked by colour and by ◆."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from core.events import LayerRow
from core.state import RunState
from tui.summary_view import row_label, shape_text


class ModelTree(Tree[LayerRow]):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("model (loading)", **kwargs)  # type: ignore[arg-type]
        self.populated = False
        self._shown_stage: object = None
        self._row_nodes: list[tuple[TreeNode[LayerRow], int]] = []

    def update_from(self, state: RunState) -> None:
        if state.started is None:
            return
        rows = state.started.model_rows
        if not self.populated:
            self._populate(list(rows))
        stage = state.stage
        if stage is not None and self._shown_stage is not stage and len(stage.row_trainable) == len(rows):
            self._shown_stage = stage
            for node, i in self._row_nodes:
                node.set_label(self._row_text(rows[i], stage.row_trainable[i]))

    def _populate(self, rows: list[LayerRow]) -> None:
        self.populated = True
        self.root.data = rows[0]
        self.root.set_label(self._row_text(rows[0], None))
        parents: list[TreeNode[LayerRow]] = [self.root]
        for i, row in enumerate(rows[1:], 1):
            del parents[row.depth :]
            has_children = i + 1 < len(rows) and rows[i + 1].depth > row.depth
            node = parents[-1].add(self._row_text(row, None), data=row, expand=row.depth < 2, allow_expand=has_children)
            parents.append(node)
            self._row_nodes.append((node, i))
        self.root.expand()

    @staticmethod
    def _row_text(row: LayerRow, trainable: int | None) -> Text:
        label = row_label(row.path, row.type, row.is_cbam)
        label.append(f"  {shape_text(row.output_shape)}", style="dim")
        label.append(f"  {row.params:,}" if row.params else "  --")
        if trainable is not None and row.params:
            on = trainable == row.params
            word = "  trainable" if on else "  frozen" if not trainable else "  partly"
            label.append(word, style="green" if on else "dim")
        return label
