"""Stage plans: which modules train in each stage, and at which learning rate.

A plan is a list of stages; a stage is a number of epochs and named parameter
groups (module names -> one learning rate). Every parameter belongs to the group
whose module path is its longest prefix; parameters in no group are frozen.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

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
MAX_GROUPS, MAX_MODULES = 64, 256  # per stage; per group
# One range of learning rates for every way of giving one: presets, --lrs, plan files,
# checkpoints, `ctl lr` and the `l` dialog (a live change may not leave it either).
MIN_LR, MAX_LR = 1e-12, 10.0
MAX_PLAN_BYTES = 1 << 20
MAX_NAME = 100  # characters of a stage's name
# A group's name is what `ctl --group` and the `l` dialog type: no spaces, commas or
# anything a shell or a terminal would take for something else.
GROUP_NAME = re.compile(r"[A-Za-z0-9+._-]{1,100}")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_.]{1,200}")
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
        saved = _conform(data, _SavedPlan, where)
        plan = cls(tuple(_stage(s) for s in saved.stages), saved.frozen_bn, saved.label, saved.moments)
        validate(plan)
        return plan


@dataclass(frozen=True)
class PlanOptions:
    """The plan-related CLI options; None means "not given"."""

    preset: str | None = None  # "default" when not given
    plan_file: Path | None = None
    stage_epochs: str | None = None
    lrs: str | None = None
    new_lr_mult: float | None = None
    frozen_bn: str | None = None
    moments: str | None = None
    schedule: str | None = None  # for every stage of a preset


def build_plan(opts: PlanOptions) -> Plan:
    """The plan the options ask for, validated; raises PlanError with one sentence.

    With a plan file, the options that would replace its rates or shapes (--preset,
    --lrs, --new-lr-mult, --schedule) are refused; --stage-epochs changes only each
    stage's epochs; --frozen-bn and --moments replace the file's (or its defaults).
    """
    if opts.frozen_bn is not None and opts.frozen_bn not in BN_POLICIES:
        raise PlanError(f"--frozen-bn must be one of {', '.join(BN_POLICIES)}, not {_shown(opts.frozen_bn)}")
    if opts.moments is not None and opts.moments not in MOMENT_POLICIES:
        raise PlanError(f"--moments must be one of {', '.join(MOMENT_POLICIES)}, not {_shown(opts.moments)}")
    if opts.plan_file is not None:
        for flag, value, what in (
            ("--preset", opts.preset, "the plan file is the plan"),
            ("--lrs", opts.lrs, "set learning rates in the plan file"),
            ("--new-lr-mult", opts.new_lr_mult, "set learning rates in the plan file"),
            ("--schedule", opts.schedule, "set each stage's schedule in the plan file"),
        ):
            if value is not None:
                raise PlanError(f"{flag} cannot be combined with --plan: {what}")
        plan = load_plan(opts.plan_file)
    else:
        preset = "default" if opts.preset is None else opts.preset
        if preset not in PRESETS:
            raise PlanError(f"unknown preset {_shown(preset)}: choose one of {', '.join(PRESETS)}")
        lrs = parse_lrs(opts.lrs, 3) if opts.lrs is not None else SEED_LRS
        mult = 1.0 if opts.new_lr_mult is None else opts.new_lr_mult
        if not math.isfinite(mult) or mult <= 0:
            raise PlanError(f"--new-lr-mult must be a positive number, not {mult}")
        if preset == "seed":
            if opts.new_lr_mult is not None:
                raise PlanError("--new-lr-mult does not apply to --preset seed, which has one rate per stage")
            plan = seed_plan(lrs)
        else:
            plan = default_plan(lrs, mult)
    if opts.stage_epochs is not None:
        epochs = parse_epochs(opts.stage_epochs, len(plan.stages))
        plan = replace(plan, stages=tuple(replace(s, epochs=e) for s, e in zip(plan.stages, epochs, strict=True)))
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
    """PlanError (one sentence) for a plan that cannot train: the schema's types, counts and
    ranges (`_SavedPlan`), then what no type says (printable names, known modules, ...)."""
    _conform(plan.to_dict(), _SavedPlan, "")
    if not (plan.label.isprintable() and len(plan.label) <= 200):
        raise PlanError(f"the plan's label {_shown(plan.label)} holds control characters or is too long")
    for i, stage in enumerate(plan.stages, 1):
        if not (stage.name and stage.name.isprintable() and len(stage.name) <= MAX_NAME):
            raise PlanError(
                f"stage {i}: its name {_shown(stage.name)} must be 1 to {MAX_NAME} printable characters "
                "(no control characters: names are shown on terminals)"
            )
        where = f"stage {i} ({stage.name})"
        check_schedule(stage.schedule, where)
        seen: set[str] = set()
        for g in stage.groups:
            if not GROUP_NAME.fullmatch(g.name):
                raise PlanError(
                    f"{where}: group name {_shown(g.name)} must be 1 to 100 letters, digits or + . _ - "
                    "(no spaces or commas), so that ctl --group and the l key can name it"
                )
            if g.name in seen:
                raise PlanError(f"{where} has two groups named {g.name!r}: give each its own name")
            seen.add(g.name)
            for m in g.modules:
                if not _known_module(m):
                    names = ", ".join([*MODULES, *ALIASES])
                    raise PlanError(f"{where}, group {g.name!r}: unknown module {_shown(m)}; known names are {names}")
    if plan.total_epochs == 0:
        raise PlanError("every stage has 0 epochs, so there is nothing to train")


def _known_module(name: str) -> bool:
    if not _MODULE_NAME.fullmatch(name):
        return False
    if name in MODULES or name in ALIASES:
        return True
    return any(name.startswith(path + ".") for path in MODULES.values())


def load_plan(path: Path) -> Plan:
    """Read a TOML plan file (format in the README); PlanError names what is wrong."""
    try:
        data = tomllib.loads(_read_plan_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"plan file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise PlanError(f"plan file {path} is nested too deeply to be a plan") from None
    where = f"plan file {path}"
    file = _conform(data, _FilePlan, where)
    stages = tuple(_stage(s, f"{where}, stage {i}") for i, s in enumerate(file.stage, 1))
    label = path.name if path.name.isprintable() else ascii(path.name)
    plan = Plan(stages, file.frozen_bn, label=label[:200], moments=file.moments)
    try:
        validate(plan)
    except PlanError as exc:
        raise PlanError(f"{where}: {exc}") from None
    return plan


def _read_plan_text(path: Path) -> str:
    """A plan file's text: a regular file only (a FIFO or a device would hang or never end),
    up to MAX_PLAN_BYTES, UTF-8 with or without a byte-order mark."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist") from None
    except OSError as exc:
        raise PlanError(f"cannot read plan file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise PlanError(f"plan file {path} is a directory")
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
            raise PlanError(f"plan file {path} is {kind}, not a regular file")
        too_big = f"plan file {path} is larger than {MAX_PLAN_BYTES >> 20} MiB, which no plan needs"
        if st.st_size > MAX_PLAN_BYTES:
            raise PlanError(too_big)
        os.set_blocking(fd, True)
        chunks, left = [], MAX_PLAN_BYTES + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise PlanError(f"cannot read plan file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_PLAN_BYTES:  # it grew while read
        raise PlanError(too_big)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlanError(f"plan file {path} is not UTF-8 text (byte {exc.start})") from None


# --- what a plan file or a saved plan may hold: msgspec checks types, counts and ranges --------

_Text = Annotated[str, Meta(min_length=1)]


def _up_to(count: int) -> Meta:
    return Meta(min_length=1, max_length=count)


class _Group(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    modules: Annotated[tuple[_Text, ...], _up_to(MAX_MODULES)]
    lr: Annotated[float, Meta(ge=MIN_LR, le=MAX_LR)]
    name: _Text | None = None  # a file may leave it out: the modules joined by "+"


_Groups = Annotated[tuple[_Group, ...], _up_to(MAX_GROUPS)]


class _SavedStage(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: _Text
    epochs: Annotated[int, Meta(ge=0, le=MAX_EPOCHS)]  # 0: the stage is skipped
    groups: _Groups
    schedule: _Text = "constant"


class _FileStage(_SavedStage, frozen=True, rename={"groups": "group"}):
    groups: _Groups  # [[stage.group]] tables


class _Policies(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    frozen_bn: Literal["train", "eval"] = "train"  # BN_POLICIES
    moments: Literal["keep", "fresh"] = "keep"  # MOMENT_POLICIES


class _SavedPlan(_Policies, frozen=True):
    stages: Annotated[tuple[_SavedStage, ...], _up_to(MAX_STAGES)]
    label: _Text = "default"


class _FilePlan(_Policies, frozen=True):
    stage: Annotated[tuple[_FileStage, ...], _up_to(MAX_STAGES)]  # [[stage]] tables


_SchemaT = TypeVar("_SchemaT", _SavedPlan, _FilePlan)


def _stage(raw: _SavedStage, where: str = "") -> Stage:
    groups = tuple(Group(g.name or "+".join(g.modules), g.modules, g.lr) for g in raw.groups)
    return Stage(raw.name, raw.epochs, groups, check_schedule(raw.schedule, where) if where else raw.schedule)


def _conform(data: object, schema: type[_SchemaT], where: str) -> _SchemaT:
    """``data`` as ``schema``; PlanError says in one sentence what does not fit and where."""
    try:
        return msgspec.convert(data, schema)
    except msgspec.ValidationError as exc:
        raise PlanError(_refusal(str(exc), data, schema, where)) from None
    except RecursionError:
        raise PlanError(f"{where or 'the plan'} is nested too deeply to be a plan") from None


_AT = re.compile(r"(?P<said>.*?)(?: - at `\$(?P<path>.*)`)?")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def _refusal(said: str, data: object, schema: type[Struct], where: str) -> str:
    """msgspec's reason in the words of the plan file's format: the stage and group by
    number (and name, when it has one), the field by its key."""
    m = _AT.fullmatch(said)
    said, path = (m["said"], m["path"] or "") if m else (said, "")
    levels: list[type[Struct]] = [schema, _FileStage if schema is _FilePlan else _SavedStage, _Group]
    level, value, key = 0, data, ""
    here = [where] if where else []
    for name, index in _STEP.findall(path):
        if name:
            key = name
            value = value.get(name) if isinstance(value, dict) else None
            continue
        value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        if key in ("stage", "stages", "group", "groups"):
            level += 1
            label = value.get("name") if isinstance(value, dict) else None
            shown = level == 1 and isinstance(label, str) and label.isprintable() and len(label) <= MAX_NAME
            named = f" ({label})" if shown else ""
            if level == 2 and isinstance(label, str) and GROUP_NAME.fullmatch(label):
                here.append(f"group {label!r}")
            else:
                here.append(f"{'stage' if level == 1 else 'group'} {int(index) + 1}{named}")
            key = ""
    w = ", ".join(here) or "the plan"
    stages = "[[stage]] tables" if schema is _FilePlan else "stages"
    asked = re.fullmatch(r"Object (contains unknown|missing required) field `(.*)`", said)
    if asked and asked[1] == "contains unknown":
        allowed = ", ".join(sorted(levels[min(level, 2)].__struct_encode_fields__))
        return f"{w} has unknown key {_shown(asked[2])}; allowed: {allowed}"
    if asked:
        key, value = asked[2], None
    if said.startswith("Expected `object`") and not key:
        return f"{w} is not a plan" if level == 0 else f"{w} is not a table"
    count = len(value) if isinstance(value, list) else 0
    too_many = "length <=" in said
    if key in ("stage", "stages"):
        return f"{w} has {count} stages; at most {MAX_STAGES} are allowed" if too_many else f"{w} has no {stages}"
    if key in ("group", "groups"):
        return (f"{w} has {count} groups; at most {MAX_GROUPS} are allowed" if too_many
                else f"{w} has no [[stage.group]] tables")
    if key == "modules":
        if too_many:
            return f"{w} names {count} modules; 1 to {MAX_MODULES} may"
        return f"{w} needs modules = a non-empty list of module names"
    if key == "lr":
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{w} needs lr = a number"
        return f"{w}: learning rate must be a number from {MIN_LR:g} to {MAX_LR:g}, not {_number(value)}"
    if key == "epochs":
        if asked or isinstance(value, bool) or not isinstance(value, int):
            return f"{w} is missing 'epochs'" if asked else f"{w}: epochs must be a whole number"
        return f"{w} has {value} epochs; epochs must be from 0 (skip) to {MAX_EPOCHS}"
    if key in ("frozen_bn", "moments"):
        allowed = ", ".join(BN_POLICIES if key == "frozen_bn" else MOMENT_POLICIES)
        return f"{w}: {key} must be one of {allowed}, not {_shown(value)}"
    if asked:
        return f"{w} is missing {key!r}"
    return f"{w}: {key or 'it'} must be a non-empty string"


def _number(value: float) -> str:
    try:
        return f"{float(value):g}"
    except OverflowError:  # an integer beyond any float
        return "inf"


def _shown(value: object) -> str:
    """A value quoted for a one-line message: escaped (repr) and cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
