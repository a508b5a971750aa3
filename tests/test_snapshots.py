"""Snapshots of every view at 100x30 and 80x24, from a scripted (deterministic) run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_config
from tests.scripted import ScriptedTrainer, events
from tui.app import REDRAW_S, make_app

SIZES = [(100, 30), (80, 24)]


def scripted_app(tmp_path: Path):
    return make_app(tiny_config(tmp_path), trainer_factory=ScriptedTrainer(lambda: events(epochs=3)))


async def played(pilot) -> None:
    app = pilot.app
    while len(app.state.epochs) < 3:
        await pilot.pause(0.05)
    # Every event drawn, then time for the last redraw to settle on a busy machine.
    while app._drawn != app.state.version:
        await pilot.pause(0.05)
    await pilot.pause(REDRAW_S * 6)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("keys", "view"), [((), "dashboard"), (("2",), "tree"), (("3",), "log"), (("question_mark",), "help")])
def test_view_snapshot(snap_compare, tmp_path: Path, size: tuple[int, int], keys: tuple[str, ...], view: str) -> None:
    async def before(pilot) -> None:
        await played(pilot)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(REDRAW_S * 2)

    assert snap_compare(scripted_app(tmp_path), terminal_size=size, run_before=before)
