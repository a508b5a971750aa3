"""A simulated full run (50 epochs x 782 batches of events) through the dashboard:
memory stays bounded, every point the run sent is kept, every view still works."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.events import IterLosses
from tests.conftest import tiny_config
from tests.helpers import until
from tests.scripted import ScriptedTrainer, events
from tui.app import make_app
from tui.links import InProcessLink
from tui.widgets.curves import LossCurve
from tui.widgets.loss_log import LossLog

pytestmark = pytest.mark.slow


async def test_a_full_length_run_keeps_memory_bounded_and_the_screen_working(tmp_path: Path) -> None:
    script = ScriptedTrainer(lambda: events(epochs=50))
    before = rss_mb()
    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=script))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 50 and app.settled, timeout=120)
        state = app.state
        sent = sum(len(e.losses) for e in script.emitted if isinstance(e, IterLosses))
        assert len(state.iter_losses) == sent  # every point the run sent, none twice
        assert state.iter_losses.itemsize == 4  # 4 bytes a point
        log = app.query_one("#full-log", LossLog)
        assert len(log.plain_lines) <= 5000  # the log keeps its newest lines, not all of them
        for key, view in (("2", "tree"), ("3", "system"), ("1", "dashboard")):
            await pilot.press(key)
            assert app.query_one("#views").current == view
        curve = app.query_one("#loss-curve", LossCurve)
        text = curve.text
        assert "S2" in text and "S3" in text  # stage boundaries still marked at the end
        await pilot.press("q", "y")
        await until(pilot, lambda: not app.is_running, timeout=10)
    grown = rss_mb() - before
    print(f"resident memory grew by {grown:.0f} MB over the whole run")
    assert grown < 300


def rss_mb() -> float:
    """This process's resident memory now (the peak would count every earlier test)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")
