"""`cbam-tui watch`: the dashboard attached to a run through its directory.

The same screen as a run's own dashboard, fed by a Follower instead of a
Trainer. Keys steer the run through its control channel; leaving never stops
it, stopping it is its own key and asks first.
"""

from __future__ import annotations

import os
from pathlib import Path

from textual.binding import Binding

from core.channel import send
from core.control import stop_on_signals
from core.errors import CbamError
from core.follow import DETACHED, Follower
from core.runs import inspect_run
from tui.app import CbamApp
from tui.state import PAUSED
from tui.widgets.dialogs import ConfirmScreen
from tui.widgets.help_screen import WATCH_KEYS, HelpScreen


class WatchApp(CbamApp):
    BINDINGS = [
        Binding("q,ctrl+c", "quit_run", "leave", priority=True),
        Binding("x", "stop_run", "stop run"),
    ]

    def __init__(self, run: Path) -> None:
        super().__init__(None, lambda _config, emit, control: Follower(run, emit, control))
        self.run_path = run
        self.origin = f"watch pid {os.getpid()}"

    def _request(self, verb: str) -> None:
        """Send ``verb`` through the run directory's control channel."""
        watching = self.state.watching
        if watching is None or not watching.can_control:
            self._note(f"cannot {verb}: {watching.detail if watching else 'still reading the run'}")
            return
        try:
            send(self.run_path, verb, self.origin)
        except CbamError as exc:
            self._note(str(exc))
            return
        self._note(f"{verb} sent: the run takes it at its next batch")

    def action_pause(self) -> None:
        self._request("resume" if self.state.status == PAUSED else "pause")

    def action_stop_run(self) -> None:
        self.push_screen(
            ConfirmScreen(
                "Stop the training run? It saves a checkpoint first; continue it later with cbam-tui run --resume."
            ),
            lambda yes: self._request("stop") if yes else None,
        )

    def action_help(self) -> None:
        self.push_screen(HelpScreen(WATCH_KEYS))

    def action_quit_run(self) -> None:
        """Leave the dashboard at once; the run goes on (the follower ends within its poll)."""
        self._quitting = True
        self.control.stop(DETACHED)
        self.exit(0)


def run_watch(run: Path) -> int:
    app = WatchApp(run)
    restore = stop_on_signals(app.control)
    try:
        app.run()
    finally:
        app.control.stop(DETACHED)
        restore()
    info = inspect_run(run)
    if info.live:
        print(f"cbam-tui: left {run}; training goes on ({info.state}, pid {info.pid}). Back with: cbam-tui watch {run}")
    else:
        best = f" | best test acc {info.best_acc:.2f}%" if info.best_acc is not None else ""
        print(f"cbam-tui: {run}: {info.state}{best}")
    return 0
