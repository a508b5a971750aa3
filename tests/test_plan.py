"""Stage plans: what trains in each stage, at which rate; BN policy; parsing errors."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from core.errors import PlanError
from core.layout import MODULES
from core.model import ResNet18CBAM, module_parameters
from core.plan import PlanOptions, assign_groups, build_plan


def trainable_modules(model: ResNet18CBAM) -> dict[str, str]:
    out = {}
    for name, path in MODULES.items():
        flags = {p.requires_grad for _, p in module_parameters(model, path)}
        out[name] = "yes" if flags == {True} else "no" if flags == {False} else "partial"
    return out


def lr_by_module(model: ResNet18CBAM, groups: list) -> dict[str, set[float]]:
    lr_of = {id(p): g.lr for g, ps in groups for p in ps}
    return {n: {lr_of[id(p)] for _, p in module_parameters(model, path) if id(p) in lr_of} for n, path in MODULES.items()}


def test_default_plan_trains_new_modules_from_stage_one() -> None:
    plan = build_plan(PlanOptions())
    assert [s.epochs for s in plan.stages] == [5, 15, 30]
    model = ResNet18CBAM()
    expected_trainable = [
        {"conv1", "cbam1", "cbam2", "cbam3", "cbam4", "fc"},
        {"conv1", "cbam1", "cbam2", "cbam3", "cbam4", "fc", "layer3", "layer4"},
        set(MODULES),
    ]
    for stage, expected in zip(plan.stages, expected_trainable):
        groups = assign_groups(model, stage)
        states = trainable_modules(model)
        assert {m for m, s in states.items() if s == "yes"} == expected
        assert {m for m, s in states.items() if s == "no"} == set(MODULES) - expected
    lrs = [g.lr for s in plan.stages for g in s.groups]
    assert lrs == [1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
    assert len(groups) == 2 and {g.name for g, _ in groups} == {"new", "pretrained"}


def test_seed_preset_reproduces_the_seed_including_its_frozen_stem() -> None:
    plan = build_plan(PlanOptions(preset="seed"))
    model = ResNet18CBAM()
    assign_groups(model, plan.stages[0])
    states = trainable_modules(model)
    assert states["conv1"] == "no" and states["bn1"] == "no"
    assert {m for m, s in states.items() if s == "yes"} == {"cbam1", "cbam2", "cbam3", "cbam4", "fc"}
    # Stage 1 in the seed freezes by substring "cbam" / "backbone.fc": the same parameters.
    seed_names = {n for n, _ in model.named_parameters() if any(k in n for k in ("cbam", "backbone.fc"))}
    assert seed_names == {n for n, p in model.named_parameters() if p.requires_grad}
    assign_groups(model, plan.stages[1])
    assert trainable_modules(model)["conv1"] == "no"
    assign_groups(model, plan.stages[2])
    assert all(p.requires_grad for p in model.parameters())
    assert [[g.lr for g in s.groups] for s in plan.stages] == [[1e-3], [1e-4], [1e-5]]
    assert plan.frozen_bn == "train"


def test_new_lr_mult_gives_new_modules_their_own_rate() -> None:
    plan = build_plan(PlanOptions(new_lr_mult=10, lrs="1e-3,1e-4,1e-5"))
    model = ResNet18CBAM()
    lrs = lr_by_module(model, assign_groups(model, plan.stages[2]))
    assert [pytest.approx(1e-4)] == list(lrs["cbam2"]) == list(lrs["conv1"])
    assert lrs["layer1"] == {1e-5} and lrs["bn1"] == {1e-5}


def test_frozen_bn_eval_keeps_frozen_batchnorm_in_eval_mode_across_mode_changes() -> None:
    plan = build_plan(PlanOptions(frozen_bn="eval"))
    model = ResNet18CBAM()
    model.frozen_bn = plan.frozen_bn
    assign_groups(model, plan.stages[0])
    model.eval()
    model.train()
    bn = {n: m.training for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert not bn["backbone.bn1"] and not bn["backbone.layer3.0.bn1"]
    assign_groups(model, plan.stages[1])
    model.train()
    bn = {n: m.training for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert bn["backbone.layer3.0.bn1"] and bn["backbone.layer4.1.bn2"]
    assert not bn["backbone.layer1.0.bn1"]


def test_frozen_bn_train_is_the_seed_behaviour() -> None:
    model = ResNet18CBAM()
    assign_groups(model, build_plan(PlanOptions()).stages[0])
    model.train()
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_zero_epochs_skips_a_stage_and_overrides_apply() -> None:
    plan = build_plan(PlanOptions(stage_epochs="0,2,3", lrs="1e-2,1e-3,1e-4"))
    assert [s.epochs for s in plan.stages] == [0, 2, 3]
    assert plan.epoch_range(1) == (1, 2) and plan.epoch_range(2) == (3, 5)
    assert plan.stages[0].groups[0].lr == 1e-2


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (PlanOptions(stage_epochs="5,-1,3"), "-1 epochs"),
        (PlanOptions(stage_epochs="a,b,c"), "whole numbers"),
        (PlanOptions(stage_epochs="0,0,0"), "nothing to train"),
        (PlanOptions(stage_epochs="5,15"), "2 values but the plan has 3"),
        (PlanOptions(stage_epochs=""), "one value per stage"),
        (PlanOptions(stage_epochs="1,,2"), "one value per stage"),
        (PlanOptions(lrs="1e-3,x,1e-5"), "numbers"),
        (PlanOptions(lrs="1e-3,-1e-4,1e-5"), "from 1e-12 to 10, not -0.0001"),
        (PlanOptions(lrs="1e-3,nan,1e-5"), "from 1e-12 to 10, not nan"),
        (PlanOptions(lrs="1e-3"), "1 values"),
        (PlanOptions(new_lr_mult=0), "positive"),
        (PlanOptions(new_lr_mult=-2), "positive"),
        (PlanOptions(preset="fast"), "unknown preset"),
        (PlanOptions(preset="seed", new_lr_mult=10), "does not apply"),
        (PlanOptions(frozen_bn="maybe"), "train, eval"),
    ],
)
def test_invalid_plan_options(opts: PlanOptions, match: str) -> None:
    with pytest.raises(PlanError, match=match) as info:
        build_plan(opts)
    assert "\n" not in str(info.value)


GOOD_TOML = """
frozen_bn = "eval"

[[stage]]
name = "heads"
epochs = 2
[[stage.group]]
name = "new"
modules = ["new"]
lr = 1e-2

[[stage]]
name = "all"
epochs = 1
[[stage.group]]
modules = ["new"]
lr = 1e-3
[[stage.group]]
name = "rest"
modules = ["all"]
lr = 1e-4
[[stage.group]]
name = "one-block"
modules = ["backbone.layer4.1"]
lr = 5e-5
"""


def test_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(GOOD_TOML)
    plan = build_plan(PlanOptions(plan_file=path, stage_epochs="3,0"))
    assert plan.frozen_bn == "eval" and [s.epochs for s in plan.stages] == [3, 0]
    model = ResNet18CBAM()
    lrs = lr_by_module(model, assign_groups(model, plan.stages[1]))
    assert lrs["layer4"] == {1e-4, 5e-5} and lrs["fc"] == {1e-3} and lrs["layer1"] == {1e-4}
    assert plan.stages[1].groups[0].name == "new"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[stage]\nname=", "not valid TOML"),
        ("frozen_bn = 'train'", "no \\[\\[stage\\]\\]"),
        ("[[stage]]\nepochs = 1\n[[stage.group]]\nmodules=['fc']\nlr=1e-3", "missing 'name'"),
        ("[[stage]]\nname='a'\nepochs = 1", "no \\[\\[stage.group\\]\\]"),
        ("[[stage]]\nname='a'\nepochs = 1\n[[stage.group]]\nmodules=['fc']", "lr = a number"),
        ("[[stage]]\nname='a'\nepochs = 1\n[[stage.group]]\nmodules=['layer9']\nlr=1e-3", "unknown module 'layer9'"),
        ("[[stage]]\nname='a'\nepochs = 1\n[[stage.group]]\nmodules=['fc']\nlr=-1e-3", "from 1e-12 to 10"),
        ("[[stage]]\nname='a'\nepochs = 'x'\n[[stage.group]]\nmodules=['fc']\nlr=1e-3", "whole number"),
        ("[[stage]]\nname='a'\nepochs = 1\nepoch = 2\n[[stage.group]]\nmodules=['fc']\nlr=1e-3", "unknown key 'epoch'"),
        ("[[stage]]\nname='a'\nepochs = 1\n[[stage.group]]\nmodules=[]\nlr=1e-3", "non-empty list"),
    ],
)
def test_bad_plan_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    with pytest.raises(PlanError, match=match) as refused:
        build_plan(PlanOptions(plan_file=path))
    assert str(refused.value).startswith(f"plan file {path}")  # whichever check refused it, the file is named


def test_plan_file_paths(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        build_plan(PlanOptions(plan_file=tmp_path / "nope.toml"))
    with pytest.raises(PlanError, match="is a directory"):
        build_plan(PlanOptions(plan_file=tmp_path))
    with pytest.raises(PlanError, match="cannot be combined"):
        build_plan(PlanOptions(plan_file=tmp_path / "x.toml", lrs="1,2,3"))


def test_a_module_path_that_matches_nothing(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text("[[stage]]\nname='a'\nepochs = 1\n[[stage.group]]\nmodules=['backbone.layer4.7']\nlr=1e-3")
    plan = build_plan(PlanOptions(plan_file=path))
    with pytest.raises(PlanError, match="matches no parameter"):
        assign_groups(ResNet18CBAM(), plan.stages[0])


# --- a plan file keeps its shape whatever else is given ---------------------------------

SHAPED_TOML = """
frozen_bn = "eval"
moments = "fresh"

[[stage]]
name = "heads"
epochs = 2
schedule = "warmup-cosine:10"
[[stage.group]]
name = "new"
modules = ["new"]
lr = 2e-3

[[stage]]
name = "all"
epochs = 3
schedule = "onecycle"
[[stage.group]]
name = "new"
modules = ["new"]
lr = 1e-3
[[stage.group]]
name = "rest"
modules = ["all"]
lr = 1e-4
"""


def shape(plan) -> list[tuple]:
    return [(s.name, s.schedule, s.groups) for s in plan.stages]


def test_stage_epochs_frozen_bn_and_moments_keep_a_plan_files_schedules_groups_and_rates(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(SHAPED_TOML)
    base = build_plan(PlanOptions(plan_file=path))
    assert [s.schedule for s in base.stages] == ["warmup-cosine:10", "onecycle"]
    longer = build_plan(PlanOptions(plan_file=path, stage_epochs="4,0"))  # dropped every schedule before
    assert [s.epochs for s in longer.stages] == [4, 0] and shape(longer) == shape(base)
    other = build_plan(PlanOptions(plan_file=path, frozen_bn="train", moments="keep"))
    assert (other.frozen_bn, other.moments) == ("train", "keep") and other.stages == base.stages


@pytest.mark.parametrize(
    ("opts", "flag"),
    [
        (PlanOptions(preset="seed"), "--preset"),
        (PlanOptions(preset="default"), "--preset"),
        (PlanOptions(lrs="1e-3,1e-4"), "--lrs"),
        (PlanOptions(new_lr_mult=10.0), "--new-lr-mult"),
        (PlanOptions(schedule="cosine"), "--schedule"),
    ],
)
def test_options_that_would_replace_a_plan_files_rates_or_shapes_are_refused(
    tmp_path: Path, opts: PlanOptions, flag: str
) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(SHAPED_TOML)
    with pytest.raises(PlanError, match=f"^{flag} cannot be combined with --plan: ") as info:
        build_plan(dataclasses.replace(opts, plan_file=path))
    assert "\n" not in str(info.value)


def test_the_cli_hands_a_plan_file_on_with_its_schedules(tmp_path: Path, capsys, monkeypatch) -> None:
    import tui.launch
    from tests.conftest import cli

    path = tmp_path / "plan.toml"
    path.write_text(SHAPED_TOML)
    started: list = []
    monkeypatch.setattr(tui.launch, "headless", lambda config: started.append(config) or 0)
    base = ("demo", "--headless", "--runs-root", str(tmp_path / "runs"), "--plan", str(path))
    code, _, err = cli(capsys, *base, "--stage-epochs", "1,2")
    assert code == 0, err
    assert shape(started[-1].plan) == shape(build_plan(PlanOptions(plan_file=path)))
    code, _, err = cli(capsys, *base, "--preset", "seed")
    assert code == 1 and "--preset cannot be combined with --plan" in err and err.count("\n") == 1


# --- plan files are untrusted input ---------------------------------------------------


def one_stage(name: str = "'a'", group: str = "'g'", lr: str = "1e-3") -> str:
    """A one-stage plan; name and group are TOML values (quoted)."""
    return f"[[stage]]\nname = {name}\nepochs = 1\n[[stage.group]]\nname = {group}\nmodules = ['fc']\nlr = {lr}\n"


def refused(path: Path) -> str:
    with pytest.raises(PlanError) as info:
        build_plan(PlanOptions(plan_file=path))
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_a_fifo_a_device_and_a_huge_file_are_refused_at_once(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.append(refused(fifo)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # it hangs in open() or read(): let it go, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a plan from a FIFO hangs")
    assert said == [f"plan file {fifo} is a FIFO, not a regular file"]
    assert refused(Path("/dev/zero")) == "plan file /dev/zero is a device, not a regular file"
    huge = tmp_path / "huge.toml"
    huge.write_text(one_stage() + "# padding\n" * 200_000)
    assert refused(huge) == f"plan file {huge} is larger than 1 MiB, which no plan needs"


def test_deep_nesting_thousands_of_stages_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000)
    assert refused(path) == f"plan file {path} is nested too deeply to be a plan"
    path.write_text(one_stage() * 5000)
    assert refused(path) == f"plan file {path} has 5000 stages; at most 64 are allowed"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_TOML.encode())  # saved by an editor that marks UTF-8
    assert [s.name for s in build_plan(PlanOptions(plan_file=path)).stages] == ["heads", "all"]
    path.write_bytes(b"\xff\xfe" + GOOD_TOML.encode("utf-16-le"))
    assert refused(path) == f"plan file {path} is not UTF-8 text (byte 0)"


def test_one_range_of_rates_for_plan_files_options_and_ctl(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from core.plan import MAX_LR, MIN_LR
    from core.vocab import Command

    path = tmp_path / "plan.toml"
    for bad in ("1e308", "inf", "nan", "0", "-1e-3", "1e-13", "10.5"):
        path.write_text(one_stage(lr=bad))
        assert "learning rate must be a number from 1e-12 to 10" in refused(path)
        with pytest.raises(ConfigError, match="lr takes a rate from 1e-12 to 10"):
            Command("lr", bad)
    for good in (MIN_LR, MAX_LR):
        path.write_text(one_stage(lr=repr(good)))
        assert build_plan(PlanOptions(plan_file=path)).stages[0].groups[0].lr == good
        assert Command("lr", repr(good)).lr_change() == (False, good)


@pytest.mark.parametrize(
    ("stage", "group", "match"),
    [
        ('"\\u001b[2J\\u001b]0;pwned\\u0007"', "'g'", "its name '\\\\x1b\\[2J"),  # clear screen, set title
        ('"a\\tb"', "'g'", "must be 1 to 100 printable characters"),
        ("'x'", '"a b"', "group name 'a b' must be 1 to 100 letters"),
        ("'x'", '"a,b"', "so that ctl --group and the l key can name it"),
        ("'x'", '"größe"', "group name 'größe' must be"),
        ("'x'", '"\\u001b[31m"', "group name '\\\\x1b\\[31m' must be"),
        ("'" + "s" * 101 + "'", "'g'", "must be 1 to 100 printable"),
    ],
)
def test_names_a_terminal_or_ctl_could_not_take_are_refused_at_load(
    tmp_path: Path, stage: str, group: str, match: str
) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(one_stage(stage, group))
    assert re.search(match, refused(path))


def test_two_groups_of_one_name_and_a_module_name_with_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(one_stage() + "[[stage.group]]\nname = 'g'\nmodules = ['fc']\nlr = 1e-3\n")
    assert "has two groups named 'g'" in refused(path)
    path.write_text(one_stage().replace("['fc']", '["backbone.layer4.\\u001b[2J"]'))
    assert "unknown module 'backbone.layer4.\\x1b[2J'" in refused(path)


TOML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def toml_value(value: object) -> str:
    """``value`` as an inline TOML value (None stands for a value TOML cannot hold: an empty array)."""
    if value is None:
        return "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in value.items()) + "}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=TOML_VALUES, epochs=TOML_VALUES, schedule=TOML_VALUES, group=TOML_VALUES, modules=TOML_VALUES,
    lr=TOML_VALUES, extra=st.dictionaries(st.sampled_from(["frozen_bn", "moments", "stage", "x"]), TOML_VALUES),
)
def test_any_typed_value_anywhere_is_a_plan_or_one_sentence(
    tmp_path: Path, name, epochs, schedule, group, modules, lr, extra
) -> None:
    fields = {"name": name, "epochs": epochs, "schedule": schedule}
    stage = {k: v for k, v in fields.items() if v is not None}
    stage["group"] = [{"name": group, "modules": modules, "lr": lr}]
    top = "\n".join(f"{k} = {toml_value(v)}" for k, v in extra.items() if k != "stage")
    path = tmp_path / "fuzz.toml"
    path.write_text(f"{top}\nstage = [{toml_value(stage)}]\n" if "stage" not in extra else
                    f"{top}\nstage = {toml_value(extra['stage'])}\n")
    try:
        build_plan(PlanOptions(plan_file=path))
    except PlanError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 1000


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (("epochs = 1", "epochs = 1.0"), "stage 1 (a): epochs must be a whole number"),
        (("epochs = 1", "epochs = true"), "stage 1 (a): epochs must be a whole number"),
        (("epochs = 1", "epochs = 100001"), "stage 1 (a) has 100001 epochs; epochs must be from 0 (skip) to 100000"),
        (("lr = 1e-3", "lr = " + "9" * 400), "stage 1 (a), group 'g': learning rate must be a number from 1e-12 to 10, "
                                             "not inf"),  # an integer beyond any float
        (("lr = 1e-3", "lr = '1e-3'"), "stage 1 (a), group 'g' needs lr = a number"),
        (("modules = ['fc']", "modules = ['fc', 3]"), "stage 1 (a), group 'g' needs modules = a non-empty list of module names"),
        (("modules = ['fc']", "modules = ['fc', {x = 1}]"), "stage 1 (a), group 'g' needs modules = a non-empty list of "
                                                           "module names"),
        (("[[stage.group]]\nname = 'g'", "group = [5]\n[[stage.x]]\nname = 'g'"), "stage 1 (a), group 1 is not a table"),
        (("[[stage]]", "label = 'x'\n[[stage]]"), "has unknown key 'label'; allowed: frozen_bn, moments, stage"),
        (("[[stage]]", "moments = 3\n[[stage]]"), ": moments must be one of keep, fresh, not 3"),
        (("[[stage]]\nname = 'a'\nepochs = 1\n[[stage.group]]", "stage = 3\n[[x.group]]"), "has no [[stage]] tables"),
    ],
)
def test_what_the_plan_schema_refuses_is_said_naming_the_file_the_stage_and_the_group(
    tmp_path: Path, change: tuple[str, str], said: str
) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(one_stage().replace(*change))
    message = refused(path)
    assert message.startswith(f"plan file {path}") and message.endswith(said), message


def test_a_whole_number_is_a_rate_and_a_saved_plan_reads_back_as_it_was(tmp_path: Path) -> None:
    from core.plan import Plan

    path = tmp_path / "plan.toml"
    path.write_text(one_stage(lr="1"))
    plan = build_plan(PlanOptions(plan_file=path))
    assert type(plan.stages[0].groups[0].lr) is float and plan.stages[0].groups[0].lr == 1.0
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    with pytest.raises(PlanError, match=r"^the saved plan has unknown key 'x'; allowed: frozen_bn, label, moments, "
                                        r"stages$"):
        Plan.from_dict({**plan.to_dict(), "x": 1})
    deep: object = 1
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(PlanError, match="^the saved plan, stage 1 is not a table$"):  # refused at its first level
        Plan.from_dict({**plan.to_dict(), "stages": deep})
