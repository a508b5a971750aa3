"""Plain line-by-line output of a run: the seed's lines, for --headless and pipes."""

from __future__ import annotations

import sys
from typing import TextIO

from core.config import RunConfig
from core.control import Control
from core.events import Event, RunFailed
from core.rundir import RunDir
from core.state import describe
from core.vocab import StopReason


class Reporter:
    """Prints each event's log lines as they come; the CLI prints a failure once, last."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, e: Event) -> None:
        if isinstance(e, RunFailed):
            return
        for line in describe(e):
            print(line, file=self.out, flush=True)


def run_headless(
    config: RunConfig, control: Control | None = None, out: TextIO | None = None, rundir: RunDir | None = None
) -> StopReason:
    """Train with plain output; the StopReason's exit code is the process's."""
    from core.train import Trainer

    return Trainer(config, Reporter(out or sys.stdout), control, rundir).run()
