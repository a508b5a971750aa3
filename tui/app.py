"""The dashboard: a Textual app that runs the Trainer in one worker thread.

Events cross from the worker to the UI only as messages (post_message is
thread-safe); keys reach the trainer only through its Control. The screen
redraws on a timer, a few times a second, never once per event.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import ContentSwitcher, Footer
from textual.worker import Worker, WorkerState

from core.config import RunConfig
from core.control import SIGNAL_EXIT, Control, stop_on_signals
from core.events import Event, Loading, Progress
from tui.state import FAILED, FINISHED, PAUSED, RUNNING, STOPPED, STOPPING, RunState
from tui.widgets.curves import EpochCurve, LossCurve
from tui.widgets.dialogs import ConfirmScreen, ErrorScreen
from tui.widgets.help_screen import HelpScreen
from tui.widgets.loss_log import LossLog
from tui.widgets.model_tree import ModelTree
from tui.widgets.module_table import ModuleTable
from tui.widgets.stage_panel import StagePanel
from tui.widgets.status_bar import StatusBar

TrainerFactory = Callable[[Any, Callable[[Event], None], Control], Any]
VIEWS = ("dashboard", "tree", "full-log")
ENDED = (FINISHED, STOPPED, FAILED)
REDRAW_S = 0.25
CURVES_S = 1.0
COMPACT_BELOW_ROWS = 30
EXIT_GRACE_S = 3.0


class TrainingEvent(Message):
    """One engine event, carried from the worker thread to the UI."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event

    def can_replace(self, message: Message) -> bool:
        # A newer progress report makes an older one still queued worthless;
        # log-bearing events are never dropped.
        return (
            isinstance(message, TrainingEvent)
            and isinstance(self.event, (Progress, Loading))
            and type(message.event) is type(self.event)
        )


def _default_trainer(config: RunConfig, emit: Callable[[Event], None], control: Control) -> Any:
    from core.train import Trainer

    return Trainer(config, emit, control)


class CbamApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "cbam-tui"
    BINDINGS = [
        Binding("p,space", "pause", "pause"),
        Binding("n", "next_stage", "next stage"),
        Binding("s", "save", "save"),
        Binding("q,ctrl+c", "quit_run", "quit", priority=True),
        Binding("tab", "next_view", "view", priority=True),
        Binding("1", "view('dashboard')", "dashboard", show=False),
        Binding("2", "view('tree')", "tree", show=False),
        Binding("3", "view('full-log')", "log", show=False),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, config: RunConfig | None, trainer_factory: TrainerFactory = _default_trainer) -> None:
        super().__init__()
        self.config = config
        self.trainer_factory = trainer_factory
        self.control = Control()
        self.state = RunState()
        self.exit_code = 0
        self._quitting = False
        self._drawn = -1
        self._curve_data: tuple[int, int, str] = (-1, -1, "")
        self._curves_at = 0.0

    # --- layout ---------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with ContentSwitcher(initial="dashboard", id="views"):
            with Vertical(id="dashboard"):
                with Horizontal(id="top"):
                    with Vertical(id="left"):
                        yield StagePanel(id="stage")
                        yield ModuleTable(id="modules")
                    with Vertical(id="right"):
                        yield LossCurve(id="loss-curve")
                        with Horizontal(id="epoch-curves"):
                            yield EpochCurve("acc", id="acc-curve")
                            yield EpochCurve("loss", id="epoch-loss-curve")
                yield LossLog(id="log")
            yield ModelTree(id="tree")
            yield LossLog(id="full-log")
        yield Footer()

    def on_mount(self) -> None:
        self._fit()
        self.set_interval(REDRAW_S, self.redraw)
        self.redraw()
        self.train()

    def on_unmount(self) -> None:
        # However the app ends, the worker must not train on unseen: it stops
        # at the next batch with a checkpoint, and the process can exit.
        self.control.stop("quit")

    # --- the worker -----------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="training")
    def train(self) -> str:
        trainer = self.trainer_factory(self.config, self.post_event, self.control)
        return str(trainer.run())

    def post_event(self, event: Event) -> None:
        """The trainer's emit: thread-safe, never blocks the training loop."""
        self.post_message(TrainingEvent(event))

    def on_training_event(self, message: TrainingEvent) -> None:
        lines = self.state.apply(message.event)
        if lines:
            self.query_one("#log", LossLog).add_lines(lines)
            self.query_one("#full-log", LossLog).add_lines(lines)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "training":
            return
        if event.state == WorkerState.SUCCESS:
            reason = self.control.stop_reason
            self.exit_code = SIGNAL_EXIT.get(reason or "", 0)
            if reason == "SIGHUP":
                # The terminal is gone: restoring it would block on a dead tty. The
                # checkpoint is saved and the events are flushed, so leave at once.
                os._exit(self.exit_code)
            if reason in SIGNAL_EXIT:
                # Everything is saved and flushed. Restore the terminal if it lets
                # us, but a stop signal must end the process even if it does not.
                watchdog = threading.Timer(EXIT_GRACE_S, os._exit, (self.exit_code,))
                watchdog.daemon = True
                watchdog.start()
            if self._quitting or reason in SIGNAL_EXIT:
                self.exit(self.exit_code)
            self.redraw()
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            from core.errors import CbamError

            message = str(error) if isinstance(error, CbamError) else f"{type(error).__name__}: {error}"
            self.exit_code = 1
            self.state.status = FAILED
            self.state.message = message
            if self._quitting:
                self.exit(1)
                return
            checkpoint = self.state.last_checkpoint
            note = f"\n\nlast checkpoint: {checkpoint}" if checkpoint else ""
            self.push_screen(ErrorScreen(message + note))
            self.redraw()

    @property
    def training(self) -> bool:
        return any(w.group == "training" and w.is_running for w in self.workers)

    # --- redraw, throttled ----------------------------------------------------
    def redraw(self) -> None:
        state = self.state
        if state.version == self._drawn:
            return
        self._drawn = state.version
        self.query_one(StatusBar).update_from(state)
        view = self.query_one(ContentSwitcher).current
        if view == "dashboard":
            self.query_one(StagePanel).update_from(state)
            self.query_one(ModuleTable).update_from(state)
            data = (len(state.iter_losses), len(state.epochs), str(self.size))
            now = time.monotonic()
            # Plots cost the most: redrawn only when their data moved, and at most
            # once a second while the losses stream in (new epochs show at once).
            if data != self._curve_data and (data[1:] != self._curve_data[1:] or now - self._curves_at >= CURVES_S):
                self._curve_data, self._curves_at = data, now
                self.query_one(LossCurve).update_from(state)
                for curve in self.query(EpochCurve):
                    curve.update_from(state)
        tree = self.query_one(ModelTree)
        if view == "tree" or not tree.populated:
            tree.update_from(state)  # built while hidden, so the first look at it is instant

    def on_resize(self) -> None:
        self._fit()
        self._drawn = -1

    def _fit(self) -> None:
        # Under 30 rows the panels drop their borders so all eleven modules still show.
        self.query_one("#views").set_class(self.size.height < COMPACT_BELOW_ROWS, "-compact")

    # --- keys -------------------------------------------------------------------
    def action_pause(self) -> None:
        if not self.training or self.state.status not in (RUNNING, PAUSED):
            return
        paused = self.control.toggle_pause()
        # Shown at once; the trainer stops at the end of the batch in flight.
        self.state.status = PAUSED if paused else RUNNING
        self.state.version += 1
        self.redraw()

    def action_next_stage(self) -> None:
        st = self.state.stage
        if not self.training or st is None:
            return
        if st.stage == st.num_stages:
            self.push_screen(
                ConfirmScreen("This is the last stage: end the run now (it is evaluated and saved)?"),
                lambda yes: self._request("next") if yes else None,
            )
        else:
            self._request("next")

    def action_save(self) -> None:
        if self.training:
            self._request("save")

    def _request(self, verb: str) -> None:
        """Pass a key's request (next, save) on to the run; an attached dashboard sends it instead."""
        if verb == "next":
            self.control.next_stage()
            self._note("next stage requested: this epoch ends at the next batch")
        else:
            self.control.save()
            self._note("saving a checkpoint at the next batch boundary")

    def action_quit_run(self) -> None:
        if self._quitting:
            return
        if not self.training or self.state.status in ENDED:
            # Over already: leave now, or as soon as the worker has wound up.
            self._quitting = True
            if not self.training:
                self.exit(self.exit_code)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._quitting = True
                self.state.status = STOPPING
                self.state.version += 1
                self.control.stop("quit")
                self.redraw()

        self.push_screen(ConfirmScreen("Stop training and quit? A checkpoint is saved first."), answer)

    def action_next_view(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        self.action_view(VIEWS[(VIEWS.index(switcher.current or VIEWS[0]) + 1) % len(VIEWS)])

    def action_view(self, name: str) -> None:
        self.query_one(ContentSwitcher).current = name
        self._drawn = -1
        self.redraw()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def _note(self, line: str) -> None:
        for log in self.query(LossLog):
            log.add_lines([f"> {line}"])


def make_app(config: RunConfig, trainer_factory: TrainerFactory = _default_trainer) -> CbamApp:
    """The dashboard for ``config``; tests pass a factory for a tiny or fake trainer."""
    return CbamApp(config.replace(on_nonfinite="pause"), trainer_factory)


def run_dashboard(config: RunConfig) -> int:
    app = make_app(config)
    restore = stop_on_signals(app.control)
    try:
        app.run()
    finally:
        app.control.stop("quit")
        restore()
    state = app.state
    if state.started is not None:
        best = state.best_acc
        final = state.epochs[-1].test_acc if state.epochs else None
        print(
            f"cbam-tui: {state.status.lower()}"
            + (f" | final test acc {final:.2f}%" if final is not None else "")
            + (f" | best {best:.2f}%" if best is not None else "")
            + f" | run directory: {state.started.run_dir}"
        )
        if state.status == STOPPED:
            print(f"cbam-tui: continue with: cbam-tui run --resume {state.started.run_dir}")
    if state.message and app.exit_code:
        print(f"cbam-tui: error: {state.message}")
    return app.exit_code
