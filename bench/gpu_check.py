"""The GPU checks that bench/gpu_check.sh runs after the per-stage step table.

    python bench/gpu_check.py epoch      one CIFAR-10-sized epoch (50,000 images, data on the device): time, peak memory
    python bench/gpu_check.py sync       no host-device sync inside the step loop except at log points
    python bench/gpu_check.py compile    --compile: compile time, and recompiles across the three stages

Several checks in one call run in one process (one import of torch).

Add --dry-run for tiny sizes on any device (the test suite runs it on the CPU).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import pickle
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import RunConfig
from core.control import Control
from core.events import EpochEnded, Event, RunStarted
from core.plan import PlanOptions, build_plan
from core.train import Trainer

# Where the Trainer may read a value back from the device: log points (the meter's drain
# and loss window), epoch ends, evaluation, checkpoints, setup. Anywhere else in the step
# loop a sync is a defect.
ALLOWED = {"_drain", "drain", "take_window", "host", "_evaluate", "_save", "prepare", "_place", "_end_epoch", "_stop",
           "_write_failed"}


def fake_cifar(root: Path, train: int, test: int) -> Path:
    """A cifar-10-batches-py of random images in torchvision's pickle format. They stand in
    for CIFAR-10, so their checksums stand in for the published ones in this process."""
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [train // 5 + (1 if i < train % 5 else 0) for i in range(5)]
    names = [*(f"data_batch_{i + 1}" for i in range(5)), "test_batch"]
    for name, n in zip(names, [*sizes, test], strict=True):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    md5 = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in [*names, "batches.meta"]}
    CIFAR10.train_list = [[n, md5[n]] for n in names[:5]]
    CIFAR10.test_list = [["test_batch", md5["test_batch"]]]
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5["batches.meta"]}
    return root


def config(data: Path, runs: Path, device: str, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        dataset="cifar10", data_dir=str(data), download=False, weights="none", device=device,
        runs_root=str(runs), name="gpu-check", plan=build_plan(PlanOptions(stage_epochs="1,0,0")),
    )
    base.update(kw)
    return RunConfig(**base)


def epoch(args: argparse.Namespace, work: Path) -> None:
    n = 64 if args.dry_run else 50_000
    data = fake_cifar(work / "cifar", n, 32 if args.dry_run else 10_000)
    seen: list[Event] = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    size, batch = (8, 16) if args.dry_run else (32, args.batch_size)
    cfg = config(data, work / "runs", args.device, batch_size=batch, image_size=size)
    Trainer(cfg, seen.append, Control()).run()
    wall = time.perf_counter() - t
    e = next(x for x in seen if isinstance(x, EpochEnded))
    s = next(x for x in seen if isinstance(x, RunStarted))
    train_s = e.batches_done * batch / e.images_per_second
    print(f"one epoch of {s.train_size:,} images, batch {batch}, {s.precision} on {s.device}:")
    print(f"  training {train_s:.1f} s ({e.images_per_second:,.0f} images/s); training + evaluation "
          f"of {s.test_size:,} images {e.seconds:.1f} s; whole run with data loading {wall:.1f} s")
    if torch.cuda.is_available():
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")


def sync(args: argparse.Namespace, work: Path) -> None:
    size, batch = (8, 16) if args.dry_run else (32, 64)
    data = fake_cifar(work / "cifar", batch * (4 if args.dry_run else 30), batch * 2)
    found: list[list[traceback.FrameSummary]] = []
    original = warnings.showwarning

    def record(message: Any, category: Any, *rest: Any) -> None:
        if "synchroniz" in str(message).lower():
            found.append(traceback.extract_stack()[:-1])
        else:
            original(message, category, *rest)

    cfg = config(data, work / "runs", args.device, batch_size=batch, image_size=size, log_every=3,
                 plan=build_plan(PlanOptions(stage_epochs="1,1,1")))
    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    warnings.showwarning = record
    warnings.simplefilter("always")
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    try:
        Trainer(cfg, lambda e: None, Control()).run()
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = original
    bad = [stack for stack in found if not any(f.name in ALLOWED for f in stack)]
    allowed = len(found) - len(bad)
    print(f"sync check ({'CUDA sync-debug mode' if cuda else 'no CUDA here: nothing to check, the script ran'}): "
          f"{allowed} syncs at log points, epoch ends, evaluation and checkpoints; {len(bad)} elsewhere")
    for stack in bad[:5]:
        print("  unexpected sync at:\n" + "".join(traceback.format_list(stack[-4:])))
    if bad:
        raise SystemExit(1)


def compile_check(args: argparse.Namespace, work: Path) -> None:
    """Compile time per stage, and how many graphs the three stages cost (requires_grad flips)."""
    size, batch = (8, 16) if args.dry_run else (32, 64)
    data = fake_cifar(work / "cifar", batch * (3 if args.dry_run else 40), batch * 2)
    compiled: list[int] = []
    first_batch: dict[int, float] = {}
    t = {"at": time.perf_counter()}

    def backend(gm: torch.fx.GraphModule, example: list[torch.Tensor]) -> Any:
        compiled.append(len(gm.graph.nodes))
        if args.dry_run:  # trace with dynamo, skip inductor's code generation: seconds, not minutes
            return gm.forward
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example)

    def note(e: Event) -> None:
        if e.kind == "stage_started":
            t["at"] = time.perf_counter()
        if e.kind == "batch_logged" and e.batch == 1:  # type: ignore[attr-defined]
            first_batch.setdefault(e.stage, time.perf_counter() - t["at"])  # type: ignore[attr-defined]

    cfg = config(data, work / "runs", args.device, batch_size=batch, image_size=size, log_every=1, compile=True,
                 plan=build_plan(PlanOptions(stage_epochs="1,1,1")))
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)  # type: ignore[assignment]
    try:
        Trainer(cfg, note, Control()).run()
    finally:
        torch.compile = original
    print("torch.compile: first batch of each stage, compilation included: "
          + ", ".join(f"stage {s} {v:.1f} s" for s, v in sorted(first_batch.items())))
    print(f"  graphs compiled over the three stages: {len(compiled)} (forward graphs of {compiled} nodes)")
    if len(compiled) > 6:
        print("  recompilation storm: more than two graphs per stage")
        raise SystemExit(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checks", nargs="+", choices=tuple(CHECKS), help="run in this order, in one process")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    for name in args.checks:
        heading, check = CHECKS[name]
        print(heading, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            check(args, Path(tmp))
    return 0


CHECKS = {
    "epoch": ("== 2. one CIFAR-10-sized epoch", epoch),
    "sync": ("== 3. host-device syncs in the step loop", sync),
    "compile": ("== 4. torch.compile across the stages", compile_check),
}


if __name__ == "__main__":
    raise SystemExit(main())
