"""A terminal a test can type into and read, as a person would: a tmux pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))


def gone(pid: int) -> bool:
    """The process has exited: no such pid, or a zombie its parent (tmux) has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class Terminal:
    def __init__(
        self, name: str, command: str, size: tuple[int, int], cwd: Path, exit_file: str = "exit-code"
    ) -> None:
        self.name = name
        self.exit_file = cwd / exit_file
        # A tmux server of its own: one shared by parallel tests exits when its last session
        # ends, and a test creating a session at that instant gets "server exited unexpectedly".
        self.tmux = ["tmux", "-L", f"cbam-test-{os.getpid()}-{name}"]
        w, h = size
        created = subprocess.run(
            [*self.tmux, "new-session", "-d", "-P", "-F", "#{pane_id} #{pane_pid}", "-s", name, "-x", str(w), "-y", str(h),
             "-c", str(cwd),
             # COLUMNS and LINES, if the test process has them, would override the pane's size.
             f"unset COLUMNS LINES; TERM=xterm-256color {command}; echo EXIT=$? > {exit_file}; sleep 600",
             # A command that ends (or an `exec`ed one that crashes) leaves its last screen to read.
             ";", "set-window-option", "remain-on-exit", "on"],
            check=True, capture_output=True, text=True,
        )
        # Panes are addressed by their id: a session name can match another session.
        pane, pid = created.stdout.split()
        self.pane, self.pid = pane, int(pid)
        self.closed = False

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.pane], capture_output=True, text=True).stdout

    def press(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.pane, *keys], check=True)

    def wait_for(self, found: Callable[[str], bool], timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if found(text):
                return text
            if time.monotonic() > deadline:
                size = subprocess.run(
                    [*self.tmux, "display", "-p", "-t", self.pane, "#{window_width}x#{window_height}"],
                    capture_output=True, text=True,
                ).stdout.strip()
                raise AssertionError(f"{self.name}'s screen ({size}) never showed what was expected:\n{text}")
            time.sleep(0.1)

    def exit_code(self, timeout: float = 60.0) -> int:
        """The command's exit status, once it has exited."""
        deadline = time.monotonic() + timeout
        while not (self.exit_file.exists() and self.exit_file.read_text().strip()):
            assert time.monotonic() < deadline, f"the command never exited:\n{self.screen()}"
            time.sleep(0.1)
        return int(self.exit_file.read_text().strip().removeprefix("EXIT="))

    def close(self) -> None:
        """Kill the pane (its process gets SIGHUP, as when an SSH connection drops) and the
        server that held it. The server is this terminal's own, so nothing else is touched."""
        if self.closed:
            return
        self.closed = True
        subprocess.run([*self.tmux, "kill-pane", "-t", self.pane], capture_output=True)
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)
