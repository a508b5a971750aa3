"""How the one dashboard reaches a run: two links behind one small interface.

- `InProcessLink`: the Trainer runs in the dashboard's worker thread; keys go to
  its Control. Leaving stops the run (with a checkpoint).
- `DirectoryLink`: a Follower reads the run's directory; keys become commands in
  its inbox. Leaving leaves the run alone. `watch`, `--detach` and every
  multi-process run use this one.

`start` runs in the worker thread until the link is done and returns why it
ended (a StopReason, whose exit code the CLI returns); `send` passes a key's
command on and returns a line for the log, or raises CbamError with the reason.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from core.comparison import DEFAULT_METRIC
from core.config import RunConfig
from core.control import Control
from core.errors import CbamError
from core.events import Event
from core.vocab import Command, StopReason

OnEvent = Callable[[Event], None]
UI_CORES = 1  # cores left free of torch's threads for the dashboard's own thread (bench/README.md)


class Link(Protocol):
    leaving_stops_run: bool

    def start(self, on_event: OnEvent) -> StopReason: ...

    def send(self, command: Command) -> str: ...

    def stop(self, reason: StopReason) -> None: ...


class InProcessLink:
    leaving_stops_run = True

    def __init__(self, config: RunConfig, trainer: Callable[[RunConfig, OnEvent, Control], object] | None = None):
        self.config = config
        self.control = Control()
        self._trainer = trainer  # tests pass a scripted stand-in

    def start(self, on_event: OnEvent) -> StopReason:
        if self._trainer is not None:
            outcome = self._trainer(self.config, on_event, self.control)
            return outcome if isinstance(outcome, StopReason) else StopReason.FINISHED
        from core.train import Trainer

        if self.config.resume:
            replay_history(Path(self.config.resume), on_event)
        return Trainer(self.config, on_event, self.control, cpu_reserve=UI_CORES).run()

    def send(self, command: Command) -> str:
        self.control.apply(command, "keys")
        return {
            "pause": "pausing at the next batch boundary",
            "resume": "resuming",
            "next": "next stage requested: this epoch ends at the next batch",
            "save": "saving a checkpoint at the next batch boundary",
            "stop": "stopping at the next batch boundary, with a checkpoint",
            "lr": f"learning rate {command.value}" + (f" for {command.group}" if command.group else "")
                  + ": from the next batch",
            "epochs": f"epochs {command.value} for the stage in progress: at the next batch or this epoch's end",
        }[command.verb]

    def stop(self, reason: StopReason) -> None:
        self.control.stop(reason)


class DirectoryLink:
    leaving_stops_run = False

    def __init__(self, run: Path) -> None:
        from core.follow import Follower

        self.run = run
        self.origin = f"watch pid {os.getpid()}"
        self.on_gone: Callable[[], None] | None = None  # the run directory was deleted: the CLI leaves
        self._reason = StopReason.LEFT
        self._follower = Follower(run, lambda _event: None)

    def start(self, on_event: OnEvent) -> StopReason:
        self._follower.emit = on_event
        self._follower.run()
        if self.gone and self.on_gone is not None:
            self.on_gone()
        return self._reason

    @property
    def gone(self) -> bool:
        return self._follower.gone

    def send(self, command: Command) -> str:
        from core.inbox import send

        status = self._follower.state.status
        send(self.run, command, self.origin, status.word if status.ended else None)
        return f"{command} sent: the run takes it at its next batch"

    def stop(self, reason: StopReason) -> None:
        self._reason = reason
        self._follower.stop()


class CompareLink:
    """Several runs side by side: the compare view reads their directories itself; this
    link only keeps the app's worker waiting until the app leaves."""

    leaving_stops_run = False

    def __init__(self, runs: list[Path], metric: str = DEFAULT_METRIC) -> None:
        self.runs = runs
        self.metric = metric  # the scalar drawn first
        self._left = threading.Event()

    def start(self, on_event: OnEvent) -> StopReason:
        self._left.wait()
        return StopReason.LEFT

    def send(self, command: Command) -> str:
        raise CbamError("compare steers no run: attach to one with cbam-tui watch RUN")

    def stop(self, reason: StopReason) -> None:
        self._left.set()


def replay_history(resume: Path, on_event: OnEvent) -> None:
    """A resumed run's dashboard starts from the run's whole story, not a blank screen: folded
    first (saying how far), then handed over in one piece, however long it is."""
    from core.events import Replayed
    from core.follow import replay
    from core.rundir import home_of_checkpoint, open_run

    home = resume if resume.is_dir() else home_of_checkpoint(resume)  # --resume gives the checkpoint
    if home is None:
        return  # a lone checkpoint: its run starts a new directory, with no story yet
    try:
        with open_run(home) as run:
            history, lines, _ = replay(run, on_event)
    except (CbamError, OSError):
        return  # the trainer says what is wrong with it, in one sentence
    on_event(Replayed(history, lines))
