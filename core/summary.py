"""Model tree rows, torchinfo-style: one row per module with its output shape and
parameter counts (recursive, as torchinfo counts them), CBAM blocks marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Row:
    path: str  # "" for the root, else the dotted module path
    type: str
    depth: int  # 0 for the root
    output_shape: tuple[int, ...]  # () when the module is not called in forward
    params: int  # all parameters under this module
    trainable: int  # of those, how many require grad
    is_cbam: bool  # a CBAM block or inside one

    def as_tuple(self) -> tuple[object, ...]:
        return (self.path, self.type, self.depth, self.output_shape, self.params, self.trainable, self.is_cbam)

    @classmethod
    def from_tuple(cls, t: tuple[object, ...] | list[object]) -> Row:
        path, type_, depth, shape, params, trainable, is_cbam = t
        return cls(str(path), str(type_), int(depth), tuple(shape), int(params), int(trainable), bool(is_cbam))  # type: ignore[call-overload, arg-type]


def summarize(model: nn.Module, image_size: int = 32) -> list[Row]:
    """Rows in definition order; output shapes from one forward pass of a 1-image batch."""
    import torch  # here, so readers of Row (the dashboard attached to a run) need no torch

    from core.cbam import CBAM

    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: shapes.__setitem__(id(mod), tuple(out.shape)))
        for m in model.modules()
    ]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    cbam_paths = [name for name, m in model.named_modules() if isinstance(m, CBAM)]
    rows = []
    for name, module in model.named_modules():
        params = list(module.parameters())
        rows.append(
            Row(
                path=name,
                type=type(module).__name__,
                depth=0 if not name else name.count(".") + 1,
                output_shape=shapes.get(id(module), ()),
                params=sum(p.numel() for p in params),
                trainable=sum(p.numel() for p in params if p.requires_grad),
                is_cbam=any(name == c or name.startswith(c + ".") for c in cbam_paths),
            )
        )
    return rows
