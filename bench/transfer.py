"""A transfer study of the stage plans: which plan should a user run?

ImageNet weights cannot be downloaded here, so the study makes a stand-in: a
standard torchvision resnet18 (its own 7x7 stem and max-pool, as the ImageNet
weights have) trained on CIFAR-10's first five classes (airplane, automobile,
bird, cat, deer), saved exactly as torchvision's resnet18-f37072fd.pth is (the
same keys, a 1000-way fc). Each plan then fine-tunes from it, through the real
CLI (`cbam-tui run --weights standin.pth`), on the other five classes (dog, frog,
horse, ship, truck), at the same epoch budget, with several seeds.

    python bench/transfer.py                      # the study on ../shared/data/cifar10-jpeg
    python bench/transfer.py --dry-run            # tiny sizes, seconds (the test suite runs it)
    python bench/transfer.py --device cuda --train-images 25000 --test-images 5000 \
        --stage-epochs 5,15,30 --seeds 1 --only 1,2,6 --batch-size 256   # full size, bench/gpu_check.sh

Writes a Markdown table (and the raw numbers as JSON) to --out: bench/transfer-results.md
by default, and for a dry run a new temporary directory (a dry run never writes into
bench/, where the recorded study lives).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "transfer-results.md"
SOURCE = ("airplane", "automobile", "bird", "cat", "deer")
TARGET = ("dog", "frog", "horse", "ship", "truck")

ONE_STAGE = """
[[stage]]
name = "fine-tune everything"
epochs = {epochs}
[[stage.group]]
name = "new"
modules = ["new"]
lr = 1e-3
[[stage.group]]
name = "pretrained"
modules = ["all"]
lr = 1e-4
"""
HEAD_AND_CBAM = """
[[stage]]
name = "head and CBAM only"
epochs = {epochs}
[[stage.group]]
name = "cbam+fc"
modules = ["cbam1", "cbam2", "cbam3", "cbam4", "fc"]
lr = 1e-3
"""


@dataclass
class Plan:
    name: str
    args: list[str]
    stages: int = 3
    precision: str = "auto"
    results: list[dict[str, object]] = field(default_factory=list)


def plans(work: Path, epochs: tuple[int, int, int]) -> list[Plan]:
    total = sum(epochs)
    (work / "one-stage.toml").write_text(ONE_STAGE.format(epochs=total))
    (work / "head-cbam.toml").write_text(HEAD_AND_CBAM.format(epochs=total))
    staged = ["--stage-epochs", ",".join(map(str, epochs))]
    return [
        Plan("--preset seed", ["--preset", "seed", *staged]),
        Plan("default", staged),
        Plan("default, --new-lr-mult 10", ["--new-lr-mult", "10", *staged]),
        Plan("default, --frozen-bn eval", ["--frozen-bn", "eval", *staged]),
        Plan("default, --moments fresh", ["--moments", "fresh", *staged]),
        Plan("one stage, everything trainable", ["--plan", str(work / "one-stage.toml")], stages=1),
        Plan("head and CBAM only", ["--plan", str(work / "head-cbam.toml")], stages=1),
        Plan("default, --weights none (from scratch)", [*staged, "--weights", "none"]),
        Plan("default, --precision fp32", staged, precision="fp32"),
    ]


# --- the stand-in for ImageNet pretraining ----------------------------------------


def pretrain(data: Path, out: Path, image_size: int, epochs: int, limit: int | None, cache: Path,
             where: str, seed: int = 0) -> dict[str, float]:
    """A standard resnet18 trained on the source classes; its state dict saved as torchvision's is.

    Seeded: torch seeds its global generator at random in every process, so an unseeded
    init made each study (and each dry run) start from another stand-in, and a failure of
    one could never be run again."""
    import torch
    import torch.nn.functional as F
    from torchvision.models import resnet18

    from core.augment import Augmenter
    from core.data import DataSpec, batch_indices, epoch_generator, load_data
    from core.device import autocast, resolve_precision

    spec = DataSpec("imagefolder", str(data), image_size=image_size, limit_train=limit,
                    limit_test=limit // 5 if limit else None, cache_dir=str(cache), classes=SOURCE)
    split = load_data(spec)
    device = torch.device(where)
    # torchvision's stem divides by 4 and layers 2-4 by 2 each: below 32x32 a stride-2 3x3
    # conv of layer3 or layer4 gets a 1x1 map. On CPUs with native bf16 (oneDNN, torch 2.14),
    # that conv's bf16 weight gradient is not reproducible: two identical steps differed by up
    # to 7.6e11 against gradients of at most 0.17, so a stand-in sometimes left its one epoch
    # with huge or non-finite weights and every fine-tune stopped at its first batch.
    # cbam-tui's own model keeps maps of 2x2 or more there (its stem keeps the size; images
    # are at least 8x8), so only the stand-in needs fp32 at these sizes.
    precision = resolve_precision("auto", device) if image_size >= 32 else "fp32"
    split.train.images, split.train.labels = split.train.images.to(device), split.train.labels.to(device)
    split.test.images, split.test.labels = split.test.images.to(device), split.test.labels.to(device)
    torch.manual_seed(seed)
    model = resnet18(weights=None).to(device, memory_format=torch.channels_last)  # 1000-way fc, as the real file
    augment = Augmenter("flip-crop", device)
    batch = 128
    steps = epochs * len(batch_indices(len(split.train), batch, 0, 0, device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps, pct_start=0.25)
    cast = autocast(device, precision)
    t = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        for b, idx in enumerate(batch_indices(len(split.train), batch, 0, epoch, device)):
            x = augment.train(split.train.images[idx], epoch_generator(0, epoch, b, device))
            with cast():
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), split.train.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        broken = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:  # every fine-tune would start from it and stop at its first batch
            raise SystemExit(f"the stand-in's {broken[0]} (and {len(broken) - 1} more) is not finite after epoch "
                             f"{epoch} ({precision}, seed {seed})")
        acc = _accuracy(model, split.test.images, split.test.labels, augment, cast)
        print(f"  stand-in epoch {epoch}/{epochs}: test acc on the source classes {acc:.2f}% "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out)
    return {"source_test_acc": acc, "seconds": time.perf_counter() - t, "train_images": len(split.train)}


def _accuracy(model, images, labels, augment, cast) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode(), cast():
        for i in range(0, len(labels), 512):
            out = model(augment.test(images[i : i + 512]).contiguous(memory_format=torch.channels_last))
            correct += int((out.argmax(1) == labels[i : i + 512]).sum())
    return 100.0 * correct / len(labels)


# --- fine-tuning through the CLI ------------------------------------------------------


def fine_tune(plan: Plan, seed: int, common: list[str], work: Path) -> dict[str, object]:
    """One run through the real command line (parsed by the CLI, in this process)."""
    import typer

    from tui.cli import app

    run_dir = work / "runs" / f"{len(list((work / 'runs').glob('*'))):02d}"
    argv = ["run", "--headless", "--run-dir", str(run_dir), "--seed", str(seed), "--precision", plan.precision,
            *common, *plan.args]
    if "--weights" not in plan.args:
        argv += ["--weights", str(work / "resnet18-standin.pth")]
    t = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = app(argv, standalone_mode=False) or 0
    except typer.Exit as exc:
        code = exc.exit_code
    if code != 0:
        raise SystemExit(f"{plan.name}, seed {seed} exited {code}:\n{log.getvalue()[-2000:]}")
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch_ended"]
    started = next(e for e in events if e["event"] == "run_started")
    per_stage = {}
    for e in epochs:
        per_stage[e["stage"]] = e["test_acc"]
    return {
        "seed": seed, "final": epochs[-1]["test_acc"], "best": max(e["test_acc"] for e in epochs),
        "after_stage": per_stage, "seconds": time.perf_counter() - t, "precision": started["precision"],
    }


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def table(all_plans: list[Plan], stages: int) -> str:
    head = "| plan | final test acc % | best test acc % | " + " | ".join(
        f"after stage {s}" for s in range(1, stages + 1)) + " | min / run |"
    rows = [head, "|" + "---|" * (4 + stages)]
    for p in all_plans:
        final = spread([float(r["final"]) for r in p.results])  # type: ignore[arg-type]
        best = spread([float(r["best"]) for r in p.results])  # type: ignore[arg-type]
        cells = []
        for s in range(1, stages + 1):
            values = [float(r["after_stage"][s]) for r in p.results if s in r["after_stage"]]  # type: ignore[index,operator]
            cells.append(spread(values) if values and p.stages > 1 else "–")
        minutes = statistics.fmean(float(r["seconds"]) for r in p.results) / 60  # type: ignore[arg-type]
        rows.append(f"| {p.name} | {final} | {best} | " + " | ".join(cells) + f" | {minutes:.1f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-jpeg"))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=2000, help="fine-tuning images (of the five classes)")
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--stage-epochs", default="1,3,6",
                        help="every plan's budget, the seed's 5:15:30 scaled (one-stage plans: the sum)")
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--pretrain-images", type=int, default=None, help="default: all 25,000 of the source classes")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the stand-in and every run)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the table (and .json beside it); default bench/transfer-results.md, "
                        "for --dry-run a new temporary directory")
    parser.add_argument("--only", default="", help="comma-separated plan numbers (1-based) to run; default all")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes: the script runs end to end in seconds")
    args = parser.parse_args()
    if args.dry_run and args.out is not None and args.out.resolve().parent == BENCH:
        parser.error(f"--dry-run writes nowhere the recorded results live: --out {args.out} is in {BENCH}")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="transfer-dry-run-")) / RESULTS.name if args.dry_run else RESULTS
    if args.dry_run:
        args.image_size, args.train_images, args.test_images = 8, 20, 10
        args.stage_epochs, args.pretrain_epochs, args.pretrain_images, args.seeds = "1,0,1", 1, 100, 1
        args.batch_size = 8
    epochs = tuple(int(e) for e in args.stage_epochs.split(","))
    data = args.data.resolve()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "runs").mkdir()
        if args.dry_run:  # random images with CIFAR-10's class names: no data set needed
            from bench.train_step import fake_image_folder

            data = fake_image_folder(work / "data", 10, 8, SOURCE + TARGET)
        size = f"{args.image_size}x{args.image_size}"
        print(f"stand-in: torchvision resnet18 on {', '.join(SOURCE)} at {size}", flush=True)
        stand_in = pretrain(data, work / "resnet18-standin.pth", args.image_size, args.pretrain_epochs,
                            args.pretrain_images, work / "cache", args.device)
        common = ["--dataset", "imagefolder", "--data-dir", str(data), "--classes", ",".join(TARGET),
                  "--image-size", str(args.image_size), "--limit-train", str(args.train_images),
                  "--limit-test", str(args.test_images), "--batch-size", str(args.batch_size), "--log-every", "1000",
                  "--cache-dir", str(work / "cache"), "--device", args.device]
        chosen = plans(work, epochs)  # type: ignore[arg-type]
        if args.only:
            chosen = [chosen[int(i) - 1] for i in args.only.split(",")]
        for seed in range(args.seeds):
            for plan in chosen:
                result = fine_tune(plan, seed, common, work)
                plan.results.append(result)
                print(f"  {plan.name}, seed {seed}: final {result['final']:.2f}%, best {result['best']:.2f}% "
                      f"({result['seconds']:.0f} s, {result['precision']})", flush=True)
    wall = time.perf_counter() - t0
    report = [
        f"Fine-tuning on {', '.join(TARGET)} ({args.train_images} train / {args.test_images} test images, "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}, stage epochs {args.stage_epochs}, "
        f"{args.seeds} seeds) from a stand-in resnet18 trained on {', '.join(SOURCE)} "
        f"({stand_in['train_images']:.0f} images, {args.pretrain_epochs} epochs, "
        f"{stand_in['source_test_acc']:.1f}% on their test images). Mean ± standard deviation over seeds.",
        "",
        table(chosen, len(epochs)),
        "",
        f"Wall time of the whole study: {wall / 60:.1f} min (stand-in {stand_in['seconds'] / 60:.1f} min).",
    ]
    text = "\n".join(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"stand_in": stand_in, "wall_seconds": wall, "args": {k: str(v) for k, v in vars(args).items()},
         "plans": [{"name": p.name, "results": p.results} for p in chosen]}, indent=1))
    print(f"results: {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
