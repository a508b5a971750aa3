"""The Textual app: a link to a run (tui.links), the screen that shows it, and the
run's lifecycle: start, stop, stop signals, a stuck terminal, the exit code.

Events cross from the link's worker thread to the UI through an Intake: the
worker only appends to a queue, and a change of state wakes the UI with one
message. A few times a second, and at once when woken, the app folds what is
queued into its RunState and hands the events to its screen, which shows them
(tui/dashboard.py for one run, tui/comparison.py for several). Keys reach the run
only through the link.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import cast

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from core.errors import CbamError
from core.events import Event
from core.state import RunState
from core.vocab import Status, StopReason
from tui.budget import RenderBudget
from tui.intake import Intake
from tui.links import CompareLink, Link
from tui.widgets.dialogs import ConfirmScreen, ErrorScreen
from tui.widgets.help_screen import HelpScreen

TICK_S = 0.5  # events are folded in, and due panels redrawn, this often (a change of state wakes it at once)
STALL_S = 20.0  # an event loop that has not ticked for this long is stuck (a terminal nobody reads)
STALL_ENV = "CBAM_TUI_STALL_S"  # another limit, in seconds
REPORT_ENV = "CBAM_TUI_UI_REPORT"  # a file the app writes its own cost to when it closes (bench/dashboard.py)
EXIT_GRACE_S = 3.0  # after a stop signal, the process ends even if the terminal will not be restored


class Wake(Message):
    """A change of state is queued: fold it in and show it now, not at the next tick."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Wake)


class RunScreen(Screen[None]):
    """The screen a link's run is shown on, under any dialog. It reads the app's state
    and never writes it; it has its own keys (q, ctrl+c and ? are the app's)."""

    @property
    def run_app(self) -> CbamApp:
        return cast(CbamApp, self.app)

    def show(self, events: list[Event]) -> None:
        """``events`` were just folded into the app's state: show what is due."""

    def redraw(self) -> None:
        """Show every change now (the state moved outside a tick)."""

    @property
    def settled(self) -> bool:
        """Everything folded in is on screen."""
        return True


class CbamApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "cbam-tui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit_run", "quit", priority=True),
        Binding("ctrl+c", "quit_run", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, link: Link, main: RunScreen) -> None:
        super().__init__()
        self.link = link
        self.main = main
        self.state = RunState()  # the link's run, folded from its events; only this app writes it
        self.outcome: StopReason | None = None  # why the link's worker ended
        self.error: str | None = None  # the worker raised: shown, and the exit code is 1
        self.intake = Intake(lambda: self.post_message(Wake()))
        self.budget = RenderBudget()  # the UI thread's share of the wall time, which the screen draws within
        self._quitting = False
        self._signalled = False  # a stop signal reached the CLI's handler
        self._heartbeat = time.monotonic()  # the event loop's last tick, for the stall guard
        self.stall_guard = False
        # What the link's worker thread ended with, for the exit threads (the UI may never see it).
        self._link_done = threading.Event()
        self._link_outcome: StopReason | None = None
        self._link_failed = False

    def get_default_screen(self) -> RunScreen:
        return self.main

    def on_mount(self) -> None:
        self.follow()
        self.set_interval(TICK_S, self.tick)
        if self.stall_guard:
            self.guard_stall()

    # --- lifecycle ----------------------------------------------------------------
    def stop_signal(self, reason: StopReason) -> None:
        """The CLI's stop-signal handler: the link stops the run, and the app leaves as the
        run ends; a run that has already ended has nothing to stop, so the app leaves at
        the next tick, with the run's exit code. Leaving does not depend on the event loop:
        a thread ends the process once the run has stopped, whatever the UI is doing."""
        self._signalled = True
        self.link.stop(reason)
        threading.Thread(target=self._exit_when_stopped, args=(reason,), name="cbam-tui exit", daemon=True).start()

    def _exit_when_stopped(self, reason: StopReason) -> None:
        """Wait for the run's stop checkpoint, give the event loop a moment to restore the
        terminal, then end the process. A terminal that is gone can block the UI thread in
        a write for good (SIGHUP: no moment is given, there is nothing to restore)."""
        self._link_done.wait()
        if reason != StopReason.SIGHUP:
            time.sleep(EXIT_GRACE_S)
        os._exit(self.exit_code)

    def guard_stall(self) -> None:
        """For a real terminal: if the event loop stops ticking for STALL_S, or the terminal
        takes no byte for as long (nobody reads it: Textual's writer thread blocks, and the
        loop only once 30 frames are queued, which the render budget makes a long wait), stop
        the run as if the connection had dropped and end the process once its checkpoint is saved."""
        import select
        import sys

        try:
            limit = float(os.environ.get(STALL_ENV, STALL_S))
        except ValueError:
            limit = STALL_S
        out = sys.__stdout__

        def writable() -> bool:
            try:
                return out is None or bool(select.select([], [out.fileno()], [], 0)[1])
            except (OSError, ValueError):
                return True  # no terminal to watch: the heartbeat alone decides

        def watch() -> None:
            last = took = time.monotonic()
            while not self._link_done.is_set():
                time.sleep(1.0)
                now = time.monotonic()
                if now - last > 5.0:  # this process was stopped (ctrl+z): the loop was too
                    self._heartbeat = took = now
                last = now
                if writable():
                    took = now
                if now - self._heartbeat > limit or now - took > limit:
                    self.link.stop(StopReason.SIGHUP)
                    self._link_done.wait()
                    os._exit(self.exit_code)

        threading.Thread(target=watch, name="cbam-tui stall guard", daemon=True).start()

    def _leave_if_signalled(self) -> None:
        if self._signalled and not self.live:
            self.exit(self.exit_code)

    def on_unmount(self) -> None:
        # However the app ends, a run it owns must not train on unseen: it stops at the
        # next batch with a checkpoint, and the process can exit. A followed run goes on.
        if self.outcome is None:
            self.link.stop(StopReason.QUIT if self.link.leaving_stops_run else StopReason.LEFT)
        report = os.environ.get(REPORT_ENV)
        if report:
            b = self.budget
            with contextlib.suppress(OSError), open(report, "w") as f:
                json.dump({"ui_cpu_s": b.spent, "wall_s": b.spent_over, "top_factor": b.top_factor}, f)

    # --- the worker -----------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="training")
    def follow(self) -> StopReason:
        try:
            self._link_outcome = self.link.start(self.post_event)
        except BaseException:
            self._link_failed = True
            raise
        finally:
            self._link_done.set()
        return self._link_outcome

    def post_event(self, event: Event) -> None:
        """The link's emit: thread-safe, never blocks the training loop."""
        self.intake.push(event)

    def on_wake(self, _message: Wake) -> None:
        self.tick()

    def tick(self) -> None:
        """Fold in what the link queued, and have the screen show it."""
        self._heartbeat = time.monotonic()
        events = self.intake.take()
        for event in events:
            self.state.apply(event)
        self.main.show(events)
        self._leave_if_signalled()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "training":
            return
        if event.state == WorkerState.SUCCESS:
            self.outcome = event.worker.result
            self._wind_up()
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            self.error = str(error) if isinstance(error, CbamError) else f"{type(error).__name__}: {error}"
            if self._quitting:
                self.exit(self.exit_code)
                return
            self.tick()  # the run's last events, the failure among them
            checkpoint = self.state.last_checkpoint
            self.push_screen(ErrorScreen(self.error + (f"\n\nlast checkpoint: {checkpoint}" if checkpoint else "")))
        self.refresh_bindings()
        self.tick()

    def _wind_up(self) -> None:
        """The link is done: leave when asked to or signalled, else stay to be looked at."""
        if self.outcome == StopReason.SIGHUP:
            # The terminal is gone: restoring it would block on a dead tty. Everything is
            # saved and flushed, so leave at once.
            os._exit(self.exit_code)
        if self._quitting or (self.outcome is not None and self.outcome.signalled):
            self.exit(self.exit_code)

    @property
    def exit_code(self) -> int:
        """The one place the dashboard's exit status comes from."""
        if self.error is not None or self._link_failed:
            return 1
        return (self.outcome or self._link_outcome or StopReason.LEFT).exit_code

    @property
    def live(self) -> bool:
        return any(w.group == "training" and w.is_running for w in self.workers)

    @property
    def settled(self) -> bool:
        """Every event the link has sent is folded in and on screen (tests wait for this)."""
        return self.intake.empty and self.main.settled

    # --- the app's own keys -----------------------------------------------------
    def action_quit_run(self) -> None:
        if self._quitting:
            return
        if not self.link.leaving_stops_run:
            self._quitting = True
            self.outcome = StopReason.LEFT  # leave at once; the follower ends within its wait
            self.link.stop(StopReason.LEFT)
            self.exit(self.exit_code)
            return
        if not self.live or self.state.status.ended:
            self._quitting = True  # over already: leave now, or as soon as the worker has wound up
            if not self.live:
                self.exit(self.exit_code)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._quitting = True
                self.state.expect(Status.STOPPING)
                self.link.stop(StopReason.QUIT)
                self.main.refresh_bindings()
                self.main.redraw()

        self.push_screen(ConfirmScreen("Stop training and quit? A checkpoint is saved first."), answer)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(owns_run=self.link.leaving_stops_run, compare=isinstance(self.link, CompareLink)))


def make_app(link: Link, stall_guard: bool = False) -> CbamApp:
    """The app over ``link``: the dashboard for one run (the CLI's `run`, `demo` and `watch`,
    and the tests), the comparison for several (`compare`). ``stall_guard``: on a real
    terminal, a stuck event loop stops the run (`guard_stall`)."""
    from tui.comparison import ComparisonScreen
    from tui.dashboard import DashboardScreen

    main = ComparisonScreen(link.runs, link.metric) if isinstance(link, CompareLink) else DashboardScreen()
    app = CbamApp(link, main)
    app.stall_guard = stall_guard
    return app
