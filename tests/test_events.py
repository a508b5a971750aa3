"""Events read back from disk are untrusted: every field checked, nothing crashes later."""

from __future__ import annotations

import json

import pytest

from core.events import BadEvent, EpochEnded, RunStopped, from_dict, from_json
from core.state import RunState, describe
from tests.scripted import events as scripted


def test_every_event_of_a_run_survives_its_json_form() -> None:
    for e in scripted(epochs=2, batches=4, log_every=2):
        assert from_json(e.to_json()) == e


GOOD = EpochEnded(1, 1, 3, 1, 1, 6, 2.3, 10.0, 2.2, 12.5, 3.0, 100.0, 12.5, 6).to_dict()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"test_acc": "12.5"}, "test_acc"),  # a string where a number belongs
        ({"epoch": 1.5}, "epoch"),
        ({"epoch": True}, "epoch"),
        ({"epoch": None}, "epoch"),
        ({"event": "nope"}, "unknown event"),
        ({"event": 42}, "unknown event"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_bad_event(change: dict, why: str) -> None:
    with pytest.raises(BadEvent, match=why):
        from_dict({**GOOD, **change})


@pytest.mark.parametrize("line", ["42", "[]", '"x"', "{", "\xff\xfe", "null", '{"event":"epoch_ended"}', "[" * 100_000])
def test_anything_else_is_a_bad_event_too(line: str) -> None:
    with pytest.raises(BadEvent):
        from_json(line)


def test_control_characters_cannot_reach_the_terminal() -> None:
    planted = RunStopped("SIGINT", 1, 1, 0, None, "\x1b]0;pwned\x07\x1b[2J").to_dict()
    event = from_dict(json.loads(json.dumps(planted)))
    assert "\x1b" not in event.detail and "\\x1b" in event.detail
    assert all(ch.isprintable() for line in describe(event) for ch in line)


def test_the_fold_takes_any_valid_stream() -> None:
    state = RunState()
    for e in scripted(epochs=3, batches=4, log_every=2):
        state.apply(e)
    assert state.status == "RUNNING" and len(state.epochs) == 3 and state.best_acc == max(
        e.test_acc for e in state.epochs
    )
