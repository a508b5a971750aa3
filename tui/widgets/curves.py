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

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The colour table only: figures are made through textual_plotext's Plot.
from plotext._utility import colors_to_ansi
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual_plotext import PlotextPlot
from textual_plotext.plot import Plot as Figure

from core.state import RunState, lr_text

EMA = 0.15  # weight of the newest plotted point when smoothing
MIN_SIZE = (20, 7)  # below this a figure has no room for its title, axes and 3 rows of data: it is hidden


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


# --- axes: whole ticks, in order, that never collide ------------------------------------

SERIES_COLOURS = ((0, 130, 200), (245, 130, 48), (60, 180, 75), (230, 25, 75), (145, 30, 180), (70, 190, 190))


def nice_step(span: float, count: int) -> float:
    """The smallest 1, 2 or 5 times a power of ten that cuts ``span`` into at most ``count`` parts."""
    raw = span / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def linear_ticks(lo: float, hi: float, count: int, whole: bool = False) -> list[float]:
    """Ticks at multiples of a nice step within [lo, hi]; whole numbers only with ``whole``."""
    step = nice_step(hi - lo, count)
    if whole:
        step = max(step, 1.0)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Ticks (in value, not log) for a log axis over [lo, hi] (lo > 0): powers of ten, or 1-2-5
    steps when the axis spans less than two decades, thinned to at most ``count``."""
    found: list[float] = []
    for wanted in ((1,), (1, 2, 5)):
        found = [m * 10.0**k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for m in wanted if lo * (1 - 1e-9) <= m * 10.0**k <= hi * (1 + 1e-9)]
        if len(found) >= 2:
            break
    if len(found) < 2:
        found = [v for v in linear_ticks(lo, hi, count) if v > 0]
    every = -(-len(found) // max(count, 1))
    return found[::every]


def tick_label(value: float, step: float) -> str:
    """A tick's label: as many decimals as the step needs; small rates as 1e-3 or 2.5e-4."""
    if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e6):
        return lr_text(value)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


def labels_for(ticks: list[float], log: bool = False) -> list[str]:
    """Labels that tell every tick apart (more digits until they do)."""
    if len(ticks) < 2:
        return [tick_label(t, abs(t) or 1.0) for t in ticks]
    step = min(b - a for a, b in itertools.pairwise(ticks))
    step = step if not log else min(ticks)
    for extra in range(0, 6):
        labels = [tick_label(t, step / 10**extra) for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def padded(lo: float, hi: float, log: bool) -> tuple[float, float]:
    """An axis's range: the data's, or around a constant (so the axis still reads low to high)."""
    if hi > lo:
        return lo, hi
    if log:
        return lo / 10**0.5, hi * 10**0.5
    pad = abs(lo) * 0.5 or 1.0
    return lo - pad, hi + pad


def step_shape(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """A value that holds until it changes (a learning rate): drawn as a step, not a slope."""
    out_x, out_y = xs[:1], ys[:1]
    for x, y in zip(xs[1:], ys[1:], strict=True):
        if y != out_y[-1]:
            out_x.append(x)
            out_y.append(out_y[-1])
        out_x.append(x)
        out_y.append(y)
    return out_x, out_y


# --- the plots ---------------------------------------------------------------------


@dataclass
class Series:
    label: str
    colour: tuple[int, int, int]


class Plot(PlotextPlot):
    """A plot that owns its data: `draw` puts it on a cleared figure, and the figure is
    built again only when `invalidate` said the data changed, or the size or theme did.

    A plot that draws through `line` gets its own axes (whole x ticks, y ticks from low to
    high, labels apart) and its own title row, with the legend beside the title rather
    than over the data. Below MIN_SIZE a plot is hidden: nothing half-drawn."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_column = 2  # points per character column; the budget lowers it to 1
        self._version = 0
        self._built: tuple[object, ...] | None = None
        self._strips: list[Strip] = []
        self.builds = 0  # figures built: the budget's tests count them
        self.titles: tuple[str, ...] = ()  # the longest title that fits is shown
        self.log_y = False
        self.whole_x = True  # x counts steps or epochs
        self.legend_row = False  # a legend that does not fit beside the title gets a row of its own
        self._series: list[Series] = []
        self._extent: list[float] = []  # x_lo, x_hi, y_lo, y_hi of what `line` drew (y in log10 for a log axis)
        self._state: RunState | None = None
        self._shown: tuple[object, ...] = ()

    def follow(self, state: RunState, key: tuple[object, ...]) -> None:
        """Plot ``state``; ``key`` names what `draw` reads of it: the figure is built again
        only when that moved."""
        self._state = state
        if key != self._shown:
            self._shown = key
            self.invalidate()

    def draw(self, plt: Figure) -> None:
        """Plot this widget's data (titles, `line`s, marks) on the cleared figure."""

    def line(self, plt: Figure, xs: Sequence[float], ys: Sequence[float], label: str = "") -> None:
        """One series, in the next colour; on a log axis, values <= 0 are left out."""
        if self.log_y:
            kept = [(x, math.log10(y)) for x, y in zip(xs, ys, strict=True) if y > 0]
            xs, ys = [x for x, _ in kept], [y for _, y in kept]
        if not xs:
            return
        colour = SERIES_COLOURS[len(self._series) % len(SERIES_COLOURS)]
        if label:
            self._series.append(Series(label, colour))
        plt.plot(list(xs), list(ys), marker="braille", color=colour)
        lo_hi = [min(xs), max(xs), min(ys), max(ys)]
        e = self._extent
        self._extent = lo_hi if not e else [min(e[0], lo_hi[0]), max(e[1], lo_hi[1]),
                                          min(e[2], lo_hi[2]), max(e[3], lo_hi[3])]

    def y_range(self) -> tuple[float, float] | None:
        """The y axis's range as drawn (log10 of it on a log axis): marks are placed in it."""
        if not self._extent:
            return None
        lo, hi = self._extent[2], self._extent[3]
        if self.log_y:
            lo, hi = padded(10**lo, 10**hi, True)
            return math.log10(lo), math.log10(hi)
        return padded(lo, hi, False)

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
        try:
            return self._figure(width, height)
        except (ArithmeticError, ValueError):  # values a run directory claims that no axis can hold
            return [Strip([Segment("values out of any plottable range", self.rich_style)], width)]

    def _figure(self, width: int, height: int) -> list[Strip]:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self._series, self._extent, self.log_y = [], [], False
        self.draw(plt)
        own = bool(self.titles)  # the title row is this widget's (and the legend's); the figure takes the rest
        heads = self._title_strips(width) if own else []
        rows = height - len(heads)
        if self._extent:
            self._axes(plt, width, rows)
        plt.plotsize(width, rows)
        plt._set_size(width, rows)  # as textual_plotext does: plotsize alone does not always take
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        strips = figure_strips(plt)
        return [*heads, *strips]

    def _axes(self, plt: Figure, width: int, rows: int) -> None:
        """Ticks that plotext would place at 1.25 or upside down, placed here instead."""
        x_lo, x_hi, _, _ = self._extent
        y_lo, y_hi = self.y_range() or (0.0, 1.0)
        values = (10**y_lo, 10**y_hi) if self.log_y else (y_lo, y_hi)
        y_count = max(2, (rows - 3) // 2)  # the box and the x labels take 3 rows; a label every other row
        y_ticks = log_ticks(*values, y_count) if self.log_y else linear_ticks(*values, y_count)
        y_labels = labels_for(y_ticks, self.log_y)
        if self.log_y:
            y_ticks = [math.log10(v) for v in y_ticks]
        plt.ylim(y_lo, y_hi)
        plt.yticks(y_ticks, y_labels)
        if x_hi <= x_lo:  # one epoch (or step): the axis shows it alone, not the 0 before it
            x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
        label_width = max(len(tick_label(x_lo, 1.0)), len(tick_label(x_hi, 1.0)))
        inner = width - max(len(label) for label in y_labels) - 3
        x_ticks = linear_ticks(x_lo, x_hi, max(2, inner // (label_width + 3)), whole=self.whole_x)
        plt.xlim(x_lo, x_hi)
        plt.xticks(x_ticks, labels_for(x_ticks))

    def _title_strips(self, width: int) -> list[Strip]:
        """The longest title that fits, with the legend when it fits too: whole words only.
        Where the legend does not fit beside a title, a plot that names several runs
        (``legend_row``) gives it a row of its own, each label cut to its end; others drop it."""
        base = self.rich_style
        legend = self._legend(base)
        # A column free at each end, so that side-by-side charts' heads never run together.
        legend_width = sum(len(seg.text) for seg in legend) + (2 if legend else 0)
        title = next((t for t in self.titles if len(t) + legend_width <= width), None)
        if title is not None:
            return [self._centred([Segment(title, base + Style(bold=True)), *legend], width)]
        title = next((t for t in self.titles if len(t) <= width), "")
        head = self._centred([Segment(title, base + Style(bold=True))], width)
        if not self.legend_row or not self._series:
            return [head]
        n = len(self._series)
        keep = max(4, (width - 5 * n) // n)  # "  ━━ " and the label's last characters
        return [head, self._centred(self._legend(base, keep), width)]

    def _legend(self, base: Style, keep: int = 0) -> list[Segment]:
        legend: list[Segment] = []
        for s in self._series:
            label = s.label[-keep:] if keep and len(s.label) > keep else s.label
            legend += [Segment("  ━━ ", base + Style(color=Color.from_rgb(*s.colour), bold=True)),
                       Segment(label, base)]
        return legend

    def _centred(self, segments: list[Segment], width: int) -> Strip:
        base = self.rich_style
        used = sum(len(seg.text) for seg in segments)
        left = max((width - used) // 2, 0)
        return Strip([Segment(" " * left, base), *segments], left + used).crop_extend(0, width, base)

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

    def show(self, state: RunState, options: ChartOptions) -> None:
        self.options = options
        self.follow(state, (id(state.started), state.first_step, len(state.iter_losses), len(state.stage_steps),
                            options))

    def y_range(self) -> tuple[float, float] | None:
        """With stage switches marked, a row of headroom: the marks' labels sit above the losses."""
        found = super().y_range()
        if found is None or self._state is None or len(self._state.stage_steps) < 2:
            return found
        lo, hi = found
        return lo, hi + (hi - lo) / max(self.size.height - 4, 2)  # the box, the title and the x labels take 4 rows

    def draw(self, plt: Figure) -> None:
        opts, state = self.options, self._state
        first, losses = (state.first_step, state.iter_losses) if state is not None else (0, [])
        shown = [part for part in ("EMA" if opts.smooth else "", "log" if opts.log_scale else "") if part]
        if state is not None and opts.this_stage and state.stage_steps:
            # This stage's losses; at a stage's very start (none yet), the last stage that has some.
            step, stage = next(((s, n) for s, n in reversed(state.stage_steps) if s + 1 - first < len(losses)),
                               state.stage_steps[0])
            start = max(step + 1 - first, 0)
            first, losses = first + start, losses[start:]
            shown.append(f"stage {stage}")
        label = " · ".join(shown)
        self.titles = ("iteration loss" + (f" ({label})" if label else ""), "iteration loss", "loss")
        if state is None or not len(losses):
            return
        columns = max(self.size.width - 6, 10)  # the y axis's labels take a few columns
        if opts.smooth:
            x, y = bucket_means(losses, first, columns * self.per_column)
            y = ema(y)
        else:
            x, y = envelope(losses, first, columns, self.per_column)
        self.log_y = opts.log_scale
        self.line(plt, x, y)
        y_range = self.y_range()
        if y_range is not None and self._extent:
            for step, stage in state.stage_steps[1:]:
                if self._extent[0] <= step + 0.5 <= self._extent[1]:
                    plt.vertical_line(step + 0.5)
                    plt.text(f"S{stage}", step + 0.5, y_range[1])


class EpochCurve(Plot):
    """Train and test accuracy (or loss) per epoch."""

    def __init__(self, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric  # "acc" or "loss"

    def show(self, state: RunState) -> None:
        self.follow(state, (id(state.started), len(state.epochs), state.epochs[-1] if state.epochs else None))

    def draw(self, plt: Figure) -> None:
        self.titles = (("accuracy % per epoch", "accuracy %", "acc %") if self.metric == "acc"
                       else ("loss per epoch", "epoch loss", "loss"))
        epochs = self._state.epochs if self._state is not None else []
        if epochs:
            x = [float(e.epoch) for e in epochs]
            train = [e.train_acc if self.metric == "acc" else e.train_loss for e in epochs]
            test = [e.test_acc if self.metric == "acc" else e.test_loss for e in epochs]
            self.line(plt, x, train, "train")
            self.line(plt, x, test, "test")


class GroupCurve(Plot):
    """Each optimizer group's learning rate (or gradient norm) at every loss line."""

    def __init__(self, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric  # "lr" or "grad"

    def show(self, state: RunState) -> None:
        self.follow(state, (id(state.started), len(state.group_curves), len(state.stage_groups)))

    def draw(self, plt: Figure) -> None:
        self.titles = (("learning rate per group", "learning rate", "lr") if self.metric == "lr"
                       else ("gradient norm per group", "gradient norm", "grad norm"))
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
        self.log_y = True
        columns = max(self.size.width - 8, 10)
        for name, (xs, ys) in series.items():
            if len(xs) > columns * self.per_column:
                x, y = envelope(ys, 0, columns, self.per_column)
                xs, ys = [xs[int(i)] for i in x], y
            if self.metric == "lr":
                xs, ys = step_shape(xs, ys)  # a rate holds until it is changed
            self.line(plt, xs, ys, name)
