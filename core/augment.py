"""The seed's train augmentation as batched tensor ops on the training device.

Every op draws its own parameters per image from the generator it is given, so
the same generator state gives the same batch (reproducible runs, exact resume).
A process that augments only its share of a batch (one rank of several) draws for
the whole batch and keeps its slice (`Draw`), so each image is augmented the same
whatever the number of processes. Inputs are float images in [0, 1], B x 3 x H x W.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.config import AUGMENTS

# The seed's Normalize (CIFAR-10 channel statistics).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class Draw:
    """Per-image random numbers for images ``start`` .. of a batch of ``total`` (None: all)."""

    g: torch.Generator
    start: int = 0
    total: int | None = None

    def rand(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(self.total or n, generator=self.g, device=device)[self.start : self.start + n]

    def randint(self, high: int, n: int, device: torch.device) -> torch.Tensor:
        every = torch.randint(0, high, (self.total or n,), generator=self.g, device=device)
        return every[self.start : self.start + n]


Random = torch.Generator | Draw


def _draw(g: Random) -> Draw:
    return g if isinstance(g, Draw) else Draw(g)


def _uniform(n: int, low: float, high: float, g: Random, device: torch.device) -> torch.Tensor:
    return _draw(g).rand(n, device) * (high - low) + low


def random_crop(x: torch.Tensor, padding: int, g: Random) -> torch.Tensor:
    """RandomCrop(size, padding) with zero fill: each image shifted by its own offset."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = _draw(g).randint(2 * padding + 1, b, x.device)
    ox = _draw(g).randint(2 * padding + 1, b, x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices split by a slice put their dims first: B x H x W x C.
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, g: Random, p: float = 0.5) -> torch.Tensor:
    flip = _draw(g).rand(x.shape[0], x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def color_jitter(
    x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float, g: Random
) -> torch.Tensor:
    """ColorJitter with torchvision's formulas and per-image factors.

    The four adjustments run in a fixed order (torchvision shuffles it per call);
    the distribution of each factor is the same.
    """
    n, dev = x.shape[0], x.device
    f = _uniform(n, 1 - brightness, 1 + brightness, g, dev)[:, None, None, None]
    x = (x * f).clamp(0, 1)
    f = _uniform(n, 1 - contrast, 1 + contrast, g, dev)[:, None, None, None]
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * f + mean).clamp(0, 1)
    f = _uniform(n, 1 - saturation, 1 + saturation, g, dev)[:, None, None, None]
    gray = _gray(x)
    x = ((x - gray) * f + gray).clamp(0, 1)
    shift = _uniform(n, -hue, hue, g, dev)[:, None, None]
    return adjust_hue(x, shift)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, B x 1 x 1) through HSV."""
    r, gch, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - gch) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == gch, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    v = maxc
    h = (h + shift) % 1.0
    # HSV -> RGB, the branch-free form: each channel k from (k + 6h) mod 6.
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device)[None, :, None, None] + h.unsqueeze(1) * 6) % 6
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * ramp


def random_rotation(x: torch.Tensor, degrees: float, g: Random) -> torch.Tensor:
    """RandomRotation(degrees): nearest-neighbour, zero fill, about the centre."""
    n = x.shape[0]
    angle = _uniform(n, -degrees, degrees, g, x.device) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class Augmenter:
    """uint8 batch -> normalised float batch, with the chosen train augmentation."""

    def __init__(self, kind: str, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        if kind not in AUGMENTS:
            raise ValueError(f"unknown augment {kind!r}")
        self.kind = kind
        self.mean = torch.tensor(MEAN, device=device, dtype=dtype)[None, :, None, None]
        self.std = torch.tensor(STD, device=device, dtype=dtype)[None, :, None, None]
        self.dtype = dtype
        self.ops: list[Callable[[torch.Tensor, Random], torch.Tensor]] = []
        if kind in ("seed", "flip-crop"):
            self.ops += [lambda x, g: random_crop(x, 4, g), random_flip]
        if kind == "seed":
            self.ops += [
                lambda x, g: color_jitter(x, 0.2, 0.2, 0.2, 0.1, g),
                lambda x, g: random_rotation(x, 15.0, g),
            ]

    def train(self, images: torch.Tensor, g: torch.Generator, start: int = 0, total: int | None = None) -> torch.Tensor:
        """Augment ``images``, images ``start`` .. of a batch of ``total`` (default: all of it)."""
        x = images.to(self.dtype) / 255.0
        draw = Draw(g, start, total)
        for op in self.ops:
            x = op(x, draw)
        return (x - self.mean) / self.std

    def test(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.dtype) / 255.0 - self.mean) / self.std
