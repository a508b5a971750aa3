"""Stop signals, for the CLI's entry points only: importing or constructing anything
else installs no handler, so a test runner keeps its own Ctrl-C.

Ctrl-C, SIGTERM, SIGHUP (the SSH connection dropped) and SIGUSR1 (a scheduler's
warning before preemption) ask the run to stop at the next batch boundary with a
checkpoint; a second one exits at once, since atomic writes keep the last
complete checkpoint whole. A SIGUSR1 after a SIGUSR1 is the same warning again, not
a person in a hurry: it changes nothing, so the stop checkpoint is still written.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from core.vocab import STOP_SIGNALS, StopReason


@contextmanager
def stop_on_signals(
    stop: Callable[[StopReason], None], last: Callable[[], None] | None = None,
) -> Iterator[list[StopReason]]:
    """Within the block, the first stop signal calls ``stop(reason)``; the yielded list
    holds the reasons received, so the caller's exit code can follow them. ``last`` runs
    before the exit a second signal makes (a launcher kills its ranks there)."""
    received: list[StopReason] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        reason = StopReason.of_signal(signum)
        if received and reason == StopReason.SIGUSR1 == received[-1]:
            return
        received.append(reason)
        if len(received) > 1:
            if last is not None:
                last()
            os._exit(received[0].exit_code)
        stop(reason)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
