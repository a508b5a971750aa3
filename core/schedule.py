"""Learning-rate schedules within a stage, stepped every batch.

Each is a factor of the stage's rates, within [0, 1], a function of (batch step
within the stage, steps in the stage) alone, so a resumed run gets exactly the
rates an uninterrupted one had. Each equals a torch scheduler stepped once per
batch over the stage (tests/test_schedule.py checks every step of every length):

    constant           1 throughout (the seed's)
    cosine             CosineAnnealingLR(T_max=steps): 1 at the first step, towards 0 at the end
    warmup-cosine[:W]  n = ceil(W% of the steps) warm-up steps (default W = 5; at most steps - 1),
                       rising linearly (k + 1) / (n + 1), so step n is the first at 1 and none
                       is above it; then CosineAnnealingLR over the other steps. In torch:
                       SequentialLR([LinearLR(start_factor=1/(n+1), total_iters=n),
                       CosineAnnealingLR(T_max=steps - n)], milestones=[n])
    onecycle           OneCycleLR(total_steps=steps, pct_start=0.3, div_factor=25,
                       final_div_factor=1e4, anneal_strategy="cos"): from 1/25 up to 1 over
                       the first 30%, then down to 1/250,000 (a 1-step stage gets only the end)

Pure Python: plans are checked before torch loads.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

from core.errors import PlanError

SCHEDULES = ("constant", "cosine", "warmup-cosine", "onecycle")
DEFAULT_WARMUP = Fraction(5)  # percent
ONECYCLE_START, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4
_PERCENT = re.compile(r"\d{1,3}(\.\d{0,12})?|\.\d{1,12}")


def check(text: str, where: str = "--schedule") -> str:
    """The schedule's canonical name; PlanError with one sentence if it is none."""
    name, colon, arg = text.partition(":")
    if name not in SCHEDULES:
        choices = ", ".join(SCHEDULES)
        raise PlanError(f"{where}: unknown schedule {_shown(text)}; choose one of {choices} (warmup-cosine:W)")
    if colon:
        if name != "warmup-cosine":
            raise PlanError(f"{where}: only warmup-cosine takes a number (warmup-cosine:10), not {_shown(text)}")
        if not _PERCENT.fullmatch(arg):
            raise PlanError(f"{where}: the warm-up of {_shown(text)} must be a percent, like warmup-cosine:10")
        if not 0 < Fraction(arg) < 100:
            raise PlanError(f"{where}: the warm-up of {_shown(text)} must be more than 0 and less than 100 percent")
    return text


def warmup_steps(schedule: str, total: int) -> int:
    """The warm-up steps of a warmup-cosine stage of ``total`` steps: ceil(W% of them), at most total - 1."""
    return min(math.ceil(_warmup(schedule) * total / 100), max(total - 1, 0))


def factor(schedule: str, step: int, total: int) -> float:
    """The multiple of the stage's rates at batch ``step`` (0-based) of ``total`` in the stage."""
    name = schedule.partition(":")[0]
    total = max(total, 1)
    step = min(max(step, 0), total - 1)
    if name == "cosine":
        return _cosine(step, total)
    if name == "warmup-cosine":
        n = warmup_steps(schedule, total)
        return (step + 1) / (n + 1) if step < n else _cosine(step - n, total - n)
    if name == "onecycle":  # torch.optim.lr_scheduler.OneCycleLR, phase for phase
        low, final = 1 / ONECYCLE_DIV, 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
        up = float(ONECYCLE_START * total) - 1
        if up > 0 and step <= up:
            return _cos_between(low, 1.0, step / up)
        return _cos_between(1.0, final, (step - up) / (total - 1 - up))
    return 1.0


@functools.lru_cache(maxsize=64)
def _warmup(schedule: str) -> Fraction:
    """W, exactly (a float's 0.07 * 100 is 7.000000000000001, whose ceiling is 8)."""
    arg = schedule.partition(":")[2]
    return Fraction(arg) if arg else DEFAULT_WARMUP


def _shown(text: str) -> str:
    """A value quoted for a message: escaped (repr), and cut when long."""
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / total))


def _cos_between(a: float, b: float, t: float) -> float:
    return b + (a - b) / 2 * (math.cos(math.pi * min(max(t, 0.0), 1.0)) + 1)
