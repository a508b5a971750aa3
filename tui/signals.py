"""Stop signals, for the CLI's entry points only: importing or constructing anything
else installs no handler, so a test runner keeps its own Ctrl-C.

Ctrl-C, SIGTERM, SIGHUP (the SSH connection dropped) and SIGUSR1 (a scheduler's
warning before preemption) ask the run to stop at the next batch boundary with a
checkpoint; a second one exits at once, since atomic writes keep the last
complete checkpoint whole.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from core.rundir import StopReason

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


@contextmanager
def stop_on_signals(stop: Callable[[StopReason], None]) -> Iterator[list[StopReason]]:
    """Within the block, the first stop signal calls ``stop(reason)``; the yielded list
    holds the reasons received, so the caller's exit code can follow them."""
    received: list[StopReason] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        reason = StopReason.of_signal(signum)
        received.append(reason)
        if len(received) > 1:
            os._exit(received[0].exit_code)
        stop(reason)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
