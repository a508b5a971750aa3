"""Images per second of one training process against several on the same machine
(`--nproc-per-node`), measured side by side on the same data and plan.

Each contender is the real CLI, headless, training stage 3 of the default plan
(everything trainable: the heaviest step) for one epoch over LIMIT real images;
the figure is the epoch's training images/s from its `epoch_ended` event
(evaluation and start-up excluded). Contenders alternate within each repeat; the
table gives medians. Run from the repository root:

    python bench/ddp.py [--data ../shared/data/cifar10-jpeg] [--limit 2048] [--repeats 2]
        [--device cpu] [--nproc 2] [--batch-size 64] [--sync-bn] [--dry-run]

On a CPU the processes share the cores (each gets cores / N threads, as torchrun
gives them), so several processes can only pay off where one process cannot keep
every core busy. On GPUs, each process has its own device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLI = str(Path(sys.executable).with_name("cbam-tui"))


def start(args: argparse.Namespace, nproc: int, batch: int, where: Path, torchrun: bool = False) -> Run:
    run = where / f"run-{nproc}-{batch}-{torchrun}"
    # torchrun: the launcher's code path with one process too (one GPU is enough to measure it)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
              "-m", "tui.worker"] if torchrun else [CLI, "run", "--headless", "--nproc-per-node", str(nproc)]
    command = [
        *launch, "--dataset", args.dataset, "--data-dir", args.data, "--limit-train", str(args.limit),
        "--limit-test", "64", "--weights", "none", "--stage-epochs", "0,0,1", "--batch-size", str(batch),
        "--device", args.device, "--run-dir", str(run), "--log-every", "1000",
        "--image-size", str(args.image_size),
    ] + (["--sync-bn"] if args.sync_bn and nproc > 1 else [])
    return Run(run, command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))


@dataclass
class Run:
    path: Path
    command: list[str]
    process: subprocess.Popen[str]

    def images_per_second(self) -> float:
        """Waits for the run; its epoch's training images/s."""
        _, err = self.process.communicate()
        if self.process.returncode != 0:
            raise SystemExit(f"{' '.join(self.command)} failed: {err.strip()}")
        events = [json.loads(line) for line in (self.path / "events.jsonl").read_text().splitlines()]
        return next(e["images_per_second"] for e in events if e["event"] == "epoch_ended")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--limit", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--sync-bn", action="store_true", help="the multi-process contenders use --sync-bn (CUDA)")
    parser.add_argument("--dry-run", action="store_true", help="synthetic 8x8 images, a few batches: checks the script")
    args = parser.parse_args()
    args.dataset = "imagefolder"
    if args.dry_run:
        args.dataset, args.limit, args.repeats, args.batch_size, args.image_size = "synthetic", 64, 1, 8, 8
    half = max(1, args.batch_size // args.nproc)
    contenders = [(f"1 process, batch {args.batch_size}", 1, args.batch_size, False)]
    if args.nproc == 1:
        contenders.append((f"torchrun, 1 process x {args.batch_size} (DDP)", 1, args.batch_size, True))
    else:
        contenders.append((f"{args.nproc} processes x {half} (same global batch)", args.nproc, half, False))
        if not args.dry_run:  # the same launcher path as the line above, another batch: nothing more to check
            contenders.append((f"{args.nproc} processes x {args.batch_size} (global {args.batch_size * args.nproc})",
                               args.nproc, args.batch_size, False))
    results: dict[str, list[float]] = {name: [] for name, _, _, _ in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            if args.dry_run:  # the script's paths, not its speed: every contender at once
                runs = [start(args, n, batch, Path(tmp) / str(r), torchrun) for _, n, batch, torchrun in contenders]
                for (name, *_), run in zip(contenders, runs, strict=True):
                    results[name].append(run.images_per_second())
                continue
            for name, nproc, batch, torchrun in contenders:  # one at a time: each has the machine
                results[name].append(start(args, nproc, batch, Path(tmp) / str(r), torchrun).images_per_second())
    base = statistics.median(results[contenders[0][0]])
    print(f"| contender | images/s (median of {args.repeats}) | vs 1 process |")
    print("|---|---|---|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:,.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
