"""Model tree rows from torchinfo's summary: one row per module in forward order, with
its output shape, parameter count and parameter bytes as torchinfo reports them, and
the CBAM blocks marked. The rows travel in RunStarted, so a dashboard needs no torch;
which parameters train is added per stage (StageStarted.row_trainable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.events import LayerRow

if TYPE_CHECKING:
    from torch import nn


def summarize(model: nn.Module, image_size: int = 32) -> list[LayerRow]:
    """Rows in the order the forward pass reaches each module (a CBAM block right after
    the layer it follows), children under their parent; modules never called come last
    under their parent. One forward pass of a 1-image batch in eval mode, so no BatchNorm
    statistic moves."""
    import torchinfo  # here, so readers of the rows (a dashboard attached to a run) need no torch

    from core.cbam import CBAM

    device = next(model.parameters()).device
    summary = torchinfo.summary(
        model, input_size=(1, 3, image_size, image_size), device=device, mode="eval", verbose=0
    )
    # A module called twice is listed twice: its place is its first call, its shape its last.
    listed: dict[int, Any] = {id(layer.module): layer for layer in summary.summary_list}
    called = {key: i for i, key in enumerate(k for k, layer in listed.items() if layer.executed)}
    cbam_paths = [name for name, m in model.named_modules() if isinstance(m, CBAM)]
    rows: list[LayerRow] = []
    unseen = len(called) + 1

    def shown_children(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        # A container the forward pass never calls itself (ResNet18CBAM calls its
        # backbone's parts one by one) is inlined, so each CBAM block can stand right
        # after the layer it follows.
        out: list[tuple[str, nn.Module]] = []
        for child_name, child in module.named_children():
            path = f"{name}.{child_name}" if name else child_name
            if id(child) not in called and any(True for _ in child.children()):
                out.extend(shown_children(path, child))
            else:
                out.append((path, child))
        return sorted(out, key=lambda kv: called.get(id(kv[1]), unseen))  # stable: unseen keep their place

    def visit(name: str, module: nn.Module, depth: int) -> None:
        layer = listed.get(id(module))
        if layer is not None:
            params, size = layer.num_params, layer.param_bytes
        else:  # torchinfo lists only what the forward pass reaches and the containers above it
            params = sum(p.numel() for p in module.parameters())
            size = sum(p.numel() * p.element_size() for p in module.parameters())
        rows.append(
            LayerRow(
                path=name,
                type=type(module).__name__,
                depth=depth,
                output_shape=tuple(layer.output_size) if layer is not None and layer.executed else (),
                params=params,
                is_cbam=any(name == c or name.startswith(c + ".") for c in cbam_paths),
                param_bytes=size,
            )
        )
        for path, child in shown_children(name, module):
            visit(path, child, depth + 1)

    visit("", model, 0)
    return rows
