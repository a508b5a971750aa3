"""Following a run live: a new line reaches the follower as soon as it is written, through
watchfiles or, where watchfiles is absent or fails, through polling; a stop ends it at once."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import core.follow as follow
from core.events import BatchLogged, Event, Watching
from core.follow import Follower
from tests.conftest import Recorder
from tests.helpers import fake_run
from tests.scripted import events as scripted_events

SLOW = 30.0  # the one way left to notice a change in each case: a follower that waited this long fails
PROMPT = 2.0  # seconds for a line to arrive, and for a stop to end the follower, on a loaded machine


def _watch_limit(*_args: Any) -> Any:
    raise OSError("OS file watch limit reached")


class _Broken:
    """A watcher that starts, then fails at its first wait."""

    def __init__(self, *_args: Any) -> None:
        pass

    def watch(self, *_args: Any) -> Any:
        import watchfiles._rust_notify as rust

        raise rust.WatchfilesRustInternalError("the watcher thread died")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("watcher", ["watchfiles", "absent", "watch limit", "broken"])
def test_a_new_line_reaches_the_follower_promptly_and_a_stop_ends_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watcher: str
) -> None:
    import watchfiles._rust_notify as rust

    monkeypatch.setattr(follow, "WAIT_S", SLOW)  # a watcher's timeout: it must wake the follower itself
    poll_s = follow.POLL_S
    if watcher == "watchfiles":
        poll_s = SLOW  # only the watcher can wake it
    elif watcher == "absent":  # only the poll can, in these three
        monkeypatch.setitem(sys.modules, "watchfiles._rust_notify", None)
    else:
        monkeypatch.setattr(rust, "RustNotify", _watch_limit if watcher == "watch limit" else _Broken)
    script = [e for e in scripted_events(epochs=1, batches=4, log_every=2) if not e.transient]
    path, holder = fake_run(tmp_path, "r", script[:3], hold=True)
    assert holder is not None
    watching = threading.Event()
    arrived: dict[int, float] = {}
    news = threading.Condition()

    def react(e: Event) -> None:
        if isinstance(e, Watching):
            watching.set()
        if isinstance(e, BatchLogged):
            with news:
                arrived[e.global_step] = time.monotonic()
                news.notify_all()

    follower = Follower(path, Recorder(react), poll_s=poll_s)
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        assert watching.wait(60)
        line = next(e for e in script if isinstance(e, BatchLogged))
        for step in range(1000, 1005):
            written = time.monotonic()
            holder.write(msgspec.structs.replace(line, global_step=step))
            with news:
                assert news.wait_for(lambda s=step: s in arrived, PROMPT + 5), f"line {step} never arrived"
            assert arrived[step] - written < PROMPT, arrived[step] - written
    finally:
        follower.stop()
        thread.join(SLOW)

    # A stop while nothing changes: a second follower on the now quiet run, stopped once it waits.
    waiting = threading.Event()
    wait = follow._Changes.wait

    def noted(changes: follow._Changes, timeout: float) -> None:
        waiting.set()
        wait(changes, timeout)

    monkeypatch.setattr(follow._Changes, "wait", noted)
    follower = Follower(path, lambda e: None, poll_s=poll_s)
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        assert waiting.wait(60)
        stopped = time.monotonic()
        follower.stop()
        thread.join(PROMPT + 5)
        assert not thread.is_alive() and time.monotonic() - stopped < PROMPT
    finally:
        follower.stop()
        thread.join(SLOW)
        holder.close()
