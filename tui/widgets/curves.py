"""Live plotext curves: every iteration's loss, per-epoch accuracy and loss, and each
optimizer group's learning rate and gradient norm.

What a plot costs is what the dashboard's budget (tui/budget.py) pays, so:

- a plot owns its data and builds its figure only when that data or its size
  changed; every build starts from a cleared figure (plotext's build rescales a
  figure's data in place for a log axis, so building twice from the same data
  is wrong, not only slow);
- plotext gets at most two points per character column (one at the budget's
  coarse setting): each column's lowest and highest value, in the order they
  came, so a spike keeps its extreme however long the run;
- the figure goes from plotext's character matrix straight to Textual strips,
  without the ANSI text and its parsing in between.

Histories reach 40,000 points; a build's cost follows the plot's size, not the run's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The colour table only: figures are made through textual_plotext's Plot.
from plotext._utility import colors_to_ansi
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual_plotext import PlotextPlot
from textual_plotext.plot import Plot as Figure

from core.state import RunState

EMA = 0.15  # weight of the newest plotted point when smoothing
MIN_SIZE = (12, 5)  # below this a figure has no room for its axes: the plot stays blank


@dataclass(frozen=True)
class ChartOptions:
    """What the chart keys toggle: smoothing, a log-scaled loss, the whole run or this stage."""

    smooth: bool = False
    log_scale: bool = False
    this_stage: bool = False

    def label(self) -> str:
        parts = ["EMA" if self.smooth else "", "log" if self.log_scale else "", "this stage" if self.this_stage else ""]
        return " · ".join(p for p in parts if p)


# --- what gets plotted ------------------------------------------------------------


def _finite(values: Sequence[float], first_x: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(first_x, first_x + len(y), dtype=np.float64)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def envelope(
    values: Sequence[float], first_x: int, columns: int, per_column: int = 2
) -> tuple[list[float], list[float]]:
    """At most ``per_column`` points for each of ``columns`` buckets of ``values`` (x from
    first_x): the bucket's lowest and highest, in the order they came (one point, the
    extreme furthest from the bucket's mean, with ``per_column`` 1). Non-finite values
    are dropped. Every bucket keeps its extremes, so no spike is averaged away."""
    x, y = _finite(values, first_x)
    n, columns = len(y), max(columns, 1)
    if n <= columns * per_column:
        return x.tolist(), y.tolist()
    starts = np.linspace(0, n, columns + 1).astype(np.int64)[:-1]
    bucket = np.repeat(np.arange(columns), np.diff(np.append(starts, n)))
    lo = _first_where(y == np.minimum.reduceat(y, starts)[bucket], bucket, columns)
    hi = _first_where(y == np.maximum.reduceat(y, starts)[bucket], bucket, columns)
    if per_column == 1:
        means = np.add.reduceat(y, starts) / np.diff(np.append(starts, n))
        picked = np.where(np.abs(y[hi] - means) >= np.abs(y[lo] - means), hi, lo)
    else:
        picked = np.sort(np.stack([lo, hi], axis=1), axis=1).ravel()
    return x[picked].tolist(), y[picked].tolist()


def _first_where(hit: np.ndarray, bucket: np.ndarray, columns: int) -> np.ndarray:
    """For each bucket, the index of its first True in ``hit`` (every bucket has one)."""
    at = np.flatnonzero(hit)
    _, first = np.unique(bucket[at], return_index=True)
    assert len(first) == columns
    return at[first]


def bucket_means(values: Sequence[float], first_x: int, buckets: int) -> tuple[list[float], list[float]]:
    """Means of ``buckets`` equal runs of ``values``: the smoothed curve's input."""
    x, y = _finite(values, first_x)
    if len(y) <= buckets:
        return x.tolist(), y.tolist()
    starts = np.linspace(0, len(y), buckets + 1).astype(np.int64)[:-1]
    counts = np.diff(np.append(starts, len(y)))
    return (np.add.reduceat(x, starts) / counts).tolist(), (np.add.reduceat(y, starts) / counts).tolist()


def ema(values: list[float], weight: float = EMA) -> list[float]:
    out, level = [], values[0] if values else 0.0
    for v in values:
        level = weight * v + (1 - weight) * level
        out.append(level)
    return out


# --- from plotext's matrix to strips --------------------------------------------------

_STYLES: dict[tuple[Any, Any, Any], Style] = {}


def _style(foreground: Any, style: Any, background: Any) -> Style:
    """The Rich style of one cell's plotext colours (a handful per figure, cached)."""
    key = (foreground, style, background)
    found = _STYLES.get(key)
    if found is None:
        text = Text.from_ansi(colors_to_ansi(foreground, style, background) + " ")
        found = Style.combine(s.style if isinstance(s.style, Style) else Style.parse(s.style) for s in text.spans)
        _STYLES[key] = found
    return found


def figure_strips(figure: Figure) -> list[Strip]:
    """Build ``figure`` and return its rows as strips, top row first (plotext's own build,
    less its last step, which joins the matrix into ANSI text)."""
    fig: Any = figure  # the figure's internals are not in textual_plotext's type stubs
    fig._set_sizes()
    fig._build_matrix()
    m = fig.monitor.matrix
    strips = []
    for row in reversed(range(m.rows)):
        markers, fg, st, bg = m.marker[row], m.fullground[row], m.style[row], m.background[row]
        colours = list(zip(fg, st, bg, strict=True))
        segments, start = [], 0
        for col in range(1, m.cols + 1):
            if col == m.cols or colours[col] != colours[start]:
                segments.append(Segment("".join(markers[start:col]), _style(*colours[start])))
                start = col
        strips.append(Strip(segments, m.cols))
    return strips


# --- the plots ---------------------------------------------------------------------


class Plot(PlotextPlot):
    """A plot that owns its data: `draw` puts it on a cleared figure, and the figure is
    built again only when `invalidate` said the data changed, or the size or theme did."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_column = 2  # points per character column; the budget lowers it to 1
        self._version = 0
        self._built: tuple[object, ...] | None = None
        self._strips: list[Strip] = []
        self.builds = 0  # figures built: the budget's tests count them

    def draw(self, plt: Figure) -> None:
        """Plot this widget's data (title, series, marks) on the cleared figure."""

    def invalidate(self) -> None:
        """The data changed: build again at the next render (only if the plot is shown)."""
        self._version += 1
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        key = (self._version, width, height, self.app.theme, self.per_column)
        if key != self._built:
            self._built = key
            self._strips = self._build(width, height)
        if y < len(self._strips):
            return self._strips[y].crop_extend(0, width, self.rich_style)
        return Strip.blank(width, self.rich_style)

    def _build(self, width: int, height: int) -> list[Strip]:
        if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
            return []
        self.builds += 1
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.draw(plt)
        plt.plotsize(width, height)
        plt._set_size(width, height)  # as textual_plotext does: plotsize alone does not always take
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        return figure_strips(plt)

    @property
    def text(self) -> str:
        """What the plot shows now, as plain text (built first if it is out of date)."""
        self.render_line(0)
        return "\n".join(strip.text for strip in self._strips)


class LossCurve(Plot):
    """Loss of every iteration, with the stage switches marked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = ChartOptions()
        self._state: RunState | None = None
        self._shown: tuple[object, ...] = ()

    def show(self, state: RunState, options: ChartOptions) -> None:
        """Plot ``state``'s losses: the figure is built again only if they moved."""
        key = (id(state.started), state.first_step, len(state.iter_losses), len(state.stage_steps), options)
        self._state, self.options = state, options
        if key != self._shown:
            self._shown = key
            self.invalidate()

    def draw(self, plt: Figure) -> None:
        opts, state = self.options, self._state
        shown = opts.label()
        plt.title("iteration loss" + (f" ({shown})" if shown else ""))
        if state is None:
            return
        first, losses = state.first_step, state.iter_losses
        if opts.this_stage and state.stage_steps:
            start = max(state.stage_steps[-1][0] + 1 - first, 0)
            first, losses = first + start, losses[start:]
        if not len(losses):
            return
        columns = max(self.size.width - 6, 10)  # the y axis's labels take a few columns
        if opts.smooth:
            x, y = bucket_means(losses, first, columns * self.per_column)
            y = ema(y)
        else:
            x, y = envelope(losses, first, columns, self.per_column)
        if opts.log_scale:
            kept = [(a, b) for a, b in zip(x, y, strict=True) if b > 0]
            x, y = [a for a, _ in kept], [b for _, b in kept]
            plt.yscale("log")
        if x:
            plt.plot(x, y, marker="braille")
            for step, stage in state.stage_steps[1:]:
                if step + 0.5 >= x[0]:
                    plt.vertical_line(step + 0.5)
                    plt.text(f"S{stage}", step + 0.5, max(y))


class EpochCurve(Plot):
    """Train and test accuracy (or loss) per epoch."""

    def __init__(self, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric  # "acc" or "loss"
        self._state: RunState | None = None
        self._shown: tuple[object, ...] = ()

    def show(self, state: RunState) -> None:
        key = (id(state.started), len(state.epochs), state.epochs[-1] if state.epochs else None)
        self._state = state
        if key != self._shown:
            self._shown = key
            self.invalidate()

    def draw(self, plt: Figure) -> None:
        plt.title("accuracy % per epoch" if self.metric == "acc" else "loss per epoch")
        epochs = self._state.epochs if self._state is not None else []
        if epochs:
            x = [e.epoch for e in epochs]
            train = [e.train_acc if self.metric == "acc" else e.train_loss for e in epochs]
            test = [e.test_acc if self.metric == "acc" else e.test_loss for e in epochs]
            plt.plot(x, train, label="train", marker="braille")
            plt.plot(x, test, label="test", marker="braille")
            if len(x) <= 10:
                plt.xticks([float(v) for v in x])  # whole epochs, not 1.25


class GroupCurve(Plot):
    """Each optimizer group's learning rate (or gradient norm) at every loss line."""

    def __init__(self, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric  # "lr" or "grad"
        self._state: RunState | None = None
        self._shown: tuple[object, ...] = ()

    def show(self, state: RunState) -> None:
        key = (id(state.started), len(state.group_curves), len(state.stage_groups))
        self._state = state
        if key != self._shown:
            self._shown = key
            self.invalidate()

    def draw(self, plt: Figure) -> None:
        plt.title("learning rate per group" if self.metric == "lr" else "gradient norm per group")
        state = self._state
        if state is None:
            return
        series: dict[str, tuple[list[float], list[float]]] = {}
        for step, stage, lrs, norms in state.group_curves:  # one line per group name, across stages
            values = lrs if self.metric == "lr" else norms
            for name, value in zip(state.stage_groups.get(stage, ()), values, strict=False):
                if value > 0 and np.isfinite(value):
                    xs, ys = series.setdefault(name, ([], []))
                    xs.append(float(step))
                    ys.append(float(value))
        if series:
            plt.yscale("log")
            columns = max(self.size.width - 8, 10)
            for name, (xs, ys) in series.items():
                if len(xs) > columns * self.per_column:
                    x, y = envelope(ys, 0, columns, self.per_column)
                    xs, ys = [xs[int(i)] for i in x], y
                plt.plot(xs, ys, label=name, marker="braille")
