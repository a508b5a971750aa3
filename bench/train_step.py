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
from core.events import BatchLogged, Event, RunStarted
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
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time the Trainer with --compile")
    parser.add_argument("--json", type=Path, help="write the medians here too")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    size = 32
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
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
