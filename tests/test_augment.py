"""Batched augmentation: shapes, ranges, per-image randomness, identity at zero strength."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from core.augment import Augmenter, adjust_hue, color_jitter, random_crop, random_flip, random_rotation


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(16, 3, 32, 32)


OPS = {
    "crop": lambda x, g: random_crop(x, 4, g),
    "flip": random_flip,
    "jitter": lambda x, g: color_jitter(x, 0.2, 0.2, 0.2, 0.1, g),
    "rotate": lambda x, g: random_rotation(x, 15.0, g),
}


@pytest.mark.parametrize("name", OPS)
def test_each_op_keeps_shape_dtype_and_range_and_varies_per_image(name: str, batch: torch.Tensor) -> None:
    same = batch[:1].expand(16, -1, -1, -1).contiguous()  # one image, sixteen times
    out = OPS[name](same, gen())
    assert out.shape == same.shape and out.dtype == same.dtype
    assert out.min() >= 0 and out.max() <= 1
    distinct = {tuple(o.flatten()[::37].tolist()) for o in out}
    assert len(distinct) > 1, f"{name} gave every image the same parameters"
    # Same generator state, same result: the basis of reproducible runs and exact resume.
    assert torch.equal(out, OPS[name](same, gen()))


def test_zero_strength_is_the_identity(batch: torch.Tensor) -> None:
    assert torch.equal(random_crop(batch, 0, gen()), batch)
    assert torch.equal(random_flip(batch, gen(), p=0.0), batch)
    assert torch.allclose(color_jitter(batch, 0, 0, 0, 0, gen()), batch, atol=1e-5)
    assert torch.equal(random_rotation(batch, 0.0, gen()), batch)


def test_crop_is_a_shift_with_zero_fill(batch: torch.Tensor) -> None:
    out = random_crop(batch, 4, gen(3))
    for img, src in zip(out, batch):
        found = False
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                shifted = torch.zeros_like(src)
                ys, yd = (slice(dy, None), slice(0, 32 - dy)) if dy >= 0 else (slice(0, 32 + dy), slice(-dy, None))
                xs, xd = (slice(dx, None), slice(0, 32 - dx)) if dx >= 0 else (slice(0, 32 + dx), slice(-dx, None))
                shifted[:, yd, xd] = src[:, ys, xs]
                found = found or torch.equal(shifted, img)
        assert found


def test_hue_matches_torchvision(batch: torch.Tensor) -> None:
    for shift in (-0.1, 0.03, 0.1):
        ours = adjust_hue(batch, torch.full((16, 1, 1), shift))
        ref = torch.stack([TF.adjust_hue(img, shift) for img in batch])
        assert torch.allclose(ours, ref, atol=1e-5)


def test_augmenter_normalises_with_the_seed_statistics() -> None:
    images = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    aug = Augmenter("none", torch.device("cpu"))
    expected = (1 - torch.tensor([0.4914, 0.4822, 0.4465])) / torch.tensor([0.2023, 0.1994, 0.2010])
    assert torch.allclose(aug.test(images)[0, :, 0, 0], expected)
    assert torch.equal(aug.train(images, gen()), aug.test(images))
    seeded = Augmenter("seed", torch.device("cpu")).train(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), gen())
    assert seeded.dtype == torch.float32 and seeded.shape == (4, 3, 32, 32)
