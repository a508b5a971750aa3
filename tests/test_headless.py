"""The real console script, headless: a whole demo, Ctrl-C then --resume, a second
Ctrl-C, a detached run; and signal handlers only where the CLI installs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import wait_for

CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))
TINY = ["--image-size", "8", "--limit-test", "24", "--batch-size", "8", "--log-every", "2"]

pytestmark = pytest.mark.slow


def test_demo_headless_finishes_three_stages_with_a_complete_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), "--limit-train", "48", *TINY],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for stage in (1, 2, 3):
        assert f"=== Stage {stage}/3: " in out
    assert "Epoch: 1/3 | Batch: 2/6 | Batch loss: " in out
    assert "Epoch 3/3 done | " in out and "finished in " in out
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "events.jsonl", "metrics.csv", "checkpoints"}
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1] == "run_finished" and events.count("epoch_ended") == 3
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 4


def start_until(run_dir: Path, limit_train: str, line_start: str, env: dict | None = None) -> subprocess.Popen[str]:
    """A headless demo, returned once it has printed a line starting with ``line_start``."""
    proc = subprocess.Popen(
        [CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), "--limit-train", limit_train, *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(line_start):
            return proc
    raise AssertionError(f"the run ended before printing {line_start!r}: {proc.stderr.read() if proc.stderr else ''}")


def test_ctrl_c_saves_and_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_until(run_dir, "160", "Epoch: 1/3 | Batch: 10/")
    proc.send_signal(signal.SIGINT)  # Ctrl-C once: finish the batch, save, exit 130
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped (SIGINT) at epoch 1, batch" in out and f"continue with: cbam-tui run --resume {run_dir}\n" in out
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert stopped["stage"] == 0 and stopped["epoch"] == 1 and stopped["batch"] >= 10

    done = subprocess.run(
        [CBAM_TUI, "demo", "--headless", "--resume", str(run_dir), "--log-every", "50"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert f"resumed at epoch 1, batch {stopped['batch']}" in done.stdout and "finished in " in done.stdout
    written = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in written if e["event"] == "run_started"][-1]
    assert (resumed["start_stage"], resumed["start_epoch"], resumed["start_batch"]) == (1, 1, stopped["batch"])
    assert [e["epoch"] for e in written if e["event"] == "epoch_ended"] == [1, 2, 3]


def test_a_second_ctrl_c_exits_at_once_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """The stop checkpoint's write is made to take 60 s (the second write of last.pt; the first
    was epoch 1's): only the second Ctrl-C's immediate exit ends it soon."""
    run_dir = tmp_path / "run"
    proc = start_until(run_dir, "160", "Epoch 1/3 done", env={"CBAM_TUI_FAULTS": "write:last.pt=sleep:60@2"})
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    proc.send_signal(signal.SIGINT)
    # The second Ctrl-C lands while the stop checkpoint is half written: its temp file is there.
    wait_for("the stop checkpoint's temp file", lambda: list((run_dir / "checkpoints").glob(".last.pt.tmp-*")), 120)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10 and proc.returncode == 130
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before  # the last complete one, untouched
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["position"]["epoch"] == 2


def test_a_closed_stdout_stops_the_run_as_a_hang_up_with_its_checkpoint(tmp_path: Path) -> None:
    """`cbam-tui run --headless | head -1`: the reader leaves after one line. The run stops
    at the next batch boundary with a checkpoint, as on SIGHUP, and says so in its directory
    (it was `failed` with a BrokenPipeError and no checkpoint)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), "--limit-train", "160", *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()  # what head does once it has its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 129, err
    assert err == ""  # no traceback, no "Exception ignored" at exit
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if e["event"].startswith("run_")] == ["run_started", "run_stopped"]
    stopped = events[-1]
    assert stopped["event"] == "run_stopped" and stopped["reason"] == "SIGHUP"
    assert stopped["checkpoint"] == str(run_dir / "checkpoints" / "last.pt")
    saved = torch.load(stopped["checkpoint"], weights_only=True)["position"]
    assert (saved["stage"], saved["epoch"], saved["batch"]) == (stopped["stage"] - 1, stopped["epoch"], stopped["batch"])
    listed = subprocess.run([CBAM_TUI, "runs", "--runs-root", str(tmp_path), "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    (run,) = json.loads(listed.stdout)["runs"]
    assert (run["state"], run["resumable"]) == ("stopped", True)


def test_a_closed_stderr_loses_nothing(tmp_path: Path) -> None:
    """The runs root's warning goes to a stderr nobody reads: the run trains on to its end
    (it ended with exit 1 and no run before the warning)."""
    root = tmp_path / "shared"
    root.mkdir(mode=0o777)
    root.chmod(0o777)  # every user may write: a warning on stderr before the run starts
    proc = subprocess.Popen(
        [CBAM_TUI, "demo", "--headless", "--runs-root", str(root), "--limit-train", "48", *TINY],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    proc.stderr.close()
    assert proc.wait(timeout=300) == 0
    (run,) = root.iterdir()
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1] == "run_finished"


def test_run_detach_starts_a_child_from_the_runs_own_config_and_never_loads_torch_itself(tmp_path: Path) -> None:
    done = subprocess.run(
        [CBAM_TUI, "demo", "--detach", "--runs-root", str(tmp_path / "runs"), "--limit-train", "960", *TINY],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert done.returncode == 0, done.stderr
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", done.stderr, re.M)  # the parent's; the child's go to train.log
    assert "tui.launch" in imported and "torch" not in imported  # it returns ~2 s sooner for it
    (run,) = (tmp_path / "runs").iterdir()
    pid = int((run / "run.pid").read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"_child" in cmdline and b"--batch-size" not in cmdline  # no argv re-serialised
        config = json.loads((run / "config.json").read_text())
        assert (config["batch_size"], config["image_size"], config["limit_train"]) == (8, 8, 960)
        assert "dashboard: cbam-tui watch" in done.stdout
        stop = subprocess.run([CBAM_TUI, "ctl", str(run), "stop"], capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def test_a_detached_child_that_fails_at_once_is_an_error_in_the_foreground(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for split in ("train", "test"):
        (images / split).mkdir(parents=True)  # no class folders: found only when the data loads
    done = subprocess.run(
        [CBAM_TUI, "run", "--detach", "--dataset", "imagefolder", "--data-dir", str(images), "--weights", "none",
         "--runs-root", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "the background run ended at once" in done.stderr and "no class folders" in done.stderr
    assert done.stderr.count("\n") == 1


def test_no_library_object_installs_a_signal_handler(tmp_path: Path) -> None:
    code = (
        "import signal\n"
        "before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}\n"
        "import tui.app, tui.headless, tui.links, core.train\n"
        "from tests.conftest import tiny_config\n"
        "from pathlib import Path\n"
        f"cfg = tiny_config(Path({str(tmp_path)!r}))\n"
        "link = tui.links.InProcessLink(cfg)\n"
        "app = tui.app.make_app(link)\n"
        "core.train.Trainer(cfg, print)\n"
        "after = {s: signal.getsignal(s) for s in before}\n"
        "print('SAME', before == after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert "SAME True" in out.stdout, out.stderr
