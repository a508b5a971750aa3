"""Model tree rows, torchinfo-style: one row per module in forward order, with its
output shape and parameter count (recursive, as torchinfo counts them), CBAM
blocks marked. The rows travel in RunStarted, so a dashboard needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.events import LayerRow

if TYPE_CHECKING:
    from torch import nn


def summarize(model: nn.Module, image_size: int = 32) -> list[LayerRow]:
    """Rows in the order the forward pass reaches each module (a CBAM block right after
    the layer it follows), children under their parent; modules never called come last
    under their parent. Output shapes come from one forward pass of a 1-image batch."""
    import torch  # here, so readers of the rows (a dashboard attached to a run) need no torch

    from core.cbam import CBAM

    shapes: dict[int, tuple[int, ...]] = {}
    order: dict[int, int] = {}

    def hook(mod: nn.Module, _inp: object, out: object) -> None:
        order.setdefault(id(mod), len(order))
        if isinstance(out, torch.Tensor):
            shapes[id(mod)] = tuple(out.shape)

    def pre_hook(mod: nn.Module, _inp: object) -> None:
        order.setdefault(id(mod), len(order))

    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()]
    handles += [m.register_forward_hook(hook) for m in model.modules()]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    cbam_paths = [name for name, m in model.named_modules() if isinstance(m, CBAM)]
    rows: list[LayerRow] = []
    unseen = len(order) + 1

    def shown_children(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        # A container the forward pass never calls itself (ResNet18CBAM calls its
        # backbone's parts one by one) is inlined, so each CBAM block can stand right
        # after the layer it follows.
        out: list[tuple[str, nn.Module]] = []
        for child_name, child in module.named_children():
            path = f"{name}.{child_name}" if name else child_name
            if id(child) not in order and any(True for _ in child.children()):
                out.extend(shown_children(path, child))
            else:
                out.append((path, child))
        return sorted(out, key=lambda kv: order.get(id(kv[1]), unseen))  # stable: unseen keep their place

    def visit(name: str, module: nn.Module, depth: int) -> None:
        rows.append(
            LayerRow(
                path=name,
                type=type(module).__name__,
                depth=depth,
                output_shape=shapes.get(id(module), ()),
                params=sum(p.numel() for p in module.parameters()),
                is_cbam=any(name == c or name.startswith(c + ".") for c in cbam_paths),
            )
        )
        for path, child in shown_children(name, module):
            visit(path, child, depth + 1)

    visit("", model, 0)
    return rows
