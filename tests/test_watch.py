"""The attached dashboard, driven by keys: it shows what the run directory holds,
steers a live run through its control channel, and never stops one by leaving."""

from __future__ import annotations

import os
from pathlib import Path

from core.channel import CONTROL_DIR
from core.events import BatchLogged, EpochEnded, RunStarted
from tests.test_app import until
from tests.test_runs import fake_run, script  # noqa: F401  (a fixture)
from tui.state import FINISHED, RUNNING
from tui.watch import WatchApp
from tui.widgets.dialogs import ConfirmScreen
from tui.widgets.loss_log import LossLog


def text(app: WatchApp, selector: str) -> str:
    return str(app.query_one(selector).render())


def log_lines(app: WatchApp) -> list[str]:
    return [line.text for line in app.query_one("#log", LossLog).lines]


def queued(run: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[-1] for p in (run / CONTROL_DIR).iterdir() if not p.name.startswith("."))


async def test_a_finished_run_is_a_post_mortem_that_cannot_be_steered(tmp_path: Path, script: list) -> None:  # noqa: F811
    run = fake_run(tmp_path, "done", script)
    app = WatchApp(run)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.status == FINISHED and app.state.watching is not None, timeout=10)
        await pilot.pause(0.3)
        assert "watching only" in text(app, "#status")
        last = [e for e in script if isinstance(e, BatchLogged)][-1]
        assert f"Batch: {last.batch}/{last.batches} | Batch loss: {last.loss:.4f}" in "\n".join(log_lines(app))
        acc = [e for e in script if isinstance(e, EpochEnded)][-1].test_acc
        assert f"test acc {acc:.2f}%" in "\n".join(log_lines(app))
        assert len(app.state.iter_losses) == sum(len(e.losses) for e in script if e.kind == "iter_losses")
        await pilot.press("p")
        assert any("cannot pause: the run has finished" in line for line in log_lines(app))
        await pilot.press("q")
    assert app.return_code == 0


async def test_keys_reach_a_live_run_and_leaving_does_not_stop_it(tmp_path: Path, script: list) -> None:  # noqa: F811
    run = fake_run(tmp_path, "live", script[:8], pid=os.getpid())  # owned by this (live) process
    (run / CONTROL_DIR).mkdir()
    app = WatchApp(run)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.watching is not None and app.state.status == RUNNING, timeout=10)
        await pilot.pause(0.3)
        assert "◉ attached" in text(app, "#status")
        started = next(e for e in script if isinstance(e, RunStarted))
        assert started.run_name in text(app, "#status")
        await pilot.press("p", "s", "n")
        assert queued(run) == ["next", "pause", "save"]
        assert (run / CONTROL_DIR).joinpath(sorted(os.listdir(run / CONTROL_DIR))[0]).read_text().startswith("watch pid")
        await pilot.press("x")  # stopping asks first
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert "stop" not in queued(run)
        await pilot.press("x", "y")
        assert "stop" in queued(run)
        for p in (run / CONTROL_DIR).iterdir():
            p.unlink()
        await pilot.press("q")  # leaving sends nothing
    assert app.return_code == 0 and queued(run) == []
