"""What the dashboard costs the training it shows.

Legs, each a real `cbam-tui demo` headless and under the dashboard (in a tmux
pseudo-terminal), run in alternating pairs (headless first in odd pairs, the
dashboard first in even ones), medians of the pairs:

- dispatch: 8x8 images, batch 8, one epoch per stage: a step of tens of ms,
  where the training thread needs Python for most of it, as on a GPU;
- standard: 16x16 images, batch 32 (the earlier benchmark's run), 100 batches
  an epoch; standard-short: the same with 20 batches an epoch;
- short-epochs: the dispatch step with epochs of about a second (a GPU's);
- gpu64, gpu512: 32x32 images on CUDA, batch 64 and 512 (bench/gpu_check.sh);
  gpu512-long: 6 epochs a stage, long enough for --py-spy.

Throughput is training images per second of training time, from the runs' own
events.jsonl. The dashboard's runs report the UI thread's CPU time while the run
trained (the app's own measurement, `CBAM_TUI_UI_REPORT`), as a share of that
wall time; `--py-spy` also samples which thread holds the GIL for one window.

Then: the UI thread's share on the default view at 80x24 and 200x50 and on the
curves view at 120x40 (dispatch leg); the plots' build time with a full run's
40,000 points; key to screen while training (a view switch, and `p` until
PAUSED shows); the CPU of a paused dashboard; and `watch`'s key latency through
the run directory.

Run from the repository root (needs tmux):

    python bench/dashboard.py [--pairs 3] [--legs dispatch,standard] [--noise 3] [--py-spy [--py-spy-s 15]
                              [--profiles DIR]]

CBAM_TUI_BIN=PATH measures another cbam-tui (another checkout's) with the same legs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The cbam-tui measured: this environment's, or CBAM_TUI_BIN's (another checkout's, to compare two versions).
CBAM_TUI = os.environ.get("CBAM_TUI_BIN") or str(Path(sys.executable).with_name("cbam-tui"))
LEGS = {
    "dispatch": ["--image-size", "8", "--batch-size", "8", "--limit-train", "2400", "--limit-test", "32",
                 "--stage-epochs", "1,1,1", "--log-every", "5"],
    "standard": ["--image-size", "16", "--batch-size", "32", "--limit-train", "3200", "--limit-test", "64",
                 "--stage-epochs", "1,1,1", "--log-every", "5"],
    # The same step with 20 batches an epoch: a 7 s run, mostly start-up and epoch ends
    # (each a change of state, drawn at once), which no real run is like.
    "standard-short": ["--image-size", "16", "--batch-size", "32", "--limit-train", "640", "--limit-test", "64",
                       "--stage-epochs", "1,1,1", "--log-every", "5"],
    # Epochs of about a second, as a GPU's are: an epoch's end (a change of state) every second.
    "short-epochs": ["--image-size", "8", "--batch-size", "8", "--limit-train", "192", "--limit-test", "32",
                     "--stage-epochs", "4,4,4", "--log-every", "5"],
    # On a GPU (bench/gpu_check.sh): 32x32, the default plan's shape, every step dispatch-bound;
    # 300 and 60 batches an epoch, epochs of a few seconds.
    "gpu64": ["--device", "cuda", "--image-size", "32", "--batch-size", "64", "--limit-train", "19200",
              "--limit-test", "1000", "--stage-epochs", "1,1,1", "--log-every", "100"],
    "gpu512": ["--device", "cuda", "--image-size", "32", "--batch-size", "512", "--limit-train", "30720",
               "--limit-test", "1000", "--stage-epochs", "2,2,2", "--log-every", "10"],
    # The same with 6 epochs a stage: stages 2 and 3 long enough for --py-spy to sample.
    "gpu512-long": ["--device", "cuda", "--image-size", "32", "--batch-size", "512", "--limit-train", "30720",
                    "--limit-test", "1000", "--stage-epochs", "6,6,6", "--log-every", "10"],
}


def events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def throughput(run_dir: Path) -> dict:
    """Training images/s of training time over the run, over the epochs after the first (the
    dashboard's start-up, building its screens, falls in the first), and per epoch; torch's threads."""
    evs = events(run_dir)
    started = next(e for e in evs if e["event"] == "run_started")
    epochs = [e for e in evs if e["event"] == "epoch_ended"]
    batch = started["batch_size"]

    def rate(some: list[dict]) -> float:
        images = sum(e["batches_done"] * batch for e in some)
        return images / sum(e["batches_done"] * batch / e["images_per_second"] for e in some)

    return {"ips": rate(epochs), "later": rate(epochs[1:]), "epochs": [e["images_per_second"] for e in epochs],
            "threads": started.get("threads", 0)}


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def until_finished(log: Path) -> None:
    """Wait for the run's end by reading its log, as both legs do: the bench's own polling
    costs the same CPU beside either run."""
    while not (log.exists() and '"stage_started"' in log.read_text()):
        time.sleep(0.2)
    while '"run_finished"' not in log.read_text():
        time.sleep(0.5)


def headless(run_dir: Path, leg: list[str]) -> dict:
    proc = subprocess.Popen([CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), *leg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    until_finished(run_dir / "events.jsonl")
    if proc.wait() != 0:
        raise SystemExit(f"headless run failed: {proc.stderr.read() if proc.stderr else ''}")
    return throughput(run_dir)


def dashboard(run_dir: Path, leg: list[str], size: tuple[int, int] = (120, 40), keys: str = "",
              py_spy: float = 0.0) -> dict:
    """One run under the dashboard in a fresh tmux pane; ``keys`` pressed once it trains."""
    report = run_dir.parent / f"{run_dir.name}.ui.json"
    done = run_dir.parent / f"{run_dir.name}.exit"
    cmd = f"TERM=xterm-256color CBAM_TUI_UI_REPORT={report} {CBAM_TUI} demo --run-dir {run_dir} {' '.join(leg)}"
    pane, shell = tmux("new-session", "-d", "-P", "-F", "#{pane_id} #{pane_pid}", "-s", f"bench-{run_dir.name}",
                       "-x", str(size[0]), "-y", str(size[1]), f"{cmd}; echo $? > {done}").split()
    log = run_dir / "events.jsonl"
    while not (log.exists() and '"stage_started"' in log.read_text()):
        time.sleep(0.2)
    if keys:
        tmux("send-keys", "-t", pane, keys)
    spy = None
    if py_spy:
        while '"stage":2' not in log.read_text().replace(" ", ""):  # stage 2: the UI has settled in
            time.sleep(0.2)
        raw = run_dir.parent / f"{run_dir.name}.gil"
        pid = subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True).stdout.split()[0]  # cbam-tui
        # --nonblocking: py-spy reads the process without stopping it (its default pauses it at
        # every sample, which would show as the dashboard's cost).
        spy = subprocess.Popen(["py-spy", "record", "--gil", "--threads", "--nonblocking", "--rate", "100",
                                "--duration", str(int(py_spy)), "--format", "raw", "-o", str(raw), "--pid", pid],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spied_from = time.monotonic()
    while '"run_finished"' not in log.read_text():
        time.sleep(0.5)
    if spy is not None:  # the run's end ends the window: the dashboard's own shutdown is not its cost
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and stops
        py_spy = min(py_spy, time.monotonic() - spied_from)
    tmux("send-keys", "-t", pane, "q")
    while not done.exists():
        time.sleep(0.2)
    tmux("kill-pane", "-t", pane)
    ui = json.loads(report.read_text())
    out = {**throughput(run_dir), "ui_share": ui["ui_cpu_s"] / max(ui["wall_s"], 1e-9), "top_factor": ui["top_factor"]}
    if spy is not None:
        spy.wait()
        out["gil_raw"] = raw
        out["gil"] = gil_shares(raw, py_spy)
        out["spied_s"] = py_spy
    return out


def samples(raw: Path) -> Iterator[tuple[str, list[str], int]]:
    """py-spy's raw output (``--threads``): each stack's thread name, its frames, its sample count."""
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        thread, *frames = stack.split(";")
        yield thread.split(": ", 1)[-1].rstrip(")"), frames, int(n)


def gil_shares(raw: Path, seconds: float) -> dict[str, float]:
    """py-spy's --gil samples per thread, as a share of the wall time (100 samples a second)."""
    counts: dict[str, int] = {}
    for thread, _, n in samples(raw):
        counts[thread] = counts.get(thread, 0) + n
    return {k: v / (100 * seconds) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


TRUNK = 0.9  # frames in more of a thread's samples than this are its trunk (the app's main loop)


def hotspots(raw: Path, thread: str, top: int = 12) -> list[tuple[float, str]]:
    """The frames ``thread`` spent its GIL samples in (inclusive), as shares of its samples:
    the project's own, Textual's, Rich's and plotext's functions below the trunk, busiest first."""
    counts: dict[str, int] = {}
    total = 0
    for name, frames, n in samples(raw):
        if name != thread:
            continue
        total += n
        for frame in set(frames):
            if any(f"{part}/" in frame for part in ("tui", "core", "textual", "rich", "plotext")):
                counts[frame] = counts.get(frame, 0) + n
    shares = sorted(((v / max(total, 1), k) for k, v in counts.items()), reverse=True)
    return [(share, frame) for share, frame in shares if share < TRUNK][:top]


def pairs(tmp: Path, name: str, leg: list[str], n: int, py_spy: float, profiles: Path | None = None) -> None:
    rows = []
    for r in range(n):
        order = ("headless", "dashboard") if r % 2 == 0 else ("dashboard", "headless")
        got = {}
        for who in order:
            path = tmp / f"{name}-{who}-{r}"
            got[who] = headless(path, leg) if who == "headless" else dashboard(path, leg)
        h, d = got["headless"], got["dashboard"]
        rows.append((h, d))
        step_ms = 1000 * int(leg[leg.index("--batch-size") + 1]) / h["ips"]
        print(f"{name} pair {r + 1} ({' then '.join(order)}): headless {h['ips']:.1f} img/s "
              f"({step_ms:.0f} ms a step; epochs {', '.join(f'{x:.0f}' for x in h['epochs'])}), dashboard "
              f"{d['ips']:.1f} img/s (epochs {', '.join(f'{x:.0f}' for x in d['epochs'])}) = "
              f"{100 * d['ips'] / h['ips']:.1f}% (after the first epoch {100 * d['later'] / h['later']:.1f}%); "
              f"UI thread {100 * d['ui_share']:.2f}% of the wall time (the budget's factor reached "
              f"{d['top_factor']:.1f}); "
              f"threads {h['threads']}/{d['threads']}", flush=True)
    ratios = [d["ips"] / h["ips"] for h, d in rows]
    later = [d["later"] / h["later"] for h, d in rows]
    shares = [d["ui_share"] for _, d in rows]
    print(f"{name}: the dashboard keeps {100 * statistics.median(ratios):.1f}% of headless (median of {n} pairs: "
          f"{', '.join(f'{100 * x:.1f}%' for x in ratios)}); "
          f"after the first epoch {100 * statistics.median(later):.1f}% "
          f"({', '.join(f'{100 * x:.1f}%' for x in later)}); UI thread median {100 * statistics.median(shares):.2f}% "
          f"of the wall time", flush=True)
    if py_spy:  # a run of its own, outside the pairs: a sampler costs something even when it does not stop it
        d = dashboard(tmp / f"{name}-py-spy", leg, py_spy=py_spy)
        print(f"{name}, py-spy --gil over {d['spied_s']:.0f} s from stage 2's start: GIL held by "
              f"{', '.join(f'{k} {100 * v:.1f}%' for k, v in d['gil'].items())} of the wall time; the app's own "
              f"measure of the UI thread {100 * d['ui_share']:.2f}%", flush=True)
        raw = d["gil_raw"]
        spots = hotspots(raw, "MainThread", top=100)
        own = [(share, frame) for share, frame in spots if "(tui/" in frame or "(core/" in frame]
        for share, frame in spots[:10] + [x for x in own[:8] if x not in spots[:10]]:
            print(f"  UI thread {100 * share:5.1f}% of its samples in {frame}", flush=True)
        if profiles is not None:
            profiles.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, profiles / raw.name)


def noise_floor(tmp: Path, name: str, leg: list[str], n: int) -> None:
    """Headless against headless, the same way: how far two runs that differ in nothing
    drift apart on this machine, to read the dashboard's pairs against."""
    ratios = []
    for r in range(n):
        a, b = headless(tmp / f"{name}-a-{r}", leg), headless(tmp / f"{name}-b-{r}", leg)
        ratios.append(b["ips"] / a["ips"])
        print(f"{name} noise pair {r + 1}: headless {a['ips']:.1f} then headless {b['ips']:.1f} img/s = "
              f"{100 * ratios[-1]:.1f}%", flush=True)
    print(f"{name}: headless against itself {100 * statistics.median(ratios):.1f}% (median of {n}; "
          f"{100 * min(ratios):.1f}% to {100 * max(ratios):.1f}%)", flush=True)


def shares_at_sizes(tmp: Path) -> None:
    leg = LEGS["dispatch"]
    for size, keys, what in (((80, 24), "", "default view"), ((200, 50), "", "default view"),
                             ((120, 40), "6", "curves view")):
        d = dashboard(tmp / f"share-{size[0]}x{size[1]}-{keys or 1}", leg, size, keys)
        print(f"UI thread at {size[0]}x{size[1]}, {what}: {100 * d['ui_share']:.2f}% of the wall time "
              f"({d['ips']:.1f} img/s)", flush=True)


async def build_ms() -> tuple[list[float], list[float]]:
    """The three dashboard plots' build time with a full run's 40,000 iteration points."""
    from tests.conftest import tiny_config
    from tests.scripted import ScriptedTrainer, events
    from tui.app import make_app
    from tui.links import InProcessLink
    from tui.widgets.curves import EpochCurve, LossCurve

    script = ScriptedTrainer(lambda: events(epochs=50))
    app = make_app(InProcessLink(tiny_config(Path(tempfile.mkdtemp())), trainer=script))
    loss, all3 = [], []
    async with app.run_test(size=(120, 40)) as pilot:
        while not (len(app.state.epochs) == 50 and app.settled):
            await pilot.pause(0.1)
        dashboard = app.query_one("#dashboard")
        curves = [dashboard.query_one("#loss-curve", LossCurve), *dashboard.query(EpochCurve)]
        for _ in range(20):
            t = time.perf_counter()
            for i, curve in enumerate(curves):
                curve.invalidate()
                curve.render_line(0)
                if i == 0:
                    loss.append((time.perf_counter() - t) * 1000)
            all3.append((time.perf_counter() - t) * 1000)
        await pilot.press("q", "y")
    return loss, all3


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def keys_while_training(tmp: Path) -> tuple[list[float], list[float], float]:
    """View switches and `p` (until PAUSED shows) while training, and a paused dashboard's CPU."""
    run_dir = tmp / "keys"
    leg = [*LEGS["dispatch"], "--stage-epochs", "5,1,1"]
    cmd = f"TERM=xterm-256color exec {CBAM_TUI} demo --run-dir {run_dir} {' '.join(leg)}"
    pane, pid_text = tmux("new-session", "-d", "-P", "-F", "#{pane_id} #{pane_pid}", "-s", "bench-keys",
                          "-x", "120", "-y", "40", cmd).split()
    pid = int(pid_text)

    def until(found, gone: str = "\0") -> float:
        t = time.perf_counter()
        while True:
            screen = tmux("capture-pane", "-p", "-t", pane)
            if found in screen and gone not in screen:
                return (time.perf_counter() - t) * 1000
            if time.perf_counter() - t > 60:
                raise SystemExit(f"bench: {found!r} did not show within 60 s:\n{screen}")
            time.sleep(0.005)

    # Training, a few batches in (the counter moves in steps, so no one number is sure to show).
    started = time.perf_counter()
    while not (m := re.search(r"batch (\d+)/", screen := tmux("capture-pane", "-p", "-t", pane))) or int(m[1]) < 20:
        if time.perf_counter() - started > 300:
            raise SystemExit(f"bench: the run did not reach batch 20 within 300 s:\n{screen}")
        time.sleep(0.05)
    views = []
    for key, shown, gone in [("2", "◆ CBAM", "Module"), ("1", "Module", "◆"), ("3", "UI thread", "Module"),
                             ("1", "Module", "◆")] * 3:
        tmux("send-keys", "-t", pane, key)
        views.append(until(shown, gone))
        time.sleep(0.3)
    pauses = []
    for _ in range(5):
        time.sleep(1.0)
        tmux("send-keys", "-t", pane, "p")
        pauses.append(until(" PAUSED "))
        time.sleep(0.5)
        tmux("send-keys", "-t", pane, "p")
        until(" RUNNING ")
    tmux("send-keys", "-t", pane, "p")
    until(" PAUSED ")
    time.sleep(3.0)
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(10.0)
    paused = (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)
    tmux("kill-pane", "-t", pane)
    return views, pauses, paused


def attached_key_latency(tmp: Path, presses: int = 10) -> tuple[list[float], list[float]]:
    """`watch` on a detached run: key press to changed screen, through the run directory."""
    root = tmp / "attached"
    started = subprocess.run(
        [CBAM_TUI, "demo", "--detach", "--runs-root", str(root), *LEGS["standard"], "--stage-epochs", "50,1,1"],
        capture_output=True, text=True, check=True,
    )
    (run,) = root.iterdir()
    pid = int((run / "run.pid").read_text())
    subprocess.run([CBAM_TUI, "ctl", str(run), "pause"], check=True, capture_output=True)
    pane = tmux("new-session", "-d", "-P", "-F", "#{pane_id}", "-s", "bench-attach", "-x", "100", "-y", "30",
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


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.0f} ms, max {max(values):.0f} ms of {len(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--legs", default="dispatch,standard")
    parser.add_argument("--py-spy", action="store_true",
                        help="after the pairs, one more dashboard run of each leg sampled by py-spy --gil")
    parser.add_argument("--only", choices=("pairs", "sizes", "build", "keys", "attached"), action="append")
    parser.add_argument("--noise", type=int, default=0, metavar="N",
                        help="first, N pairs of headless against headless on each leg: the machine's own spread")
    parser.add_argument("--py-spy-s", type=float, default=15.0, metavar="S",
                        help="with --py-spy: seconds sampled from stage 2's start (the run's end ends them sooner)")
    parser.add_argument("--profiles", type=Path, metavar="DIR",
                        help="with --py-spy: keep py-spy's raw samples (one file per leg) in DIR")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("bench/dashboard.py needs tmux")
    if args.py_spy and shutil.which("py-spy") is None:
        sys.exit("--py-spy needs py-spy (pip install py-spy)")
    only = set(args.only or ("pairs", "sizes", "build", "keys", "attached"))
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = "AVX512-BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "other"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "pairs" in only:
            for name in args.legs.split(","):
                if args.noise:
                    noise_floor(tmp, name, LEGS[name], args.noise)
                pairs(tmp, name, LEGS[name], args.pairs, args.py_spy_s if args.py_spy else 0.0, args.profiles)
        if "sizes" in only:
            shares_at_sizes(tmp)
        if "build" in only:
            loss, all3 = asyncio.run(build_ms())
            print(f"plots at 120x40 with 40,000 iteration points: loss curve built in {statistics.median(loss):.1f} ms "
                  f"(median, max {max(loss):.1f}); all three {statistics.median(all3):.1f} ms", flush=True)
        if "keys" in only:
            views, pauses, paused = keys_while_training(tmp)
            print(f"key to screen while training: view switch {spread(views)}; p until PAUSED shows {spread(pauses)}")
            print(f"CPU of a paused dashboard: {100 * paused:.1f}% of one core", flush=True)
        if "attached" in only:
            running, paused_ = attached_key_latency(tmp)
            print(f"watch (run directory link): p on a paused run until RUNNING shows: {spread(running)}; "
                  f"p on a running run until PAUSED shows (the batch in flight ends first): {spread(paused_)}")


if __name__ == "__main__":
    main()
