"""Helpers several test modules share: waiting on a state, runs made for a test, a run's events on disk.

Fixtures and the tiny training setup live in conftest.py; test modules import from here, never from each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.control import Control
from core.data import DataSpec
from core.rundir import RunDir
from core.vocab import StopReason
from tests.conftest import tiny_config, train

CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))
COMMON = [
    "--dataset", "synthetic", "--weights", "none", "--device", "cpu", "--precision", "fp32",
    "--log-every", "2", "--headless", "--lrs", "1e-2,1e-3,1e-3",
]


def wait_for(what: str, found: Callable[[], Any], timeout: float = 120) -> Any:
    """Poll ``found`` until it returns something true, and return that; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = found()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"never saw {what}")


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    return wait_for("the condition", condition, timeout)


async def until(pilot, condition: Callable[[], Any], timeout: float = 60.0) -> None:
    """The same for a Textual pilot: the app keeps running between looks."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


def screen_rows(app, region=None) -> list[str]:
    """The screen's text inside ``region`` (a textual Region; the whole screen without one),
    row by row, as drawn, cell for cell."""
    strips = app.screen._compositor.render_strips()
    if region is None:
        return [strip.text for strip in strips]
    return [strips[y].crop(region.x, region.right).text for y in range(region.y, region.bottom)]


class Seen:
    """A trainer factory for the in-process link that keeps every event it emits."""

    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, config, emit, control) -> StopReason:
        from core.train import Trainer

        def both(e) -> None:
            self.events.append(e)
            emit(e)

        return Trainer(config, both, control).run()

    def of(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]


STAMP_0 = 1_767_268_800.0  # 2026-01-01 12:00 UTC: the first event of a restamped run


def restamp(events: Path, step_s: float) -> None:
    """The events' wall-clock stamps ``step_s`` seconds apart from STAMP_0, as if written over
    time (a run's time comes from them): the same figures on every machine, however fast."""
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    events.write_text("".join(json.dumps({**e, "t": STAMP_0 + i * step_s}) + "\n" for i, e in enumerate(lines)))


def fake_run(
    root: Path, name: str, events: list, hold: bool = False, step_s: float | None = None,
) -> tuple[Path, RunDir | None]:
    """A run directory holding ``events``; ``hold``: this process keeps it locked (a live owner);
    ``step_s``: the events stamped that far apart (see `restamp`)."""
    run = RunDir.create_at(root / name)
    run.write_config({})
    for e in events:
        run.write(e)
    if step_s is not None:
        restamp(run.path / "events.jsonl", step_s)
    if hold:
        return run.path, run
    run.close()
    return run.path, None


def stopped_run(tmp_path: Path, epochs: str = "1,1,0") -> Path:
    """A real run stopped (by command) as its second stage starts; its directory."""
    from core.plan import PlanOptions

    control = Control()

    def react(e) -> None:
        if e.kind == "stage_started" and e.stage == 2:
            control.stop(StopReason.COMMAND)

    outcome, rec = train(
        tiny_config(tmp_path, plan_opts=PlanOptions(stage_epochs=epochs, lrs="1e-2,1e-3,1e-3")), react, control
    )
    assert outcome == StopReason.COMMAND
    return rec.run_dir


def cbam(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CBAM_TUI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def events(run: Path) -> list[dict[str, Any]]:
    """A run's events.jsonl as dicts (none while it does not exist yet): its whole lines,
    since a line the run is writing at this moment has no newline yet."""
    path = run / "events.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def of(run: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in events(run) if e["event"] == kind]


def write_folder(root: Path, classes: dict[str, int], test_dir: str = "test", size: int = 12) -> None:
    """An image folder dataset of random PNGs: ``classes`` maps a class to its image count per split."""
    rng = np.random.default_rng(0)
    for split in ("train", test_dir):
        for name, n in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")


def spec(root: Path, cache: Path, **kw) -> DataSpec:
    return DataSpec(dataset="imagefolder", data_dir=str(root), image_size=8, cache_dir=str(cache), **kw)


def run_flags() -> list[str]:
    """Every flag of `run` (and `demo`), as click knows them."""
    import typer.main

    from tui.cli import app

    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    return [flag for p in command.params for flag in (*p.opts, *p.secondary_opts) if flag.startswith("--")]
