"""The dashboard in a real browser: `cbam-tui watch RUN --web` served to the system's
Chromium, driven by Playwright (never a downloaded browser), as a person who forwarded
a port over SSH would use it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.terminal import CBAM_TUI, gone
from tests.helpers import events, of, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CBAM_TUI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
TINY = ["--image-size", "8", "--limit-train", "4000", "--limit-test", "64", "--batch-size", "8",
        "--stage-epochs", "3,3,3", "--log-every", "10", "--threads", "1"]
# textual-serve's page keeps its xterm.js terminal in a closure; the test's copy of the
# script also hands it to the window, so the test reads the screen as the page shows it.
TERMINAL = re.compile(rb"this\.terminal=new (\w+)\.Terminal\(")
SCREEN_JS = """() => {
  const t = window.__cbamTerminal;
  if (!t) return "";
  const b = t.buffer.active, rows = [];
  for (let y = 0; y < t.rows; y++) { const l = b.getLine(b.viewportY + y); rows.push(l ? l.translateToString(true) : ""); }
  return rows.join("\\n");
}"""


@pytest.fixture
def browser_tools() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("needs Chromium: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[test]'")
    pytest.importorskip("textual_serve", reason="needs textual-serve: pip install -e '.[web]'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as tools:
        yield tools


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_the_browser_page_follows_the_run_and_its_keys_steer_it(tmp_path: Path, browser_tools) -> None:
    # A run directory no shell may read as code: textual-serve runs `watch RUN` through one.
    run = tmp_path / "it's a $(touch pwned) run"
    started = subprocess.run([CBAM_TUI, "demo", "--detach", "--run-dir", str(run), *TINY],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    pid = int((run / "run.pid").read_text())
    server = subprocess.Popen([CBAM_TUI, "watch", str(run), "--web", "0.0.0.0:0"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    browser = None
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        found = re.search(r"http://\S+:(\d+)/\?token=(\S+)", first)
        assert found, first
        base = f"http://127.0.0.1:{found[1]}"
        # Off loopback, nothing is answered without the token: not the page, its files or its websocket.
        for path in ("/", "/static/js/textual.js", "/ws"):
            assert status_of(base + path) == 403, path
        wrong = found[2][:-1] + ("y" if found[2].endswith("x") else "x")  # one character off
        assert status_of(f"{base}/?token={wrong}") == 403

        browser = browser_tools.chromium.launch(executable_path=CHROMIUM)  # type: ignore[attr-defined]
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.route("https://fonts.googleapis.com/**", lambda route: route.abort())  # no network here

        def expose_terminal(route) -> None:
            script = route.fetch().body()
            assert TERMINAL.search(script), "textual-serve's textual.js no longer makes this.terminal"
            route.fulfill(body=TERMINAL.sub(rb"this.terminal=window.__cbamTerminal=new \1.Terminal(", script, 1),
                          content_type="application/javascript")

        page.route("**/static/js/textual.js", expose_terminal)
        assert page.goto(f"{base}/?token={found[2]}").status == 200  # type: ignore[union-attr]

        def screen() -> str:
            return str(page.evaluate(SCREEN_JS))

        def dashboard() -> str:
            shown = screen()
            return shown if "Stage 1/3" in shown and "batch" in shown and "attached" in shown else ""

        # "attached" comes with the follower's first look at the run's owner, a moment after its history.
        shown = wait_for("the run on the page, attached", dashboard, timeout=120)
        assert "it's a $(touch pwned) run"[:12] in shown, shown
        wait_for("the run training", lambda: of(run, "batch_logged"), timeout=120)
        page.focus(".xterm-helper-textarea")  # where xterm.js takes the keyboard
        page.keyboard.press("p")  # pause, as on the terminal
        paused = wait_for("the run pausing", lambda: of(run, "paused"), timeout=60)
        taken = [e for e in events(run) if e["event"] == "command" and e["verb"] == "pause"]
        assert paused[0]["reason"] == "user" and taken and taken[0]["origin"].startswith("watch pid"), taken
        wait_for("the page showing the pause", lambda: "PAUSED" in screen(), timeout=60)
        assert not list(tmp_path.glob("pwned*"))
        page_watch = int(taken[0]["origin"].removeprefix("watch pid "))  # the page's own `watch` process
    except BaseException:
        if browser is not None:
            browser.contexts[0].pages[0].screenshot(path=str(tmp_path / "page.png"))
        raise
    finally:
        if browser is not None:
            browser.close()
        server.send_signal(signal.SIGINT)  # Ctrl+C stops serving; the run goes on
        out, _ = server.communicate(timeout=60)
        run_went_on = not gone(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert server.returncode == 0, out
    assert run_went_on, "the run ended with the server"
    assert "Traceback" not in out, out
    wait_for("the page's watch process to end with the server", lambda: gone(page_watch), timeout=30)
