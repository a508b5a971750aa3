"""What an epoch adds up, kept on the device, and a clock that knows about pauses.

The step loop only adds tensors here; the host reads them at log points and at
most about once a second (`drain`), never per batch. With several processes
(``reduce``), every read adds the ranks' values up, so all of them must read at the
same step; the figures are then the whole global batch's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]  # adds a tensor up over the ranks, in place


@dataclass(frozen=True)
class Sums:
    """An epoch's running totals on the host, as a checkpoint keeps them."""

    loss_sum: float = 0.0  # per-image losses added up
    correct: int = 0
    seen: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen}


class EpochMeter:
    def __init__(self, device: torch.device, start: Sums, reduce: Reduce | None = None, world: int = 1) -> None:
        self.reduce = reduce
        self.world = world
        self.loss_sum = torch.tensor(start.loss_sum, device=device, dtype=torch.float32)
        self.correct = torch.tensor(start.correct, device=device, dtype=torch.long)
        self.seen = start.seen  # host-side: batch sizes are known without a sync
        self.window = torch.zeros((), device=device, dtype=torch.float32)  # since the last loss line
        self.window_batches = 0
        self._pending: list[torch.Tensor] = []  # iteration losses not yet on the host

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        d = loss.detach().float()
        n = len(labels)
        self.loss_sum += d * n
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += n
        self.window += d
        self.window_batches += 1
        self._pending.append(d)

    def drain(self) -> list[float]:
        """The iteration losses since the last drain: one host sync."""
        if not self._pending:
            return []
        stacked = torch.stack(self._pending)
        if self.reduce is not None:  # each rank's shard loss: their mean is the global batch's
            stacked = self.reduce(stacked) / self.world
        losses: list[float] = stacked.tolist()
        self._pending.clear()
        return losses

    def take_window(self) -> float:
        """Mean loss since the last call (a loss line); one host sync."""
        window = self.reduce(self.window.clone()) / self.world if self.reduce is not None else self.window
        mean = window.item() / max(self.window_batches, 1)
        self.window.zero_()
        self.window_batches = 0
        return mean

    def host(self) -> Sums:
        if self.reduce is None:
            return Sums(float(self.loss_sum.item()), int(self.correct.item()), self.seen)
        dev = self.loss_sum.device
        seen = torch.tensor(self.seen, device=dev, dtype=torch.float64)
        both = torch.stack([self.loss_sum.double(), self.correct.double(), seen])
        loss_sum, correct, seen = self.reduce(both).tolist()
        return Sums(loss_sum, round(correct), round(seen))


class Clock:
    """Seconds since ``start``, pauses left out, so speed figures mean training speed."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.paused = 0.0

    def add_pause(self, seconds: float) -> None:
        self.paused += seconds

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.t0 - self.paused, 1e-9)
