"""Time and memory of the commands that read a run's history, on a long one and on many.

Generates, in a temporary directory (nothing big is ever committed):

- one run whose events.jsonl is about ``--size-mb`` (default 1024): a long
  CIFAR-sized run (782 batches an epoch, a loss line every 100 batches, the
  iteration losses in chunks, per-class results and attention maps every
  epoch, a stop and a resume every 1,000 epochs), written line by line in the
  trainer's own format and ending with ``run_finished``;
- a runs root of ``--count`` runs (default 5,000), each a short finished or
  stopped run with a checkpoint file,

then runs each command in a child process of its own and reports its wall time
and peak resident memory (the child's ru_maxrss):

    python bench/history.py [--size-mb 1024] [--count 5000] [--keep DIR]

`runs`, `export --png`, `export --tensorboard` and `--resume auto` (its search
for the run: `unfinished_run`) run as the CLI runs them; `watch` and `compare`
need a terminal, so what they do before the first frame is run instead: the
follower's catch-up (until it hands the history over), and the compare view's
loading of two runs. ``--only`` picks commands (comma-separated).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.events import (
    AttentionImage,
    AttentionMaps,
    BatchLogged,
    BlockAttention,
    CheckpointSaved,
    ClassAccuracy,
    EpochEnded,
    Event,
    IterLosses,
    LayerRow,
    ModuleState,
    RunFinished,
    RunStarted,
    RunStopped,
    StageStarted,
)

BATCHES, LOG_EVERY, CHUNK = 782, 100, 50
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MODULES = ("conv1", "bn1", "layer1", "cbam1", "layer2", "cbam2", "layer3", "cbam3", "layer4", "cbam4", "fc")
STAGES = ("warm up", "unfreeze", "fine-tune")
STAGE_EPOCHS = (5_000, 15_000, 80_000)  # more than any generated log reaches
RESUME_EVERY = 1_000


def line(event: Event, t: float) -> bytes:
    """One events.jsonl line, exactly as RunDir.write makes it."""
    return (json.dumps({**event.to_dict(), "t": round(t, 3)}, separators=(",", ":")) + "\n").encode()


def run_started(name: str, epoch: int, step: int, resumed: bool) -> RunStarted:
    rows = tuple(LayerRow(f"backbone.{m}" if m else "", "Module", 1, (1, 64, 32, 32), 1000, "cbam" in m)
                 for m in ("", *MODULES))
    return RunStarted(
        run_name=name, run_dir=f"runs/{name}", dataset="cifar10", device="cuda:0", precision="bf16",
        train_size=50_000, test_size=10_000, classes=CLASSES, batch_size=64, batches_per_epoch=BATCHES,
        total_epochs=sum(STAGE_EPOCHS), stages=tuple(zip(STAGES, STAGE_EPOCHS, strict=True)),
        plan_label="default", frozen_bn="train", moments="keep", total_params=11_217_874, model_rows=rows, config={},
        resumed_from=f"runs/{name}/checkpoints/last.pt" if resumed else None,
        start_epoch=epoch, start_stage=stage_of(epoch) + 1, global_step=step,
    )


def stage_of(epoch: int) -> int:
    first = 1
    for si, n in enumerate(STAGE_EPOCHS):
        if epoch < first + n:
            return si
        first += n
    return len(STAGE_EPOCHS) - 1


def stage_started(si: int, step: int) -> StageStarted:
    first = 1 + sum(STAGE_EPOCHS[:si])
    modules = tuple(ModuleState(m, f"backbone.{m}", "yes", 1e-3, "new", 1000, None, False) for m in MODULES)
    return StageStarted(si + 1, 3, STAGES[si], first, first + STAGE_EPOCHS[si] - 1,
                        sum(STAGE_EPOCHS), modules, (("new", 1e-3), ("pretrained", 1e-4)), 11_000_000, 11_217_874,
                        step)


def attention_tail() -> bytes:
    """Everything of an epoch's attention line after its stage and epoch (the same every epoch)."""
    images = []
    for k in range(4):
        pixels = tuple((37 * i + 11 * k) % 256 for i in range(16 * 16 * 3))
        blocks = tuple(BlockAttention(f"cbam{b}", s, tuple((13 * i + b) % 256 for i in range(s * s)), 0.5, 0.1, 0.4)
                       for b, s in enumerate((16, 16, 8, 4), 1))
        images.append(AttentionImage(CLASSES[k], CLASSES[k], 16, pixels, blocks))
    body = json.dumps(AttentionMaps(1, 1, tuple(images)).to_dict(), separators=(",", ":"))
    return body[body.index('"images"') :].encode()


def write_log(path: Path, name: str, size: int) -> int:
    """A long run's events.jsonl of at least ``size`` bytes; returns its epochs."""
    tail = attention_tail()
    t, step, epoch = 1.7e9, 0, 1
    with path.open("wb") as f:
        f.write(line(run_started(name, 1, 0, False), t))
        f.write(line(stage_started(0, 0), t))
        while f.tell() < size:
            si = stage_of(epoch)
            if epoch > 1 and stage_of(epoch - 1) != si:
                f.write(line(stage_started(si, step), t))
            for b in range(0, BATCHES, CHUNK):
                n = min(CHUNK, BATCHES - b)
                losses = tuple(2.3 * math.exp(-(step + i) / 3e5) + 0.05 * math.sin(step + i) for i in range(n))
                f.write(line(IterLosses(step + 1, losses, si + 1), t))
                step += n
                t += n * 0.05
                if (b + n) // LOG_EVERY != b // LOG_EVERY or b + n == BATCHES:
                    f.write(line(BatchLogged(si + 1, epoch, sum(STAGE_EPOCHS), b + n, BATCHES, losses[-1], losses[0],
                                             1280.0, step, (1e-3, 1e-4), (1.2, 0.8)), t))
            acc = 95 - 70 * math.exp(-epoch / 2000)
            correct = tuple(int(10 * acc) - c for c in range(10))
            confusion = tuple(tuple(correct[r] if r == c else 3 for c in range(10)) for r in range(10))
            f.write(line(ClassAccuracy(si + 1, epoch, correct, (1000,) * 10, confusion), t))
            f.write(f'{{"event":"attention","stage":{si + 1},"epoch":{epoch},'.encode() + tail[:-1]
                    + f',"t":{t:.3f}}}\n'.encode())
            f.write(line(CheckpointSaved(f"runs/{name}/checkpoints/last.pt", "epoch", si + 1, epoch + 1, 0), t))
            f.write(line(EpochEnded(si + 1, epoch, sum(STAGE_EPOCHS), epoch, STAGE_EPOCHS[si], BATCHES, 0.5, acc - 2,
                                    0.6, acc, 40.0, 1280.0, acc, step), t))
            if epoch % RESUME_EVERY == 0:
                f.write(line(RunStopped("SIGUSR1", si + 1, epoch + 1, 0, f"runs/{name}/checkpoints/last.pt"), t))
                t += 60
                f.write(line(run_started(name, epoch + 1, step, True), t))
                f.write(line(stage_started(stage_of(epoch + 1), step), t))
            epoch += 1
        acc = 95 - 70 * math.exp(-(epoch - 1) / 2000)
        f.write(line(RunFinished(acc, acc, epoch - 1, t - 1.7e9), t))
    return epoch - 1


def make_run(root: Path, name: str, config_name: str, log: bytes | None = None) -> Path:
    """A run directory as the trainer leaves it (no process holds its lock)."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "control").mkdir()
    (run / ".lock").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"name": config_name}))
    (run / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    if log is not None:
        (run / "events.jsonl").write_bytes(log)
    return run


def small_log(name: str, epochs: int, stopped: bool) -> bytes:
    out = [line(run_started(name, 1, 0, False), 1.7e9), line(stage_started(0, 0), 1.7e9)]
    tail = attention_tail()
    for epoch in range(1, epochs + 1):
        step = epoch * BATCHES
        out.append(line(IterLosses(step - BATCHES + 1, (2.0,) * CHUNK, 1), 1.7e9 + epoch))
        out.append(line(BatchLogged(1, epoch, 100, BATCHES, BATCHES, 2.0, 2.0, 1280.0, step, (1e-3,), (1.0,)), 1.7e9))
        out.append(f'{{"event":"attention","stage":1,"epoch":{epoch},'.encode() + tail[:-1] + b',"t":1.7e9}\n')
        out.append(line(EpochEnded(1, epoch, 100, epoch, 100, BATCHES, 0.5, 50.0, 0.6, 50.0 + epoch, 40.0, 1280.0,
                                   50.0 + epoch, step), 1.7e9 + epoch))
    out.append(line(RunStopped("SIGTERM", 1, epochs + 1, 0, "last.pt") if stopped else
                    RunFinished(50.0 + epochs, 50.0 + epochs, epochs, 100.0), 1.7e9 + epochs + 1))
    return b"".join(out)


def make_runs(root: Path, count: int) -> None:
    for i in range(count):
        name = f"20260101-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-demo"
        make_run(root, name, "demo", small_log(name, 3 + i % 5, stopped=i % 3 == 0))


# --- measuring -------------------------------------------------------------------------------

CHILD = r"""
import sys, time
from pathlib import Path
what, args = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
if what == "follow":
    from core.follow import Follower
    from core import events
    ends = tuple(getattr(events, n) for n in ("Replayed", "RunFinished") if hasattr(events, n))
    done = []
    def emit(e):
        if isinstance(e, ends):
            done.append(e)
            follower.stop()
    follower = Follower(Path(args[0]), emit)
    follower.run()
    assert done, "the follower never caught up"
elif what == "compare":
    import os
    from tui.widgets.compare_view import Tracked
    for p in args:
        t = Tracked(Path(p))
        size = os.path.getsize(Path(p) / "events.jsonl")
        while t.reader.offset < size:  # the view polls once a second until it has caught up
            t.poll()
        assert t.state.epochs, p
elif what == "resume-auto":
    from core.runs import unfinished_run
    assert unfinished_run("demo", Path(args[0])) is not None
print(f"{time.perf_counter() - t0:.2f}")
"""


def isolated(argv: list[str], timeout: float) -> tuple[float, float, int]:
    """``argv`` under a fresh python that reports only that child's peak RSS."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, timeout=timeout)
    seconds, rss, code = proc.stdout.split()
    return float(seconds), int(rss) / 1024, int(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this directory and keep it")
    parser.add_argument("--only", default="", help="comma-separated: runs-big, runs-many, png, tensorboard, "
                                                  "follow, compare, resume-auto")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cbam-history-"))
    big_root, many_root = work / "big", work / "many"
    big = big_root / "20260101-000000-long"
    try:
        if not (big / "events.jsonl").exists():
            t = time.perf_counter()
            make_run(big_root, big.name, "long")
            epochs = write_log(big / "events.jsonl", big.name, args.size_mb << 20)
            print(f"generated {big / 'events.jsonl'}: {(big / 'events.jsonl').stat().st_size / 2**20:.0f} MiB, "
                  f"{epochs:,} epochs, in {time.perf_counter() - t:.0f} s")
        if not many_root.exists():
            t = time.perf_counter()
            make_runs(many_root, args.count)
            print(f"generated {args.count:,} runs in {many_root} in {time.perf_counter() - t:.0f} s")
        other = big_root / "20260101-000001-short"
        if not other.exists():
            make_run(big_root, other.name, "short", small_log(other.name, 5, False))
        cli = [sys.executable, "-m", "tui.cli"]
        child = [sys.executable, "-c", CHILD]
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        commands = {
            "runs-big": [*cli, "runs", "--runs-root", str(big_root)],
            "runs-many": [*cli, "runs", "--runs-root", str(many_root)],
            "png": [*cli, "export", str(big), "--png", str(out / "curves.png")],
            "tensorboard": [*cli, "export", str(big), "--tensorboard", str(out / "tb")],
            "follow": [*child, "follow", str(big)],
            "compare": [*child, "compare", str(big), str(other)],
            "resume-auto": [*child, "resume-auto", str(many_root)],
        }
        wanted = [c for c in args.only.split(",") if c] or list(commands)
        print("| command | seconds | peak RSS MiB | exit |\n|---|---|---|---|")
        for name in wanted:
            try:
                seconds, rss, code = isolated(commands[name], args.timeout)
            except subprocess.TimeoutExpired:
                print(f"| {name} | over {args.timeout:.0f} | - | - |", flush=True)
                continue
            print(f"| {name} | {seconds:.1f} | {rss:,.0f} | {code} |", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
