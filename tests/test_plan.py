"""Stage plans: what trains in each stage, at which rate; BN policy; parsing errors."""

from __future__ import annotations

from pathlib import Path

import pytest
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
        (PlanOptions(lrs="1e-3,-1e-4,1e-5"), "positive"),
        (PlanOptions(lrs="1e-3,nan,1e-5"), "positive"),
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
        ("[[stage]]\nname='a'\nepochs = 1\n[[stage.group]]\nmodules=['fc']\nlr=-1e-3", "positive"),
        ("[[stage]]\nname='a'\nepochs = 'x'\n[[stage.group]]\nmodules=['fc']\nlr=1e-3", "whole number"),
        ("[[stage]]\nname='a'\nepochs = 1\nepoch = 2\n[[stage.group]]\nmodules=['fc']\nlr=1e-3", "unknown key 'epoch'"),
        ("[[stage]]\nname='a'\nepochs = 1\n[[stage.group]]\nmodules=[]\nlr=1e-3", "non-empty list"),
    ],
)
def test_bad_plan_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    with pytest.raises(PlanError, match=match):
        build_plan(PlanOptions(plan_file=path))


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
