"""SIGTERM and SIGHUP, headless and under the dashboard: a checkpoint, the events flushed."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.terminal import Terminal, gone

CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))
TINY = ["--image-size", "8", "--limit-train", "480", "--limit-test", "24", "--batch-size", "8", "--log-every", "2"]
pytestmark = pytest.mark.slow


def assert_stopped_cleanly(run_dir: Path, reason: str) -> None:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert events[-1]["event"] == "run_stopped" and events[-1]["reason"] == reason
    assert events[-2]["event"] == "checkpoint_saved" and events[-2]["reason"] == "stop"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["position"]["batch"] == events[-1]["batch"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGUSR1, 75)])
def test_headless_signals(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Epoch: 1/3 | Batch: 6/"):
            break
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert f"stopped ({sig.name})" in out
    assert_stopped_cleanly(run_dir, sig.name)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize("how", ["hang-up", "sigterm"])
def test_dashboard_signals(tmp_path: Path, how: str) -> None:
    run_dir = tmp_path / "run"
    term = Terminal(f"cbam-sig-{how}", f"exec {CBAM_TUI} demo --run-dir {run_dir} {' '.join(TINY)}", (100, 30), tmp_path)
    try:
        term.wait_for(lambda s: "Stage 1/3" in s and "batch 0/" not in s)
        pid = term.pid  # `exec`: the pane's process is cbam-tui itself
        if how == "hang-up":
            term.close()  # the terminal goes away, as when an SSH connection drops: SIGHUP
        else:
            subprocess.run(["kill", "-TERM", str(pid)], check=True)
        deadline = time.monotonic() + 60
        while not gone(pid):
            events = (run_dir / "events.jsonl").read_text().splitlines()[-2:]
            assert time.monotonic() < deadline, f"the dashboard did not exit; last events: {events}\n{term.screen()}"
            time.sleep(0.2)
    finally:
        term.close()
    assert_stopped_cleanly(run_dir, "SIGHUP" if how == "hang-up" else "SIGTERM")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_a_stop_signal_closes_a_dashboard_whose_run_has_ended(tmp_path: Path) -> None:
    """Nothing is left to stop, so the signal closes the dashboard; the exit code is the run's."""
    command = f"{CBAM_TUI} demo --run-dir {tmp_path / 'run'} {' '.join(TINY)} --limit-train 48"
    term = Terminal("cbam-sig-ended", command, (100, 30), tmp_path)
    try:
        term.wait_for(lambda s: "FINISHED" in s)
        subprocess.run(["pkill", "-TERM", "-P", str(term.pid)], check=True)  # the shell's child: cbam-tui
        assert term.exit_code(timeout=30) == 0
    finally:
        term.close()
