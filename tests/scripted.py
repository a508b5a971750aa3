"""A stand-in trainer that plays a fixed event script: deterministic screens for snapshots,
and arbitrarily long runs for the dashboard's load tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from core.control import Control
from core.events import (
    BatchLogged,
    EpochEnded,
    Event,
    IterLosses,
    ModuleState,
    RunStarted,
    RunStopped,
    StageStarted,
)
from core.layout import MODULES, NEW_MODULES
from core.model import ResNet18CBAM
from core.summary import summarize

_ROWS: tuple[tuple[object, ...], ...] | None = None


def model_rows() -> tuple[tuple[object, ...], ...]:
    global _ROWS
    if _ROWS is None:
        _ROWS = tuple(r.as_tuple() for r in summarize(ResNet18CBAM(), 32))
    return _ROWS


STAGES = (("warm up new modules", 5), ("unfreeze layer3, layer4", 15), ("fine-tune everything", 30))
TRAINABLE = (set(NEW_MODULES), {*NEW_MODULES, "layer3", "layer4"}, set(MODULES))
PARAMS = {"conv1": 1728, "bn1": 128, "layer1": 147968, "cbam1": 610, "layer2": 525568, "cbam2": 2146,
          "layer3": 2099712, "cbam3": 8290, "layer4": 8393728, "cbam4": 32866, "fc": 5130}


def events(epochs: int = 3, batches: int = 782, log_every: int = 100) -> Iterator[Event]:
    """A run of ``epochs`` epochs with the default plan's stages, loss falling smoothly."""
    yield RunStarted(
        run_name="20260101-120000-demo", run_dir="runs/20260101-120000-demo", dataset="cifar10",
        device="cpu", precision="fp32", train_size=batches * 64, test_size=10000,
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        batch_size=64, batches_per_epoch=batches, total_epochs=50, stages=STAGES, plan_label="default",
        frozen_bn="train", total_params=11217874, model_rows=model_rows(), config={},
    )
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
            global_step=step,
        )
        for epoch in stage_epochs:
            if epoch > epochs:
                return
            for b in range(1, batches + 1, log_every):
                chunk = tuple(2.3 * math.exp(-(step + i) / 3000) + 0.05 * math.sin(step + i) for i in range(log_every))
                yield IterLosses(step + 1, chunk, si + 1)
                step += log_every
                done = min(b + log_every - 1, batches)
                yield BatchLogged(si + 1, epoch, 50, done, batches, chunk[-1], sum(chunk) / len(chunk), 1234.0, step)
            acc = 100 - 70 * math.exp(-epoch / 8)
            yield EpochEnded(si + 1, epoch, 50, epoch - stage_epochs[0] + 1, n, batches, 2.3 * math.exp(-epoch / 6),
                             acc - 3, 2.2 * math.exp(-epoch / 7), acc, 42.0, 1190.0, acc, step)


class ScriptedTrainer:
    """Plays ``script`` through emit, then waits for a stop like a paused run would."""

    def __init__(self, script: Callable[[], Iterator[Event]]) -> None:
        self.script = script

    def __call__(self, config: object, emit: Callable[[Event], None], control: Control) -> ScriptedTrainer:
        self.emit, self.control = emit, control
        return self

    def run(self) -> str:
        for event in self.script():
            self.emit(event)
        while self.control.stop_reason is None:
            self.control.wait_while_paused(0.05)
            if not self.control.paused:
                self.control.pause()
        self.emit(RunStopped(self.control.stop_reason, 1, 3, 0, None))
        return "stopped"
