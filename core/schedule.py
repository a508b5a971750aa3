"""Learning-rate schedules within a stage, stepped every batch.

Each is a factor of the stage's rates, a function of (batch step within the stage,
steps in the stage) alone, so a resumed run gets exactly the rates an
uninterrupted one had. Pure Python: plans are checked before torch loads.

    constant           1 throughout (the seed's)
    cosine             1 down to 0 along half a cosine
    warmup-cosine[:W]  linear warm-up over the first W% of the steps (default 5), then cosine
    onecycle           PyTorch's OneCycleLR shape: from 1/25 up to 1 over the first 30%,
                       then cosine down to 1/250,000
"""

from __future__ import annotations

import math

from core.errors import PlanError

SCHEDULES = ("constant", "cosine", "warmup-cosine", "onecycle")
DEFAULT_WARMUP = 5.0  # percent
ONECYCLE_START, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def check(text: str, where: str = "--schedule") -> str:
    """The schedule's canonical name; PlanError with one sentence if it is none."""
    name, _, arg = text.partition(":")
    if name not in SCHEDULES:
        raise PlanError(f"{where}: unknown schedule {text!r}; choose one of {', '.join(SCHEDULES)} (warmup-cosine:W)")
    if arg:
        if name != "warmup-cosine":
            raise PlanError(f"{where}: only warmup-cosine takes a number (warmup-cosine:10), not {text!r}")
        try:
            warmup = float(arg)
        except ValueError:
            raise PlanError(f"{where}: the warm-up of {text!r} must be a percent, like warmup-cosine:10") from None
        if not 0 < warmup < 100:
            raise PlanError(f"{where}: the warm-up of {text!r} must be between 0 and 100 percent")
    return text


def factor(schedule: str, step: int, total: int) -> float:
    """The multiple of the stage's rates at batch ``step`` (0-based) of ``total`` in the stage."""
    name, _, arg = schedule.partition(":")
    if name == "constant" or total <= 1:
        return 1.0
    t = min(max(step / total, 0.0), 1.0)
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if name == "warmup-cosine":
        w = (float(arg) if arg else DEFAULT_WARMUP) / 100
        if t < w:
            return (step + 1) / max(w * total, 1.0)
        return 0.5 * (1 + math.cos(math.pi * (t - w) / (1 - w)))
    # onecycle: as torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos") with max_lr = the stage's rate
    start, low, final = ONECYCLE_START, 1 / ONECYCLE_DIV, 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    up = start * total - 1
    if step <= up:
        return _cos_between(low, 1.0, step / up) if up > 0 else 1.0
    return _cos_between(1.0, final, (step - up) / (total - 1 - up))


def _cos_between(a: float, b: float, t: float) -> float:
    return b + (a - b) / 2 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
