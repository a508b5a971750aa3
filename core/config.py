"""RunConfig: everything a run is started with, resolved and validated up front."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.plan import Plan, default_plan

DATASETS = ("cifar10", "imagefolder", "synthetic")
AUGMENTS = ("seed", "flip-crop", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ON_NONFINITE = ("pause", "stop")


@dataclass(frozen=True)
class RunConfig:
    # data
    dataset: str = "cifar10"
    data_dir: str = "./data"
    download: bool = True
    image_size: int = 32  # px; images are resized to image_size x image_size
    limit_train: int | None = None  # class-balanced subset sizes
    limit_test: int | None = None
    augment: str = "seed"
    cache_dir: str | None = None  # decoded image-folder cache; None = ~/.cache/cbam-tui
    # model and plan
    weights: str = "imagenet"
    plan: Plan = field(default_factory=default_plan)
    # loop
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    log_every: int = 100  # batches between loss lines (the seed's 100)
    on_nonfinite: str = "stop"  # the dashboard pauses instead, so a person can look
    # run directory
    name: str = "cbam"
    runs_root: str = "runs"
    run_dir: str | None = None
    resume: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["plan"] = self.plan.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["plan"] = Plan.from_dict(data["plan"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def validate(config: RunConfig) -> None:
    """Raise ConfigError (one sentence) for values that cannot work."""
    if config.dataset not in DATASETS:
        raise ConfigError(f"unknown data set {config.dataset!r}: choose one of {', '.join(DATASETS)}")
    if config.augment not in AUGMENTS:
        raise ConfigError(f"unknown --augment {config.augment!r}: choose one of {', '.join(AUGMENTS)}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    for flag, value, low in (
        ("--batch-size", config.batch_size, 1),
        ("--log-every", config.log_every, 1),
        ("--image-size", config.image_size, 8),
        ("--limit-train", config.limit_train, 1),
        ("--limit-test", config.limit_test, 1),
    ):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be at least {low}, not {value}")
    if config.image_size > 512:
        raise ConfigError(f"--image-size must be at most 512, not {config.image_size}")
    if not config.data_dir.strip():
        raise ConfigError("--data-dir must not be empty")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", config.name):
        raise ConfigError(f"--name must be letters, digits, '.', '_' or '-', not {config.name!r}")
    if config.on_nonfinite not in ON_NONFINITE:
        raise ConfigError(f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}")
    parse_device(config.device)
    check_data_location(config)
    if config.weights not in ("imagenet", "none") and not Path(config.weights).exists():
        raise ConfigError(f"weights file {config.weights} does not exist (or use --weights imagenet or none)")


def check_data_location(config: RunConfig) -> None:
    """The cheap part of the data checks, so a typo fails before any screen opens."""
    root = Path(config.data_dir)
    if config.dataset == "imagefolder":
        if not root.exists():
            raise ConfigError(f"data directory {root} does not exist")
        if not root.is_dir():
            raise ConfigError(f"data directory {root} is a file, not a directory")
    if config.dataset == "cifar10" and not config.download:
        present = (root / "cifar-10-batches-py").is_dir() or (root / "cifar-10-python.tar.gz").is_file()
        if not present:
            raise ConfigError(
                f"CIFAR-10 is not in {root} (expected {root}/cifar-10-batches-py/ or cifar-10-python.tar.gz): "
                "drop --no-download to fetch it (170 MB), or use --dataset imagefolder"
            )


def parse_device(text: str) -> str:
    """Check the form of a device name: auto, cpu, mps, cuda or cuda:N."""
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        return text
    raise ConfigError(f"unknown --device {text!r}: use auto, cpu, cuda, cuda:N or mps")
