"""Steering the learning itself, and many runs: live learning rates, longer or shorter
stages, schedules, --resume auto, pruning, compare and export."""

from __future__ import annotations

import csv
import math
import threading
from pathlib import Path

import pytest
import torch

from core.control import Control
from core.errors import ConfigError
from core.events import BatchLogged, CommandTaken, EpochEnded, PlanChanged, RatesChanged, StageStarted
from core.plan import PlanOptions
from core.rundir import Command, StopReason, send, wait_taken
from core.schedule import factor
from tests.conftest import cli, tiny_config, train
from tests.test_app import until

SLOW = pytest.mark.slow


# --- schedules ------------------------------------------------------------------


@pytest.mark.parametrize("total", [7, 100, 1000])
def test_schedules_match_their_reference_formulas(total: int) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    reference = {
        "cosine": torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([param], lr=1.0), T_max=total),
        "onecycle": torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([param], lr=1.0), max_lr=1.0,
                                                        total_steps=total),
    }
    for name, scheduler in reference.items():
        for step in range(total):
            assert factor(name, step, total) == pytest.approx(scheduler.get_last_lr()[0], rel=1e-9, abs=1e-12), (name, step)
            scheduler.optimizer.step()
            scheduler.step()
    warm = max(0.1 * total, 1.0)
    for step in range(total):
        t = step / total
        want = (step + 1) / warm if t < 0.1 else 0.5 * (1 + math.cos(math.pi * (t - 0.1) / 0.9))
        assert factor("warmup-cosine:10", step, total) == pytest.approx(want)
        assert factor("constant", step, total) == 1.0


def lr_by_step(rec) -> dict[int, tuple[float, ...]]:
    return {e.global_step: e.lrs for e in rec.of(BatchLogged)}


def test_a_schedule_steps_every_batch_and_a_resume_gets_the_same_rates(tmp_path: Path) -> None:
    plan = PlanOptions(stage_epochs="2,1,0", lrs="1e-2,1e-3,1e-3", schedule="warmup-cosine:20")
    _, whole = train(tiny_config(tmp_path / "a", log_every=1, plan_opts=plan))
    rates = lr_by_step(whole)
    assert len(rates) == 18 and rates[1] == pytest.approx((1e-2 * factor("warmup-cosine:20", 0, 12),))
    assert rates[12] == pytest.approx((1e-2 * factor("warmup-cosine:20", 11, 12),))  # the stage's last batch
    assert rates[13] == pytest.approx((1e-3 * factor("warmup-cosine:20", 0, 6),) * 2)  # stage 2 starts over
    control = Control()
    def react(e):
        return (control.stop(StopReason.QUIT) if isinstance(e, BatchLogged) and e.global_step == 7 else None)
    _, first = train(tiny_config(tmp_path / "b", log_every=1, plan_opts=plan), react, control)
    _, second = train(tiny_config(tmp_path / "b", log_every=1, resume=str(first.run_dir)))
    resumed = {**lr_by_step(first), **lr_by_step(second)}
    assert resumed == rates


def test_schedule_errors_are_one_sentence(capsys) -> None:
    for bad, message in (("cosy", "unknown schedule 'cosy'"), ("cosine:3", "only warmup-cosine takes a number"),
                         ("warmup-cosine:150", "between 0 and 100")):
        code, _, err = cli(capsys, "demo", "--schedule", bad)
        assert code == 1 and message in err and err.count("\n") == 1


# --- live learning rates and stage lengths -----------------------------------------


def test_a_live_rate_change_takes_the_next_batch_survives_a_resume_and_ends_with_the_stage(tmp_path: Path) -> None:
    plan = PlanOptions(stage_epochs="2,1,0", lrs="1e-2,1e-3,1e-3")
    run = tmp_path / "run"
    control = Control()

    def react(e) -> None:
        if isinstance(e, BatchLogged) and e.global_step == 3:
            # From another process, as `cbam-tui ctl RUN lr x0.5` would.
            threading.Thread(target=lambda: wait_taken(run, send(run, Command("lr", "x0.5"), "ctl pid 7"), 10)).start()
        if isinstance(e, RatesChanged):
            control.stop(StopReason.QUIT)

    _, first = train(tiny_config(tmp_path, log_every=1, run_dir=str(run), plan_opts=plan), react, control)
    (change,) = first.of(RatesChanged)
    assert (change.origin, change.groups, change.before, change.after) == ("ctl pid 7", ("new",), (1e-2,), (5e-3,))
    assert first.of(CommandTaken)[0].value == "x0.5"
    _, second = train(tiny_config(tmp_path, log_every=1, resume=str(run)))
    rates = lr_by_step(second)
    stage1 = [lrs for step, lrs in rates.items() if step <= 12]
    assert stage1 and all(lrs == (5e-3,) for lrs in stage1)  # the resumed run keeps the edited rate
    assert all(lrs == (1e-3, 1e-3) for step, lrs in rates.items() if step > 12)  # the next stage: its plan


def test_one_group_by_name_and_an_unknown_group(tmp_path: Path) -> None:
    control = Control()
    sent: list[int] = []

    def react(e) -> None:
        if isinstance(e, StageStarted) and e.stage == 2 and not sent:
            sent.append(1)
            control.apply(Command("lr", "2e-4", "layer3-4"))
            control.apply(Command("lr", "x2", "nope"))

    _, rec = train(tiny_config(tmp_path, log_every=1, plan_opts=PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3")),
                   react, control)
    named, unknown = rec.of(RatesChanged)
    assert named.groups == ("new", "layer3-4") and named.after == (1e-3, 2e-4)
    assert unknown.after == unknown.before and "no group 'nope' (it has new, layer3-4)" in unknown.note
    assert rec.of(BatchLogged)[-1].lrs == (1e-3, 2e-4)


def test_a_stage_made_longer_then_shorter_and_the_plan_is_resumed(tmp_path: Path) -> None:
    control = Control()
    run = tmp_path / "run"

    def react(e) -> None:
        if isinstance(e, BatchLogged) and (e.epoch, e.batch) == (1, 2):
            control.apply(Command("epochs", "+2"))
        if isinstance(e, BatchLogged) and (e.epoch, e.batch) == (2, 2):
            control.apply(Command("epochs", "-5"))  # more than there is: the epoch in progress becomes the last
        if isinstance(e, EpochEnded) and e.epoch == 2:
            control.stop(StopReason.QUIT)

    _, rec = train(tiny_config(tmp_path, run_dir=str(run), plan_opts=PlanOptions(stage_epochs="1,1,0", lrs="1e-2,1e-3,1e-3")),
                   react, control)
    longer, shorter = rec.of(PlanChanged)
    assert (longer.epochs, longer.last_epoch, longer.total_epochs) == (3, 3, 4)
    assert (shorter.epochs, shorter.last_epoch, shorter.total_epochs, shorter.note) == (
        2, 2, 3, "the epoch in progress is now the stage's last")
    _, again = train(tiny_config(tmp_path, resume=str(run)))
    assert [e.epoch for e in again.of(EpochEnded)] == [3]  # stage 2 is epoch 3 of 3
    assert again.of(StageStarted)[0].stage == 2


def test_bad_values_for_ctl_are_one_sentence(capsys, tmp_path: Path) -> None:
    for args, message in ((("lr",), "lr needs a value"), (("lr", "fast"), "lr takes a rate"),
                          (("epochs", "3"), "epochs takes +N or -N"), (("pause", "3"), "pause takes no value"),
                          (("lr", "x2", "--group", "a b"), "--group names an optimizer group")):
        code, _, err = cli(capsys, "ctl", str(tmp_path), *args)
        assert code == 1 and message in err and err.count("\n") == 1, err
    with pytest.raises(ConfigError):
        Command("epochs", "-0")


async def test_the_l_dialog_and_the_epoch_keys_steer_a_live_run(tmp_path: Path) -> None:
    from tests.test_app import Seen
    from tui.app import make_app
    from tui.links import InProcessLink
    from tui.widgets.dialogs import RatesScreen

    seen = Seen()
    config = tiny_config(tmp_path, limit_train=160, plan_opts=PlanOptions(stage_epochs="2,1,0", lrs="1e-2,1e-3,1e-3"))
    app = make_app(InProcessLink(config, trainer=seen))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.stage is not None and app.state.status == "RUNNING")
        await pilot.press("p")
        await until(pilot, lambda: app.state.status == "PAUSED" and seen.of(type(seen.events[0])) is not None)
        await pilot.press("l")
        assert isinstance(app.screen, RatesScreen)
        await pilot.press(*"fast", "enter")  # not a rate: said in the dialog, which stays
        assert isinstance(app.screen, RatesScreen)
        await pilot.press(*("backspace",) * 4, *"x0.1", "enter")
        await until(pilot, lambda: seen.of(RatesChanged))
        assert seen.of(RatesChanged)[0].after == pytest.approx((1e-3,))
        await pilot.press("plus")
        await until(pilot, lambda: seen.of(PlanChanged))
        assert seen.of(PlanChanged)[0].epochs == 3 and app.state.stage.last_epoch == 3
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)


# --- many runs -------------------------------------------------------------------------


def test_resume_auto_goes_on_with_the_newest_unfinished_run_of_that_name(tmp_path: Path, capsys, monkeypatch) -> None:
    import tui.launch
    from tests.test_rundir import stopped_run

    root = tmp_path / "runs"
    mine = stopped_run(tmp_path)  # runs/<stamp>-t
    started: list = []
    monkeypatch.setattr(tui.launch, "headless", lambda config: started.append(config) or 0)
    base = ("demo", "--headless", "--runs-root", str(root), "--image-size", "8", "--batch-size", "8")
    code, _, err = cli(capsys, *base, "--name", "t", "--resume", "auto")
    assert code == 0, err
    assert started[-1].resume == str(mine / "checkpoints" / "last.pt")
    code, _, err = cli(capsys, *base, "--name", "other", "--resume", "auto")  # none of that name: a new run
    assert code == 0, err
    assert started[-1].resume is None and started[-1].name == "other"


def test_runs_prune_removes_only_runs_that_failed_before_their_first_epoch(tmp_path: Path, capsys) -> None:
    from core.events import RunFailed
    from tests.scripted import events
    from tests.test_rundir import fake_run

    script = list(events(epochs=1, batches=4, log_every=2))
    root = tmp_path / "runs"
    early, _ = fake_run(root, "early", [*script[:3], RunFailed("no data")])
    late, _ = fake_run(root, "late", [*script, RunFailed("boom")])
    fine, _ = fake_run(root, "fine", script[:3])
    code, _, err = cli(capsys, "runs", "--runs-root", str(root), "--prune", "failed")
    assert code == 1 and "answer in a terminal, or add --yes" in err and early.exists()
    code, out, _ = cli(capsys, "runs", "--runs-root", str(root), "--prune", "failed", "--yes")
    assert code == 0 and "early: no data" in out and "removed 1 run directory" in out
    assert not early.exists() and late.exists() and fine.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, rec = train(tiny_config(tmp_path_factory.mktemp("export"), log_every=1))
    return rec.run_dir


def test_tensorboard_files_read_back_with_the_values_of_metrics_csv(tmp_path: Path, finished_run: Path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _out, err = cli(capsys, "export", str(finished_run), "--tensorboard", str(tmp_path / "tb"))
    assert code == 0, err
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    rows = list(csv.DictReader((finished_run / "metrics.csv").open()))
    for tag, column in (("accuracy/test", "test_acc"), ("loss/train", "train_loss"), ("accuracy/train", "train_acc")):
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == {int(r["epoch"]): pytest.approx(float(r[column]), abs=1e-3) for r in rows}
    assert len(acc.Scalars("loss/iteration")) == 18 and acc.Scalars("lr/new")
    assert {t.split("/")[1] for t in acc.Tags()["scalars"] if t.startswith("accuracy_per_class/")} >= {"disk", "ring"}


def test_the_png_has_the_stated_size_and_a_finished_run_draws_its_own(tmp_path: Path, finished_run: Path, capsys) -> None:
    from PIL import Image

    code, out, _ = cli(capsys, "export", str(finished_run), "--png", str(tmp_path / "curves.png"))
    assert code == 0 and "(1600x600 pixels)" in out
    assert Image.open(tmp_path / "curves.png").size == (1600, 600)
    assert Image.open(finished_run / "curves.png").size == (1600, 600)


def test_export_without_the_extra_says_what_to_install(finished_run: Path, capsys, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = cli(capsys, "export", str(finished_run), "--png", "x.png")
    assert code == 1 and "export --png needs matplotlib: pip install 'cbam-tui[export]'" in err


def test_compare_renders_finished_and_live_runs(snap_compare, tmp_path: Path) -> None:
    from core.events import RunFinished
    from tests.scripted import events
    from tests.test_rundir import fake_run
    from tui.app import make_app
    from tui.links import CompareLink

    script = list(events(epochs=4, batches=4, log_every=2))
    a, _ = fake_run(tmp_path, "20260101-120000-default", [*script, RunFinished(60.0, 61.0, 3, 12.0)])
    b, _ = fake_run(tmp_path, "20260101-130000-seed", [*script[:-8], RunFinished(50.0, 52.0, 2, 10.0)])
    c, holder = fake_run(tmp_path, "20260101-140000-live", script[:-12], hold=True)
    try:
        assert snap_compare(make_app(CompareLink([a, b, c])), terminal_size=(110, 32))
    finally:
        assert holder is not None
        holder.close()


async def test_compare_refreshes_while_a_run_trains(tmp_path: Path) -> None:
    from tests.scripted import events
    from tests.test_rundir import fake_run
    from tui.app import make_app
    from tui.links import CompareLink
    from tui.widgets.compare_view import CompareView

    script = list(events(epochs=3, batches=4, log_every=2))
    cut = next(i for i, e in enumerate(script) if isinstance(e, EpochEnded))
    a, _ = fake_run(tmp_path, "a", script)
    b, holder = fake_run(tmp_path, "b", script[: cut + 1], hold=True)
    assert holder is not None
    app = make_app(CompareLink([a, b]))
    async with app.run_test(size=(110, 32)) as pilot:
        view = app.query_one(CompareView)
        await until(pilot, lambda: len(view.runs[1].state.epochs) == 1 and view.runs[1].live)
        for e in script[cut + 1 :]:
            holder.write(e)
        await until(pilot, lambda: len(view.runs[1].state.epochs) == 3, timeout=10)
        holder.close()
        await until(pilot, lambda: not view.runs[1].live, timeout=10)
        await pilot.press("q")
    assert app.exit_code == 0
