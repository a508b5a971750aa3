"""Events from the link's thread to the UI, in batches.

The link's thread (a trainer in this process, or a follower of a run directory)
only appends to a queue; it never waits for the UI. Most events are a stream of
numbers (progress, iteration losses, loss lines, machine samples) that the UI
folds in at its own pace. An event that changes what the run is doing (a pause,
a new stage, the test pass, the end, an error) wakes the UI at once, through one
message however many such events arrive before it looks.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from core.events import BatchLogged, Evaluating, Event, IterLosses, Loading, Progress, SystemSample

STREAM = (Progress, IterLosses, BatchLogged, SystemSample)


def urgent(event: Event) -> bool:
    """Whether ``event`` must show at once (a change of state), not at the next redraw."""
    if isinstance(event, STREAM):
        return False
    if isinstance(event, (Evaluating, Loading)):
        return event.done == 0  # the test pass (or a load) begins: a new state; then numbers
    return True


class Intake:
    """A thread-safe queue of events with a coalesced wake-up of the UI."""

    def __init__(self, wake: Callable[[], object]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._events: deque[Event] = deque()
        self._wake_pending = False
        self.pushed = 0  # events queued, and taken by the UI: equal when it has seen them all
        self.taken = 0

    def push(self, event: Event) -> None:
        """From any thread: never blocks on the UI."""
        with self._lock:
            self._events.append(event)
            self.pushed += 1
            wake = urgent(event) and not self._wake_pending
            if wake:
                self._wake_pending = True
        if wake:
            self._wake()

    def take(self) -> list[Event]:
        """From the UI thread: every event queued so far, oldest first."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            self._wake_pending = False
            self.taken += len(events)
        return events

    @property
    def empty(self) -> bool:
        with self._lock:
            return not self._events
