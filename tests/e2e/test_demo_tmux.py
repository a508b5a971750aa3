"""The real `cbam-tui demo`, in tmux, driven by keys as a person would."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))


class Terminal:
    def __init__(self, name: str, command: str, size: tuple[int, int], cwd: Path) -> None:
        self.name = name
        w, h = size
        created = subprocess.run(
            ["tmux", "new-session", "-d", "-P", "-F", "#{pane_id} #{pane_pid}", "-s", name, "-x", str(w), "-y", str(h),
             "-c", str(cwd), f"TERM=xterm-256color {command}; echo EXIT=$? > exit-code; sleep 600"],
            check=True, capture_output=True, text=True,
        )
        # Panes are addressed by their id: a session name can match another session.
        pane, pid = created.stdout.split()
        self.pane, self.pid = pane, int(pid)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.pane], capture_output=True, text=True).stdout

    def press(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.pane, *keys], check=True)

    def wait_for(self, found: Callable[[str], bool], timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if found(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never showed what was expected:\n{text}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-pane", "-t", self.pane], capture_output=True)


def batch(screen: str) -> int:
    return int(re.search(r"batch (\d+)/\d+", screen).group(1))


@pytest.mark.parametrize("size", [(100, 30), (80, 24)])
def test_demo_obeys_pause_next_stage_and_quit(tmp_path: Path, size: tuple[int, int]) -> None:
    run_dir = tmp_path / "run"
    command = (
        f"{CBAM_TUI} demo --run-dir {run_dir} --image-size 8 --limit-train 960 --limit-test 80 "
        "--batch-size 8 --stage-epochs 2,1,1 --log-every 20"
    )
    term = Terminal(f"cbam-e2e-{size[0]}", command, size, tmp_path)
    try:
        term.wait_for(lambda s: "Stage 1/3" in s and re.search(r"batch [1-9]\d*/", s) is not None)
        term.press("p")
        term.wait_for(lambda s: "PAUSED" in s, timeout=1.0)
        time.sleep(1.0)  # the batch in flight finishes; then nothing moves
        before = batch(term.screen())
        time.sleep(1.5)
        assert batch(term.screen()) == before, "the batch counter moved while paused"
        term.press("p")
        term.wait_for(lambda s: "RUNNING" in s and batch(s) > before, timeout=30)
        term.press("n")
        term.wait_for(lambda s: "Stage 2/3" in s, timeout=60)
        term.press("q")
        term.wait_for(lambda s: "Stop training and quit?" in s, timeout=5)
        term.press("y")
        deadline = time.monotonic() + 60
        while not (tmp_path / "exit-code").exists():
            assert time.monotonic() < deadline, term.screen()
            time.sleep(0.2)
        assert (tmp_path / "exit-code").read_text().strip() == "EXIT=0"
        final = "".join(term.screen().split())  # the summary line wraps at the terminal's width
        assert "cbam-tui:stopped" in final and str(run_dir) in final and "--resume" in final
    finally:
        term.close()
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["position"]["stage"] == 1  # stopped in stage 2 (0-based 1)
    assert (run_dir / "events.jsonl").read_text().count('"event":"stage_started"') == 2
