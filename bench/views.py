"""Key to screen for every view: from the key press to the view drawn, while a scripted
run streams events (a loss line every 100 ms, after three whole epochs played at once so
that every view has something to show).

Each view is reached from the one before it (1 2 3 4 5 6 ?, then escape and round
again); the figure is the median of ``--rounds`` presses (at least 5), in ms, from
the key press to the first composition of the screen (every widget in view rendered)
that shows the view. View 5 is pressed only once a new epoch's attention maps have
come in since it was last shown (an epoch every 0.8 s), its worst case.

Run from the repository root:

    python bench/views.py [--rounds 7] [--size 120x40] [--root PATH ...]

With several ``--root`` (checkouts of this repository, e.g. an older commit unpacked
with `git archive`), the roots are measured in turn, alternating, in one run: on a
shared machine only figures taken together compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = (("1", "dashboard"), ("2", "tree"), ("3", "log"), ("4", "classes"), ("5", "attention"), ("6", "curves"),
        ("question_mark", "help"))


def streaming(epochs: int, pace_s: float):  # type: ignore[no-untyped-def]
    """The scripted run: its first three epochs at once, then a loss line every ``pace_s``."""
    from core.events import BatchLogged

    events = _scripted().events
    played = 0
    for event in events(epochs=epochs):
        yield event
        if isinstance(event, BatchLogged):
            played += 1
            if played > 3 * 8:
                time.sleep(pace_s)


def _scripted():  # type: ignore[no-untyped-def]
    """This checkout's tests/scripted.py, whichever root is measured: every root shows the same run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scripted", HERE.parent / "tests" / "scripted.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def measure(rounds: int, size: tuple[int, int]) -> dict[str, list[float]]:
    from tests.conftest import tiny_config
    from tui.app import make_app
    from tui.links import InProcessLink

    tmp = Path(tempfile.mkdtemp())
    app = make_app(InProcessLink(tiny_config(tmp), trainer=_scripted().ScriptedTrainer(lambda: streaming(50, 0.1))))
    times: dict[str, list[float]] = {view: [] for _, view in KEYS}
    async with app.run_test(size=size) as pilot:
        while len(app.state.epochs) < 3:  # then the run streams: "settled" would wait for its end
            await pilot.pause(0.05)
        shown: list[float] = []  # when the screen was first composed showing the view pressed for
        wanted: list[str] = [""]
        display = app._display

        def spy(screen, renderable) -> None:  # type: ignore[no-untyped-def]
            display(screen, renderable)  # composed (in a real terminal, also written out)
            if renderable is not None and not shown and showing(app) == wanted[0]:
                shown.append(time.perf_counter())

        app._display = spy
        looked = 0  # epochs folded in when view 5 was last shown
        for _ in range(rounds + 1):  # the first round warms up: not counted
            for key, view in KEYS:
                if view == "attention":  # its worst case: a new epoch's maps to lay out since the last look
                    while len(app.state.epochs) <= looked:
                        await pilot.pause(0.05)
                    looked = len(app.state.epochs)
                shown.clear()
                wanted[0] = view
                start = time.perf_counter()
                await pilot.press(key)
                while not shown:
                    await pilot.pause(0.01)
                times[view].append((shown[0] - start) * 1000)
                if view == "help":
                    await pilot.press("escape")
        await pilot.press("q", "y")
    return {view: values[1:] for view, values in times.items()}


def showing(app) -> str:  # type: ignore[no-untyped-def]
    """The view on screen: help, or the dashboard's view (its ContentSwitcher's)."""
    if type(app.screen).__name__ == "HelpScreen":
        return "help"
    current = app.screen.query_one("#views").current
    return {"system": "log"}.get(current, current)


def child(args: argparse.Namespace) -> None:
    import asyncio

    size = tuple(int(v) for v in args.size.split("x"))
    print(json.dumps(asyncio.run(measure(args.rounds, (size[0], size[1])))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", default="120x40")
    parser.add_argument("--root", action="append", help="a checkout to measure (default: this one)")
    parser.add_argument("--passes", type=int, default=1, help="measure each root this many times, alternating")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (a median of fewer says little)")
    if args.child:
        child(args)
        return
    roots = args.root or [str(Path(__file__).resolve().parents[1])]
    results: dict[str, dict[str, list[float]]] = {root: {} for root in roots}
    for _ in range(args.passes):
        for root in roots:
            done = subprocess.run(
                [sys.executable, __file__, "--child", "--rounds", str(args.rounds), "--size", args.size],
                cwd=root, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": root},
            )
            if done.returncode:
                sys.exit(f"the bench failed in {root}: {done.stderr.strip().splitlines()[-1:]}")
            for view, values in json.loads(done.stdout.strip().splitlines()[-1]).items():
                results[root].setdefault(view, []).extend(values)
    print(f"key to view drawn at {args.size}, median (min-max) of {args.rounds * args.passes} presses, ms")
    print(f"{'view':<10}" + "".join(f"{Path(r).name[-22:]:>26}" for r in roots))
    for _, view in KEYS:
        cells = []
        for root in roots:
            v = results[root][view]
            cells.append(f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})")
        print(f"{view:<10}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
