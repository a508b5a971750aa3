"""The torchinfo-style model tree: expandable, CBAM blocks marked by colour and by ◆."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from core.summary import Row
from tui.state import RunState
from tui.summary_view import row_label, shape_text


class ModelTree(Tree[Row]):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("model (loading)", **kwargs)  # type: ignore[arg-type]
        self.populated = False
        self._shown_stage: int | None = None
        self._row_nodes: list[tuple[TreeNode[Row], Row]] = []

    def update_from(self, state: RunState) -> None:
        if state.started is None:
            return
        if not self.populated:
            self._populate([Row.from_tuple(t) for t in state.started.model_rows])
        if state.stage is not None and self._shown_stage != id(state.stage):
            self._shown_stage = id(state.stage)
            trainable = {m.path: m.trainable != "no" for m in state.stage.modules}
            for node, row in self._row_nodes:
                node.set_label(self._row_text(row, trainable))

    def _populate(self, rows: list[Row]) -> None:
        self.populated = True
        root_row = rows[0]
        self.root.data = root_row
        self.root.set_label(self._row_text(root_row, {}))
        by_path: dict[str, TreeNode[Row]] = {"": self.root}
        for row in rows[1:]:
            parent = by_path[row.path.rsplit(".", 1)[0] if "." in row.path else ""]
            has_children = any(r.path.startswith(row.path + ".") for r in rows)
            node = parent.add(self._row_text(row, {}), data=row, expand=row.depth < 2, allow_expand=has_children)
            by_path[row.path] = node
            self._row_nodes.append((node, row))
        self.root.expand()

    @staticmethod
    def _row_text(row: Row, trainable: dict[str, bool]) -> Text:
        label = row_label(row.path, row.type, row.is_cbam)
        label.append(f"  {shape_text(row.output_shape)}", style="dim")
        label.append(f"  {row.params:,}" if row.params else "  --")
        owner = next((p for p in trainable if row.path == p or row.path.startswith(p + ".")), None)
        if owner is not None and row.params:
            on = trainable[owner]
            label.append("  trainable" if on else "  frozen", style="green" if on else "dim")
        return label
