"""What the dashboard costs: training throughput under it against headless, the
curves' redraw time with a full run's 40,000 iteration points, the CPU the app
uses while paused, and how fast a key press changes the screen while training.

Run from the repository root (needs tmux for the pseudo-terminal):

    python bench/dashboard.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))
# A short, real CPU training: 20 batches of 32 at 16x16 per epoch, one epoch per stage.
RUN = ["--image-size", "16", "--limit-train", "640", "--limit-test", "64", "--batch-size", "32", "--log-every", "5"]


def train_ips(run_dir: Path) -> float:
    """Training images per second of training time, over the whole run."""
    epochs = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if '"epoch_ended"' in x]
    images = sum(e["batches_done"] * 32 for e in epochs)
    return images / sum(e["batches_done"] * 32 / e["images_per_second"] for e in epochs)


def headless(run_dir: Path) -> float:
    subprocess.run([CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), *RUN], check=True, capture_output=True)
    return train_ips(run_dir)


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def dashboard(run_dir: Path, session: str = "cbam-bench") -> float:
    done = run_dir.parent / f"{run_dir.name}.exit"
    cmd = f"TERM=xterm-256color {CBAM_TUI} demo --run-dir {run_dir} {' '.join(RUN)}; echo $? > {done}"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd)
    events = run_dir / "events.jsonl"
    while not (events.exists() and '"run_finished"' in events.read_text()):
        time.sleep(0.5)
    tmux("send-keys", "-t", session, "q")
    while not done.exists():
        time.sleep(0.2)
    return train_ips(run_dir)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paused_cpu_and_key_latency(tmp: Path, session: str = "cbam-pause") -> tuple[float, list[float]]:
    run_dir = tmp / "paused"
    cmd = f"TERM=xterm-256color exec {CBAM_TUI} demo --run-dir {run_dir} {' '.join(RUN)} --stage-epochs 5,1,1"
    pane, pid_text = tmux("new-session", "-d", "-P", "-F", "#{pane_id} #{pane_pid}", "-s", session,
                          "-x", "100", "-y", "30", cmd).split()
    pid, session = int(pid_text), pane  # address the pane by id: names can match other sessions
    while "batch 5/" not in tmux("capture-pane", "-p", "-t", session):
        time.sleep(0.1)
    latencies = []
    views = [("2", "◆ CBAM", "Module"), ("1", "Module", "◆"), ("3", "trainable:", "Module"), ("1", "Module", "◆")]
    for key, shown, gone in views * 3:
        tmux("send-keys", "-t", session, key)
        t = time.perf_counter()
        while True:
            screen = tmux("capture-pane", "-p", "-t", session)
            if shown in screen and gone not in screen:
                break
            time.sleep(0.005)
        latencies.append((time.perf_counter() - t) * 1000)
        time.sleep(0.3)
    tmux("send-keys", "-t", session, "p")
    time.sleep(3.0)  # the batch in flight ends; the trainer waits
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(10.0)
    share = (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)
    tmux("kill-session", "-t", session)
    return share, latencies


def attached_key_latency(tmp: Path, presses: int = 10, session: str = "cbam-attach") -> tuple[list[float], list[float]]:
    """`watch` on a detached run: key press to changed screen, through the run directory.

    Paused to running is the link alone (the trainer waits, polling its inbox); running
    to paused also waits for the batch in flight to end.
    """
    root = tmp / "attached"
    started = subprocess.run(
        [CBAM_TUI, "demo", "--detach", "--runs-root", str(root), *RUN, "--stage-epochs", "50,1,1"],
        capture_output=True, text=True, check=True,
    )
    (run,) = root.iterdir()
    pid = int((run / "run.pid").read_text())
    subprocess.run([CBAM_TUI, "ctl", str(run), "pause"], check=True, capture_output=True)
    pane = tmux("new-session", "-d", "-P", "-F", "#{pane_id}", "-s", session, "-x", "100", "-y", "30",
                f"TERM=xterm-256color exec {CBAM_TUI} watch {run}").strip()

    def until(word: str) -> None:
        while word not in tmux("capture-pane", "-p", "-t", pane).splitlines()[0]:
            time.sleep(0.002)

    try:
        until("PAUSED")
        to_running, to_paused = [], []
        for _ in range(presses):
            for word, into in (("RUNNING", to_running), ("PAUSED", to_paused)):
                time.sleep(0.5)
                tmux("send-keys", "-t", pane, "p")
                t = time.perf_counter()
                until(word)
                into.append((time.perf_counter() - t) * 1000)
    finally:
        tmux("kill-pane", "-t", pane)
        os.kill(pid, 9)
    assert started.returncode == 0
    return to_running, to_paused


async def redraw_ms() -> tuple[list[float], list[float]]:
    from tests.conftest import tiny_config
    from tests.scripted import ScriptedTrainer, events
    from tui.app import make_app
    from tui.links import InProcessLink
    from tui.widgets.curves import EpochCurve, LossCurve

    script = ScriptedTrainer(lambda: events(epochs=50))
    app = make_app(InProcessLink(tiny_config(Path(tempfile.mkdtemp())), trainer=script))
    loss, all3 = [], []
    async with app.run_test(size=(100, 30)) as pilot:
        while len(app.state.epochs) < 50:
            await pilot.pause(0.1)
        assert len(app.state.iter_losses) >= 39_000
        dashboard = app.query_one("#dashboard")  # the dashboard's own plots (the curves view has others)
        curves = [dashboard.query_one("#loss-curve", LossCurve), *dashboard.query(EpochCurve)]
        assert len(curves) == 3 and all(c.size.width > 0 for c in curves)
        for _ in range(20):
            t = time.perf_counter()
            for i, curve in enumerate(curves):
                curve.update_from(app.state)
                curve.render()
                if i == 0:
                    loss.append((time.perf_counter() - t) * 1000)
            all3.append((time.perf_counter() - t) * 1000)
        await pilot.press("q", "y")
    return loss, all3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only-attached", action="store_true", help="measure only the attached dashboard's keys")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("bench/dashboard.py needs tmux")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.only_attached:
            running, paused = attached_key_latency(tmp)
            print(f"watch, paused -> RUNNING: median {statistics.median(running):.0f} ms, max {max(running):.0f} ms; "
                  f"running -> PAUSED: median {statistics.median(paused):.0f} ms, max {max(paused):.0f} ms")
            return
        plain, dash = [], []
        for r in range(args.repeats):  # alternating, so drift hits both alike
            plain.append(headless(tmp / f"headless-{r}"))
            dash.append(dashboard(tmp / f"dashboard-{r}"))
            print(f"repeat {r + 1}: headless {plain[-1]:.1f} img/s, dashboard {dash[-1]:.1f} img/s", flush=True)
        h, d = statistics.median(plain), statistics.median(dash)
        print(f"training throughput: dashboard keeps {100 * d / h:.1f}% of headless ({d:.1f} vs {h:.1f} img/s)")
        loss, all3 = asyncio.run(redraw_ms())
        print(f"redraw with 40,000 iteration points: loss curve median {statistics.median(loss):.1f} ms "
              f"(max {max(loss):.1f}); all three plots median {statistics.median(all3):.1f} ms")
        share, latencies = paused_cpu_and_key_latency(tmp)
        print(f"CPU while paused: {100 * share:.1f}% of one core")
        lat = statistics.median(latencies)
        print(f"key to screen while training: median {lat:.0f} ms, max {max(latencies):.0f} ms")
        running, paused = attached_key_latency(tmp)
        print(f"watch (run directory link), p on a paused run until RUNNING shows: median "
              f"{statistics.median(running):.0f} ms, max {max(running):.0f} ms of {len(running)}")
        print(f"  p on a running run until PAUSED shows (the batch in flight ends first): median "
              f"{statistics.median(paused):.0f} ms, max {max(paused):.0f} ms of {len(paused)}")


if __name__ == "__main__":
    main()
