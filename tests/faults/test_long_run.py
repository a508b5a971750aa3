"""A simulated full run (50 epochs x 782 batches of events) through the dashboard."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from tests.conftest import tiny_config
from tests.scripted import ScriptedTrainer, events
from tui.app import make_app
from tui.widgets.curves import LossCurve
from tui.widgets.loss_log import LossLog


async def test_a_full_length_run_keeps_memory_bounded_and_the_screen_working(tmp_path: Path) -> None:
    app = make_app(tiny_config(tmp_path), trainer_factory=ScriptedTrainer(lambda: events(epochs=50)))
    async with app.run_test(size=(100, 30)) as pilot:
        while len(app.state.epochs) < 50:
            await pilot.pause(0.1)
        await pilot.pause(0.5)
        state = app.state
        assert len(state.iter_losses) == 50 * 800  # 782 batches logged in chunks of 100
        assert state.iter_losses.itemsize * len(state.iter_losses) < 200_000  # 4 bytes a point
        log = app.query_one("#full-log", LossLog)
        assert len(log.lines) <= 5000  # the log keeps its newest lines, not all of them
        for key, view in (("2", "tree"), ("3", "full-log"), ("1", "dashboard")):
            await pilot.press(key)
            assert app.query_one("#views").current == view
        curve = app.query_one(LossCurve)
        curve.update_from(state)
        text = str(curve.render())
        assert "S2" in text and "S3" in text  # stage boundaries still marked at the end
        await pilot.press("q", "y")
        t = time.monotonic()
        while app.is_running and time.monotonic() - t < 10:
            await pilot.pause(0.05)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the test process: {peak_mb:.0f} MB")
    assert peak_mb < 2048
