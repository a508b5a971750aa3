"""What the CBAM blocks attend to: for a fixed handful of test images, each block's
spatial map and the spread of its channel weights, small enough to keep in the
event stream (maps at most 16x16, quantised to bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.augment import Augmenter
from core.events import AttentionImage, BlockAttention

IMAGES = 10  # one image a class, for up to 10 classes
MAX_SIDE = 16


def pick_images(labels: torch.Tensor, num_classes: int, k: int = IMAGES) -> list[int]:
    """The first test image of ``k`` classes spread over the class list (every class, up to ``k``): the same
    every epoch."""
    labels = labels.cpu()
    wanted = sorted({round(i * num_classes / k) for i in range(k)})
    picked = []
    for c in wanted:
        hits = (labels == c).nonzero()
        if len(hits):
            picked.append(int(hits[0]))
    return picked


def attention_maps(
    model: nn.Module,
    images: torch.Tensor,
    labels: list[int],
    classes: tuple[str, ...],
    augment: Augmenter,
    autocast: Callable[[], Any],
    channels_last: bool,
) -> tuple[AttentionImage, ...]:
    """One inference pass over ``images`` (uint8, on the model's device), with hooks on
    every CBAM block's two sigmoids."""
    blocks = [(name, m) for name, m in model.named_modules() if type(m).__name__ == "CBAM"]
    spatial: dict[str, torch.Tensor] = {}
    channel: dict[str, torch.Tensor] = {}
    hooks = []
    for i, (_, block) in enumerate(blocks, 1):
        hooks.append(block.spatial_attn.sigmoid.register_forward_hook(
            lambda _m, _i, out, key=f"cbam{i}": spatial.__setitem__(key, out.detach().float())))
        hooks.append(block.channel_attn.sigmoid.register_forward_hook(
            lambda _m, _i, out, key=f"cbam{i}": channel.__setitem__(key, out.detach().float())))
    was_training = model.training
    try:
        model.eval()
        x = augment.test(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast():
            predicted = model(x).float().argmax(1).tolist()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    thumbs = _shrink(images.float(), MAX_SIDE).round().clamp(0, 255).to(torch.uint8).cpu()
    out = []
    for i in range(len(images)):
        per_block = []
        for key in sorted(spatial):
            m = _shrink(spatial[key][i : i + 1], MAX_SIDE)[0, 0].cpu()
            w = channel[key][i].cpu()
            levels = (m * 255).round().clamp(0, 255).to(torch.uint8).flatten().tolist()
            per_block.append(BlockAttention(
                block=key, size=m.shape[-1], spatial=tuple(levels), channel_mean=float(w.mean()),
                channel_std=float(w.std()), channel_above_half=float((w > 0.5).float().mean()),
            ))
        t = thumbs[i]
        out.append(AttentionImage(
            label=classes[labels[i]], predicted=classes[predicted[i]], size=t.shape[-1],
            pixels=tuple(t.permute(1, 2, 0).flatten().tolist()), blocks=tuple(per_block),
        ))
    return tuple(out)


def _shrink(x: torch.Tensor, side: int) -> torch.Tensor:
    """Average-pool a N x C x H x W batch to at most side x side."""
    if x.shape[-1] <= side:
        return x
    return F.adaptive_avg_pool2d(x, side)
