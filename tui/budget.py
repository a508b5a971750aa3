"""The dashboard's own cost, held to a budget while a run trains.

In one process with the trainer, every millisecond the UI thread holds the GIL
is a millisecond a dispatch-bound training step waits (on a GPU every step is
like that). So the UI measures its own CPU time (`time.thread_time()` of its
thread) per wall second and adapts:

- how often: each panel has a base period; all periods are multiplied by one
  factor that grows when the measured share is over the budget and shrinks when
  it is well under;
- which: panels marked optional (the machine, the learning-rate curve) draw four
  times less often again while the factor is high;
- at what resolution: plots take one point per character column instead of two
  once the factor is high;
- but never staler than `STALEST_S`: a panel whose content moved is drawn within
  that whatever the factor, so a view never lags the run by minutes.

A change of state (paused, a new stage, evaluating, stopped, an error) is never
held back: the caller redraws at once whatever the budget says. While nothing
trains (loading, paused, ended) the budget does not apply.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

BUDGET = 0.02  # share of the wall time the UI thread may take on the default view
CURVES_BUDGET = 0.05  # on the curves view, which is mostly plots
# Where torch's threads hold every core of a CPU run, each UI millisecond preempts one of
# them and the others wait for it at the next barrier: the run lost about three times the
# UI's own share there (bench/README.md), so the budget is this much of the usual.
CROWDED = 0.4
WINDOW_S = 2.0  # the share is measured over this much wall time, and adapted at most this often
MAX_FACTOR = 16.0  # periods never grow beyond 16x their base
# The steady state is held between these shares of the budget, so that the bursts no
# period can hold back (a new stage, an epoch's end) keep the whole run within it.
AIM_LOW, AIM_HIGH = 0.35, 0.7
HIGH_FACTOR = 4.0  # from here, optional panels draw four times less often and plots draw coarser
OPTIONAL_SLOWER = 4.0
# Where the redraws no period holds back (changes of state, an epoch's end) already spend
# the budget, the factor sits at its top: this keeps every panel within a glance of the run.
STALEST_S = 15.0


def share_for(curves: bool, crowded: bool) -> float:
    """The budget for a view (the curves view, or another) and a run whose torch threads
    hold every core (``crowded``) or not."""
    return (CURVES_BUDGET if curves else BUDGET) * (CROWDED if crowded else 1.0)


@dataclass
class Cadence:
    """One panel's schedule: its base period (s) at factor 1, and when it last drew."""

    base_s: float
    optional: bool = False
    drawn_at: float = float("-inf")


class RenderBudget:
    """Measures the UI thread's share of the wall time and scales the panels' periods.

    ``clock`` and ``cpu`` are injectable so the logic can be tested with fake time;
    ``cpu`` must be the CPU time of the thread that calls `observe`.
    """

    def __init__(
        self,
        budget: float = BUDGET,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self.budget = budget
        self.clock = clock
        self.cpu = cpu
        self.factor = 1.0
        self.top_factor = 1.0  # the highest it went while a run trained (the factor rests with the run)
        self.share = 0.0  # over the last full window
        self.active = False  # a run is training: the budget applies
        self._samples: deque[tuple[float, float]] = deque()
        self.spent = 0.0  # UI CPU seconds, and wall seconds, while the budget applied (whole run)
        self.spent_over = 0.0
        self._adapted_at = clock()
        self.cadences: dict[str, Cadence] = {}

    def add(self, panel: str, base_s: float, optional: bool = False) -> None:
        self.cadences[panel] = Cadence(base_s, optional)

    # --- measuring -------------------------------------------------------------
    def observe(self) -> None:
        """Take a reading (call it from the UI thread, a few times a second) and adapt."""
        now, cpu = self.clock(), self.cpu()
        if self.active and self._samples:
            last_now, last_cpu = self._samples[-1]
            self.spent += cpu - last_cpu
            self.spent_over += now - last_now
        self._samples.append((now, cpu))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()
        then, cpu_then = self._samples[0]
        if now - then < WINDOW_S:
            return  # not a full window yet
        self.share = (cpu - cpu_then) / (now - then)
        if now - self._adapted_at < WINDOW_S:
            return  # the last change has not been measured yet: adapting again would overshoot
        if not self.active:
            self.factor = 1.0
        elif self.share > AIM_HIGH * self.budget:
            # Proportional, so a dashboard 5x over its budget is back under within a window or two.
            self.factor = min(self.factor * max(1.25, self.share / (AIM_HIGH * self.budget)), MAX_FACTOR)
            self.top_factor = max(self.top_factor, self.factor)
        elif self.share < AIM_LOW * self.budget:
            self.factor = max(self.factor / 1.25, 1.0)
        else:
            return
        self._adapted_at = now

    def set_active(self, active: bool) -> None:
        """A run trains (the budget applies) or not (every panel draws when it changes)."""
        if active != self.active:
            self.active = active
            self._samples.clear()  # what the UI spent before (building its screens) is not a redraw's cost
            self._adapted_at = self.clock()
            if not active:
                self.factor = 1.0

    # --- deciding -----------------------------------------------------------------
    @property
    def high(self) -> bool:
        return self.active and self.factor >= HIGH_FACTOR

    def due(self, panel: str) -> bool:
        """Whether ``panel`` may redraw now (its content changed: the caller knows)."""
        cadence = self.cadences[panel]
        if not self.active:
            return True
        return self.clock() - cadence.drawn_at >= self.period(panel)

    def rested(self, panel: str) -> bool:
        """Whether ``panel`` last drew at least its base period ago."""
        cadence = self.cadences[panel]
        return self.clock() - cadence.drawn_at >= cadence.base_s

    def drawn(self, panel: str) -> None:
        self.cadences[panel].drawn_at = self.clock()

    def period(self, panel: str) -> float:
        """The panel's period now, in seconds (shown in view 3)."""
        cadence = self.cadences[panel]
        if not self.active:
            return cadence.base_s
        stretched = cadence.base_s * self.factor * (OPTIONAL_SLOWER if cadence.optional and self.high else 1.0)
        return min(stretched, max(cadence.base_s, STALEST_S))

    @property
    def points_per_column(self) -> int:
        return 1 if self.high else 2
