"""Checkpoints: what a run needs to continue exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import CheckpointError, WeightsError

FORMAT = "cbam-tui"
ARCH = "resnet18-cbam"


@dataclass(frozen=True)
class Position:
    """Where a run continues: stage (0-based), run epoch (1-based), batches done.

    ``trained`` says the epoch's training is over (finished, or cut short by
    "next stage") and only its evaluation is left.
    """

    stage: int
    epoch: int
    batch: int = 0
    trained: bool = False


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run directory's checkpoints/last.pt."""
    if not path.exists():
        raise CheckpointError(f"nothing to resume at {path}: no such run directory or checkpoint")
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"{path} has no checkpoint to resume from (expected {last})")
        return last
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    from core.model import load_state_file

    try:
        ckpt = load_state_file(path)
    except WeightsError as exc:
        raise CheckpointError(str(exc).replace("weights file", "checkpoint")) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cbam-tui checkpoint (use --weights to start from plain weights)")
    if ckpt.get("arch") != ARCH:
        raise CheckpointError(f"{path} is a checkpoint of architecture {ckpt.get('arch')!r}, not {ARCH!r}")
    missing = [k for k in ("model", "optimizer", "config", "position", "classes") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is an incomplete checkpoint (no {missing[0]!r})")
    return ckpt


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint was saved in, if it is still there."""
    candidate = checkpoint.resolve().parent.parent
    return candidate if (candidate / "events.jsonl").is_file() else None
