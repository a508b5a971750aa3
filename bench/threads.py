"""torch's threads as cbam-tui chooses them (`--threads 0`) against torch's default (one per
core of the machine), on an idle machine and on one where another process keeps a core busy.

Each contender is a short headless `cbam-tui demo` (8x8 images, batch 8, one epoch per
stage); images/s are training images per second of training time, from the run's
events.jsonl. Within each condition the contenders alternate, 3 pairs, medians. The
busy core is a `python -c "while True: pass"` started before the pair and killed after.

    python bench/threads.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CBAM_TUI = str(Path(sys.executable).with_name("cbam-tui"))
LEG = ["--image-size", "8", "--batch-size", "8", "--limit-train", "320", "--limit-test", "16",
       "--stage-epochs", "1,1,1", "--log-every", "10"]


def run(run_dir: Path, threads: int) -> tuple[float, int, str]:
    """Images/s of a headless demo with ``--threads``; and the threads it took, and why."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run([CBAM_TUI, "demo", "--headless", "--run-dir", str(run_dir), "--threads", str(threads), *LEG],
                   check=True, capture_output=True, env=env, timeout=1800)
    evs = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    started = next(e for e in evs if e["event"] == "run_started")
    epochs = [e for e in evs if e["event"] == "epoch_ended"]
    images = sum(e["batches_done"] * started["batch_size"] for e in epochs)
    seconds = sum(e["batches_done"] * started["batch_size"] / e["images_per_second"] for e in epochs)
    return images / seconds, started["threads"], started["threads_why"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    import torch

    default = torch.get_num_threads()  # what torch takes when nobody says: the machine's cores
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = "AVX512-BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "other"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs ({cpu}); torch's default: {default} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for busy in (0, 1):
            chosen, fixed = [], []
            for r in range(args.pairs):
                spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
                time.sleep(0.5)
                try:
                    order = ("chosen", "default") if r % 2 == 0 else ("default", "chosen")
                    got = {}
                    for who in order:
                        got[who] = run(tmp / f"{busy}-{who}-{r}", 0 if who == "chosen" else default)
                finally:
                    for s in spinners:
                        s.kill()
                        s.wait()
                chosen.append(got["chosen"][0])
                fixed.append(got["default"][0])
                then = " then ".join(order)
                print(f"{busy} busy core(s), pair {r + 1} ({then}): chosen {got['chosen'][0]:.1f} img/s "
                      f"({got['chosen'][2]}), torch's default {got['default'][0]:.1f} img/s ({default} threads)",
                      flush=True)
            c, d = statistics.median(chosen), statistics.median(fixed)
            print(f"{busy} busy core(s): chosen {c:.1f} img/s against torch's default {d:.1f} img/s: {c / d:.2f}x "
                  f"(median of {args.pairs} pairs)", flush=True)


if __name__ == "__main__":
    main()
