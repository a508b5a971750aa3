"""`cbam-tui compare`: one scalar of several runs on one set of axes (stage switches marked),
any the runs recorded (m cycles them), a table of each run's best, and the configuration
values that differ between the runs; live runs refresh each second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static
from textual_plotext.plot import Plot as Figure

from core.comparison import (
    DEFAULT_METRIC,
    PER_GROUP,
    LossLines,
    Series,
    differences,
    flatten,
    from_state,
    is_line_metric,
    metric_names,
    metric_title,
    run_groups,
    series_of,
    shown,
)
from core.errors import RunDirError
from core.events import clean_text
from core.rundir import EventReader, open_run, probe_owner, read_config
from core.runs import summarize
from core.safefs import Dir
from core.state import RunState
from tui.widgets.curves import Plot, envelope

REFRESH_S = 1.0
LABEL = 24  # characters of a run's name in a legend or a column's head


class Tracked:
    """One run being compared: its directory held open, its light state (epochs, plan, status:
    no curves or maps) taken from its index and the lines after it, then folded as they come;
    its loss lines only once a scalar of theirs is shown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir: Dir = open_run(path)
        self.live = probe_owner(self.dir).alive
        summary = summarize(self.dir, final=not self.live)
        self.reader: EventReader = summary.reader
        self.state: RunState = summary.state
        self.lines: LossLines | None = None
        self.config = self._config()

    def _config(self) -> dict[str, Any]:
        try:
            return flatten(read_config(self.dir))
        except RunDirError:
            return {}

    def poll(self) -> bool:
        """Fold what is new; True when anything changed."""
        before = (self.state.version, self.live)
        self.state.fold(self.reader.events(final=not self.live))
        self.live = probe_owner(self.dir).alive
        lines = self.lines.poll(final=not self.live) if self.lines is not None else False
        changed = (self.state.version, self.live) != before
        if changed:
            self.config = self._config()  # a changed plan is written to config.json
        return changed or lines

    def read_lines(self) -> None:
        if self.lines is None:
            self.lines = LossLines(self.dir)
            self.lines.poll(final=not self.live)

    def series(self, metric: str) -> Series:
        return series_of(metric, self.state.epochs, self.lines)


class CompareCurve(Plot):
    def __init__(self, metric: str = DEFAULT_METRIC, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric
        self.runs: list[Tracked] = []
        self.legend_row = True  # which run is which matters more than the plot's last row

    def show(self, runs: list[Tracked], metric: str) -> None:
        self.runs, self.metric = runs, metric
        self.invalidate()

    def draw(self, plt: Figure) -> None:
        title = metric_title(self.metric)
        self.titles = (f"{title} · {self.metric} (m: next)", f"{title} (m: next)", title, self.metric)
        # Rates and norms span decades: a log axis, its ticks at whole decades (Plot._axes).
        self.log_y = self.metric.partition("/")[0] in PER_GROUP
        columns = max(self.size.width - 8, 10)
        switches: set[float] = set()
        by_epoch = not is_line_metric(self.metric)
        for run in self.runs:
            points = run.series(self.metric)
            xs, ys = list(points.x), list(points.y)
            if self.log_y:
                kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
                xs, ys = [x for x, _ in kept], [y for _, y in kept]
            if len(xs) > columns * self.per_column:  # a few points a column, each column's extremes kept
                at, ys = envelope(ys, 0, columns, self.per_column)
                xs = [xs[int(i)] for i in at]
            self.line(plt, xs, ys, run.path.name[-LABEL:])  # whole epochs or steps on x, y from low to high
            if by_epoch and run.state.started is not None:
                first = 1
                for _, length in run.state.started.stages[:-1]:
                    first += length
                    switches.add(first - 0.5)
            elif not by_epoch:
                switches.update(step + 0.5 for step, _ in run.state.stage_steps[1:])
        for x in sorted(switches):
            if self._extent and self._extent[0] <= x <= self._extent[1]:
                plt.vertical_line(x, color="gray")


class CompareView(Vertical):
    def __init__(self, paths: list[Path], metric: str = DEFAULT_METRIC, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.runs = [Tracked(p) for p in paths]
        self.metric = metric
        if is_line_metric(metric):
            for run in self.runs:
                run.read_lines()

    def compose(self) -> ComposeResult:
        yield CompareCurve(self.metric, id="compare-chart")
        yield Static(id="compare-table")
        with VerticalScroll(id="compare-config-box"):
            yield Static(id="compare-config")

    def on_mount(self) -> None:
        self.refresh_runs(force=True)
        self.set_interval(REFRESH_S, self.refresh_runs)

    def on_unmount(self) -> None:
        for run in self.runs:
            run.dir.close()

    def metrics(self) -> list[str]:
        """The scalars the runs recorded, in the order m goes through them."""
        return metric_names(g for run in self.runs for g in run_groups(run.state))

    def cycle(self, step: int) -> str:
        """Show the scalar ``step`` places on from this one; returns its name."""
        names = self.metrics()
        at = names.index(self.metric) if self.metric in names else 0
        self.metric = names[(at + step) % len(names)]
        if is_line_metric(self.metric):
            for run in self.runs:
                run.read_lines()
        self.query_one(CompareCurve).show(self.runs, self.metric)
        return self.metric

    def refresh_runs(self, force: bool = False) -> None:
        changed = [run.poll() for run in self.runs]
        if force or any(changed):
            self.query_one(CompareCurve).show(self.runs, self.metric)
            compared = [from_state(run.path, run.state, run.live, run.config) for run in self.runs]
            self.query_one("#compare-table", Static).update(table(compared))
            self.query_one("#compare-config", Static).update(config_table(compared))


def table(runs: list[Any]) -> Table:
    from tui.formats import COMPARE_COLUMNS, compare_cells

    out = Table(box=None, pad_edge=False, header_style="bold")
    for column in COMPARE_COLUMNS:
        out.add_column(column, justify="left" if column in ("run", "state") else "right")
    for run in runs:
        out.add_row(*(Text(cell) for cell in compare_cells(run)))
    return out


def config_table(runs: list[Any]) -> RenderableType:
    """The configuration values that differ: a row per key, a column per run."""
    if sum(1 for r in runs if r.config) < 2:
        return Text("configuration: fewer than two runs have a readable config.json", style="dim")
    differ = differences(runs)
    if not differ:
        return Text("configuration: the same in every run", style="dim")
    out = Table(box=None, pad_edge=False, header_style="bold")
    out.add_column("configuration that differs", no_wrap=True, overflow="ellipsis")
    for r in runs:
        out.add_column(clean_text(r.name)[-LABEL:], overflow="ellipsis", no_wrap=True)
    for key, values in differ.items():
        out.add_row(Text(clean_text(key)), *(Text(shown(v)) for v in values))
    return out
