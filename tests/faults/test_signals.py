"""SIGTERM and SIGHUP, headless and under the dashboard: a checkpoint, the events flushed."""

from __future__ import annotations

import contextlib
import json
import os
import platform
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


class Pty:
    """The dashboard on a pseudo-terminal this test holds: it reads the screen until told
    to stop (then nobody reads: writes block once the buffer is full), or hangs up."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        import pty

        self.run_dir = tmp_path / "run"
        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)
        # TINY's 60 batches of 8 per epoch, plenty of them: the run is still training when the test acts.
        args = [CBAM_TUI, "demo", "--run-dir", str(self.run_dir), *TINY, "--limit-train", "4800"]
        self.proc = subprocess.Popen(
            args, preexec_fn=lambda: os.login_tty(slave),  # its controlling terminal, as a login shell's
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30", **(env or {})},
        )
        os.close(slave)
        self.seen = b""

    def read_until(self, text: bytes, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline and self.proc.poll() is None, f"never showed {text!r}"
            try:
                self.seen = (self.seen + os.read(self.master, 65536))[-200_000:]
            except BlockingIOError:
                time.sleep(0.05)

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def exit_code(self, timeout: float = 120.0) -> int:
        return self.proc.wait(timeout)

    def stopped_at(self) -> float:
        """When the run's stop was written (its last event's time stamp)."""
        last = json.loads((self.run_dir / "events.jsonl").read_text().splitlines()[-1])
        return float(last["t"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)


WRITE = {"x86_64": 1, "aarch64": 64}.get(platform.machine())  # write(2)'s number in /proc/PID/task/TID/syscall


def blocked_in_a_write(pid: int) -> bool:
    """A thread of ``pid`` sleeps in write(2) to a terminal: nobody reads, and its buffer is full."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            call = (task / "syscall").read_text().split()  # "running", or the number and arguments
            fd = int(call[1], 16)
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except (OSError, IndexError, ValueError):
            continue
        if call[0] == str(WRITE) and target.startswith("/dev/pts/"):
            return True
    return False


def fill_the_terminal(term: Pty, until_it_exits: bool = False) -> None:
    """Stop reading, and make the dashboard draw whole screens until a write to its terminal
    blocks (``until_it_exits``: on, until its event loop, stuck behind the blocked writes,
    is noticed and the process ends): as many presses as that takes, however slowly a
    loaded machine draws."""
    deadline = time.monotonic() + 120
    while term.proc.poll() is None and (until_it_exits or not blocked_in_a_write(term.proc.pid)):
        assert time.monotonic() < deadline, "the dashboard's writes never blocked" if not until_it_exits else (
            "the dashboard never noticed that its terminal blocks")
        with contextlib.suppress(BlockingIOError):  # its input is full too: the presses pile up unread
            term.press(b"\t")  # the next view: a whole screen each
        time.sleep(0.05)
    assert until_it_exits or term.proc.poll() is None, "the dashboard exited before its terminal was full"


def test_a_dashboard_whose_terminal_nobody_reads_still_leaves_on_sigterm(tmp_path: Path) -> None:
    term = Pty(tmp_path)
    try:
        term.read_until(b"Stage 1/3")
        fill_the_terminal(term)
        term.proc.send_signal(signal.SIGTERM)
        assert term.exit_code() == 143
        left = time.time()
        assert_stopped_cleanly(term.run_dir, "SIGTERM")
        assert left - term.stopped_at() < 5.0  # within 5 s of the stop checkpoint, blocked writes or not
    finally:
        term.close()


def test_a_dashboard_whose_terminal_blocks_stops_its_run_and_leaves(tmp_path: Path) -> None:
    """No signal at all: the event loop is stuck in a write, and the stall guard notices."""
    term = Pty(tmp_path, env={"CBAM_TUI_STALL_S": "4"})
    try:
        term.read_until(b"Stage 1/3")
        fill_the_terminal(term, until_it_exits=True)
        assert term.exit_code() == 129  # as if the connection had dropped
        left = time.time()
        assert_stopped_cleanly(term.run_dir, "SIGHUP")
        assert left - term.stopped_at() < 5.0
    finally:
        term.close()


def test_a_dashboard_whose_terminal_is_closed_leaves(tmp_path: Path) -> None:
    term = Pty(tmp_path)
    try:
        term.read_until(b"Stage 1/3")
        os.close(term.master)  # the terminal is gone: SIGHUP, and every write fails
        assert term.exit_code() == 129
        left = time.time()
        assert_stopped_cleanly(term.run_dir, "SIGHUP")
        assert left - term.stopped_at() < 5.0
    finally:
        term.close()
