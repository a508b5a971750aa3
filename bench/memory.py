"""Peak host memory of a real run over all 60,000 CIFAR-10 JPEGs (target: under 3 GB).

Runs the CLI as a user would, headless, on the whole image folder:

    cbam-tui run --dataset imagefolder --data-dir DATA --weights none --headless --log-every 5

first with an empty decode cache (the one-time decode of 60,000 JPEGs
included), then again from the cache. Each run trains --batches batches of
stage 1, gets `next` through its control channel (the epoch is cut short,
evaluated on all 10,000 test images and checkpointed), trains a few batches of
stage 2 and gets `stop`. The figure is the child's peak resident memory
(ru_maxrss). Run from the repository root:

    python bench/memory.py [--data ../shared/data/cifar10-jpeg] [--batches 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.inbox import send, wait_taken
from core.vocab import Command


def events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def wait_for(run: Path, child: subprocess.Popen, done, what: str, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not done(events(run)):
        if child.poll() is not None:
            raise SystemExit(f"the run ended before {what}; see its output")
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} within {timeout:.0f} s")
        time.sleep(0.5)


def one_run(data: Path, cache: Path, work: Path, batches: int) -> tuple[float, float]:
    """Peak RSS in GiB, and seconds to the first training batch."""
    run = work / f"run-{time.monotonic_ns()}"
    argv = [
        sys.executable, "-m", "tui.cli", "run", "--dataset", "imagefolder", "--data-dir", str(data),
        "--weights", "none", "--headless", "--log-every", "5", "--run-dir", str(run), "--cache-dir", str(cache),
    ]
    log_path = work / f"{run.name}.log"
    t0 = time.monotonic()
    with log_path.open("w") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def logged(stage: int, n: int):
        return lambda evs: sum(1 for e in evs if e["event"] == "batch_logged" and e["stage"] == stage) >= n

    wait_for(run, child, logged(1, 1), "a first loss line")
    first = time.monotonic() - t0
    wait_for(run, child, logged(1, max(batches // 5, 1)), f"{batches} batches")
    wait_taken(run, send(run, Command("next"), "bench"), 300)
    wait_for(run, child, lambda evs: any(e["event"] == "epoch_ended" for e in evs), "the evaluation")
    wait_for(run, child, logged(2, 1), "stage 2")
    wait_taken(run, send(run, Command("stop"), "bench"), 300)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"the run exited {child.returncode}; see {log_path}")
    test = next(e for e in events(run) if e["event"] == "run_started")
    print(f"  {test['train_size']:,} train + {test['test_size']:,} test images; first loss line after {first:.1f} s")
    return usage.ru_maxrss / 1024**2, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-jpeg"))
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("run 1: empty decode cache")
        cold, _ = one_run(args.data.resolve(), work / "cache", work, args.batches)
        print(f"  peak resident memory {cold:.2f} GiB")
        print("run 2: from the decode cache")
        warm, _ = one_run(args.data.resolve(), work / "cache", work, args.batches)
        print(f"  peak resident memory {warm:.2f} GiB")
    print(f"peak host memory over the full data set: {max(cold, warm):.2f} GiB (target: under 3 GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
