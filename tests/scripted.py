"""A stand-in trainer that plays a fixed event script: deterministic screens for snapshots,
and arbitrarily long runs for the dashboard's load tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from core.control import Control
from core.events import (
    AttentionImage,
    AttentionMaps,
    BatchLogged,
    BlockAttention,
    ClassAccuracy,
    EpochEnded,
    Event,
    GpuSample,
    IterLosses,
    LayerRow,
    ModuleState,
    RunStarted,
    RunStopped,
    StageStarted,
    SystemSample,
)
from core.layout import MODULES, NEW_MODULES
from core.vocab import StopReason

STAGES = (("warm up new modules", 5), ("unfreeze layer3, layer4", 15), ("fine-tune everything", 30))
TRAINABLE = (set(NEW_MODULES), {*NEW_MODULES, "layer3", "layer4"}, set(MODULES))
PARAMS = {"conv1": 1728, "bn1": 128, "layer1": 147968, "cbam1": 610, "layer2": 525568, "cbam2": 2146,
          "layer3": 2099712, "cbam3": 8290, "layer4": 8393728, "cbam4": 32866, "fc": 5130}
_ROWS: tuple[LayerRow, ...] | None = None


def model_rows() -> tuple[LayerRow, ...]:
    global _ROWS
    if _ROWS is None:
        from core.model import ResNet18CBAM
        from core.tree import summarize

        _ROWS = tuple(summarize(ResNet18CBAM(), 32))
    return _ROWS


def row_trainable(names: set[str]) -> tuple[int, ...]:
    """Trainable parameters under each model row when the modules ``names`` train."""
    paths = [MODULES[n] for n in names]
    return tuple(
        row.params if any(row.path == p or row.path.startswith(p + ".") for p in paths)
        else sum(PARAMS[n] for n in names if not row.path or MODULES[n].startswith(row.path + "."))
        for row in model_rows()
    )


def events(epochs: int = 3, batches: int = 782, log_every: int = 100, gpus: bool = True) -> Iterator[Event]:
    """A run of ``epochs`` epochs with the default plan's stages, loss falling smoothly; on a
    GPU box, or (``gpus`` False) on a laptop, as the demo often is."""
    yield RunStarted(
        run_name="20260101-120000-demo", run_dir="runs/20260101-120000-demo", dataset="cifar10",
        device="cpu", precision="fp32", train_size=batches * 64, test_size=10000,
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        batch_size=64, batches_per_epoch=batches, total_epochs=50, stages=STAGES, plan_label="default",
        frozen_bn="train", moments="keep", total_params=11217874, model_rows=model_rows(), config={},
    )
    yield SYSTEM if gpus else CPU_ONLY
    step = 0
    first = 1
    for si, (name, n) in enumerate(STAGES):
        stage_epochs = range(first, first + n)
        first += n
        lr = 10.0 ** -(3 + si)
        yield StageStarted(
            stage=si + 1, num_stages=3, name=name, first_epoch=stage_epochs[0], last_epoch=stage_epochs[-1],
            total_epochs=50,
            modules=tuple(
                ModuleState(m, MODULES[m], "yes" if m in TRAINABLE[si] else "no", lr if m in TRAINABLE[si] else None,
                            "new" if m in TRAINABLE[si] else None, PARAMS[m],
                            "train" if m in ("bn1", "layer1", "layer2", "layer3", "layer4") else None, m in NEW_MODULES)
                for m in MODULES
            ),
            groups=(("new", lr),), trainable_params=sum(PARAMS[m] for m in TRAINABLE[si]), total_params=11217874,
            global_step=step, row_trainable=row_trainable(TRAINABLE[si]),
        )
        for epoch in stage_epochs:
            if epoch > epochs:
                return
            for b in range(1, batches + 1, log_every):
                chunk = tuple(2.3 * math.exp(-(step + i) / 3000) + 0.05 * math.sin(step + i) for i in range(log_every))
                yield IterLosses(step + 1, chunk, si + 1)
                step += log_every
                done = min(b + log_every - 1, batches)
                decay = 0.5 * (1 + math.cos(math.pi * done / batches))
                yield BatchLogged(si + 1, epoch, 50, done, batches, sum(chunk) / len(chunk), chunk[-1], 1234.0, step,
                                  (lr * decay + 1e-6,), (1.5 * math.exp(-step / 2000) + 0.2,))
            acc = 100 - 70 * math.exp(-epoch / 8)
            yield class_accuracy(si + 1, epoch, acc)
            yield attention(si + 1, epoch)
            yield EpochEnded(si + 1, epoch, 50, epoch - stage_epochs[0] + 1, n, batches, 2.3 * math.exp(-epoch / 6),
                             acc - 3, 2.2 * math.exp(-epoch / 7), acc, 42.0, 1190.0, acc, step)


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYSTEM = SystemSample(
    cpu_percent=103.0, rss=int(1.9 * 2**30), cuda_peak=int(9.8 * 2**30),
    gpus=(GpuSample(0, "NVIDIA H200", 97.0, int(12.1 * 2**30), int(139.8 * 2**30), 310.0, 71.0),),
)

CPU_ONLY = SystemSample(cpu_percent=187.0, rss=int(1.2 * 2**30), note="no GPU figures: no NVIDIA driver", cpus=2.0,
                        busy_elsewhere=0.3)


def class_accuracy(stage: int, epoch: int, acc: float) -> ClassAccuracy:
    """Per-class results around ``acc``: cats and dogs the hardest, mixed up with each other."""
    hard = {3: -25, 5: -18, 2: -10}
    correct = tuple(int(10 * max(0.0, min(100.0, acc + hard.get(c, 4)))) for c in range(10))
    confusion = []
    for c in range(10):
        row = [0] * 10
        row[c] = correct[c]
        wrong = 1000 - correct[c]
        row[5 if c == 3 else 3 if c == 5 else (c + 1) % 10] += wrong * 2 // 3
        row[(c + 2) % 10] += wrong - wrong * 2 // 3
        confusion.append(tuple(row))
    return ClassAccuracy(stage, epoch, correct, (1000,) * 10, tuple(confusion))


def attention(stage: int, epoch: int) -> AttentionMaps:
    """An image of each class and a blob of attention that sharpens as the epochs go by."""
    images = []
    for k, label in enumerate(range(10)):
        cx, cy = 0.3 + 0.05 * k, 0.6 - 0.03 * k
        pixels = []
        for y in range(16):
            for x in range(16):
                inside = (x / 15 - cx) ** 2 + (y / 15 - cy) ** 2 < 0.06
                pixels += [200, 120 + 10 * k, 60] if inside else [40, 70 + 8 * k, 110]
        blocks = []
        for b, size in enumerate((16, 16, 8, 4), 1):
            sharp = 4 + epoch + 2 * b
            spatial = tuple(
                int(255 * math.exp(-sharp * ((x / max(size - 1, 1) - cx) ** 2 + (y / max(size - 1, 1) - cy) ** 2)))
                for y in range(size) for x in range(size)
            )
            blocks.append(BlockAttention(f"cbam{b}", size, spatial, 0.5 + 0.02 * b, 0.1 + 0.01 * epoch, 0.4 + 0.05 * b))
        predicted = label if (epoch + k) % 3 else (label + 1) % 10
        images.append(AttentionImage(CLASSES[label], CLASSES[predicted], 16, tuple(pixels), tuple(blocks)))
    return AttentionMaps(stage, epoch, tuple(images))


class ScriptedTrainer:
    """A stand-in for the Trainer behind an InProcessLink: plays ``script``, then waits
    for a stop as a paused run would. ``emitted`` keeps what it sent."""

    def __init__(self, script: Callable[[], Iterator[Event]]) -> None:
        self.script = script
        self.emitted: list[Event] = []

    def __call__(self, config: object, emit: Callable[[Event], None], control: Control) -> StopReason:
        for event in self.script():
            self.emitted.append(event)
            emit(event)
        while control.stop_reason is None:
            control.pause()
            control.wait(0.05)
        reason = control.stop_reason
        emit(RunStopped(reason, 1, 3, 0, None))
        return reason
