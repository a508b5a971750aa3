"""Live plotext curves: every iteration's loss, per-epoch accuracy and loss, and each
optimizer group's learning rate and gradient norm.

Histories reach 40,000 points; each redraw plots at most a few hundred bucket
means, so its cost does not grow with the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from core.state import RunState

MAX_POINTS = 300
EMA = 0.15  # weight of the newest plotted point when smoothing


@dataclass(frozen=True)
class ChartOptions:
    """What the chart keys toggle: smoothing, a log-scaled loss, the whole run or this stage."""

    smooth: bool = False
    log_scale: bool = False
    this_stage: bool = False

    def label(self) -> str:
        parts = ["EMA" if self.smooth else "", "log" if self.log_scale else "", "this stage" if self.this_stage else ""]
        return " · ".join(p for p in parts if p)


def downsample(values: Sequence[float], first_x: int, buckets: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """Bucket means of ``values`` (x starting at first_x); non-finite values are dropped."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(first_x, first_x + len(y), dtype=np.float64)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(y) <= buckets:
        return x.tolist(), y.tolist()
    edges = np.linspace(0, len(y), buckets + 1).astype(np.int64)[:-1]
    counts = np.diff(np.append(edges, len(y)))
    return (np.add.reduceat(x, edges) / counts).tolist(), (np.add.reduceat(y, edges) / counts).tolist()


def ema(values: list[float], weight: float = EMA) -> list[float]:
    out, level = [], values[0] if values else 0.0
    for v in values:
        level = weight * v + (1 - weight) * level
        out.append(level)
    return out


class CachedPlot(PlotextPlot):
    """A plot that rebuilds its picture only when its data or size changed.

    PlotextPlot builds the whole figure on every render, and a screen switch or a
    resize renders every widget: that is the cost a key press would pay.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._data_version = 0
        self._picture: tuple[object, RenderResult] | None = None

    def replot(self) -> None:
        self._data_version += 1
        self.refresh()

    def render(self) -> RenderResult:
        key = (self._data_version, self.size, self.app.theme)
        if self._picture is None or self._picture[0] != key:
            self._picture = (key, super().render())
        return self._picture[1]


class LossCurve(CachedPlot):
    """Loss of every iteration, with the stage switches marked."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.options = ChartOptions()
        self._state: RunState | None = None

    def on_resize(self) -> None:
        # The bucket count follows the width: a plot laid out again is sampled again.
        if self._state is not None:
            self.update_from(self._state)

    def update_from(self, state: RunState) -> None:
        self._state = state
        plt, opts = self.plt, self.options
        plt.clear_data()
        plt.clear_figure()
        shown = opts.label()
        plt.title("iteration loss" + (f" ({shown})" if shown else ""))
        first, losses = state.first_step, state.iter_losses
        if opts.this_stage and state.stage_steps:
            start = max(state.stage_steps[-1][0] + 1 - first, 0)
            first, losses = first + start, losses[start:]
        if len(losses):
            x, y = downsample(losses, first, max(self.size.width * 2, 50))
            if opts.log_scale:
                kept = [(a, b) for a, b in zip(x, y, strict=True) if b > 0]
                x, y = [a for a, _ in kept], [b for _, b in kept]
                plt.yscale("log")
            if opts.smooth and y:
                y = ema(y)
            if x:
                plt.plot(x, y, marker="braille")
                for step, stage in state.stage_steps[1:]:
                    if step + 0.5 >= x[0]:
                        plt.vertical_line(step + 0.5)
                        plt.text(f"S{stage}", step + 0.5, max(y))
        self.replot()


class EpochCurve(CachedPlot):
    """Train and test accuracy (or loss) per epoch."""

    def __init__(self, metric: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.metric = metric  # "acc" or "loss"

    def update_from(self, state: RunState) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("accuracy % per epoch" if self.metric == "acc" else "loss per epoch")
        if state.epochs:
            x = [e.epoch for e in state.epochs]
            train = [e.train_acc if self.metric == "acc" else e.train_loss for e in state.epochs]
            test = [e.test_acc if self.metric == "acc" else e.test_loss for e in state.epochs]
            plt.plot(x, train, label="train", marker="braille")
            plt.plot(x, test, label="test", marker="braille")
            if len(x) <= 10:
                plt.xticks([float(v) for v in x])  # whole epochs, not 1.25
        self.replot()


class GroupCurve(CachedPlot):
    """Each optimizer group's learning rate (or gradient norm) at every loss line."""

    def __init__(self, metric: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.metric = metric  # "lr" or "grad"

    def update_from(self, state: RunState) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("learning rate per group" if self.metric == "lr" else "gradient norm per group")
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
            for name, (xs, ys) in series.items():
                plt.plot(xs, ys, label=name, marker="braille")
        self.replot()
