"""Named fault points, for the fault-injection tests; inert unless asked for.

``CBAM_TUI_FAULTS="epoch-end:before-last.pt=kill,save:stop=sleep:30"`` makes the
process kill itself with SIGKILL, sleep, or fail a write with ENOSPC when it reaches
the named point (a trailing * matches any ending; ``kill@3``: at the third time it
gets there): a kill -9 at an exact instant instead of by timing.
"""

from __future__ import annotations

import errno
import os
import signal
import time

_SPEC: dict[str, str] = {}
_HITS: dict[str, int] = {}
for _item in os.environ.get("CBAM_TUI_FAULTS", "").split(","):
    _point, _sep, _action = _item.partition("=")
    if _sep:
        _SPEC[_point.strip()] = _action.strip()


def hit(point: str) -> None:
    if not _SPEC:
        return
    action = _SPEC.get(point)
    if action is None:
        action = next((a for p, a in _SPEC.items() if p.endswith("*") and point.startswith(p[:-1])), None)
    if action is None:
        return
    action, _, nth = action.partition("@")
    _HITS[point] = _HITS.get(point, 0) + 1
    if nth and _HITS[point] != int(nth):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep:"):
        time.sleep(float(action.removeprefix("sleep:")))
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
