"""Snapshots of every view at 80x24, 100x30, 120x40, 200x50 and 300x80, from a scripted (deterministic)
run that has a GPU reading (a fake NVML's numbers), per-class results and attention maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_config
from tests.scripted import ScriptedTrainer, events
from tui.app import make_app
from tui.links import InProcessLink

SIZES = [(100, 30), (80, 24), (120, 40), pytest.param((200, 50), marks=pytest.mark.slow),
         pytest.param((300, 80), marks=pytest.mark.slow)]
VIEWS = [((), "dashboard"), (("2",), "tree"), (("3",), "log"), (("4",), "classes"), (("5",), "attention"),
         (("6",), "curves"), (("question_mark",), "help")]


def scripted_app(tmp_path: Path):
    return make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(lambda: events(epochs=3))))


async def settled(pilot) -> None:
    """Every event drawn, and the run quiet (the render budget at rest, so view 3 shows no
    figure of the dashboard's own cost): the app's own public signals, never a sleep."""
    app = pilot.app
    while not (len(app.state.epochs) == 3 and app.settled and not app.budget.active):
        await pilot.pause(0.05)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("keys", "view"), VIEWS)
def test_view_snapshot(snap_compare, tmp_path: Path, size: tuple[int, int], keys: tuple[str, ...], view: str) -> None:
    async def before(pilot) -> None:
        await settled(pilot)
        for key in keys:
            await pilot.press(key)
        await settled(pilot)

    assert snap_compare(scripted_app(tmp_path), terminal_size=size, run_before=before)
