"""`cbam-tui summary`: the model tree and the stage plan, printed with rich."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.layout import MODULES
from core.state import lr_text

CBAM_MARK = "◆"  # survives a monochrome terminal; colour is only a second cue
CBAM_STYLE = "bold magenta"
NAMES = {path: name for name, path in MODULES.items()}  # the names plans, the module table and view 5 use


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape else "--"


def row_label(path: str, type_: str, is_cbam: bool) -> Text:
    name = NAMES.get(path) or path.rsplit(".", 1)[-1] if path else "model"
    label = Text(f"{type_} ({name})" if path else type_)
    if is_cbam:
        label = Text(f"{CBAM_MARK} ", style=CBAM_STYLE) + Text(label.plain, style=CBAM_STYLE)
    return label


def print_summary(
    preset: str | None,
    plan_file: Path | None,
    new_lr_mult: float | None,
    frozen_bn: str | None,
    num_classes: int,
    image_size: int,
    depth: int,
) -> None:
    from core.model import ResNet18CBAM, module_parameters
    from core.plan import PlanOptions, assign_groups, build_plan
    from core.tree import summarize

    plan = build_plan(PlanOptions(preset, plan_file, None, None, new_lr_mult, frozen_bn))
    model = ResNet18CBAM(num_classes)
    rows = summarize(model, image_size)
    console = Console()

    tree = Table(title=f"ResNet18 + CBAM, input [1, 3, {image_size}, {image_size}]", title_justify="left")
    tree.add_column("Layer (type)")
    tree.add_column("Output shape")
    tree.add_column("Param #", justify="right")
    for r in rows:
        if r.depth > depth:
            continue
        indent = "" if r.depth == 0 else "│ " * (r.depth - 1) + "└─"
        tree.add_row(Text(indent) + row_label(r.path, r.type, r.is_cbam), shape_text(r.output_shape), f"{r.params:,}")
    console.print(tree)
    console.print(f"Total params: {rows[0].params:,}   Params size (MB): {rows[0].param_bytes / 1e6:,.2f}   "
                  f"{CBAM_MARK} = CBAM block")

    stages = Table(  # names as Text: a plan's "[bold]" is shown, never taken for markup
        title=Text(f"Stage plan ({plan.label}; frozen BatchNorm: {plan.frozen_bn}; "
                   f"Adam moments at a stage switch: {plan.moments})"),
        title_justify="left",
    )
    stages.add_column("Module")
    for i, s in enumerate(plan.stages, 1):
        first, last = plan.epoch_range(i - 1)
        stages.add_column(Text(f"{i}. {s.name}\nepochs {first}-{last}" if s.epochs else f"{i}. {s.name}\nskipped"))
    cells: dict[str, list[str]] = {name: [] for name in MODULES}
    for stage in plan.stages:
        lr_of = {id(p): g.lr for g, ps in assign_groups(model, stage) for p in ps}
        for name, path in MODULES.items():
            params = [p for _, p in module_parameters(model, path)]
            lrs = {lr_of[id(p)] for p in params if id(p) in lr_of}
            cells[name].append("frozen" if not lrs else ", ".join(f"lr {lr_text(lr)}" for lr in sorted(lrs)))
    for name, values in cells.items():
        stages.add_row(name, *values)
    console.print(stages)
