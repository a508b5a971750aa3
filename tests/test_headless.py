"""The real console script, headless: a whole demo, and Ctrl-C then --resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))
TINY = ["--image-size", "8", "--limit-test", "24", "--batch-size", "8", "--log-every", "2"]


def test_demo_headless_finishes_three_stages_with_a_complete_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), "--limit-train", "48", *TINY],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for stage in (1, 2, 3):
        assert f" Stage {stage}/3: " in out
    assert "Epoch: 1/3 | Batch: 2/6 | Batch loss: " in out
    assert "Epoch 3/3 done | " in out and "finished in " in out
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "events.jsonl", "metrics.csv", "checkpoints"}
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1] == "run_finished" and events.count("epoch_ended") == 3
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 4


def start_until(run_dir: Path, limit_train: str, line_start: str) -> subprocess.Popen[str]:
    """A headless demo, returned once it has printed a line starting with ``line_start``."""
    proc = subprocess.Popen(
        [CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), "--limit-train", limit_train, *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(line_start):
            return proc
    raise AssertionError(f"the run ended before printing {line_start!r}")


def test_ctrl_c_saves_and_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_until(run_dir, "480", "Epoch: 1/3 | Batch: 10/")
    proc.send_signal(signal.SIGINT)  # Ctrl-C once: finish the batch, save, exit 130
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped (SIGINT) at epoch 1, batch" in out and "--resume" in out
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert stopped["stage"] == 0 and stopped["epoch"] == 1 and stopped["batch"] >= 10

    done = subprocess.run(
        [CBAM_TUI, "demo", "--headless", "--resume", str(run_dir), "--log-every", "50"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "cbam-tui resuming" in done.stdout and "finished in " in done.stdout
    started = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in started if e["event"] == "run_started"][-1]
    assert (resumed["start_stage"], resumed["start_epoch"], resumed["start_batch"]) == (1, 1, stopped["batch"])
    assert [e["epoch"] for e in started if e["event"] == "epoch_ended"] == [1, 2, 3]


def test_a_second_ctrl_c_exits_at_once_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_until(run_dir, "960", "Epoch 1/3 done")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["format"] == "cbam-tui" and ckpt["position"]["epoch"] >= 2
