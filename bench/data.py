"""Data pipeline throughput: the seed's loader against cbam-tui's, on the same real images.

The seed: torchvision ImageFolder + its train transforms (PIL, per image) in a
DataLoader with num_workers=0. cbam-tui: the images decoded once into a uint8
tensor, then batched augmentation with tensor ops. Both on the CPU, in one run,
alternating, median of the repeats. Run from the repository root:

    python bench/data.py [--data ../shared/data/cifar10-jpeg] [--repeats 3] [--full]

--full also times decoding all 60,000 images and the cache hit afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from core.augment import MEAN, STD, Augmenter
from core.data import DataSpec, _decode, _list_files, load_data

BATCH = 64


def seed_epoch(folder: Path) -> float:
    """Images/s of one epoch through the seed's pipeline."""
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        transforms.RandomRotation(15),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    loader = DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=BATCH, shuffle=True, num_workers=0)
    n = 0
    t = time.perf_counter()
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t)


def ours_epoch(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Images/s of one epoch of batched augmentation from the decoded tensor."""
    aug = Augmenter("seed", torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    n = 0
    t = time.perf_counter()
    for idx in torch.randperm(len(labels), generator=g).split(BATCH):
        x = aug.train(images[idx], g)
        n += len(x)
    return n / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-jpeg"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    folder = args.data / "test"  # the same 10,000 real images for both pipelines
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    files = _list_files(folder, classes)
    t = time.perf_counter()
    split, skipped = _decode(files, 32, "decoding", lambda m, d, n: None)
    decode_s = time.perf_counter() - t
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(files)} images from {folder}")
    print(f"cbam-tui decode once: {decode_s:.2f} s ({len(files) / decode_s:,.0f} images/s, {skipped} skipped)")
    seed, ours = [], []
    for r in range(args.repeats):
        seed.append(seed_epoch(folder))
        ours.append(ours_epoch(split.images, split.labels))
        print(f"repeat {r + 1}: seed {seed[-1]:,.0f} images/s, cbam-tui {ours[-1]:,.0f} images/s")
    s, o = statistics.median(seed), statistics.median(ours)
    first = len(files) / (decode_s + len(files) / o)
    print(f"median: seed {s:,.0f} images/s, cbam-tui {o:,.0f} images/s, ratio {o / s:.1f}x")
    print(f"first epoch including the one-time decode: {first:,.0f} images/s, ratio {first / s:.1f}x")
    if args.full:
        with tempfile.TemporaryDirectory() as cache:
            spec = DataSpec(dataset="imagefolder", data_dir=str(args.data), cache_dir=cache)
            t = time.perf_counter()
            data = load_data(spec)
            full_s = time.perf_counter() - t
            t = time.perf_counter()
            load_data(spec)
            hit_s = time.perf_counter() - t
        n = len(data.train) + len(data.test)
        print(f"full data set: {n:,} images decoded and cached in {full_s:.1f} s; cache hit {hit_s:.2f} s")


if __name__ == "__main__":
    main()
