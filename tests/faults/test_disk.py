"""A full or failing disk: the run stops with one line and a non-zero exit once no good
checkpoint can be kept, and never claims a success it did not have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import faults
from core.events import RunFinished, RunStopped, SaveFailed
from core.vocab import StopReason
from tests.conftest import cli, tiny_config, train


@pytest.fixture
def fail(monkeypatch: pytest.MonkeyPatch):
    """Make a fault point raise ENOSPC (``@N``: only the Nth time) for the length of the test."""
    monkeypatch.setattr(faults, "_HITS", {})

    def at(point: str, when: str = "") -> None:
        monkeypatch.setitem(faults._SPEC, point, "enospc" + when)

    return at


def test_no_room_for_the_first_checkpoint_stops_the_run_without_claiming_success(tmp_path: Path, fail) -> None:
    fail("write:last.pt")
    outcome, rec = train(tiny_config(tmp_path))
    assert outcome == StopReason.WRITE_FAILED and outcome.exit_code == 1
    stopped = rec.of(RunStopped)[-1]
    assert stopped.checkpoint is None and "No space left on device" in stopped.detail
    assert "not kept" in stopped.detail and not rec.of(RunFinished)
    assert not (rec.run_dir / "checkpoints" / "last.pt").exists()
    assert not [p for p in (rec.run_dir / "checkpoints").iterdir() if ".tmp-" in p.name]  # nothing half-written
    events = [json.loads(x)["event"] for x in (rec.run_dir / "events.jsonl").read_text().splitlines()]
    assert "epoch_ended" not in events and events[-1] == "run_stopped"


def test_a_later_failed_checkpoint_keeps_the_previous_one_and_names_it(tmp_path: Path, fail, monkeypatch) -> None:
    fail("write:last.pt", "@2")  # the second epoch's end
    outcome, rec = train(tiny_config(tmp_path))
    assert outcome == StopReason.WRITE_FAILED
    stopped = rec.of(RunStopped)[-1]
    assert stopped.checkpoint == str(rec.run_dir / "checkpoints" / "last.pt")
    rows = (rec.run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # the header and epoch 1: epoch 2 was never kept, so it is not reported
    monkeypatch.delitem(faults._SPEC, "write:last.pt")
    outcome, _ = train(tiny_config(tmp_path, resume=str(rec.run_dir)))  # room again: it goes on
    assert outcome == StopReason.FINISHED
    assert [r.split(",")[1] for r in (rec.run_dir / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_events_that_cannot_be_written_stop_the_run_with_a_checkpoint_if_one_fits(tmp_path: Path, fail) -> None:
    fail("append:events.jsonl")  # full from the start
    outcome, rec = train(tiny_config(tmp_path))
    assert outcome == StopReason.WRITE_FAILED
    failed = rec.of(SaveFailed)
    assert failed and "No space left on device" in failed[0].message
    stopped = rec.of(RunStopped)[-1]
    assert stopped.reason == StopReason.WRITE_FAILED and stopped.checkpoint is not None  # the checkpoint fitted


def test_headless_says_it_in_one_line_and_exits_nonzero(tmp_path: Path, fail, capsys) -> None:
    fail("write:*")  # no atomic write succeeds: config, checkpoints
    code, out, err = cli(capsys, "demo", "--headless", "--runs-root", str(tmp_path / "runs"), "--image-size", "8",
                         "--limit-train", "48", "--limit-test", "24", "--batch-size", "8")
    assert code == 1
    assert "finished" not in out and err.count("\n") == 1
    assert err.startswith("cbam-tui: error: cannot write ") and err.strip().endswith("No space left on device")
