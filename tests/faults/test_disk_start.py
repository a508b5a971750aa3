"""A real full disk (a small tmpfs as the runs root), at the start and while the run
trains: the events that say how a run began and how it ended always fit, because the
run keeps room for them past the end of events.jsonl; with no room for that at the
start, the run refuses in one sentence before it is a run at all."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.events import EpochEnded, Event
from core.plan import PlanOptions
from core.runs import inspect_run, list_runs
from core.vocab import Status, StopReason
from tests.conftest import cli, tiny_config, train

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a tmpfs")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the file system but ``leave`` bytes. Unbuffered: when another thread of the run
    (its system monitor) takes a page meanwhile, the disk is full one write early, and no
    bytes are left in a buffer for the close to fail on."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        left = st.f_bavail * st.f_frsize - leave
        try:
            while left > 0:
                left -= f.write(b"\0" * min(left, 1 << 20))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def test_a_disk_too_full_to_start_a_run_is_one_sentence_and_leaves_no_half_run(small_disk: Path, capsys) -> None:
    fill(small_disk, leave=24 << 10)  # room for config.json and part of run_started, as when it was cut
    code, _, err = cli(capsys, "demo", "--headless", "--runs-root", str(small_disk / "runs"), "--image-size", "8",
                         "--limit-train", "48", "--limit-test", "24", "--batch-size", "8")
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    assert "no room in" in err and "for the run's events" in err
    assert list_runs(small_disk / "runs") == []  # nothing "gone without a final event" to puzzle over later


def test_a_disk_that_fills_while_the_run_trains_still_gets_its_final_event(small_disk: Path) -> None:
    filled: list[Path] = []

    def fill_after_epoch_1(event: Event) -> None:
        if isinstance(event, EpochEnded) and event.epoch == 1:
            filled.append(fill(small_disk))  # to the last byte: the next checkpoint cannot be written

    plan = PlanOptions(stage_epochs="3,0,0", lrs="1e-2,1e-3,1e-3")  # stage 1: checkpoints of ~46 MB
    outcome, rec = train(tiny_config(small_disk, plan_opts=plan), react=fill_after_epoch_1)
    assert outcome == StopReason.WRITE_FAILED
    info = inspect_run(rec.run_dir)
    assert info.state is Status.STOPPED and "No space left on device" in info.message and info.bad_lines == 0, info
    assert info.resumable
    filled[0].unlink()  # room again: it goes on, every epoch once
    outcome, _ = train(tiny_config(small_disk, resume=str(rec.run_dir), plan_opts=plan))
    assert outcome == StopReason.FINISHED
    rows = (rec.run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["1", "2", "3"]
