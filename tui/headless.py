"""Plain line-by-line output of a run: the seed's lines, for --headless and pipes.

Output nobody reads any more (``| head`` that has its lines, a terminal that went
away) is a hang-up of the terminal, never a failure of the run: the reporter says so
once (the caller stops the run at the next batch boundary with a checkpoint, as on
SIGHUP) and prints nothing more; the run directory keeps every event.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import TextIO

from core.config import RunConfig
from core.control import Control
from core.events import Event, RunFailed
from core.rundir import RunDir
from core.state import describe
from core.vocab import StopReason

OUTPUT_CLOSED = StopReason.SIGHUP  # a closed stdout is a terminal that hung up: stop, checkpointed, resumable


class Reporter:
    """Prints each event's log lines as they come; the CLI prints a failure once, last.
    ``on_closed`` is called once when the output can no longer be written."""

    def __init__(self, out: TextIO, on_closed: Callable[[], None] | None = None) -> None:
        self.out = out
        self.on_closed = on_closed
        self.closed = False

    def __call__(self, e: Event) -> None:
        if self.closed or isinstance(e, RunFailed):
            return
        try:
            for line in describe(e):
                print(line, file=self.out, flush=True)
        except OSError:  # EPIPE from a pipe whose reader left, EIO from a terminal that went away
            self.closed = True
            _silence(self.out)
            if self.on_closed is not None:
                self.on_closed()


def _silence(out: TextIO) -> None:
    """Point a closed output's file descriptor at /dev/null, so that what is still in its
    buffer (flushed at exit) and any later line go nowhere, instead of raising again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, out.fileno())
        finally:
            os.close(devnull)


def run_headless(
    config: RunConfig, control: Control | None = None, out: TextIO | None = None, rundir: RunDir | None = None
) -> StopReason:
    """Train with plain output; the StopReason's exit code is the process's. A closed
    output stops the run as a hang-up does."""
    from core.train import Trainer

    steer = control or Control()
    return Trainer(config, Reporter(out or sys.stdout, lambda: steer.stop(OUTPUT_CLOSED)), steer, rundir).run()
