"""The dashboard: one Textual app, given a link to a run (tui.links).

Events cross from the link's worker thread to the UI only as messages
(post_message is thread-safe); keys reach the run only through the link. The
screen redraws on a timer, a few times a second, never once per event.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import ContentSwitcher, Footer, Static
from textual.worker import Worker, WorkerState

from core.errors import CbamError
from core.events import Event, Loading, Progress
from core.rundir import Command, StopReason
from core.state import ENDED, EVALUATING, PAUSED, RUNNING, STOPPING, RunState, describe
from tui.links import CompareLink, Link
from tui.widgets.attention_view import AttentionView
from tui.widgets.class_view import ClassView
from tui.widgets.compare_view import CompareView
from tui.widgets.curves import ChartOptions, EpochCurve, GroupCurve, LossCurve
from tui.widgets.dialogs import ConfirmScreen, ErrorScreen, RatesScreen
from tui.widgets.hardware import HardwarePanel
from tui.widgets.help_screen import HelpScreen
from tui.widgets.loss_log import LossLog
from tui.widgets.model_tree import LayerTree, ModelTree
from tui.widgets.module_table import ModuleTable
from tui.widgets.stage_panel import StagePanel
from tui.widgets.status_bar import StatusBar

VIEWS = ("dashboard", "tree", "system", "classes", "attention", "curves")
REDRAW_S = 0.25
CURVES_S = 1.0
COMPACT_BELOW_ROWS = 30
TALL_FROM_ROWS = 40  # the dashboard's left column has room for the learning-rate curve
EXIT_GRACE_S = 3.0  # after a stop signal, the process ends even if the terminal will not be restored
SIGNALLED = (StopReason.SIGINT, StopReason.SIGTERM, StopReason.SIGHUP, StopReason.SIGUSR1)
KEY_ACTIONS = {"pause": ("pause", "resume"), "next": ("next_stage",), "save": ("save",), "stop": ("stop_run",),
               "lr": ("rates",), "epochs": ("epochs",)}


class RunEvent(Message):
    """One event of the run, carried from the link's worker thread to the UI."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event

    def can_replace(self, message: Message) -> bool:
        # A newer progress report makes an older one still queued worthless;
        # log-bearing events are never dropped.
        return (
            isinstance(message, RunEvent)
            and isinstance(self.event, (Progress, Loading))
            and type(message.event) is type(self.event)
        )


class CbamApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "cbam-tui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("p,space", "pause", "pause"),
        Binding("p,space", "resume", "resume"),
        Binding("n", "next_stage", "next stage"),
        Binding("s", "save", "save"),
        Binding("x", "stop_run", "stop run"),
        Binding("l", "rates", "lr"),
        Binding("plus", "epochs('+1')", "+epoch", show=False),
        Binding("minus", "epochs('-1')", "-epoch", show=False),
        # The same keys when they cannot act: one line in the log saying why.
        Binding("p,space", "unavailable('pause')", show=False),
        Binding("n", "unavailable('next')", show=False),
        Binding("s", "unavailable('save')", show=False),
        Binding("x", "unavailable('stop')", show=False),
        Binding("l", "unavailable('lr')", show=False),
        Binding("plus,minus", "unavailable('epochs')", show=False),
        Binding("q", "quit_run", "quit", priority=True),
        Binding("ctrl+c", "quit_run", "quit", show=False, priority=True),
        Binding("tab", "next_view", "view", priority=True),
        Binding("1", "view('dashboard')", "dashboard", show=False),
        Binding("2", "view('tree')", "tree", show=False),
        Binding("3", "view('system')", "log", show=False),
        Binding("4", "view('classes')", "classes", show=False),
        Binding("5", "view('attention')", "attention", show=False),
        Binding("6", "view('curves')", "curves", show=False),
        Binding("e", "chart('smooth')", "smooth", show=False),
        Binding("y", "chart('log_scale')", "log scale", show=False),
        Binding("w", "chart('this_stage')", "stage/run", show=False),
        Binding("left_square_bracket", "attention_epoch(1)", "earlier", show=False),
        Binding("right_square_bracket", "attention_epoch(-1)", "later", show=False),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link
        self.compare = isinstance(link, CompareLink)  # several runs side by side, none steered
        self.state = RunState()
        self.outcome: StopReason | None = None  # why the link's worker ended
        self.error: str | None = None  # the worker raised: shown, and the exit code is 1
        self._posted = 0  # events sent by the link's thread, and folded in by the UI
        self._applied = 0
        self._quitting = False
        self._signalled = False  # a stop signal reached the CLI's handler
        self._drawn = -1
        self._curve_data: tuple[object, ...] = ()
        self._curves_at = 0.0
        self.chart = ChartOptions()

    # --- layout ---------------------------------------------------------------
    def compose(self) -> ComposeResult:
        if isinstance(self.link, CompareLink):
            head = f" COMPARE  {len(self.link.runs)} runs · refreshed every second · q leaves"
            yield Static(Text(head, style="bold"), id="status")
            yield CompareView(self.link.runs, id="compare")
            yield Footer()
            return
        yield StatusBar(id="status")
        with ContentSwitcher(initial="dashboard", id="views"):
            with Vertical(id="dashboard"):
                with Horizontal(id="top"):
                    with Vertical(id="left"):
                        yield StagePanel(id="stage")
                        yield HardwarePanel(id="hardware")
                        yield ModuleTable(id="modules")
                        yield GroupCurve("lr", id="lr-side")
                    with Vertical(id="right"):
                        yield LossCurve(id="loss-curve")
                        with Horizontal(id="epoch-curves"):
                            yield EpochCurve("acc", id="acc-curve")
                            yield EpochCurve("loss", id="epoch-loss-curve")
                yield LossLog(id="log")
            yield ModelTree(id="tree")
            with Vertical(id="system"):
                yield HardwarePanel(id="hardware-full")
                yield LossLog(id="full-log")
            yield ClassView(id="classes")
            yield AttentionView(id="attention")
            with Vertical(id="curves"):
                yield LossCurve(id="loss-big")
                with Horizontal(id="curves-row"):
                    yield GroupCurve("lr", id="lr-curve")
                    yield GroupCurve("grad", id="grad-curve")
        yield Footer()

    def on_mount(self) -> None:
        self.follow()
        self.set_interval(REDRAW_S, self._leave_if_signalled)
        if self.compare:
            return
        self._fit()
        self.set_interval(REDRAW_S, self.redraw)
        self.redraw()

    def stop_signal(self, reason: StopReason) -> None:
        """The CLI's stop-signal handler: the link stops the run, and the app leaves as the
        run ends; a run that has already ended has nothing to stop, so the app leaves at
        the next tick, with the run's exit code."""
        self._signalled = True
        self.link.stop(reason)

    def _leave_if_signalled(self) -> None:
        if self._signalled and not self.live:
            self.exit(self.exit_code)

    def on_unmount(self) -> None:
        # However the app ends, a run it owns must not train on unseen: it stops at the
        # next batch with a checkpoint, and the process can exit. A followed run goes on.
        if self.outcome is None:
            self.link.stop(StopReason.QUIT if self.link.leaving_stops_run else StopReason.LEFT)

    # --- the worker -----------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="training")
    def follow(self) -> StopReason:
        return self.link.start(self.post_event)

    def post_event(self, event: Event) -> None:
        """The link's emit: thread-safe, never blocks the training loop."""
        if self.post_message(RunEvent(event)) and not isinstance(event, (Progress, Loading)):
            self._posted += 1  # replaceable ones may be dropped for a newer one: not counted

    def on_run_event(self, message: RunEvent) -> None:
        if not isinstance(message.event, (Progress, Loading)):
            self._applied += 1
        before = self.state.status
        self.state.apply(message.event)
        lines = describe(message.event)
        if lines:
            for log in self.query(LossLog):
                log.add_lines(lines)
        if self.state.status != before or message.event.kind in ("watching", "run_started"):
            self.refresh_bindings()
            self.redraw()  # a change of state shows at once; streams of numbers wait for the timer

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
            checkpoint = self.state.last_checkpoint
            self.push_screen(ErrorScreen(self.error + (f"\n\nlast checkpoint: {checkpoint}" if checkpoint else "")))
        self.refresh_bindings()
        self.redraw()

    def _wind_up(self) -> None:
        """The link is done: leave when asked to or signalled, else stay to be looked at."""
        if self.outcome == StopReason.SIGHUP:
            # The terminal is gone: restoring it would block on a dead tty. Everything is
            # saved and flushed, so leave at once.
            os._exit(self.exit_code)
        if self.outcome in SIGNALLED:
            # Restore the terminal if it lets us, but a stop signal ends the process regardless.
            watchdog = threading.Timer(EXIT_GRACE_S, os._exit, (self.exit_code,))
            watchdog.daemon = True
            watchdog.start()
        if self._quitting or self.outcome in SIGNALLED:
            self.exit(self.exit_code)

    @property
    def exit_code(self) -> int:
        """The one place the dashboard's exit status comes from."""
        if self.error is not None:
            return 1
        return (self.outcome or StopReason.LEFT).exit_code

    @property
    def live(self) -> bool:
        return any(w.group == "training" and w.is_running for w in self.workers)

    # --- which keys act now: the footer shows only those -------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.compare:
            return action in ("quit_run", "help")
        if action == "attention_epoch":
            return self.query_one(ContentSwitcher).current == "attention"
        steerable = self._steerable() and self.state.stage is not None
        if action == "pause":
            return steerable and self.state.status in (RUNNING, EVALUATING)
        if action == "resume":
            return steerable and self.state.status == PAUSED and self._may_resume()
        if action in ("next_stage", "save", "rates", "epochs"):
            return steerable
        if action == "stop_run":
            return steerable and not self.link.leaving_stops_run
        if action == "unavailable":
            return not any(self.check_action(a, ()) for a in KEY_ACTIONS[str(parameters[0])])
        return True

    def _steerable(self) -> bool:
        if not self.live or self.state.status in (*ENDED, STOPPING):
            return False
        watching = self.state.watching
        return self.link.leaving_stops_run or (watching is not None and watching.can_control)

    def _may_resume(self) -> bool:
        return self.state.message is None or "non-finite" not in self.state.message

    # --- redraw, throttled ----------------------------------------------------
    def redraw(self) -> None:
        state = self.state
        if self.compare or state.version == self._drawn:
            return
        self._drawn = state.version
        self.query_one(StatusBar).update_from(state)
        view = self.query_one(ContentSwitcher).current
        if view == "dashboard":
            self.query_one(StagePanel).update_from(state)
            self.query_one("#hardware", HardwarePanel).update_from(state)
            self.query_one(ModuleTable).update_from(state)
        elif view == "system":
            self.query_one("#hardware-full", HardwarePanel).update_from(state)
        elif view == "classes":
            self.query_one(ClassView).update_from(state)
        elif view == "attention":
            self.query_one(AttentionView).update_from(state)
        if view in ("dashboard", "curves"):
            self._redraw_curves(view)
        tree = self.query_one(ModelTree)
        if view == "tree" or not tree.populated:
            tree.update_from(state)  # built while hidden, so the first look at it is instant

    def _redraw_curves(self, view: str) -> None:
        """Plots cost the most: redrawn only when their data moved, and at most once a
        second while the losses stream in (new epochs and stages show at once)."""
        state = self.state
        data = (view, len(state.epochs), len(state.stage_steps), str(self.size), self.chart, len(state.iter_losses),
                len(state.group_curves))
        now = time.monotonic()
        if data == self._curve_data or (data[:5] == self._curve_data[:5] and now - self._curves_at < CURVES_S):
            return
        self._curve_data, self._curves_at = data, now
        for curve in self.query_one(f"#{view}").query(LossCurve):
            curve.options = self.chart
            curve.update_from(state)
        for plot in self.query_one(f"#{view}").query(EpochCurve):
            plot.update_from(state)
        for group in self.query_one(f"#{view}").query(GroupCurve):
            group.update_from(state)

    @property
    def settled(self) -> bool:
        """Every event the link has sent is folded in and on screen (tests wait for this)."""
        return self._applied == self._posted and self._drawn == self.state.version and self._footer_current()

    def _footer_current(self) -> bool:
        """The footer shows the keys that act now (it recomposes after a refresh, not at once)."""
        from textual.widgets._footer import FooterKey

        if self.screen is not self.screen_stack[0] or not self.app_focus:
            return True  # a dialog or help is up (its own keys), or the footer waits for focus to recompose
        wanted = {b.binding.action for b in self.screen.active_bindings.values() if b.binding.show}
        return {key.action for key in self.screen.query(FooterKey)} == wanted

    def on_resize(self) -> None:
        if self.compare:
            return
        self._fit()
        self._drawn = -1

    def _fit(self) -> None:
        """Panels follow the terminal: the left column's width, the log's rows; under 30
        rows the borders go (every module row still shows); from 40 the learning-rate
        curve takes the left column's spare rows."""
        width, height = self.size
        self.query_one("#views").set_class(height < COMPACT_BELOW_ROWS, "-compact")
        self.query_one("#views").set_class(height >= TALL_FROM_ROWS, "-tall")
        self.query_one("#left").styles.width = max(46, min(int(width * 0.36), 72))
        self.query_one("#log").styles.height = max(5, min(int(height * 0.22), 14))

    # --- keys -------------------------------------------------------------------
    def action_pause(self) -> None:
        self._request(Command("pause"), PAUSED)

    def action_resume(self) -> None:
        self._request(Command("resume"), RUNNING)

    def action_next_stage(self) -> None:
        st = self.state.stage
        if st is not None and st.stage == st.num_stages:
            self.push_screen(
                ConfirmScreen("This is the last stage: end the run now (it is evaluated and saved)?"),
                lambda yes: self._request(Command("next")) if yes else None,
            )
        else:
            self._request(Command("next"))

    def action_save(self) -> None:
        self._request(Command("save"))

    def action_rates(self) -> None:
        """l: change the learning rates now, in a small dialog."""
        from tui.widgets.module_table import live_rates

        stage = self.state.stage
        rates = live_rates(self.state)
        groups = [(name, rates.get(name, lr)) for name, lr in stage.groups] if stage else []
        self.push_screen(RatesScreen(groups), lambda command: self._request(command) if command else None)

    def action_epochs(self, change: str) -> None:
        """+ / -: one epoch more or less in this stage."""
        self._request(Command("epochs", change))

    def action_stop_run(self) -> None:
        self.push_screen(
            ConfirmScreen(
                "Stop the training run? It saves a checkpoint first; continue it later with cbam-tui run --resume."
            ),
            lambda yes: self._request(Command("stop")) if yes else None,
        )

    def action_unavailable(self, verb: str) -> None:
        """Why a steering key does nothing now, in the log."""
        state, watching = self.state, self.state.watching
        status = state.status.lower()
        if verb == "stop" and self.link.leaving_stops_run:
            why = "x stops a run you watch; q stops this one (with a checkpoint)"
        elif state.status in ENDED:
            why = f"the run has {status}"
        elif not self.live:
            why = "the run is not live"
        elif watching is not None and not watching.can_control:
            why = watching.detail
        elif state.status == PAUSED and not self._may_resume():
            verb, why = "resume", str(state.message)
        else:
            why = f"the run is {status}" + ("" if state.stage else "; wait for its first stage")
        self._note(f"cannot {verb}: {why}")

    def _request(self, command: Command, shown: str | None = None) -> None:
        """Send a key's command. A run owned here shows ``shown`` at once (its Control
        takes it at the next batch boundary); an attached one shows what the run reports."""
        try:
            self._note(self.link.send(command))
        except CbamError as exc:
            self._note(f"cannot {command.verb}: {exc}")
            return
        if shown is not None and self.link.leaving_stops_run:
            self.state.status = shown
            self.state.version += 1
            self.refresh_bindings()
        self.redraw()

    def action_quit_run(self) -> None:
        if self._quitting:
            return
        if not self.link.leaving_stops_run:
            self._quitting = True
            self.outcome = StopReason.LEFT  # leave at once; the follower ends within its wait
            self.link.stop(StopReason.LEFT)
            self.exit(self.exit_code)
            return
        if not self.live or self.state.status in ENDED:
            self._quitting = True  # over already: leave now, or as soon as the worker has wound up
            if not self.live:
                self.exit(self.exit_code)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._quitting = True
                self.state.status = STOPPING
                self.state.version += 1
                self.link.stop(StopReason.QUIT)
                self.refresh_bindings()
                self.redraw()

        self.push_screen(ConfirmScreen("Stop training and quit? A checkpoint is saved first."), answer)

    def action_next_view(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        self.action_view(VIEWS[(VIEWS.index(switcher.current or VIEWS[0]) + 1) % len(VIEWS)])

    def action_view(self, name: str) -> None:
        self.query_one(ContentSwitcher).current = name
        self._drawn = -1
        self.redraw()
        if name == "tree":
            self.query_one(LayerTree).focus()  # arrows move, enter or space opens a node
        elif name in ("classes", "attention"):
            self.query_one(f"#{name}").focus()  # arrows and page keys scroll

    def action_chart(self, option: str) -> None:
        """e, y, w: smoothing, a log-scaled loss, this stage only (the iteration curve)."""
        self.chart = dataclasses.replace(self.chart, **{option: not getattr(self.chart, option)})
        self._drawn = -1
        self.redraw()

    def action_attention_epoch(self, delta: int) -> None:
        self.query_one(AttentionView).step(delta, self.state)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(owns_run=self.link.leaving_stops_run))

    def _note(self, line: str) -> None:
        for log in self.query(LossLog):
            log.add_lines([f"> {line}"])


def make_app(link: Link) -> CbamApp:
    """The dashboard over ``link``: the CLI's `run`, `demo` and `watch`, and the tests."""
    return CbamApp(link)
