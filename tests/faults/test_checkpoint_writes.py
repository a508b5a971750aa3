"""kill -9 in the middle of checkpoint writes, a cut events.jsonl, a full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.control import Control
from core.events import RunFinished, RunStopped, SaveFailed
from core.run_dir import RunDir
from core.runs import read_events
from core.train import FINISHED, STOPPED, Trainer
from tests.conftest import Recorder, tiny_config

WRITER = """
import sys, torch
from pathlib import Path
from core.run_dir import RunDir
run = RunDir(Path(sys.argv[1]))
big = torch.zeros(8_000_000)
i = 0
while True:
    i += 1
    run.save_checkpoint({"n": i, "big": big + i})
    print(i, flush=True)
"""


def test_kill_9_while_writing_never_leaves_a_broken_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    root = Path(__file__).resolve().parents[2]
    for delay in (0.05, 0.13, 0.29, 0.41, 0.57):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=root, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.readline()  # one complete checkpoint exists
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
        assert float(ckpt["big"][0]) == ckpt["n"] and float(ckpt["big"][-1]) == ckpt["n"]


def test_a_cut_last_line_of_events_does_not_break_resume(tmp_path: Path) -> None:
    control = Control()
    rec = Recorder(lambda e: control.stop("test") if e.kind == "batch_logged" and e.global_step == 4 else None)
    assert Trainer(tiny_config(tmp_path), rec, control).run() == STOPPED
    home = Path(rec.events[-1].checkpoint).parents[1]
    with (home / "events.jsonl").open("a") as f:
        f.write('{"event":"batch_logged","stage":1,"ep')  # the crash cut this line short
    again = Recorder()
    assert Trainer(tiny_config(tmp_path, resume=str(home)), again).run() == FINISHED
    parsed = list(read_events(home / "events.jsonl"))
    assert parsed[-1]["event"] == "run_finished"
    lines = (home / "events.jsonl").read_text().splitlines()
    assert sum(1 for line in lines if not line.endswith("}")) == 1  # only the cut line, not a merged one


def test_a_full_disk_when_saving_is_reported_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = RunDir.save_checkpoint
    calls = {"n": 0}

    def flaky(self: RunDir, state: dict, name: str = "last.pt") -> Path:
        calls["n"] += 1
        if calls["n"] in (3, 4):  # the second epoch's last.pt and best.pt
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, state, name)

    monkeypatch.setattr(RunDir, "save_checkpoint", flaky)
    rec = Recorder()
    assert Trainer(tiny_config(tmp_path), rec).run() == FINISHED
    failed = rec.of(SaveFailed)
    assert len(failed) == 2 and "No space left on device" in failed[0].message
    assert "previous checkpoint is kept" in failed[0].message
    assert rec.of(RunFinished)


def test_an_unwritable_run_location_is_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    from core.errors import RunDirError

    with pytest.raises(RunDirError, match="cannot create run directory"):
        Trainer(tiny_config(tmp_path, runs_root=str(blocker)), Recorder()).run()
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        Trainer(tiny_config(tmp_path, run_dir=str(blocker)), Recorder()).run()


def test_out_of_memory_suggests_a_smaller_batch_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.train as train_mod
    from core.errors import CbamError

    real = train_mod.F.cross_entropy
    calls = {"n": 0}

    def oom(*args, **kwargs):
        if kwargs.get("reduction") is None:
            calls["n"] += 1
            if calls["n"] == 9:  # in epoch 2, after epoch 1's checkpoint
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod.F, "cross_entropy", oom)
    rec = Recorder()
    with pytest.raises(CbamError, match="try a smaller --batch-size"):
        Trainer(tiny_config(tmp_path), rec).run()
    failed = rec.events[-1]
    assert failed.kind == "run_failed" and failed.checkpoint is not None
    assert torch.load(failed.checkpoint, weights_only=True)["position"]["epoch"] == 2
    home = Path(failed.checkpoint).parents[1]
    assert json.loads((home / "events.jsonl").read_text().splitlines()[-1])["event"] == "run_failed"


def test_the_stop_event_carries_the_checkpoint(tmp_path: Path) -> None:
    control = Control()
    rec = Recorder(lambda e: control.stop("test") if e.kind == "stage_started" and e.stage == 2 else None)
    Trainer(tiny_config(tmp_path), rec, control).run()
    stopped = rec.of(RunStopped)[0]
    assert stopped.checkpoint and Path(stopped.checkpoint).is_file()
