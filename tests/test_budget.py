"""The dashboard's render budget, its downsampling and its event intake, with fake clocks:
a slow render lowers the rate, a fast one raises it back, a change of state always
shows, and no spike is averaged away."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.events import (
    BatchLogged,
    EpochEnded,
    Evaluating,
    Event,
    IterLosses,
    Paused,
    Progress,
    StageStarted,
    SystemSample,
)
from tests.conftest import tiny_config
from tests.helpers import until
from tests.scripted import ScriptedTrainer, events
from tui.app import make_app
from tui.budget import AIM_HIGH, AIM_LOW, HIGH_FACTOR, MAX_FACTOR, STALEST_S, WINDOW_S, RenderBudget
from tui.intake import Intake, urgent
from tui.links import InProcessLink
from tui.widgets.curves import EpochCurve, bucket_means, envelope
from tui.widgets.loss_log import LossLog


class FakeTime:
    """A wall clock and a UI thread's CPU clock that the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, seconds: float, share: float, budget: RenderBudget, tick: float = 0.25) -> None:
        """``seconds`` of wall time during which the UI thread uses ``share`` of it."""
        for _ in range(round(seconds / tick)):
            self.wall += tick
            self.cpu += tick * share
            budget.observe()


def budget_with(time: FakeTime) -> RenderBudget:
    b = RenderBudget(0.02, clock=lambda: time.wall, cpu=lambda: time.cpu)
    b.add("stage", 0.5)
    b.add("loss", 2.0)
    b.add("hardware", 2.0, optional=True)
    b.set_active(True)
    return b


def test_a_slow_dashboard_draws_less_often_until_it_is_within_its_budget() -> None:
    t = FakeTime()
    b = budget_with(t)
    t.run(2 * WINDOW_S, 0.10, b)  # 5x over a 2% budget, 7x over the 1.4% it aims at
    assert b.factor == pytest.approx(0.10 / (AIM_HIGH * 0.02)) and b.period("loss") == pytest.approx(2 * b.factor)
    # The cost per second falls as the periods grow: model a cost proportional to the rate.
    for _ in range(20):
        t.run(WINDOW_S, 0.10 / b.factor, b)
    assert AIM_LOW * 0.02 <= b.share <= AIM_HIGH * 0.02 + 1e-9 and 1.0 < b.factor <= MAX_FACTOR


def test_a_fast_dashboard_comes_back_to_its_base_rate() -> None:
    t = FakeTime()
    b = budget_with(t)
    t.run(2 * WINDOW_S, 0.20, b)
    assert b.factor > HIGH_FACTOR and b.high
    assert b.period("stage") < b.period("loss") == STALEST_S  # the factor stretches every period, up to a glance
    b.factor = HIGH_FACTOR
    assert b.period("hardware") == min(4 * b.period("loss"), STALEST_S) > b.period("loss")  # optional panels wait longer
    assert b.points_per_column == 1
    t.run(60, 0.002, b)  # a tenth of the budget
    assert b.factor == 1.0 and not b.high and b.points_per_column == 2


def test_the_factor_never_passes_its_ceiling_and_waits_for_a_full_window() -> None:
    t = FakeTime()
    b = budget_with(t)
    t.run(WINDOW_S / 2, 1.0, b)
    assert b.factor == 1.0  # half a window: no reading yet
    t.run(120, 1.0, b)
    assert b.factor == MAX_FACTOR


def test_panels_are_due_after_their_period_times_the_factor() -> None:
    t = FakeTime()
    b = budget_with(t)
    b.drawn("loss")
    t.wall += 1.9
    assert not b.due("loss")
    t.wall += 0.2
    assert b.due("loss")
    b.factor = 3.0
    b.drawn("loss")
    t.wall += 5.9
    assert not b.due("loss")
    t.wall += 0.2
    assert b.due("loss")


def test_no_panel_that_moved_waits_longer_than_a_glance_whatever_the_factor() -> None:
    t = FakeTime()
    b = budget_with(t)
    t.run(120, 1.0, b)  # fifty times the budget: the factor at its ceiling
    assert b.factor == MAX_FACTOR and b.period("stage") == 0.5 * MAX_FACTOR < STALEST_S
    assert b.period("loss") == b.period("hardware") == STALEST_S  # not 32 s and 128 s
    b.drawn("loss")
    t.wall += STALEST_S - 0.1
    assert not b.due("loss")
    t.wall += 0.2
    assert b.due("loss")


def test_no_budget_while_nothing_trains() -> None:
    t = FakeTime()
    b = budget_with(t)
    t.run(2 * WINDOW_S, 0.5, b)
    assert b.factor > 1
    reached = b.factor
    b.set_active(False)  # paused, loading or over: every change shows at once
    assert b.factor == 1.0 and b.due("hardware")
    assert b.top_factor == reached  # what the run's report gives (bench/dashboard.py)
    b.drawn("loss")
    assert b.due("loss")


def test_the_envelope_keeps_every_extreme_and_the_order_of_each_bucket() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 0.05, 40_000)
    spikes = rng.choice(100, 25, replace=False) * 400 + rng.integers(0, 400, 25)  # in 25 of the 100 buckets
    values[spikes] = 9.0 + rng.random(25)  # spikes, one to a bucket
    values[123] = -5.0
    x, y = envelope(values.tolist(), 1, 100)
    assert len(x) <= 200
    assert max(y) == values.max() and min(y) == values.min()
    assert {round(v, 9) for v in values[spikes]} <= {round(v, 9) for v in y}  # every spike's own value
    assert x == sorted(x)  # in the order they came: a line through them reads left to right
    xs, ys = envelope(values.tolist(), 1, 100, per_column=1)
    assert len(xs) == 100 and max(ys) == values.max() and min(ys) == values.min()


def test_the_envelope_passes_short_series_through_and_drops_non_finite_values() -> None:
    assert envelope([1.0, float("nan"), 3.0, float("inf")], 10, 50) == ([10.0, 12.0], [1.0, 3.0])
    _, y = bucket_means([1.0, 3.0] * 500, 1, 10)
    assert len(y) == 10 and all(v == pytest.approx(2.0) for v in y)


def test_only_a_change_of_state_wakes_the_ui() -> None:
    woken: list[int] = []
    intake = Intake(lambda: woken.append(1))
    intake.push(Progress(1, 1, 3, 10, 5.0, 0.1))
    intake.push(IterLosses(1, (2.3,), 1))
    intake.push(BatchLogged(1, 1, 3, 5, 10, 2.3, 2.3, 5.0, 5, (), ()))
    intake.push(SystemSample(1.0, 1))
    intake.push(Evaluating(1, 1, 10, 100))
    assert woken == []  # numbers wait for the UI's next look
    intake.push(Paused(1, 1, 5, "user"))
    intake.push(Evaluating(1, 1, 0, 100))  # a second change before the UI looked: still one wake-up
    assert woken == [1]
    taken = intake.take()
    assert len(taken) == 7 and intake.empty and intake.taken == intake.pushed == 7
    intake.push(StageStarted(2, 3, "s", 2, 2, 3, (), (), 1, 1, 0))
    assert woken == [1, 1]


def test_which_events_are_urgent() -> None:
    assert urgent(Evaluating(1, 1, 0, 10)) and not urgent(Evaluating(1, 1, 5, 10))
    assert urgent(Paused(1, 1, 1, "user")) and not urgent(Progress(1, 1, 1, 1, 1.0, 0.0))


@pytest.mark.real_idle
async def test_an_epochs_end_reaches_the_charts_at_once_however_far_over_its_budget_the_dashboard_is(
        tmp_path: Path) -> None:
    """At once, unless the charts drew within their base period: epochs of a second (a GPU's)
    then wait for the budget like any redraw, while the epoch's line shows at once."""
    script = list(events(epochs=4, batches=200, log_every=50))
    ends = [i for i, e in enumerate(script) if isinstance(e, EpochEnded)]
    gates = threading.Event(), threading.Event(), threading.Event()

    def held() -> Iterator[Event]:
        yield from script[: ends[0] + 1]
        gates[0].wait(30)
        yield from script[ends[0] + 1: ends[1] + 1]  # the second epoch, streamed in, and its end
        gates[1].wait(30)
        yield from script[ends[1] + 1: ends[2] + 1]  # the third, right after
        gates[2].wait(30)  # then the run trains on quietly
        yield from script[ends[2] + 1:]

    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(held)))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(app.state.epochs) == 1 and app.settled)
        acc, budget = app.query_one("#acc-curve", EpochCurve), app.budget
        built = acc.builds
        budget.factor = MAX_FACTOR  # as far over its budget as it gets
        budget._adapted_at = budget.clock() + 60  # and it stays there for the test
        for cadence in budget.cadences.values():
            cadence.drawn_at = budget.clock() - cadence.base_s  # drawn a base period ago: not due for long
        gates[0].set()
        await until(pilot, lambda: len(app.state.epochs) == 2, timeout=10)
        # Within a second, while the budget still holds (it rests once no progress came for IDLE_S):
        await until(pilot, lambda: acc.builds > built, timeout=1.0)
        assert budget.active and budget.factor == MAX_FACTOR
        built, log = acc.builds, app.query_one("#log", LossLog)
        lines = len(log.plain_lines)
        gates[1].set()
        await until(pilot, lambda: len(app.state.epochs) == 3, timeout=10)
        await until(pilot, lambda: len(log.plain_lines) > lines, timeout=1.0)  # the epoch's line shows at once
        await pilot.pause(0.8)
        assert budget.active and acc.builds == built  # the charts drew under a second ago: they wait
        gates[2].set()
        await pilot.press("q", "y")
