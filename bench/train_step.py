"""Training-step throughput per stage: the seed's loop against cbam-tui's Trainer.

The seed's loop, as the study note writes it: the same ResNet18 + CBAM, batch
64, Adam over the stage's trainable parameters, fp32, a PIL DataLoader
(num_workers=0) over the real JPEGs with the seed's augmentation, and
`loss.item()` plus the correct count read back every batch.

cbam-tui: the real Trainer (`core.train.Trainer`) on the same images through
`--dataset imagefolder`, once with default settings and once with
`--precision fp32`, each running the three stages of `--preset seed`, which
trains exactly what the seed trains in each stage (the default plan also
trains the new stem conv in stage 1, which costs a backward pass through
layer1), so both loops do the same work per batch.

Each contender trains WARMUP + STEPS batches per stage; images/s count the
STEPS batches after the warm-up. Contenders alternate within each repeat and
the table gives medians. Run from the repository root:

    python bench/train_step.py [--data ../shared/data/cifar10-jpeg | --make-data N] [--repeats 3]
        [--warmup 2] [--steps 8] [--device cpu] [--batch-size 64] [--compile] [--dry-run]

--make-data N: no real images at hand (a GPU machine): N random 32x32 JPEGs in a
temporary image folder instead, which cost the seed's loader the same to decode.
--dry-run: tiny sizes (a few random 8x8 JPEGs, one measured step), to check that
the script runs; its numbers mean nothing.

--overhead: what the Trainer's own machinery costs per step (events, meters,
progress, steering, the run directory), where a step is short and dispatch-bound:
the real Trainer, headless, against a bare nanoGPT-style loop over the same
prepared data, model, augmentation, autocast, channels_last and optimizer (one
loss read at the end), in each stage, alternating which goes first:

    python bench/train_step.py --overhead [--batch-size 8] [--image-size 8] [--epoch-batches 120] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from core.augment import MEAN, STD
from core.config import RunConfig
from core.control import Control
from core.events import BatchLogged, EpochEnded, Event, RunStarted
from core.model import ResNet18CBAM
from core.plan import PlanOptions, build_plan
from core.train import Trainer

# What the seed trains in each stage (names matched as substrings, as it does).
SEED_STAGES = (("cbam", "backbone.fc"), ("cbam", "backbone.fc", "backbone.layer3", "backbone.layer4"), None)
SEED_LRS = (1e-3, 1e-4, 1e-5)


def seed_loader(folder: Path, batch: int, size: int) -> DataLoader:
    tf = transforms.Compose([
        *([transforms.Resize(size)] if size != 32 else []),  # --dry-run's tiny images
        transforms.RandomCrop(size, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        transforms.RandomRotation(15),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    return DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=batch, shuffle=True, num_workers=0)


def seed_stage(loader: DataLoader, stage: int, warmup: int, steps: int, device: torch.device) -> float:
    """Images/s of the seed's loop in ``stage`` (0-based), after ``warmup`` batches."""
    torch.manual_seed(0)
    model = ResNet18CBAM(num_classes=10).to(device)
    parts = SEED_STAGES[stage]
    for name, p in model.named_parameters():
        p.requires_grad = parts is None or any(part in name for part in parts)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=SEED_LRS[stage])
    model.train()
    batches = iter(loader)
    n, t0 = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0, n = time.perf_counter(), 0
        try:
            data, target = next(batches)
        except StopIteration:  # a small folder: go round again
            batches = iter(loader)
            data, target = next(batches)
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.cross_entropy(output, target)
        loss.backward()
        optimizer.step()
        loss.item()
        output.max(1)[1].eq(target).sum().item()
        n += len(target)
    _sync(device)
    return n / (time.perf_counter() - t0)


def trainer_stage(
    data: Path, runs: Path, stage: int, batch: int, size: int, warmup: int, steps: int, **settings: object
) -> tuple[float, str]:
    """Images/s of the real Trainer in ``stage`` (0-based) alone, after ``warmup`` batches; and its precision."""
    logged: list[BatchLogged] = []
    started: list[RunStarted] = []

    def keep(e: Event) -> None:
        if isinstance(e, BatchLogged):
            logged.append(e)
        elif isinstance(e, RunStarted):
            started.append(e)

    epochs = ",".join("1" if s == stage else "0" for s in range(3))  # the other stages are skipped
    config = RunConfig(
        dataset="imagefolder", data_dir=str(data), weights="none", image_size=size, batch_size=batch,
        limit_train=batch * (warmup + steps), limit_test=batch, log_every=1, runs_root=str(runs), name="bench",
        plan=build_plan(PlanOptions(preset="seed", stage_epochs=epochs)), cache_dir=str(runs.parent / "cache"),
        **settings,  # type: ignore[arg-type]
    )
    Trainer(config, keep, Control()).run()
    timed = [e for e in logged if e.batch > warmup]
    seconds = sum(batch / e.images_per_second for e in timed)
    return len(timed) * batch / seconds, started[0].precision


def overhead_config(runs: Path, stage: int, batch: int, size: int, steps: int, device: str) -> RunConfig:
    epochs = ",".join("1" if s == stage else "0" for s in range(3))
    return RunConfig(
        dataset="synthetic", weights="none", image_size=size, batch_size=batch, limit_train=batch * steps,
        limit_test=batch, runs_root=str(runs), name="bench", device=device,
        plan=build_plan(PlanOptions(stage_epochs=epochs)),
    )


def trainer_epoch(config: RunConfig) -> float:
    """Images/s of the Trainer's one epoch (training time, as its epoch_ended event says)."""
    ended: list[EpochEnded] = []
    Trainer(config, lambda e: ended.append(e) if isinstance(e, EpochEnded) else None, Control()).run()
    return ended[0].images_per_second


def bare_epoch(config: RunConfig, stage: int) -> float:
    """Images/s of a bare loop over what the Trainer would prepare for the same epoch."""
    from core.data import batch_indices, epoch_generator
    from core.optim import stage_optimizer
    from core.prepare import prepare

    s = prepare(config, lambda _e: None)
    try:
        optimizer, _, _ = stage_optimizer(s.model, s.config.plan, stage, s.device)
        s.model.train()
        batches = batch_indices(len(s.train_y), config.batch_size, config.seed, 1, s.train_y.device)
        _sync(s.device)
        t0 = time.perf_counter()
        for b, idx in enumerate(batches):
            x = s.augment.train(s.train_x[idx].to(s.device), epoch_generator(config.seed, 1, b, s.device))
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with s.autocast():
                loss = F.cross_entropy(s.step_model(x), s.train_y[idx].to(s.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss.item()
        return len(s.train_y) / (time.perf_counter() - t0)
    finally:
        if s.rundir is not None:
            s.rundir.close()


def overhead(args: argparse.Namespace, work: Path) -> int:
    print(f"torch {torch.__version__}, device {args.device}; synthetic {args.image_size}x{args.image_size} images, "
          f"batch {args.batch_size}, {args.epoch_batches} batches an epoch, {args.repeats} repeats")
    # One untimed epoch first, of stage 3 (every layer's gradients): the process's first steps
    # pay one-time costs (cuDNN's algorithm search on a GPU, the allocator's growth) that
    # would otherwise fall on whichever contender runs first.
    warm = bare_epoch(overhead_config(work / "warm-up", 2, args.batch_size, args.image_size,
                                      min(args.epoch_batches, 30), args.device), 2)
    print(f"warm-up: {warm:.1f} img/s, untimed")
    ratios: list[list[float]] = [[], [], []]
    for r in range(args.repeats):
        for stage in range(3):
            got: dict[str, float] = {}
            order = ("bare", "trainer") if (r + stage) % 2 == 0 else ("trainer", "bare")
            for who in order:
                config = overhead_config(work / f"{who}-{r}-{stage}", stage, args.batch_size, args.image_size,
                                         args.epoch_batches, args.device)
                got[who] = bare_epoch(config, stage) if who == "bare" else trainer_epoch(config)
            ratios[stage].append(got["trainer"] / got["bare"])
            step_ms = 1000 * args.batch_size / got["bare"]
            print(f"repeat {r + 1} stage {stage + 1} ({' then '.join(order)}): bare {got['bare']:.1f} img/s "
                  f"({step_ms:.1f} ms a step), Trainer {got['trainer']:.1f} img/s = {100 * ratios[stage][-1]:.1f}%",
                  flush=True)
    for stage, values in enumerate(ratios):
        print(f"stage {stage + 1}: the Trainer keeps {100 * statistics.median(values):.1f}% of the bare loop "
              f"(median of {len(values)}: {', '.join(f'{100 * v:.1f}%' for v in values)})")
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fake_image_folder(root: Path, per_class: int, size: int, names: tuple[str, ...] = ()) -> Path:
    """An image folder of random JPEGs (10 classes, ``names`` or class0..class9), for --make-data and --dry-run."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(10):
            folder = root / split / (names[c] if names else f"class{c}")
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-jpeg"))
    parser.add_argument("--make-data", type=int, metavar="N", help="N random JPEGs instead of --data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, help="images a step (default 64; 8 with --overhead)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time the Trainer with --compile")
    parser.add_argument("--json", type=Path, help="write the medians here too")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--overhead", action="store_true", help="the Trainer against a bare loop, dispatch-bound")
    parser.add_argument("--image-size", type=int, default=8, help="with --overhead")
    parser.add_argument("--epoch-batches", type=int, default=120, help="with --overhead: batches in the timed epoch")
    args = parser.parse_args(argv)
    size = 32
    if args.batch_size is None:  # the dispatch-bound regime (--overhead) is small batches
        args.batch_size = 8 if args.overhead else 64
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.overhead:
            if args.dry_run:
                args.repeats, args.epoch_batches = 1, 3
            return overhead(args, work)
        if args.dry_run:
            args.data = fake_image_folder(work / "images", 4, 8)
            args.repeats, args.warmup, args.steps, args.batch_size, size = 1, 1, 1, 8, 8
        elif args.make_data:
            wanted = max(args.make_data, args.batch_size * (args.warmup + args.steps))
            args.data = fake_image_folder(work / "images", -(-wanted // 10), size)
        if not (args.data / "train").is_dir():
            print(f"no image folder at {args.data / 'train'}", file=sys.stderr)
            return 1
        device = torch.device(args.device)
        loader = seed_loader(args.data / "train", args.batch_size, size)
        contenders: dict[str, Callable[[int, int], float]] = {
            "seed loop": lambda r, stage: seed_stage(loader, stage, args.warmup, args.steps, device),
        }
        precisions: dict[str, str] = {}

        def trainer(label: str, **settings: object) -> Callable[[int, int], float]:
            def run(r: int, stage: int) -> float:
                rate, precision = trainer_stage(
                    args.data, work / f"{label}-{r}-{stage}", stage, args.batch_size, size, args.warmup, args.steps,
                    device=args.device, **settings,
                )
                precisions[label] = precision
                return rate

            return run

        contenders["cbam-tui default"] = trainer("default")
        contenders["cbam-tui fp32"] = trainer("fp32", precision="fp32")
        if args.compile:
            contenders["cbam-tui --compile"] = trainer("compile", compile=True)
        print(
            f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; batch {args.batch_size}, "
            f"{args.warmup} warm-up + {args.steps} timed batches per stage, {args.repeats} repeats; data {args.data}"
        )
        # Side by side: within each repeat and stage the contenders run back to back,
        # so a slow spell of a shared machine hits them alike.
        results: dict[str, list[list[float]]] = {name: [] for name in contenders}
        for r in range(args.repeats):
            for name in contenders:
                results[name].append([])
            for stage in range(3):
                for name, run in contenders.items():
                    results[name][-1].append(run(r, stage))
            for name in contenders:
                print(f"repeat {r + 1} {name:<20}" + "".join(f"{x:10.1f}" for x in results[name][-1]), flush=True)
    medians = {name: [statistics.median(rep[s] for rep in reps) for s in range(3)] for name, reps in results.items()}
    seed = medians["seed loop"]
    print(f"\nimages/s, median of {args.repeats}  (precision: {precisions})")
    print(f"{'':<22}{'stage 1':>10}{'stage 2':>10}{'stage 3':>10}")
    for name, m in medians.items():
        ratio = "" if name == "seed loop" else "   " + " ".join(f"{x / s:.2f}x" for x, s in zip(m, seed, strict=True))
        print(f"{name:<22}" + "".join(f"{x:10.1f}" for x in m) + ratio)
    if args.json:
        args.json.write_text(json.dumps({"medians": medians, "precisions": precisions}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
