"""Live plotext curves: every iteration's loss, and per-epoch accuracy and loss.

Histories reach 40,000 points; each redraw plots at most a few hundred bucket
means, so its cost does not grow with the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from core.state import RunState

MAX_POINTS = 300


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

    def update_from(self, state: RunState) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("iteration loss")
        if len(state.iter_losses):
            x, y = downsample(state.iter_losses, state.first_step, max(self.size.width * 2, 50))
            if x:
                plt.plot(x, y, marker="braille")
            for step, stage in state.stage_steps[1:]:
                plt.vertical_line(step + 0.5)
                plt.text(f"S{stage}", step + 0.5, max(y) if y else 0)
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
