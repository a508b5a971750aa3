"""The test pass at an epoch's end, and what the CBAM blocks do to a few fixed images.

Sums stay on the device and are read once at the end. In a group each rank
evaluates its share of the test set and the sums are added up over the ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from core.attention import attention_maps
from core.events import AttentionMaps, Evaluating, Event

if TYPE_CHECKING:
    from core.dist import Group
    from core.prepare import Setup

PROGRESS_EVERY_S = 0.5  # Progress and Evaluating events: host-side counters only
CONFUSION_MAX = 50  # classes up to which the confusion matrix is kept (it grows as classes squared)


@dataclass(frozen=True)
class Evaluation:
    """What the test pass of an epoch found."""

    loss: float  # per-image mean
    accuracy: float  # percent
    correct: tuple[int, ...]  # per class
    total: tuple[int, ...]
    confusion: tuple[tuple[int, ...], ...]  # [true][predicted], or () beyond CONFUSION_MAX classes


def evaluate(
    s: Setup, stage: int, epoch: int, emit: Callable[[Event], None], interrupted: Callable[[], bool],
    group: Group | None = None,
) -> Evaluation | None:
    """The test pass of run epoch ``epoch`` in ``stage`` (0-based): loss, accuracy and per-class
    counts. None when ``interrupted()`` (asked before each batch) says a stop arrived."""
    s.model.eval()
    eval_batch = min(max(s.config.batch_size * 4, 256), 2048)
    classes = len(s.data.classes)
    loss_sum = torch.zeros((), device=s.device)
    per_class = torch.zeros(2, classes, device=s.device, dtype=torch.long)  # correct, total
    confusion = torch.zeros(classes * classes if classes <= CONFUSION_MAX else 1, device=s.device, dtype=torch.long)
    n = len(s.test_y)
    lo, hi = group.shard(n) if group is not None else (0, n)  # each rank its part, once
    emit(Evaluating(stage + 1, epoch, 0, n))
    shown = time.perf_counter()
    with torch.inference_mode(), s.autocast():
        for i in range(lo, hi, eval_batch):
            if interrupted():
                return None
            if time.perf_counter() - shown >= PROGRESS_EVERY_S:
                shown = time.perf_counter()
                emit(Evaluating(stage + 1, epoch, (i - lo) * s.world, n))
            j = min(i + eval_batch, hi)
            x = s.augment.test(s.test_x[i:j].to(s.device, non_blocking=True))
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = s.test_y[i:j].to(s.device, non_blocking=True)
            out = s.model(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            pred = out.argmax(1)
            per_class[0] += torch.bincount(y[pred == y], minlength=classes)
            per_class[1] += torch.bincount(y, minlength=classes)
            if classes <= CONFUSION_MAX:
                confusion += torch.bincount(y * classes + pred, minlength=classes * classes)
    s.model.train()
    if group is not None:
        for t in (loss_sum, per_class, confusion):
            group.sum(t)
    counts = per_class.tolist()
    matrix = confusion.view(classes, classes).tolist() if classes <= CONFUSION_MAX else []
    return Evaluation(
        loss_sum.item() / n, 100.0 * sum(counts[0]) / n, tuple(counts[0]), tuple(counts[1]),
        tuple(tuple(row) for row in matrix),
    )


def attention(s: Setup, ids: list[int], stage: int, epoch: int) -> AttentionMaps | None:
    """What the CBAM blocks do to the fixed test images ``ids``, after this epoch."""
    if not ids:
        return None
    index = torch.tensor(ids)
    images = s.test_x[index.to(s.test_x.device)].to(s.device)
    labels = s.test_y[index.to(s.test_y.device)].tolist()
    maps = attention_maps(s.model, images, labels, s.data.classes, s.augment, s.autocast, s.channels_last)
    return AttentionMaps(stage + 1, epoch, maps)
