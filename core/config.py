"""RunConfig: everything a run is started with, resolved and validated up front.

The same `validate` runs on options typed at the command line, on a detached
child's config.json and on the config inside a checkpoint given to --resume:
what comes from a file is input, not trust.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from core.errors import ConfigError, PlanError
from core.plan import Plan, default_plan

DATASETS = ("cifar10", "imagefolder", "synthetic")
AUGMENTS = ("seed", "flip-crop", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ON_NONFINITE = ("pause", "stop")
MAX_BATCH = 1 << 16
MAX_SEED = (1 << 63) - 1
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


# Ranges are part of the type: msgspec checks them in a saved config, and `validate`
# checks options typed at the command line against the same declarations.
def _within(low: int, high: int) -> Meta:
    return Meta(ge=low, le=high)


class RunConfig(Struct, frozen=True):
    # data
    dataset: str = "cifar10"
    data_dir: str = "./data"
    download: bool = True
    image_size: Annotated[int, _within(8, 512)] = 32  # px; images are resized to image_size x image_size
    limit_train: Annotated[int, _within(2, 1 << 40)] | None = None  # class-balanced subset sizes
    limit_test: Annotated[int, _within(1, 1 << 40)] | None = None
    augment: str = "seed"
    cache_dir: str | None = None  # decoded image-folder cache; None = ~/.cache/cbam-tui
    classes: str | None = None  # comma-separated class names to train on; None = all
    # model and plan
    weights: str = "imagenet"
    plan: Plan = msgspec.field(default_factory=default_plan)
    # loop
    batch_size: Annotated[int, _within(1, MAX_BATCH)] = 64  # per process
    nproc_per_node: Annotated[int, _within(1, 1024)] = 1  # training processes launched on this machine
    sync_bn: bool = False  # SyncBatchNorm across the processes (CUDA)
    # s: a process of a group silent this long (frozen, cut off, gone) stops the group
    stall_timeout: Annotated[int, _within(2, 7 * 86400)] = 120
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    seed: Annotated[int, _within(0, MAX_SEED)] = 0
    # torch's CPU threads; 0: chosen from the CPUs this process can have (core.threads)
    threads: Annotated[int, _within(0, 1024)] = 0
    log_every: Annotated[int, _within(1, 1 << 30)] = 100  # batches between loss lines (the seed's 100)
    on_nonfinite: str = "stop"  # the dashboard pauses instead, so a person can look
    # run directory
    name: str = "cbam"
    runs_root: str = "runs"
    run_dir: str | None = None
    resume: str | None = None
    group_control: bool = False  # the run directory's group may read it and send commands

    def to_dict(self) -> dict[str, Any]:
        out = msgspec.structs.asdict(self)
        out["plan"] = self.plan.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: object, where: str = "the saved configuration") -> RunConfig:
        """A config read back from a file: every field type-checked, then `validate`d.
        Keys it does not know (a later version's) are passed over."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} is not a run configuration")
        try:
            plan = Plan.from_dict(data.get("plan"), f"{where}'s plan")
        except PlanError as exc:
            raise ConfigError(str(exc)) from None
        config = _checked({k: v for k, v in data.items() if k != "plan"}, where).replace(plan=plan)
        validate(config, resuming=True)
        return config

    def replace(self, **changes: Any) -> RunConfig:
        return msgspec.structs.replace(self, **changes)


_REFUSED = re.compile(r"(?P<said>.*) - at `\$\.(?P<name>\w+)`")
_BOUND = re.compile(r"Expected `int` (?P<op>>=|<=) (?P<limit>-?\d+)")
_TYPE = re.compile(r"Expected `(?P<type>[^`]*)`")


def _checked(data: dict[str, Any], where: str) -> RunConfig:
    """``data`` as a RunConfig, each value of its field's type and within its range;
    ConfigError names the first that is not (by its option, for a range)."""
    try:
        return msgspec.convert(data, RunConfig)
    except msgspec.ValidationError as exc:
        m = _REFUSED.fullmatch(str(exc))
        if m is None:
            raise ConfigError(f"{where} is not a run configuration") from None
        name, value = m["name"], data.get(m["name"])
        bound = _BOUND.fullmatch(m["said"])
        if bound:
            side = "at least" if bound["op"] == ">=" else "at most"
            raise ConfigError(f"--{name.replace('_', '-')} must be {side} {bound['limit']}, not {value}") from None
        kind = _TYPE.match(m["said"])
        declared = kind["type"].replace("null", "None") if kind else "of its type"
        raise ConfigError(f"{where}: {name} is {type(value).__name__} {str(value)[:40]!r}, not {declared}") from None


def validate(config: RunConfig, resuming: bool = False) -> None:
    """Raise ConfigError (one sentence) for values that cannot work. ``resuming``: the
    weights came from the checkpoint, so the file the run started from may be gone."""
    if config.dataset not in DATASETS:
        raise ConfigError(f"unknown data set {config.dataset!r}: choose one of {', '.join(DATASETS)}")
    if config.augment not in AUGMENTS:
        raise ConfigError(f"unknown --augment {config.augment!r}: choose one of {', '.join(AUGMENTS)}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    _checked(msgspec.structs.asdict(config), "the configuration")
    for flag, text in (("--data-dir", config.data_dir), ("--runs-root", config.runs_root)):
        if not text.strip() or "\0" in text:
            raise ConfigError(f"{flag} must be a path, not {text!r}")
    for flag, maybe in (("--run-dir", config.run_dir), ("--cache-dir", config.cache_dir), ("--resume", config.resume)):
        if maybe is not None and (not maybe.strip() or "\0" in maybe):
            raise ConfigError(f"{flag} must be a path, not {maybe!r}")
    if not _NAME.fullmatch(config.name) or set(config.name) == {"."}:
        raise ConfigError(
            f"--name must be one path component of letters, digits, '.', '_' or '-' (at most 100), not {config.name!r}"
        )
    if config.classes is not None:
        parse_classes(config.classes)
    if config.on_nonfinite not in ON_NONFINITE:
        raise ConfigError(f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}")
    device = parse_device(config.device)
    if config.nproc_per_node > 1:
        check_shared_device(device)
    if config.sync_bn and device in ("cpu", "mps"):
        raise ConfigError(SYNC_BN_NEEDS_CUDA)
    check_data_location(config)
    if not resuming and config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        given = Path(config.weights)
        if not config.weights.strip():
            raise ConfigError("--weights takes imagenet, none or a file's path, not ''")
        what = "is a directory" if given.is_dir() else "is not a regular file" if given.exists() else "does not exist"
        raise ConfigError(f"weights file {config.weights} {what} (or use --weights imagenet or none)")


SYNC_BN_NEEDS_CUDA = "--sync-bn needs CUDA GPUs: SyncBatchNorm has no CPU implementation"


def check_shared_device(device: str) -> None:
    """One sentence for a --device (parsed) that several processes cannot share."""
    if device.startswith("cuda:"):
        raise ConfigError(
            f"--device {device} names one GPU; several processes take GPUs 0..N-1 "
            "(choose them with CUDA_VISIBLE_DEVICES and use --device cuda)"
        )
    if device not in ("cpu", "auto", "cuda"):
        raise ConfigError(f"--device {device} cannot be shared by several processes: use cuda or cpu")


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


def parse_classes(text: str) -> tuple[str, ...]:
    """``dog,frog,horse`` -> the names; at least two, none twice (checked against the data when it loads).
    A backslash keeps the next character in the name: ``a\\,b`` is the class (folder) ``a,b``."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ch))
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    names = (*(p.strip() for p in parts), "".join(current).strip())
    if any(not n for n in names):
        raise ConfigError(f"--classes needs class names separated by commas, not {text!r}")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"--classes names {twice!r} twice")
    if len(names) < 2:
        raise ConfigError(f"--classes needs at least two classes, not {text!r}")
    return names


def parse_device(text: str) -> str:
    """Check the form of a device name: auto, cpu, mps, cuda or cuda:N."""
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", text):
        return text
    raise ConfigError(f"unknown --device {text!r}: use auto, cpu, cuda, cuda:N or mps")


# What a resume may change: where and how fast it runs, never what it trains. A lone
# checkpoint (outside any run directory) starts a new run directory: runs_root and
# run_dir say where.
RESUMABLE = (
    "download", "cache_dir", "device", "precision", "compile", "threads", "log_every", "on_nonfinite",
    "runs_root", "run_dir", "group_control", "nproc_per_node", "sync_bn", "stall_timeout",
)


def merge_resume(saved: RunConfig, given: RunConfig, checkpoint: str) -> RunConfig:
    """The saved run with what this invocation may change about it."""
    changes = {name: getattr(given, name) for name in RESUMABLE}
    if given.cache_dir is None:
        changes["cache_dir"] = saved.cache_dir
    return saved.replace(**changes, resume=checkpoint)
