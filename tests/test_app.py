"""The dashboard driven by key presses, on a tiny real trainer and on scripted runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.events import CheckpointSaved, IterLosses, Paused, RunStarted, StageStarted
from core.plan import PlanOptions
from core.train import Trainer
from tests.conftest import tiny_config
from tests.scripted import ScriptedTrainer, events
from tui.app import make_app
from tui.state import PAUSED, RUNNING
from tui.widgets.dialogs import ConfirmScreen, ErrorScreen
from tui.widgets.help_screen import HelpScreen
from tui.widgets.model_tree import ModelTree


async def until(pilot, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


def seen(app, cls) -> list:
    return [e for e in app.events_seen if isinstance(e, cls)]


def recorded_app(config):
    """The real app and the real Trainer, with every event the trainer emits kept for assertions."""
    sink: list = []

    def factory(config, emit, control):
        def both(e) -> None:
            sink.append(e)
            emit(e)

        return Trainer(config, both, control)

    app = make_app(config, trainer_factory=factory)
    app.events_seen = sink
    return app


def slow_config(tmp_path: Path, **kw):
    # 20 batches of 8 per epoch: long enough to press keys between batches.
    return tiny_config(tmp_path, limit_train=160, **kw)


async def test_pause_resume_and_save_with_a_real_trainer(tmp_path: Path) -> None:
    app = recorded_app(slow_config(tmp_path, plan_opts=PlanOptions(stage_epochs="2,1,1")))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(seen(app, IterLosses)) >= 1)
        await pilot.press("p")  # pause
        assert app.state.status == PAUSED
        await until(pilot, lambda: seen(app, Paused))
        steps = app.state.iter_losses.__len__()
        await pilot.pause(1.0)
        assert len(app.state.iter_losses) == steps, "training went on while paused"
        assert "PAUSED" in str(app.query_one("#status").render())
        await pilot.press("space")  # resume
        assert app.state.status == RUNNING
        await pilot.press("s")  # save now
        await until(pilot, lambda: any(e.reason == "save" for e in seen(app, CheckpointSaved)))
        saved = next(e for e in seen(app, CheckpointSaved) if e.reason == "save")
        assert Path(saved.path).is_file()
        await pilot.press("q")  # quit: asks first while training
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running, timeout=60)
    assert app.exit_code == 0
    last = torch.load(Path(saved.path), weights_only=True)
    assert last["position"]["stage"] == 0


async def test_next_stage_and_the_last_stage_asks(tmp_path: Path) -> None:
    app = recorded_app(slow_config(tmp_path, plan_opts=PlanOptions(stage_epochs="3,1,1")))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(seen(app, IterLosses)) >= 1)
        await pilot.press("n")  # next stage: no question before the last stage
        await until(pilot, lambda: len(seen(app, StageStarted)) == 2)
        assert app.state.stage.stage == 2 and "layer3" in app.state.changed
        await pilot.press("n")
        await until(pilot, lambda: len(seen(app, StageStarted)) == 3)
        await until(pilot, lambda: len(seen(app, IterLosses)) >= 5)
        await pilot.press("n")  # on the last stage it asks
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: app.state.status == "FINISHED")
        assert app.state.epochs[-1].stage == 3 and app.state.epochs[-1].batches_done < 20
        await pilot.press("q")  # finished: quits without asking
        await until(pilot, lambda: not app.is_running)
    assert app.exit_code == 0


async def test_views_and_help_on_a_scripted_run(tmp_path: Path) -> None:
    app = make_app(tiny_config(tmp_path), trainer_factory=ScriptedTrainer(lambda: events(epochs=3)))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 3)
        await pilot.press("2")  # model tree
        await pilot.pause(0.3)
        tree = app.query_one(ModelTree)
        labels = [str(node.label) for node in tree._tree_nodes.values()]
        assert sum("◆ CBAM" in label for label in labels) == 4
        await pilot.press("tab")  # to the full log
        assert app.query_one("#views").current == "full-log"
        await pilot.press("tab")  # back to the dashboard
        assert app.query_one("#views").current == "dashboard"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)


def test_a_failing_worker_opens_a_modal_and_exits_nonzero(tmp_path: Path) -> None:
    def broken(config, emit, control):
        class Broken:
            def run(self) -> str:
                emit(next(iter(events(epochs=1))))
                raise RuntimeError("the GPU caught fire")

        return Broken()

    async def scenario() -> int:
        app = make_app(tiny_config(tmp_path), trainer_factory=broken)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
            assert "the GPU caught fire" in app.screen.message
            await pilot.press("escape", "q")
            await until(pilot, lambda: not app.is_running)
        return app.exit_code

    assert asyncio.run(scenario()) == 1


@pytest.mark.parametrize("size", [(100, 30), (80, 24)])
async def test_views_switch_while_training(tmp_path: Path, size: tuple[int, int]) -> None:
    app = recorded_app(slow_config(tmp_path))
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: seen(app, RunStarted) and len(seen(app, IterLosses)) >= 1)
        for key, view in (("2", "tree"), ("3", "full-log"), ("1", "dashboard"), ("tab", "tree")):
            await pilot.press(key)
            assert app.query_one("#views").current == view
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)
    assert app.exit_code == 0


async def test_a_non_finite_loss_pauses_the_dashboard_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.train as train_mod

    real = train_mod.F.cross_entropy

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss * float("nan") if kwargs.get("reduction") is None else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    app = recorded_app(tiny_config(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.status == PAUSED and app.state.message is not None)
        assert "non-finite loss at epoch 1, batch 2" in app.state.message
        await until(pilot, lambda: "non-finite loss" in str(app.query_one("#status").render()), timeout=2)
        await pilot.press("p")  # resuming would train on NaN weights: it stays paused
        await pilot.pause(1.0)
        assert app.state.status == PAUSED
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)
    assert app.exit_code == 0
    assert not list(Path(tmp_path / "runs").glob("*/checkpoints/last.pt"))  # nothing finite to keep yet
