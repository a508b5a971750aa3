"""Stage plans: which modules train in each stage, and at which learning rate.

A plan is a list of stages; a stage is a number of epochs and named parameter
groups (module names -> one learning rate). Every parameter belongs to the group
whose module path is its longest prefix; parameters in no group are frozen.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import PlanError
from core.layout import MODULES, NEW_MODULES
from core.schedule import check as check_schedule

if TYPE_CHECKING:  # torch loads only when a plan is applied to a model
    from torch import nn

PRESETS = ("default", "seed")
BN_POLICIES = ("train", "eval")
MOMENT_POLICIES = ("keep", "fresh")  # Adam state of groups that continue into the next stage
SEED_EPOCHS = (5, 15, 30)
MAX_EPOCHS, MAX_STAGES = 100_000, 64
SEED_LRS = (1e-3, 1e-4, 1e-5)
# Aliases a plan may name besides the module names in core.model.MODULES.
ALIASES: dict[str, tuple[str, ...]] = {
    "new": tuple(MODULES[m] for m in NEW_MODULES),
    "all": ("",),
}


@dataclass(frozen=True)
class Group:
    """One optimizer param group: these modules train at this learning rate."""

    name: str
    modules: tuple[str, ...]
    lr: float

    def paths(self) -> tuple[str, ...]:
        out: list[str] = []
        for m in self.modules:
            out.extend(ALIASES.get(m, (MODULES.get(m, m),)))
        return tuple(out)


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    groups: tuple[Group, ...]
    schedule: str = "constant"  # core.schedule: the rates' shape within the stage, stepped per batch


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]
    frozen_bn: str = "train"
    label: str = "default"  # preset name or plan file, for the header and config.json
    # At a stage switch the optimizer gets the new stage's groups. "keep": parameters that
    # trained before keep their Adam moments (as Lightning's BackboneFinetuning does by
    # adding a param group); "fresh": a new Adam over the new groups (the seed).
    moments: str = "keep"

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def epoch_range(self, index: int) -> tuple[int, int]:
        """1-based first and last run epoch of stage ``index`` (0-based)."""
        first = sum(s.epochs for s in self.stages[:index]) + 1
        return first, first + self.stages[index].epochs - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "frozen_bn": self.frozen_bn,
            "moments": self.moments,
            "stages": [
                {
                    "name": s.name,
                    "epochs": s.epochs,
                    "schedule": s.schedule,
                    "groups": [{"name": g.name, "modules": list(g.modules), "lr": g.lr} for g in s.groups],
                }
                for s in self.stages
            ],
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "the saved plan") -> Plan:
        """A plan read back from config.json or a checkpoint: every field checked, then validated."""
        if not isinstance(data, dict):
            raise PlanError(f"{where} is not a plan")
        _only_keys(data, {"label", "frozen_bn", "moments", "stages"}, where)
        stages = data.get("stages")
        if not isinstance(stages, list) or not stages:
            raise PlanError(f"{where} has no stages")
        plan = cls(
            stages=tuple(_stage(s, f"{where}, stage {i}", groups_key="groups") for i, s in enumerate(stages, 1)),
            frozen_bn=_choice(data.get("frozen_bn", "train"), BN_POLICIES, "frozen_bn", where),
            label=_field({"label": data.get("label", "default")}, "label", str, where),
            moments=_choice(data.get("moments", "keep"), MOMENT_POLICIES, "moments", where),
        )
        validate(plan)
        return plan


@dataclass(frozen=True)
class PlanOptions:
    """The plan-related CLI options; None means "not given"."""

    preset: str = "default"
    plan_file: Path | None = None
    stage_epochs: str | None = None
    lrs: str | None = None
    new_lr_mult: float | None = None
    frozen_bn: str | None = None
    moments: str | None = None
    schedule: str | None = None  # for every stage of a preset


def build_plan(opts: PlanOptions) -> Plan:
    """The plan the options ask for, validated; raises PlanError with one sentence."""
    if opts.frozen_bn is not None and opts.frozen_bn not in BN_POLICIES:
        raise PlanError(f"--frozen-bn must be one of {', '.join(BN_POLICIES)}, not {opts.frozen_bn!r}")
    if opts.moments is not None and opts.moments not in MOMENT_POLICIES:
        raise PlanError(f"--moments must be one of {', '.join(MOMENT_POLICIES)}, not {opts.moments!r}")
    if opts.plan_file is not None:
        for flag, value in (("--lrs", opts.lrs), ("--new-lr-mult", opts.new_lr_mult), ("--schedule", opts.schedule)):
            if value is not None:
                raise PlanError(f"{flag} cannot be combined with --plan: set learning rates in the plan file")
        plan = load_plan(opts.plan_file)
    else:
        if opts.preset not in PRESETS:
            raise PlanError(f"unknown preset {opts.preset!r}: choose one of {', '.join(PRESETS)}")
        lrs = parse_lrs(opts.lrs, 3) if opts.lrs is not None else SEED_LRS
        mult = 1.0 if opts.new_lr_mult is None else opts.new_lr_mult
        if not math.isfinite(mult) or mult <= 0:
            raise PlanError(f"--new-lr-mult must be a positive number, not {mult}")
        if opts.preset == "seed":
            if opts.new_lr_mult is not None:
                raise PlanError("--new-lr-mult does not apply to --preset seed, which has one rate per stage")
            plan = seed_plan(lrs)
        else:
            plan = default_plan(lrs, mult)
    if opts.stage_epochs is not None:
        epochs = parse_epochs(opts.stage_epochs, len(plan.stages))
        plan = replace(plan, stages=tuple(Stage(s.name, e, s.groups) for s, e in zip(plan.stages, epochs, strict=True)))
    if opts.schedule is not None:
        schedule = check_schedule(opts.schedule)
        plan = replace(plan, stages=tuple(replace(s, schedule=schedule) for s in plan.stages))
    if opts.frozen_bn is not None:
        plan = replace(plan, frozen_bn=opts.frozen_bn)
    if opts.moments is not None:
        plan = replace(plan, moments=opts.moments)
    validate(plan)
    return plan


def default_plan(lrs: tuple[float, ...] = SEED_LRS, new_lr_mult: float = 1.0) -> Plan:
    """The seed's three stages, but new modules train from stage 1 at ``lr * new_lr_mult``."""
    e1, e2, e3 = SEED_EPOCHS
    l1, l2, l3 = lrs

    def new(lr: float) -> Group:
        return Group("new", ("new",), lr * new_lr_mult)

    return Plan(
        (
            Stage("warm up new modules", e1, (new(l1),)),
            Stage("unfreeze layer3, layer4", e2, (new(l2), Group("layer3-4", ("layer3", "layer4"), l2))),
            Stage("fine-tune everything", e3, (new(l3), Group("pretrained", ("all",), l3))),
        ),
        label="default",
    )


def seed_plan(lrs: tuple[float, ...] = SEED_LRS) -> Plan:
    """The seed note exactly: its random stem conv stays frozen until stage 3."""
    e1, e2, e3 = SEED_EPOCHS
    l1, l2, l3 = lrs
    heads = ("cbam1", "cbam2", "cbam3", "cbam4", "fc")
    return Plan(
        (
            Stage("warm up cbam and fc", e1, (Group("cbam+fc", heads, l1),)),
            Stage("unfreeze layer3, layer4", e2, (Group("cbam+fc+layer3-4", (*heads, "layer3", "layer4"), l2),)),
            Stage("fine-tune everything", e3, (Group("all", ("all",), l3),)),
        ),
        label="seed",
        moments="fresh",
    )


def parse_epochs(text: str, count: int) -> tuple[int, ...]:
    return tuple(_parse_list(text, count, "--stage-epochs", int, "whole numbers separated by commas"))


def parse_lrs(text: str, count: int) -> tuple[float, ...]:
    return tuple(_parse_list(text, count, "--lrs", float, "numbers separated by commas, like 1e-3,1e-4,1e-5"))


def _parse_list(text: str, count: int, flag: str, convert: type, what: str) -> list[Any]:
    """One value per stage, comma-separated; PlanError says what is wrong with it."""
    values = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in values):
        raise PlanError(f"{flag} needs one value per stage separated by commas, not {text!r}")
    try:
        parsed = [convert(v) for v in values]
    except ValueError:
        raise PlanError(f"{flag} takes {what}, not {text!r}") from None
    if len(parsed) != count:
        raise PlanError(f"{flag} gives {len(parsed)} values but the plan has {count} stages")
    return parsed


def validate(plan: Plan) -> None:
    if not plan.stages:
        raise PlanError("the plan has no stages")
    if len(plan.stages) > MAX_STAGES:
        raise PlanError(f"the plan has {len(plan.stages)} stages; at most {MAX_STAGES} are allowed")
    for i, stage in enumerate(plan.stages, 1):
        where = f"stage {i} ({stage.name})"
        if not 0 <= stage.epochs <= MAX_EPOCHS:
            raise PlanError(f"{where} has {stage.epochs} epochs; epochs must be from 0 (skip) to {MAX_EPOCHS}")
        check_schedule(stage.schedule, where)
        if not stage.groups:
            raise PlanError(f"{where} has no parameter groups, so nothing would train")
        for g in stage.groups:
            if not (math.isfinite(g.lr) and g.lr > 0):
                raise PlanError(f"{where}, group {g.name!r}: learning rate must be a positive number, not {g.lr}")
            for m in g.modules:
                if not _known_module(m):
                    names = ", ".join([*MODULES, *ALIASES])
                    raise PlanError(f"{where}, group {g.name!r}: unknown module {m!r}; known names are {names}")
    if plan.total_epochs == 0:
        raise PlanError("every stage has 0 epochs, so there is nothing to train")


def _known_module(name: str) -> bool:
    if name in MODULES or name in ALIASES:
        return True
    return any(name.startswith(path + ".") for path in MODULES.values())


def load_plan(path: Path) -> Plan:
    """Read a TOML plan file (format in the README); PlanError names what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist") from None
    except IsADirectoryError:
        raise PlanError(f"plan file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read plan file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"plan file {path} is not valid TOML: {exc}") from None
    where = f"plan file {path}"
    _only_keys(data, {"frozen_bn", "moments", "stage"}, where)
    stages_raw = data.get("stage")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise PlanError(f"{where} has no [[stage]] tables")
    frozen_bn = _choice(data.get("frozen_bn", "train"), BN_POLICIES, "frozen_bn", where)
    moments = _choice(data.get("moments", "keep"), MOMENT_POLICIES, "moments", where)
    stages = tuple(_stage(raw, f"{where}, stage {i}") for i, raw in enumerate(stages_raw, 1))
    plan = Plan(stages, frozen_bn, label=path.name, moments=moments)
    validate(plan)
    return plan


def _stage(raw: Any, where: str, groups_key: str = "group") -> Stage:
    if not isinstance(raw, dict):
        raise PlanError(f"{where} is not a table")
    _only_keys(raw, {"name", "epochs", "schedule", groups_key}, where)
    name = _field(raw, "name", str, where)
    epochs = _field(raw, "epochs", int, where)
    schedule = check_schedule(_field({"schedule": raw.get("schedule", "constant")}, "schedule", str, where), where)
    groups_raw = raw.get(groups_key)
    if not isinstance(groups_raw, list) or not groups_raw:
        raise PlanError(f"{where} has no [[stage.group]] tables")
    groups = []
    for j, g in enumerate(groups_raw, 1):
        gwhere = f"{where}, group {j}"
        if not isinstance(g, dict):
            raise PlanError(f"{gwhere} is not a table")
        _only_keys(g, {"name", "modules", "lr"}, gwhere)
        modules = g.get("modules")
        if not isinstance(modules, list) or not modules or not all(isinstance(m, str) and m for m in modules):
            raise PlanError(f"{gwhere} needs modules = a non-empty list of module names")
        lr = g.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise PlanError(f"{gwhere} needs lr = a number")
        gname = g.get("name", "+".join(modules))
        if not isinstance(gname, str) or not gname:
            raise PlanError(f"{gwhere}: name must be a non-empty string")
        groups.append(Group(gname, tuple(modules), float(lr)))
    return Stage(name, epochs, tuple(groups), schedule)


def _field(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = raw.get(key)
    if value is None:
        raise PlanError(f"{where} is missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, kind) or (kind is str and not value):
        raise PlanError(f"{where}: {key} must be a {'whole number' if kind is int else 'non-empty string'}")
    return value


def _choice(value: object, allowed: tuple[str, ...], key: str, where: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise PlanError(f"{where}: {key} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _only_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PlanError(f"{where} has unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def assign_groups(model: nn.Module, stage: Stage) -> list[tuple[Group, list[nn.Parameter]]]:
    """Set requires_grad for ``stage`` and return each group's parameters.

    A parameter goes to the group with its longest matching module path, so
    ``new`` at 1e-2 and ``all`` at 1e-4 give new modules 1e-2 and the rest 1e-4.
    """
    paths = [(g, p) for g in stage.groups for p in g.paths()]
    named = list(model.named_parameters())
    for _, path in paths:
        if path and not any(n == path or n.startswith(path + ".") for n, _ in named):
            raise PlanError(f"stage {stage.name!r} names {path!r}, which matches no parameter of the model")
    members: dict[int, list[nn.Parameter]] = {id(g): [] for g in stage.groups}
    for name, param in named:
        best: tuple[Group, str] | None = None
        for group, path in paths:
            if (path == "" or name == path or name.startswith(path + ".")) and (
                best is None or len(path) > len(best[1])
            ):
                best = (group, path)
        param.requires_grad_(best is not None)
        if best is not None:
            members[id(best[0])].append(param)
    return [(g, members[id(g)]) for g in stage.groups if members[id(g)]]
