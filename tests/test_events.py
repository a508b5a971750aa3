"""Events read back from disk are untrusted: every field checked, nothing crashes later."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest

from core.events import (
    MAX_TEXT,
    AttentionMaps,
    BadEvent,
    BatchLogged,
    EpochEnded,
    IterLosses,
    RatesChanged,
    RunStopped,
    from_dict,
    from_json,
    read_line,
)
from core.state import RunState, describe, lr_text
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


def test_a_refused_command_is_an_event_like_the_others() -> None:
    from core.events import CommandRefused

    refused = CommandRefused("lr", "ctl pid 7", "this stage has no group 'x' (it has new)", 12, "x2", "x",
                             "00000000000000000001-7-lr")
    assert from_json(refused.to_json()) == refused
    with pytest.raises(BadEvent, match="command_refused.reason"):
        from_dict({**refused.to_dict(), "reason": 3})
    state = RunState()
    state.apply(refused)
    assert state.refused == 1 and state.commands == 0
    assert describe(refused) == ["command lr x2 (group x) from ctl pid 7 refused: this stage has no group 'x' (it has new)"]


# Lines as the trainer wrote them before its events were msgspec Structs (e2d0d3c): json.dumps
# with ASCII escapes, NaN and Infinity for non-finite figures, the stamp last.
GOLDEN = tuple((Path(__file__).parent / "golden-events.jsonl").read_text().splitlines())


@pytest.mark.parametrize("text", GOLDEN, ids=lambda text: json.loads(text)["event"])
def test_a_line_an_earlier_version_wrote_reads_back_and_is_written_again_byte_for_byte(text: str) -> None:
    line = text.encode()
    event, t = read_line(line)
    assert event.kind == json.loads(text)["event"] and t == json.loads(text)["t"]
    assert json.dumps({**event.to_dict(), "t": t}, separators=(",", ":")).encode() == line
    assert _same(from_json(event.to_json()), event)


def _same(a: object, b: object) -> bool:
    """Equal, NaN counted equal to NaN."""
    return json.dumps(msgspec.to_builtins(a)) == json.dumps(msgspec.to_builtins(b))


def test_a_non_finite_loss_reads_back_as_the_number_it_was() -> None:
    event, _ = read_line(GOLDEN[3].encode())
    assert isinstance(event, IterLosses) and math.isnan(event.losses[1]) and event.losses[2] == 1e-7
    logged = from_json(GOLDEN[2])
    assert isinstance(logged, BatchLogged) and logged.grad_norms == (1.5, math.inf)


def test_a_whole_number_reads_as_a_float_where_a_float_belongs_but_not_the_other_way() -> None:
    event = from_dict({**GOOD, "test_acc": 12})
    assert isinstance(event, EpochEnded) and type(event.test_acc) is float and event.test_acc == 12.0
    with pytest.raises(BadEvent, match=r"^epoch_ended.epoch: expected int, got float$"):
        from_dict({**GOOD, "epoch": 1.0})
    with pytest.raises(BadEvent, match=r"^epoch_ended.batches_done: expected int, got str$"):
        from_json(json.dumps({**GOOD, "batches_done": "6"}))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('"test_acc":1e400', "epoch_ended.test_acc: number out of range"),  # beyond any float
        ('"epoch":' + "9" * 5000, "epoch_ended.epoch: integer value out of range"),
        ('"epoch":[1]', "epoch_ended.epoch: expected int, got array"),
        ('"epoch":{"a":1}', "epoch_ended.epoch: expected int, got object"),
    ],
)
def test_numbers_no_float_holds_and_values_of_another_shape_are_bad_events(text: str, why: str) -> None:
    line = json.dumps(GOOD).replace('"epoch": 1', text.replace(":", ": ", 1), 1) if "epoch" in text.split(":")[0] \
        else json.dumps(GOOD).replace('"test_acc": 12.5', text.replace(":", ": ", 1), 1)
    with pytest.raises(BadEvent) as info:
        from_json(line)
    assert str(info.value) == why


def test_a_count_up_to_a_trillion_reads_back_and_one_past_it_is_a_bad_line() -> None:
    event = from_json(json.dumps({**GOOD, "global_step": 10**12}))
    assert isinstance(event, EpochEnded) and event.global_step == 10**12
    for step in (10**12 + 1, 2**63 - 1, 10**30):  # no axis, no time left, can hold it: no view gets it
        with pytest.raises(BadEvent, match=r"^epoch_ended.global_step: expected int <= 1000000000000$"):
            from_json(json.dumps({**GOOD, "global_step": step}))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"test_acc": 1e308}, "epoch_ended.test_acc: expected float <= 100.0"),
        ({"train_acc": -0.5}, "epoch_ended.train_acc: expected float >= 0.0"),
        ({"best_acc": float("inf")}, "epoch_ended.best_acc: expected float <= 100.0"),
        ({"epoch": -1}, "epoch_ended.epoch: expected int >= 0"),
    ],
)
def test_a_percentage_or_a_count_no_run_can_have_is_a_bad_line(change: dict, why: str) -> None:
    with pytest.raises(BadEvent) as info:
        from_json(json.dumps({**GOOD, **change}))
    assert str(info.value) == why


def test_a_machine_sample_with_a_figure_no_machine_has_is_a_bad_one() -> None:
    good = {"event": "system", "cpu_percent": 50.0, "rss": 1, "cpus": 2.0, "busy_elsewhere": 0.5}
    assert from_dict(good).busy_elsewhere == 0.5  # type: ignore[attr-defined]
    for bad in (float("nan"), -3.0, 1e300):
        with pytest.raises(BadEvent, match=r"^system.busy_elsewhere: expected float"):
            from_json(json.dumps({**good, "busy_elsewhere": bad}))


def test_a_wrong_value_deep_inside_an_event_is_named_by_its_path() -> None:
    data = json.loads(GOLDEN[5])
    data["images"][0]["blocks"][0]["size"] = "2"
    with pytest.raises(BadEvent, match=r"^attention.images\[0\].blocks\[0\].size: expected int, got str$"):
        from_dict(data)
    del data["images"][0]["blocks"][0]["size"]
    with pytest.raises(BadEvent, match=r"^attention.images\[0\].blocks\[0\] lacks 'size'$"):
        from_json(json.dumps(data))


def test_unknown_fields_are_passed_over_however_deep_but_nesting_cannot_exhaust_the_stack() -> None:
    later = json.dumps({**GOOD, "from_a_later_version": {"a": [[1, 2], {"b": None}]}})
    assert from_json(later) == from_dict(GOOD)
    deep = json.dumps(GOOD)[:-1] + ',"x":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(BadEvent, match="not JSON"):
        from_json(deep)
    with pytest.raises(BadEvent, match="not JSON"):
        read_line(deep.encode())


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b'{"event":"' + b"x" * 100_000 + b'"}', "unknown event '" + "x" * 40 + "'"),
        (b'{"stage":1}', "unknown event 'None'"),
        (b'{"event":"\\u001b[2J"}', "unknown event '\\\\x1b[2J'"),
        (b"[1]", "not a JSON object"),
        (b'{"event":"epoch_ended"', "not JSON (JSONDecodeError)"),  # cut short by a crash
        (b"\xff\xfe{}", "not JSON (UnicodeDecodeError)"),
    ],
)
def test_what_a_bad_line_is_told_in_one_short_line(line: bytes, why: str) -> None:
    with pytest.raises(BadEvent) as info:
        read_line(line)
    assert str(info.value) == why


def test_strings_are_cut_and_escaped_however_deep_they_sit() -> None:
    data = json.loads(GOLDEN[5])
    data["images"][0]["label"] = "\x1b[31m" + "c" * 10_000
    event = from_dict(data)
    assert isinstance(event, AttentionMaps)
    label = event.images[0].label
    assert label.startswith("\\x1b[31mccc") and len(label) == MAX_TEXT - 1 + len("\\x1b")
    assert event.images[0].blocks == from_json(GOLDEN[5]).images[0].blocks  # type: ignore[attr-defined]


def test_the_stamp_is_read_wherever_the_line_holds_it() -> None:
    line = json.dumps({"t": 12.5, **from_json(GOLDEN[8]).to_dict()}).encode()
    assert read_line(line)[1] == 12.5
    assert read_line(GOLDEN[8].replace('"t":1767268812.123', '"t":"soon"').encode())[1] is None
    assert read_line(GOLDEN[8].replace(',"t":1767268812.123', "").encode())[1] is None
    for forged in ("1e17", "1e300", "-5"):  # no clock says it: no date to show, no duration to add up
        assert read_line(GOLDEN[8].replace('"t":1767268812.123', f'"t":{forged}').encode())[1] is None


@pytest.mark.parametrize(("rate", "text"), [
    (1e-12, "1e-12"), (5e-13, "5e-13"), (2.5e-4, "2.5e-4"), (3e-4, "3e-4"), (1e-3, "1e-3"), (3e-3, "3e-3"),
    (0.03, "3e-2"), (0.25, "2.5e-1"), (1.0, "1"), (3.0, "3"), (2.5, "2.5"), (10.0, "1e1"), (3e3, "3e3"),
    (1e6, "1e6"), (0.0, "0"), (9.96, "1e1"),
])
def test_a_rate_is_written_as_one_types_it(rate: float, text: str) -> None:
    """Two digits, no "+", no leading zero in the exponent, none at all for 1 to 9.9 (it said 3e0 and 3e+03)."""
    assert lr_text(rate) == text


def test_a_rate_change_by_a_thousand_reads_as_typed() -> None:
    change = RatesChanged("ctl", 1, ("new",), (3e-3,), (3.0,), 10)
    assert describe(change)[0].startswith("learning rates (ctl): new 3e-3 → 3;")


def test_a_rate_change_on_the_last_stage_promises_no_next_stage() -> None:
    assert describe(RatesChanged("keys", 3, ("new",), (1e-3,), (5e-4,), 10, last_stage=True)) == [
        "learning rates (keys): new 1e-3 → 5e-4"]
