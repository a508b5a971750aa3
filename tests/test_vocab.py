"""The steering vocabulary: stop reasons and their exit statuses, the stop a launcher passes
on, a run's Status, and the one judge of a dead run that `runs`, `compare` and `watch` share."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from core.comparison import read_compared
from core.errors import ConfigError
from core.runs import inspect_run
from core.state import RunState
from core.vocab import STOP_SIGNALS, Command, Exit, Status, StopReason, judge
from tests.helpers import fake_run
from tests.scripted import events as scripted_events


def test_each_stop_reason_has_its_exit_status() -> None:
    codes = {reason: reason.exit_code for reason in StopReason}
    assert codes[StopReason.SIGINT] == 128 + signal.SIGINT == 130
    assert codes[StopReason.SIGTERM] == 143 and codes[StopReason.SIGHUP] == 129
    assert codes[StopReason.SIGUSR1] == Exit.REQUEUE == 75  # checkpointed for preemption: requeue it
    assert {r for r, code in codes.items() if code == Exit.OK} == {
        StopReason.FINISHED, StopReason.QUIT, StopReason.COMMAND, StopReason.LEFT}
    assert tuple(signal.Signals[r.value] for r in StopReason if r.signalled) == STOP_SIGNALS
    assert all(StopReason.of_signal(s).signalled for s in STOP_SIGNALS)


def test_a_launcher_passes_on_the_stops_its_ranks_can_take_and_no_others() -> None:
    assert Command.stopping(StopReason.SIGUSR1).stop_reason() is StopReason.SIGUSR1
    assert Command.stopping(StopReason.QUIT).stop_reason() is StopReason.QUIT
    assert Command.stopping(StopReason.LEFT).stop_reason() is StopReason.COMMAND  # a plain stop
    with pytest.raises(ConfigError, match="stop takes no value or one of quit, SIGINT"):
        Command("stop", "failed")  # a reason only the trainer itself gives
    assert StopReason.of_text("write failed") is StopReason.WRITE_FAILED
    assert StopReason.of_text("\x1b]2;pwned\x07") is None  # a run_stopped line is read from disk


def test_a_status_in_an_index_is_one_that_events_can_leave() -> None:
    data = RunState(keep_losses=False).snapshot()
    assert data["status"] == "STARTING"  # the value index.json keeps: never renamed
    assert RunState.restore({**data, "status": "PAUSED"}).status is Status.PAUSED
    for judged in ("DEAD", "UNREADABLE", "paused", "\x1b]2;pwned\x07", ["PAUSED"]):
        with pytest.raises(ValueError):
            RunState.restore({**data, "status": judged})


@pytest.mark.parametrize("status", [s for s in Status if s.folded])
def test_only_a_run_that_has_not_ended_and_that_no_process_holds_is_dead(status: Status) -> None:
    assert judge(status, alive=True) is status
    assert (judge(status, alive=False) is Status.DEAD) is not status.ended


@pytest.mark.parametrize("hold", [True, False], ids=["held", "gone"])
@pytest.mark.parametrize("last", ["", '{"event":"run_gone","run_dir":"elsewhere"}'], ids=["running", "odd status"])
def test_runs_and_compare_judge_a_dead_run_alike(tmp_path: Path, hold: bool, last: str) -> None:
    """They once had rules of their own: a log that left a run in a status that the one
    rule's list of live statuses lacked was dead to `runs` and "gone" to `compare`."""
    body = [e for e in scripted_events(epochs=2, batches=4, log_every=2) if not e.transient][:6]
    path, holder = fake_run(tmp_path, "r", body, hold=hold)
    try:
        if last:
            with (path / "events.jsonl").open("a") as f:
                f.write(json.dumps(json.loads(last), separators=(",", ":")) + "\n")
        listed, compared = inspect_run(path).state, read_compared(path).state
        assert (listed is Status.DEAD) == (compared is Status.DEAD) == (not hold), (listed, compared)
    finally:
        if holder is not None:
            holder.close()
