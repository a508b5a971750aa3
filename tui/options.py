"""The options `run` and `demo` share: one table, so help, defaults and README agree."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


@dataclass(frozen=True)
class Opt:
    name: str  # the Python parameter name
    decls: tuple[str, ...]
    type: Any
    help: str
    default: Any  # for `run`
    demo: Any = ...  # for `demo`, when it differs
    defines_run: bool = True  # fixed by a saved run: refused together with --resume
    panel: str = "Training"
    shown: str | None = None  # the default to print when it is decided later (None here)


DATA, PLAN, RUN = "Data", "Model and plan", "Run directory"

OPTIONS: tuple[Opt, ...] = (
    Opt("dataset", ("--dataset",), str, "cifar10, imagefolder or synthetic.", "cifar10", "synthetic", panel=DATA),
    Opt("data_dir", ("--data-dir",), str, "Where the data set is (or goes, for a download).", "./data", panel=DATA),
    Opt("download", ("--download/--no-download",), bool, "Fetch CIFAR-10 when it is absent.", True, panel=DATA, defines_run=False),
    Opt("image_size", ("--image-size",), int, "Images are resized to this many pixels square.", 32, 16, panel=DATA),
    Opt("limit_train", ("--limit-train",), int, "Train on a class-balanced subset of N images.", None, 960, panel=DATA),
    Opt("limit_test", ("--limit-test",), int, "Test on a class-balanced subset of N images.", None, 320, panel=DATA),
    Opt("augment", ("--augment",), str, "Train augmentation: seed, flip-crop or none.", "seed", panel=DATA),
    Opt("cache_dir", ("--cache-dir",), str, "Cache of decoded image folders.", None, panel=DATA, defines_run=False, shown="~/.cache/cbam-tui"),
    Opt("weights", ("--weights",), str, "imagenet, none (random init) or a PATH to a state dict or checkpoint.", "imagenet", "none", panel=PLAN),
    Opt("preset", ("--preset",), str, "Stage plan: default, or seed (the study note exactly).", "default", panel=PLAN),
    Opt("plan", ("--plan",), Path, "A TOML plan file (stages, groups, learning rates).", None, panel=PLAN),
    Opt("stage_epochs", ("--stage-epochs",), str, "Epochs per stage (0 skips a stage).", None, "1,1,1", panel=PLAN, shown="5,15,30"),
    Opt("lrs", ("--lrs",), str, "Base learning rate per stage.", None, "3e-3,1e-3,3e-4", panel=PLAN, shown="1e-3,1e-4,1e-5"),
    Opt("new_lr_mult", ("--new-lr-mult",), float, "New modules (stem conv, CBAM, fc) train at this multiple of the stage's rate.", None, panel=PLAN, shown="1"),
    Opt("frozen_bn", ("--frozen-bn",), str, "Frozen BatchNorm layers: train (stats update, as the seed) or eval.", None, panel=PLAN, shown="train"),
    Opt("batch_size", ("--batch-size",), int, "Images per training batch.", 64, 32),
    Opt("device", ("--device",), str, "auto, cpu, cuda, cuda:N or mps.", "auto", defines_run=False),
    Opt("precision", ("--precision",), str, "auto, fp32, bf16 or fp16 (auto: bf16 on CUDA, else fp32).", "auto", defines_run=False),
    Opt("compile", ("--compile/--no-compile",), bool, "torch.compile the model.", False, defines_run=False),
    Opt("seed", ("--seed",), int, "Seed of the data order, augmentation and init.", 0),
    Opt("log_every", ("--log-every",), int, "Batches between loss lines.", 100, 5, defines_run=False),
    Opt("headless", ("--headless",), bool, "Plain lines instead of the dashboard (also when stdout is no terminal).", False, defines_run=False),
    Opt("detach", ("--detach",), bool, "Train in a background process that outlives the terminal; output in <run dir>/train.log.", False, defines_run=False, panel=RUN),
    Opt("name", ("--name",), str, "Run name, the end of the run directory's name.", "cbam", "demo", panel=RUN),
    Opt("runs_root", ("--runs-root",), str, "Where new run directories go.", "runs", panel=RUN, defines_run=False),
    Opt("run_dir", ("--run-dir",), str, "Use exactly this run directory.", None, panel=RUN),
    Opt("resume", ("--resume",), str, "Continue a run: its directory or a checkpoint.", None, panel=RUN, defines_run=False),
)


def defaults(demo: bool) -> dict[str, Any]:
    return {o.name: (o.demo if demo and o.demo is not ... else o.default) for o in OPTIONS}


def default_text(o: Opt, demo: bool) -> str:
    value = defaults(demo)[o.name]
    if value is None:
        value = o.shown
    if isinstance(value, bool):
        value = o.decls[0].split("/")[0 if value else 1] if "/" in o.decls[0] else ("on" if value else "off")
    return "" if value is None else f" [default: {value}]"


def command(body: Callable[..., Any], demo: bool) -> Callable[..., Any]:
    """A Typer command whose parameters are OPTIONS (None = not given)."""
    params = []
    for o in OPTIONS:
        info = typer.Option(*o.decls, help=o.help + default_text(o, demo), show_default=False, rich_help_panel=o.panel)
        params.append(
            inspect.Parameter(
                o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[o.type], info]  # noqa: UP045
            )
        )

    def cmd(**given: Any) -> Any:
        return body(given, demo)

    cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cmd.__annotations__ = {p.name: p.annotation for p in params}
    return cmd
