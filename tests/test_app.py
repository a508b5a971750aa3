"""The one dashboard driven by key presses, over both links: a real trainer in
process, a scripted run, and a run followed through its directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.events import (
    CheckpointSaved,
    EpochEnded,
    IterLosses,
    Loading,
    Paused,
    Replayed,
    RunFinished,
    RunStopped,
    StageStarted,
)
from core.plan import PlanOptions
from core.vocab import Status, StopReason
from tests.conftest import tiny_config
from tests.helpers import Seen, fake_run, screen_rows, stopped_run, until
from tests.scripted import ScriptedTrainer, events
from tui.app import make_app
from tui.links import DirectoryLink, InProcessLink
from tui.widgets.curves import LossCurve
from tui.widgets.dialogs import ConfirmScreen, ErrorScreen
from tui.widgets.help_screen import HelpScreen
from tui.widgets.loss_log import LossLog
from tui.widgets.model_tree import LayerTree, ModelTree


def live_app(config):
    seen = Seen()
    app = make_app(InProcessLink(config.replace(on_nonfinite="pause"), trainer=seen))
    return app, seen


def slow_config(tmp_path: Path, **kw):
    # 20 batches of 8 per epoch: long enough to press keys between batches.
    return tiny_config(tmp_path, limit_train=160, **kw)


def log_text(app) -> str:
    return "\n".join(app.query_one("#log", LossLog).plain_lines)


def footer_keys(app) -> set[str]:
    return {b.binding.description for b in app.active_bindings.values() if b.enabled and b.binding.show}


async def test_pause_resume_and_save_with_a_real_trainer(tmp_path: Path) -> None:
    app, seen = live_app(slow_config(tmp_path, plan_opts=PlanOptions(stage_epochs="2,1,1")))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: seen.of(IterLosses) and app.state.status == Status.RUNNING)
        assert {"pause", "next stage", "save"} <= footer_keys(app) and "resume" not in footer_keys(app)
        await pilot.press("p")  # pause
        assert app.state.status == Status.PAUSED
        await until(pilot, lambda: seen.of(Paused))
        assert "resume" in footer_keys(app) and "pause" not in footer_keys(app)
        taken = len(seen.of(IterLosses))
        await pilot.press("s")  # save while paused: the trainer takes it at once
        await until(pilot, lambda: any(e.reason == "save" for e in seen.of(CheckpointSaved)))
        assert len(seen.of(IterLosses)) == taken, "training went on while paused"
        await pilot.press("space")  # resume (a pause at an epoch's last batch resumes into its test pass)
        assert app.state.status in (Status.RUNNING, Status.EVALUATING)
        await until(pilot, lambda: len(seen.of(IterLosses)) > taken)
        saved = next(e for e in seen.of(CheckpointSaved) if e.reason == "save")
        assert Path(saved.path).is_file()
        await pilot.press("q")  # quit: asks first while training
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running)
    assert app.exit_code == 0 and app.outcome == StopReason.QUIT


async def test_next_stage_the_last_stage_asks_and_an_ended_run_has_no_steering_keys(tmp_path: Path) -> None:
    app, seen = live_app(slow_config(tmp_path, plan_opts=PlanOptions(stage_epochs="3,1,3")))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.stage is not None and app.state.status == Status.RUNNING)
        await pilot.press("p")  # paused, the keys below act at once, whatever the speed of the machine
        await until(pilot, lambda: seen.of(Paused) and app.state.status == Status.PAUSED)
        await pilot.press("n")  # next stage, while paused: no question before the last stage
        await until(pilot, lambda: app.state.stage.stage == 2 and app.state.status == Status.PAUSED)
        assert "layer3" in app.state.changed and len(seen.of(StageStarted)) == 2
        await pilot.press("n")
        await until(pilot, lambda: app.state.stage.stage == 3 and app.state.status == Status.PAUSED)
        await pilot.press("space")  # resume: the last stage trains a little
        await until(pilot, lambda: app.state.status == Status.RUNNING and app.state.batch > 0)
        pauses = len(seen.of(Paused))
        await pilot.press("p")
        await until(pilot, lambda: app.state.status == Status.PAUSED and len(seen.of(Paused)) > pauses)
        await pilot.press("n")  # on the last stage it asks
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: app.state.status == Status.FINISHED and not app.live)
        assert app.state.epochs[-1].stage == 3 and app.state.epochs[-1].batches_done < 20  # the run ended early
        assert not {"pause", "resume", "next stage", "save"} & footer_keys(app)
        await pilot.press("p")  # says why nothing happens
        assert "cannot pause: the run has finished" in log_text(app)
        await pilot.press("q")  # finished: quits without asking
        await until(pilot, lambda: not app.is_running)
    assert app.exit_code == 0


async def test_a_key_too_early_says_why_it_does_nothing(tmp_path: Path) -> None:
    def loading(config, emit, control) -> StopReason:
        emit(Loading("decoding train images", 10, 60000))
        while control.stop_reason is None:
            control.wait(0.05)
        return control.stop_reason

    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=loading))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.status == Status.LOADING)
        assert not {"pause", "next stage", "save"} & footer_keys(app)
        await pilot.press("n")
        assert "cannot next: the run is loading; wait for its first stage" in log_text(app)
        await pilot.press("x")  # x is for runs you watch; this one q stops
        assert "cannot stop: x stops a run you watch; q stops this one (with a checkpoint)" in log_text(app)
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)
    assert app.outcome == StopReason.QUIT


async def test_views_and_help_on_a_scripted_run(tmp_path: Path) -> None:
    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(lambda: events(epochs=3))))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 3)
        await pilot.press("2")  # model tree
        await until(pilot, lambda: app.query_one(ModelTree).populated)
        tree = app.query_one(LayerTree)
        labels = [str(tree.get_node_at_line(i).label) for i in range(tree.last_line + 1)]
        assert [label.split()[2] for label in labels if "◆ CBAM (" in label] == ["(cbam1)", "(cbam2)", "(cbam3)", "(cbam4)"]
        assert app.focused is tree  # the keys move through it at once
        await pilot.press("down", "down", "down", "down", "down", "enter")  # open BasicBlock (0) of layer1
        assert tree.cursor_node.is_expanded and "BasicBlock (0)" in str(tree.cursor_node.label)
        for view in ("system", "classes", "attention", "curves", "dashboard"):
            await pilot.press("tab")  # round the views, back to the dashboard
            assert app.query_one("#views").current == view
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)


async def test_the_help_scrolls_to_its_last_line_on_a_small_terminal(tmp_path: Path) -> None:
    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(lambda: events(epochs=1))))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 1 and app.settled)
        await pilot.press("question_mark")  # help: more lines than 24 rows hold
        await until(pilot, lambda: "PgDn" in "\n".join(screen_rows(app)))  # it says it scrolls
        assert "◆" not in "\n".join(screen_rows(app))
        await pilot.press("end")  # to its last line
        await pilot.pause()
        shown = "\n".join(screen_rows(app))
        assert "◆ " in shown and "Keys that cannot act now are left out of the footer." in shown
        await pilot.press("home")  # and back
        await pilot.pause()
        assert "◆ " not in "\n".join(screen_rows(app)) and "p / space" in "\n".join(screen_rows(app))
        await pilot.press("escape", "q", "y")
        await until(pilot, lambda: not app.is_running)


async def test_view_3s_log_scrolls_from_the_keyboard(tmp_path: Path) -> None:
    app = make_app(InProcessLink(tiny_config(tmp_path),
                                 trainer=ScriptedTrainer(lambda: events(epochs=3, log_every=20))))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 3 and app.settled)
        await pilot.press("3")  # log and machine
        await until(pilot, lambda: app.settled)
        log = app.query_one("#full-log", LossLog)
        await pilot.pause()
        first, last = log.plain_lines[0], log.plain_lines[-1]
        assert log.max_scroll_y > 0 and not is_line(log_rows(app, log)[0], first)
        await pilot.press("home")  # the first line
        assert is_line(log_rows(app, log)[0], first)
        await pilot.press("pagedown")
        assert not is_line(log_rows(app, log)[0], first)
        await pilot.press("end")  # the newest
        assert is_line(log_rows(app, log)[-1], last)
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)


def log_rows(app, log: LossLog) -> list[str]:
    return [row.rstrip() for row in screen_rows(app, log.scrollable_content_region) if row.strip()]


def is_line(row: str, line: str) -> bool:
    """``row`` shows ``line``, whole or short of its last fields."""
    return row == line or (row.endswith(" …") and line.startswith(row[:-2]))


@pytest.mark.parametrize("width", [80, 60])
async def test_the_status_line_drops_whole_segments_where_it_is_narrow(tmp_path: Path, width: int) -> None:
    import msgspec

    from core.events import RunStarted

    def long_named():
        for e in events(epochs=1):
            yield (msgspec.structs.replace(e, run_name="20260101-120000-cifar10-resnet18-cbam", device="cuda:0",
                                           precision="bf16", plan_label="seed") if isinstance(e, RunStarted) else e)

    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(long_named)))
    async with app.run_test(size=(width, 24)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 1 and app.settled)
        await pilot.pause()
        line = screen_rows(app)[0].strip()
        segments = line.split(" · ")
        assert segments[0].split()[-1] == "20260101-120000-cifar10-resnet18-cbam", line
        assert set(segments[1:]) <= {"cifar10", "cuda:0", "bf16", "plan seed"}, line  # whole, none cut
        assert not line.endswith(("·", "…")), line
        if width == 80:  # the plan outranks the device and the precision
            assert "plan seed" in segments and "bf16" not in segments, line
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)


async def test_a_failing_worker_opens_a_modal_and_exits_nonzero(tmp_path: Path) -> None:
    def broken(config, emit, control) -> StopReason:
        emit(next(iter(events(epochs=1))))
        raise RuntimeError("the GPU caught fire")

    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=broken))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "the GPU caught fire" in app.screen.message
        await pilot.press("escape", "q")
        await until(pilot, lambda: not app.is_running)
    assert app.exit_code == 1


async def test_a_non_finite_loss_pauses_the_dashboard_and_resuming_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.train as train_mod

    real = train_mod.F.cross_entropy

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss * float("nan") if kwargs.get("reduction") is None else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    app, _ = live_app(tiny_config(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.status == Status.PAUSED and app.state.message is not None)
        assert "non-finite loss at epoch 1" in app.state.message
        assert "resume" not in footer_keys(app)
        await pilot.press("p")  # resuming would train on NaN weights: refused, and said so
        assert "cannot resume: non-finite loss" in log_text(app)
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running)
    assert app.outcome == StopReason.NONFINITE and app.exit_code == 1
    assert not list(Path(tmp_path / "runs").glob("*/checkpoints/last.pt"))  # nothing finite to keep yet


# --- the same app over a run directory --------------------------------------------


async def test_a_finished_run_is_a_post_mortem_that_cannot_be_steered(tmp_path: Path) -> None:
    script = [*events(epochs=3, batches=4, log_every=2)]
    script.append(RunFinished(script[-1].test_acc, script[-1].test_acc, 3, 12.5))
    path, _ = fake_run(tmp_path, "run", script)
    app = make_app(DirectoryLink(path))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.status == Status.FINISHED and app.state.watching is not None, timeout=10)
        await until(pilot, lambda: "watching only" in str(app.query_one("#status").render()), timeout=5)
        acc = [e for e in script if isinstance(e, EpochEnded)][-1].test_acc
        assert f"test acc {acc:.2f}%" in log_text(app)
        assert len(app.state.iter_losses) == sum(len(e.losses) for e in script if e.kind == "iter_losses")
        assert not {"pause", "resume", "next stage", "save", "stop run"} & footer_keys(app)
        await pilot.press("p")
        assert "cannot pause: the run has finished" in log_text(app)
        await pilot.press("q")
    assert app.exit_code == 0


async def test_a_stopped_run_says_its_machine_is_not_read(tmp_path: Path) -> None:
    path = stopped_run(tmp_path)
    app = make_app(DirectoryLink(path))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.status == Status.STOPPED and app.state.watching is not None, timeout=10)
        await pilot.press("3")  # log and machine
        await until(pilot, lambda: app.settled)
        await pilot.pause()
        shown = "\n".join(screen_rows(app, app.query_one("#hardware-full").content_region))
        assert "machine: not read (the run is not running)" in shown and "no reading yet" not in shown
        await pilot.press("q")


async def test_keys_reach_a_live_run_and_leaving_does_not_stop_it(tmp_path: Path) -> None:
    script = list(events(epochs=1, batches=4, log_every=2))
    path, holder = fake_run(tmp_path, "run", script, hold=True)
    assert holder is not None
    control = path / "control"

    def queued() -> list[str]:
        return sorted(p.name.rsplit("-", 1)[-1] for p in control.iterdir() if not p.name.startswith("."))

    try:
        app = make_app(DirectoryLink(path))
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.state.watching is not None and app.state.status == Status.RUNNING, timeout=10)
            await until(pilot, lambda: "◉ attached" in str(app.query_one("#status").render()), timeout=5)
            assert {"pause", "next stage", "save", "stop run"} <= footer_keys(app)
            await pilot.press("p", "s", "n")
            assert queued() == ["next", "pause", "save"]
            assert "watch pid" in (control / sorted(p.name for p in control.iterdir())[0]).read_text()
            await pilot.press("x")  # stopping asks first
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert "stop" not in queued()
            await pilot.press("x", "y")
            assert "stop" in queued()
            for p in control.iterdir():
                p.unlink()
            await pilot.press("q")  # leaving sends nothing
        assert app.exit_code == 0 and queued() == [] and app.outcome == StopReason.LEFT
    finally:
        holder.close()


async def test_a_live_run_and_a_watched_run_of_the_same_events_draw_the_same_screen(tmp_path: Path) -> None:
    script = list(events(epochs=3, batches=40, log_every=10))
    live = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(lambda: iter(script))))
    path, _ = fake_run(tmp_path, "run", script)
    watched = make_app(DirectoryLink(path))
    screens = []
    for app in (live, watched):
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda app=app: len(app.state.epochs) == 3 and app.settled)
            screens.append(
                [str(app.query_one(sel).render()) for sel in ("#stage-title", "#stage-epoch")]
                + [app.query_one("#loss-curve", LossCurve).text, app.query_one("#modules").row_count]
            )
            await pilot.press("q", "y")
    assert screens[0] == screens[1]


@pytest.mark.parametrize("given", ["run directory", "checkpoint"])
def test_a_resumed_run_in_process_starts_from_its_whole_story(tmp_path: Path, given: str) -> None:
    """`--resume` hands the link the checkpoint it found (test_cli), and a run directory works too."""
    from tui.links import replay_history

    home = stopped_run(tmp_path, "2,1,0")
    seen: list = []
    replay_history(home if given == "run directory" else home / "checkpoints" / "last.pt", seen.append)
    [history] = [e for e in seen if isinstance(e, Replayed)]  # folded first, then handed over in one piece
    assert [e.epoch for e in history.state.epochs] == [1, 2] and history.state.status is Status.STOPPED
    assert any(line.startswith("Epoch 2/") for line in history.lines)
    assert torch.load(home / "checkpoints" / "last.pt", weights_only=True)["position"]["stage"] == 1
    # The stop, its reason and its checkpoint come over too: a resume starts from them (resuming: test_trainer).
    assert isinstance(history.state.ended, RunStopped) and history.state.ended.reason == StopReason.COMMAND
    assert history.state.last_checkpoint is not None and Path(history.state.last_checkpoint).name == "last.pt"
