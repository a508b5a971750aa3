"""What an epoch adds up, kept on the device, a clock that knows about pauses, and
the epoch in progress that holds them.

The step loop only adds tensors here; the host reads them at log points and at
most about once a second (`drain`), never per batch. With several processes
(``reduce``), every read adds the ranks' values up, so all of them must read at the
same step; the figures are then the whole global batch's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from core.checkpoint import Position

Reduce = Callable[[torch.Tensor], torch.Tensor]  # adds a tensor up over the ranks, in place


@dataclass(frozen=True)
class Sums:
    """An epoch's running totals on the host, as a checkpoint keeps them."""

    loss_sum: float = 0.0  # per-image losses added up
    correct: int = 0
    seen: int = 0
    seconds: float | None = 0.0  # training time of the ``seen`` images, every process's; None: an older checkpoint's

    def to_dict(self) -> dict[str, float | int]:
        kept = {"seconds": self.seconds} if self.seconds is not None else {}
        return {"loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen, **kept}


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


@dataclass
class EpochRun:
    """One epoch in progress: its device-side sums and its pause-aware clock."""

    position: Position
    meter: EpochMeter
    clock: Clock = field(default_factory=Clock)  # this process's time on the epoch, pauses left out
    seconds_before: float = 0.0  # training time of the epoch in the processes before this one (its checkpoint's)
    train_seconds: float | None = None  # the epoch's whole training time, once its training is over
    first_seen: int = 0  # images already counted when this process began the epoch
    untimed: int = 0  # of those, the ones whose training time no checkpoint kept (an older one's)
    batch: int = 0  # batches done
    log_clock: Clock = field(default_factory=Clock)  # since the last loss line
    log_seen: int = 0
    grad_norms: torch.Tensor | None = None  # each group's, at the last loss line's batch (on the device)
    data_s: float = 0.0  # host time preparing batches, and in whole steps, since the last Progress
    step_s: float = 0.0

    def training_seconds(self) -> float:
        """The epoch's training time so far, over every process that trained it: no pauses,
        no test pass."""
        return self.train_seconds if self.train_seconds is not None else self.seconds_before + self.clock.elapsed()

    def end_training(self) -> None:
        self.train_seconds = self.training_seconds()

    def sums(self) -> Sums:
        """The running totals as a checkpoint keeps them, with their training time (in a group,
        a collective: every rank calls it at the same step)."""
        return replace(self.meter.host(), seconds=None if self.untimed else self.training_seconds())

    def here(self) -> Position:
        return Position(self.position.stage, self.position.epoch, self.batch, offset=self.position.offset)

    def pause(self, seconds: float) -> None:
        self.clock.add_pause(seconds)
        self.log_clock.add_pause(seconds)


def grad_norms(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Each param group's gradient L2 norm, on the device (read at the loss line)."""
    if scaler.is_enabled():
        scaler.unscale_(opt)  # step() then skips it: the norms are of the real gradients
    norms = []
    for group in opt.param_groups:
        grads = [p.grad.detach().float().norm() for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(()))
    return torch.stack([n.to(norms[0].device) for n in norms])
