"""The real `cbam-tui demo`, in tmux, driven by keys as a person would."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.terminal import CBAM_TUI, Terminal, needs_tmux

pytestmark = [needs_tmux, pytest.mark.slow]


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
        term.wait_for(lambda s: "PAUSED" in s, timeout=1.0)  # shown at once
        paused = term.wait_for(lambda s: re.search(r"paused at epoch 1, batch \d+", s) is not None, timeout=30)
        before = int(re.search(r"paused at epoch 1, batch (\d+)", paused).group(1))
        term.wait_for(lambda s: batch(s) == before, timeout=5)  # one position counter: the panel and the log agree
        term.press("s")  # the paused trainer takes it at once; the batch must not have moved meanwhile
        saved = term.wait_for(lambda s: "checkpoint saved:" in s, timeout=30)
        assert batch(saved) == before, "the batch counter moved while paused"
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
        screen = term.screen()
        final = "".join(screen.split())  # the summary line wraps at the terminal's width
        assert "cbam-tui:stopped" in final and str(run_dir) in final and "--resume" in final
        # The scrollback keeps the epochs: a header, and epoch 1 (cut short by n) with its accuracy.
        assert "epochstagetrainlosstrainacctestlosstestacctime" in final, screen
        row = next(line.split() for line in screen.splitlines() if line.split()[:2] == ["1", "1"])
        assert row[3].endswith("%") and row[5].endswith("%")
    finally:
        term.close()
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["position"]["stage"] == 1  # stopped in stage 2 (0-based 1)
    assert (run_dir / "events.jsonl").read_text().count('"event":"stage_started"') == 2


def test_a_two_process_demo_obeys_the_same_keys(tmp_path: Path) -> None:
    """--nproc-per-node 2: the dashboard follows the ranks through the run directory; each
    key reaches both at the same step."""
    import json

    run_dir = tmp_path / "run"
    command = (
        f"{CBAM_TUI} demo --nproc-per-node 2 --device cpu --run-dir {run_dir} --image-size 8 --limit-train 960 "
        "--limit-test 80 --batch-size 8 --stage-epochs 2,1,1 --log-every 10"
    )
    term = Terminal("cbam-e2e-ddp", command, (100, 30), tmp_path)
    try:
        screen = term.wait_for(lambda s: "Stage 1/3" in s and re.search(r"batch [1-9]\d*/", s) is not None)
        assert "global batch 16" in screen
        term.press("p")
        paused = term.wait_for(lambda s: re.search(r"paused at epoch 1, batch \d+", s) is not None, timeout=30)
        before = int(re.search(r"paused at epoch 1, batch (\d+)", paused).group(1))
        term.press("s")
        term.wait_for(lambda s: "checkpoint saved:" in s, timeout=30)
        term.press("p")
        term.wait_for(lambda s: "RUNNING" in s and batch(s) > before, timeout=30)
        term.press("n")
        term.wait_for(lambda s: "Stage 2/3" in s, timeout=60)
        term.press("q")
        term.wait_for(lambda s: "Stop training and quit?" in s, timeout=5)
        term.press("y")
        assert term.exit_code(timeout=60) == 0
        final = "".join(term.screen().split())
        assert "cbam-tui:stopped" in final and "--resume" in final
    finally:
        term.close()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    taken = [e for e in events if e["event"] == "command"]
    assert [c["verb"] for c in taken] == ["pause", "save", "resume", "next", "stop"]
    for c in taken:
        assert c["rank_steps"] == [c["global_step"]] * 2, c
    assert events[-1]["event"] == "run_stopped" and events[-1]["checkpoint"]
