"""Every schedule is torch's scheduler of the same name, at every step of every stage length,
within [0, 1], and a resume changes nothing (hypothesis over lengths, warm-ups and resume points)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from core.schedule import factor, warmup_steps

TOTALS = st.integers(1, 2000)
WARMUPS = st.integers(1, 9999).map(lambda hundredths: f"{hundredths / 100:g}")  # 0.01% to 99.99%
SCHEDULES = st.one_of(
    st.sampled_from(["constant", "cosine", "onecycle", "warmup-cosine"]),
    WARMUPS.map(lambda w: f"warmup-cosine:{w}"),
)


def reference(schedule: str, total: int) -> tuple[torch.optim.Optimizer, LRScheduler | None]:
    """torch's scheduler for ``schedule`` over ``total`` steps, on an optimizer whose rate is 1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    name, _, arg = schedule.partition(":")
    if name == "cosine":
        return optimizer, CosineAnnealingLR(optimizer, T_max=total)
    if name == "onecycle":
        return optimizer, OneCycleLR(optimizer, max_lr=1.0, total_steps=total, pct_start=0.3, div_factor=25,
                                     final_div_factor=1e4, anneal_strategy="cos", cycle_momentum=False)
    if name == "warmup-cosine":
        # The rule restated: ceil(W% of the steps), exactly, and at least one step of cosine.
        n = min(math.ceil(Fraction(arg or "5") * total / 100), total - 1)
        if n == 0:
            return optimizer, CosineAnnealingLR(optimizer, T_max=total)
        warm = LinearLR(optimizer, start_factor=1 / (n + 1), end_factor=1.0, total_iters=n)
        return optimizer, SequentialLR(optimizer, [warm, CosineAnnealingLR(optimizer, T_max=total - n)], milestones=[n])
    return optimizer, None


def rates(optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return out


@settings(max_examples=60, deadline=None)
@given(schedule=SCHEDULES, total=TOTALS)
def test_every_schedule_is_its_torch_reference_and_never_above_its_peak(schedule: str, total: int) -> None:
    ours = [factor(schedule, step, total) for step in range(total)]
    assert all(0.0 <= f <= 1.0 for f in ours), max(ours)
    assert ours == pytest.approx(rates(*reference(schedule, total), total), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(schedule=SCHEDULES, total=TOTALS, data=st.data())
def test_a_resume_anywhere_gets_the_rates_an_uninterrupted_run_had(schedule: str, total: int, data) -> None:
    """torch's scheduler stopped at ``at``, saved, loaded into a new optimizer and scheduler
    and stepped on: the rates it gives from there are ours, which know only (step, total)."""
    at = data.draw(st.integers(0, total - 1), label="resume at step")
    optimizer, scheduler = reference(schedule, total)
    rates(optimizer, scheduler, at)
    saved = (optimizer.state_dict(), scheduler.state_dict() if scheduler else None)
    optimizer, scheduler = reference(schedule, total)
    optimizer.load_state_dict(saved[0])
    if scheduler is not None:
        scheduler.load_state_dict(saved[1])
    resumed = rates(optimizer, scheduler, total - at)
    assert [factor(schedule, step, total) for step in range(at, total)] == pytest.approx(resumed, rel=1e-9, abs=1e-12)


def test_the_warm_up_found_overshooting_reaches_its_peak_once_and_never_above() -> None:
    # 30 batches at W = 5% asked for 1.5 warm-up steps: the second batch trained at 1.33x the stage's rate.
    assert warmup_steps("warmup-cosine", 30) == 2
    assert [factor("warmup-cosine", s, 30) for s in range(4)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 0.5 * (1 + math.cos(math.pi / 28))])
    assert max(factor("warmup-cosine", s, 21) for s in range(21)) == 1.0  # 1.9x before
    assert warmup_steps("warmup-cosine:7", 100) == 7  # exactly: 0.07 * 100 is 7.000000000000001 in floats


def test_a_one_step_stage() -> None:
    assert [factor(s, 0, 1) for s in ("constant", "cosine", "warmup-cosine:50")] == [1.0, 1.0, 1.0]
    assert factor("onecycle", 0, 1) == pytest.approx(1 / 250_000)  # torch's OneCycleLR gives the end at once
