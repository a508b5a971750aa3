"""The dashboard: one run, in six views, steered with keys (a Textual Screen).

The app folds the run's events into its RunState and hands them here a few times
a second (tui/app.py); this screen never writes the state, it shows it. It works
to a render budget (tui/budget.py): the panels of the view on screen that are
due redraw, each at its own period, all periods stretched while the UI's own CPU
time is over its share of the wall time. A change of state redraws the status
line, the stage panel, the module table and the log at once; nothing is drawn for
a view that is not shown. An epoch's end redraws the charts at once.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import ContentSwitcher, Footer

from core.errors import CbamError
from core.events import EpochEnded, Event, StageStarted, SystemSample
from core.vocab import Command, Status
from tui.app import RunScreen
from tui.budget import share_for
from tui.intake import urgent
from tui.widgets.attention_view import AttentionView
from tui.widgets.class_view import ClassView
from tui.widgets.curves import ChartOptions, EpochCurve, GroupCurve, LossCurve, Plot
from tui.widgets.dialogs import ConfirmScreen, RatesScreen
from tui.widgets.hardware import HardwarePanel
from tui.widgets.loss_log import LogLine, LossLog, log_lines, note
from tui.widgets.model_tree import LayerTree, ModelTree
from tui.widgets.module_table import ModuleTable
from tui.widgets.stage_panel import StagePanel
from tui.widgets.status_bar import StatusBar

IDLE_S = 3.0  # a run that sent no progress for this long is not training: the budget rests
COMPACT_BELOW_ROWS = 30
TALL_FROM_ROWS = 40  # the dashboard's left column has room for the learning-rate curve
EPOCH_PAIR_FROM = 52  # columns right of the left column for both epoch charts; below, accuracy alone


class View(enum.StrEnum):
    """The dashboard's views, in tab order; each is the id of what shows it."""

    DASHBOARD = "dashboard"
    TREE = "tree"
    SYSTEM = "system"
    CLASSES = "classes"
    ATTENTION = "attention"
    CURVES = "curves"


class Steer(enum.StrEnum):
    """A steering key, as the log names it when it cannot act."""

    PAUSE = "pause"
    NEXT = "next"
    SAVE = "save"
    STOP = "stop"
    LR = "lr"
    EPOCHS = "epochs"


ACTING = ("pause", "resume", "next_stage", "save", "stop_run", "rates", "epochs")
KEY_ACTIONS = {Steer.PAUSE: ("pause", "resume"), Steer.NEXT: ("next_stage",), Steer.SAVE: ("save",),
               Steer.STOP: ("stop_run",), Steer.LR: ("rates",), Steer.EPOCHS: ("epochs",)}


@dataclass
class Panel:
    """One thing on screen: ``key`` says what it would show (cheap to compute), ``draw``
    shows it; it redraws when its key moved and the budget says it is due."""

    name: str
    key: Callable[[], object]
    draw: Callable[[], None]
    fast: bool = False  # shows a change of state at once
    epochly: bool = False  # shows a stage's start at once, and an epoch's end unless it drew within its base period
    drawn: object = None


class DashboardScreen(RunScreen):
    AUTO_FOCUS = ""  # no panel takes the keys until a view asks for them (the tree, the classes, attention)
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
    ]

    def __init__(self) -> None:
        super().__init__()
        self.chart = ChartOptions()
        self._lines: list[LogLine] = []  # folded in, not yet in the logs
        self._panels: dict[View, list[Panel]] = {}
        self._view = View.DASHBOARD  # the view shown (the ContentSwitcher's, without a query)
        self._status = ""  # the run's status when last shown
        self._tree_built = False
        self._acting: tuple[bool, ...] = ()  # which keys acted when the footer was last refreshed
        self._streamed_at = float("-inf")  # the last progress, iteration loss or loss line

    # --- layout ---------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with ContentSwitcher(initial=View.DASHBOARD, id="views"):
            with Vertical(id=View.DASHBOARD):
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
            yield ModelTree(id=View.TREE)
            with Vertical(id=View.SYSTEM):
                yield HardwarePanel(id="hardware-full")
                yield LossLog(id="full-log")
            yield ClassView(id=View.CLASSES)
            yield AttentionView(id=View.ATTENTION)
            with Vertical(id=View.CURVES):
                yield LossCurve(id="loss-big")
                with Horizontal(id="curves-row"):
                    yield GroupCurve("lr", id="lr-curve")
                    yield GroupCurve("grad", id="grad-curve")
        yield Footer()

    def on_mount(self) -> None:
        self._panels = self._make_panels()
        self._fit()
        self.show([])

    def on_resize(self) -> None:
        self._fit()
        self.call_after_refresh(self.redraw)

    def _fit(self) -> None:
        """Panels follow the terminal: the left column's width, the log's rows; under 30
        rows the borders go (every module row still shows); from 40 the learning-rate
        curve takes the left column's spare rows."""
        width, height = self.app.size
        self.query_one("#views").set_class(height < COMPACT_BELOW_ROWS, "-compact")
        self.query_one("#views").set_class(height >= TALL_FROM_ROWS, "-tall")
        left = max(46, min(int(width * 0.36), 72))
        self.query_one("#left").styles.width = left
        self.query_one("#epoch-loss-curve").display = width - left >= EPOCH_PAIR_FROM
        self.query_one("#log").styles.height = max(5, min(int(height * 0.22), 14))

    # --- what is on screen ---------------------------------------------------------
    def show(self, events: list[Event]) -> None:
        """The events the app has just folded in: their log lines, and a redraw of what
        is due on the view shown (all of it that changed, for a change of state)."""
        app, state = self.run_app, self.run_app.state
        now = time.monotonic()
        fresh = False  # a change of state: shown at once
        turned = False  # an epoch ended: the charts show it at once, unless they drew a moment ago
        staged = False  # a stage began: the charts show it at once
        for event in events:
            self._lines.extend(log_lines(event))
            if urgent(event):
                fresh = True
                turned = turned or isinstance(event, EpochEnded)
                staged = staged or isinstance(event, StageStarted)
            elif not isinstance(event, SystemSample):
                self._streamed_at = now  # the run is making progress
        if not self._panels:
            return  # not mounted yet: it shows everything when it is
        if state.status != self._status:
            self._status = state.status
            fresh = True
        if fresh:  # a change of state: the keys that act may have changed (a stage's start gives the steering keys)
            self._bindings_may_have_changed()
        # The budget protects a run that trains: one that says RUNNING but sends no progress
        # (stalled, or a stand-in) has nothing to lose to a redraw.
        training = state.status in (Status.RUNNING, Status.EVALUATING) and now - self._streamed_at < IDLE_S
        app.budget.set_active(training and app.live)
        app.budget.observe()
        self._redraw(fresh, turned, staged)

    def _redraw(self, fresh: bool = False, turned: bool = False, staged: bool = False) -> None:
        """``turned``: an epoch ended. Where epochs take a second (a GPU's), an epoch's end
        comes more often than the charts' base period; drawing them at every one kept the UI
        thread at 2.8% of the wall time against 2.0% this way (bench/README.md,
        short-epochs): then they wait until due, like any panel."""
        budget, view = self.run_app.budget, self._view
        budget.budget = share_for(view == View.CURVES, self._crowded())
        for panel in self._panels.get(view, ()):
            key = panel.key()
            if key == panel.drawn:
                continue
            epochly = panel.epochly and (staged or (turned and budget.rested(panel.name)))
            if (fresh and panel.fast) or epochly or budget.due(panel.name):
                panel.draw()
                panel.drawn = key
                budget.drawn(panel.name)
        state = self.run_app.state
        if not self._tree_built and state.started is not None:
            self.query_one(ModelTree).update_from(state)  # built while hidden: the first look is instant
            self._tree_built = True

    def _crowded(self) -> bool:
        """Whether the run trains on the CPU with a torch thread on every core it may use."""
        state = self.run_app.state
        started, system = state.started, state.system
        return (started is not None and system is not None and started.device.startswith("cpu")
                and system.cpus > 0 and started.threads >= int(system.cpus))

    def redraw(self) -> None:
        """Everything on the view shown that changed, now (a key, a resize, a new view)."""
        for panel in self._panels.get(self._view, ()):
            key = panel.key()
            if key != panel.drawn:
                panel.draw()
                panel.drawn = key
                self.run_app.budget.drawn(panel.name)

    @property
    def settled(self) -> bool:
        if self._lines:
            return False
        return (all(p.key() == p.drawn for p in self._panels.get(self._view, ())) and self._footer_current()
                and all(log.caught_up for log in self.query(LossLog)))

    def _footer_current(self) -> bool:
        """The footer shows the keys that act now (it recomposes after a refresh, not at once)."""
        from textual.widgets._footer import FooterKey

        if self.app.screen is not self or not self.app.app_focus:
            return True  # a dialog or help is up (its own keys), or the footer waits for focus to recompose
        wanted = {b.binding.action for b in self.active_bindings.values() if b.binding.show}
        return {key.action for key in self.query(FooterKey)} == wanted

    def _make_panels(self) -> dict[View, list[Panel]]:
        """Each view's panels, with their base periods (s) at the budget's factor 1. The
        widgets are looked up once here: a query of the DOM at every tick costs more than
        the tick."""
        state, budget = self.run_app.state, self.run_app.budget
        version = lambda: state.version  # noqa: E731  text panels skip a redraw that changes nothing
        logs = lambda: (len(self._lines), state.version)  # noqa: E731
        status_bar, stage = self.query_one(StatusBar), self.query_one(StagePanel)
        modules, tree = self.query_one(ModuleTable), self.query_one(ModelTree)
        hardware = self.query_one("#hardware", HardwarePanel)
        hardware_full = self.query_one("#hardware-full", HardwarePanel)
        classes, attention = self.query_one(ClassView), self.query_one(AttentionView)
        status = Panel("status", version, lambda: status_bar.update_from(state), fast=True)
        log = Panel("log", logs, self._flush_log, fast=True)

        def plot(name: str, moved: Callable[[], object], *selectors: str) -> Panel:
            """``moved``: what the plots draw from; they redraw only when it moved, and at
            once when an epoch ends (a new point on the epoch charts, the loss curve's next
            stretch)."""
            plots = [self.query_one(selector, Plot) for selector in selectors]

            def key() -> object:
                return (moved(), self.chart, budget.points_per_column)

            return Panel(name, key, lambda: self._show_plots(plots), epochly=True)

        def losses() -> object:
            return id(state.started), state.first_step, len(state.iter_losses), len(state.stage_steps)

        def epochs() -> object:
            return id(state.started), len(state.epochs)

        def groups() -> object:
            return id(state.started), len(state.group_curves), len(state.stage_groups)

        for name, base_s, optional in (("status", 1.0, False), ("stage", 1.0, False), ("log", 1.0, False),
                                       ("modules", 2.0, False), ("hardware", 2.0, True), ("loss", 3.0, False),
                                       ("epochs", 3.0, False), ("lr-side", 6.0, True), ("groups", 6.0, False),
                                       ("view", 2.0, False)):
            budget.add(name, base_s, optional)
        return {
            View.DASHBOARD: [
                status, log,
                Panel("stage", lambda: (state.version, self.app.size), lambda: stage.update_from(state), fast=True),
                Panel("modules", lambda: (id(state.stage), len(state.group_curves)),
                      lambda: modules.update_from(state), fast=True),
                Panel("hardware", lambda: (id(state.system), state.data_share, self._run_is_running()),
                      lambda: hardware.update_from(state, running=self._run_is_running())),
                plot("loss", losses, "#loss-curve"), plot("epochs", epochs, "#acc-curve", "#epoch-loss-curve"),
                plot("lr-side", groups, "#lr-side"),
            ],
            View.TREE: [status, Panel("view", lambda: (id(state.stage), id(state.started), self.app.size),
                                      lambda: tree.update_from(state), fast=True)],
            View.SYSTEM: [
                status, log,
                Panel("hardware",
                      lambda: (id(state.system), state.data_share, self._ui_line(), hardware_full.size.width,
                               self._run_is_running()),
                      lambda: hardware_full.update_from(state, self._ui_line(), history=True,
                                                        running=self._run_is_running()), fast=True),
            ],
            View.CLASSES: [status, Panel("view", lambda: (len(state.class_reports), id(state.started)),
                                         lambda: classes.update_from(state), fast=True)],
            View.ATTENTION: [status, Panel("view", lambda: (len(state.attention), id(state.started)),
                                           lambda: attention.update_from(state), fast=True)],
            View.CURVES: [status, plot("loss", losses, "#loss-big"),
                          plot("groups", groups, "#lr-curve", "#grad-curve")],
        }

    def _run_is_running(self) -> bool:
        """Whether the run is running now, so that its machine is read."""
        return self.run_app.live and not self.run_app.state.status.ended

    def _show_plots(self, plots: list[Plot]) -> None:
        state = self.run_app.state
        for plot in plots:
            plot.per_column = self.run_app.budget.points_per_column
            if isinstance(plot, LossCurve):
                plot.show(state, self.chart)
            elif isinstance(plot, (EpochCurve, GroupCurve)):
                plot.show(state)

    def _flush_log(self) -> None:
        """The log lines folded in since the last flush, into both logs (the hidden one
        only keeps them: it renders nothing until it is shown)."""
        lines, self._lines = self._lines, []
        for log in self.query(LossLog):
            log.add_lines(lines)

    def _ui_line(self) -> str:
        """The dashboard's own cost while the run trains, for view 3."""
        b = self.run_app.budget
        if not b.active:
            return ""
        return (f"dashboard: UI thread {100 * b.share:.1f}% of the wall time (budget {100 * b.budget:.0f}%) · "
                f"redraws every {b.period('stage'):.1f} s, curves every {b.period('loss'):.0f} s")

    def _note(self, line: str) -> None:
        """A line of the dashboard's own (why a key did nothing, what it sent), after the run's lines so far."""
        self._lines.append(note(line))
        self._flush_log()

    # --- which keys act now: the footer shows only those -------------------------
    def _bindings_may_have_changed(self) -> None:
        """Refresh the footer only if the keys that act changed: it is rebuilt widget by
        widget, which costs more than a redraw (running and evaluating have the same keys)."""
        acting = tuple(bool(self.check_action(a, ())) for a in ACTING)
        if acting != self._acting:
            self._acting = acting
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        state = self.run_app.state
        if action == "attention_epoch":
            return self._view == View.ATTENTION
        steerable = self._steerable() and state.stage is not None
        if action == "pause":
            return steerable and state.status in (Status.RUNNING, Status.EVALUATING)
        if action == "resume":
            return steerable and state.status is Status.PAUSED and state.may_resume
        if action in ("next_stage", "save", "rates", "epochs"):
            return steerable
        if action == "stop_run":
            return steerable and not self.run_app.link.leaving_stops_run
        if action == "unavailable":
            return not any(self.check_action(a, ()) for a in KEY_ACTIONS[Steer(str(parameters[0]))])
        return True

    def _steerable(self) -> bool:
        app = self.run_app
        if not app.live or app.state.status.ended or app.state.status is Status.STOPPING:
            return False
        watching = app.state.watching
        return app.link.leaving_stops_run or (watching is not None and watching.can_control)

    # --- keys -------------------------------------------------------------------
    def action_pause(self) -> None:
        self._request(Command("pause"), Status.PAUSED)

    def action_resume(self) -> None:
        self._request(Command("resume"), Status.RUNNING)

    def action_next_stage(self) -> None:
        st = self.run_app.state.stage
        if st is not None and st.stage == st.num_stages:
            self.app.push_screen(
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

        state = self.run_app.state
        stage = state.stage
        rates = live_rates(state)
        groups = [(name, rates.get(name, lr)) for name, lr in stage.groups] if stage else []
        self.app.push_screen(RatesScreen(groups), lambda command: self._request(command) if command else None)

    def action_epochs(self, change: str) -> None:
        """+ / -: one epoch more or less in this stage."""
        self._request(Command("epochs", change))

    def action_stop_run(self) -> None:
        self.app.push_screen(
            ConfirmScreen(
                "Stop the training run? It saves a checkpoint first; continue it later with cbam-tui run --resume."
            ),
            lambda yes: self._request(Command("stop")) if yes else None,
        )

    def action_unavailable(self, verb: str) -> None:
        """Why a steering key does nothing now, in the log."""
        app = self.run_app
        state, watching = app.state, app.state.watching
        status = state.status.lower()
        if Steer(verb) == Steer.STOP and app.link.leaving_stops_run:
            why = "x stops a run you watch; q stops this one (with a checkpoint)"
        elif state.status.ended:
            why = f"the run has {status}"
        elif not app.live:
            why = "the run is not live"
        elif watching is not None and not watching.can_control:
            why = watching.detail
        elif state.status is Status.PAUSED and not state.may_resume:
            verb, why = "resume", str(state.message)
        else:
            why = f"the run is {status}" + ("" if state.stage else "; wait for its first stage")
        self._note(f"cannot {verb}: {why}")

    def _request(self, command: Command, shown: Status | None = None) -> None:
        """Send a key's command. A run owned here shows ``shown`` at once (its Control
        takes it at the next batch boundary); an attached one shows what the run reports."""
        app = self.run_app
        try:
            self._note(app.link.send(command))
        except CbamError as exc:
            self._note(f"cannot {command.verb}: {exc}")
            return
        if shown is not None and app.link.leaving_stops_run:
            app.state.expect(shown)
            self.refresh_bindings()
        self.redraw()

    def action_next_view(self) -> None:
        views = list(View)
        self.action_view(views[(views.index(self._view) + 1) % len(views)])

    def action_view(self, name: str) -> None:
        view = View(name)
        self.query_one(ContentSwitcher).current = self._view = view
        self.redraw()
        if view == View.TREE:
            self.query_one(LayerTree).focus()  # arrows move, enter or space opens a node
        elif view == View.SYSTEM:
            self.query_one("#full-log").focus()  # arrows, page keys, Home and End scroll the log
        elif view in (View.CLASSES, View.ATTENTION):
            self.query_one(f"#{view}").focus()  # arrows and page keys scroll

    def action_chart(self, option: str) -> None:
        """e, y, w: smoothing, a log-scaled loss, this stage only (the iteration curve)."""
        self.chart = dataclasses.replace(self.chart, **{option: not getattr(self.chart, option)})
        self.redraw()

    def action_attention_epoch(self, delta: int) -> None:
        self.query_one(AttentionView).step(delta, self.run_app.state)
