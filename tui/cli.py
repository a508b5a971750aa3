"""cbam-tui's command line: parse, build a RunConfig, hand off to tui.launch. Kept thin.

Only typer is imported at start-up, so ``cbam-tui --help`` answers without
loading torch; the commands import the engine when they run. `run` and `demo`
are one command; `demo` differs only in its defaults (click's default_map), and
which options the user really typed comes from click's parameter source.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from core import __version__
from core.errors import CbamError, ConfigError
from core.vocab import Exit

app = typer.Typer(
    name="cbam-tui",
    help="Staged fine-tuning of ResNet18 + CBAM, live in the terminal.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DATA, PLAN, LOOP, RUN = "Data", "Model and plan", "Training", "Run directory"
DEMO_DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic", "image_size": 16, "limit_train": 960, "limit_test": 320, "weights": "none",
    "stage_epochs": "1,1,1", "lrs": "3e-3,1e-3,3e-4", "batch_size": 32, "log_every": 5, "name": "demo",
}
PLAN_OPTIONS = ("stage_epochs", "lrs", "new_lr_mult", "frozen_bn", "moments", "schedule")
NOT_CONFIG = ("preset", "plan", *PLAN_OPTIONS, "headless", "detach")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cbam-tui {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Staged fine-tuning of ResNet18 + CBAM, live in the terminal."""


def run(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="cifar10, imagefolder or synthetic.", rich_help_panel=DATA)] = "cifar10",
    data_dir: Annotated[str, typer.Option(help="Where the data set is (or goes, for a download).", rich_help_panel=DATA)] = "./data",
    download: Annotated[bool, typer.Option("--download/--no-download", help="Fetch CIFAR-10 when it is absent.", rich_help_panel=DATA)] = True,
    image_size: Annotated[int, typer.Option(help="Images are resized to this many pixels square.", rich_help_panel=DATA)] = 32,
    limit_train: Annotated[int | None, typer.Option(help="Train on a class-balanced subset of N images (all when not given).", rich_help_panel=DATA)] = None,
    limit_test: Annotated[int | None, typer.Option(help="Test on a class-balanced subset of N images (all when not given).", rich_help_panel=DATA)] = None,
    augment: Annotated[str, typer.Option(help="Train augmentation: seed, flip-crop or none.", rich_help_panel=DATA)] = "seed",
    cache_dir: Annotated[str | None, typer.Option(help="Cache of decoded image folders.", show_default="~/.cache/cbam-tui", rich_help_panel=DATA)] = None,
    classes: Annotated[str | None, typer.Option(help="Train and test on these classes only, by name, comma-separated (all when not given).", rich_help_panel=DATA)] = None,
    weights: Annotated[str, typer.Option(help="imagenet, none (random init) or a PATH to a state dict or checkpoint.", rich_help_panel=PLAN)] = "imagenet",
    preset: Annotated[str, typer.Option(help="Stage plan: default, or seed (the study note exactly).", rich_help_panel=PLAN)] = "default",
    plan: Annotated[Path | None, typer.Option(help="A TOML plan file (stages, groups, learning rates).", rich_help_panel=PLAN)] = None,
    stage_epochs: Annotated[str, typer.Option(help="Epochs per stage (0 skips a stage).", rich_help_panel=PLAN)] = "5,15,30",
    lrs: Annotated[str, typer.Option(help="Base learning rate per stage.", rich_help_panel=PLAN)] = "1e-3,1e-4,1e-5",
    new_lr_mult: Annotated[float, typer.Option(help="New modules (stem conv, CBAM, fc) train at this multiple of the stage's rate.", rich_help_panel=PLAN)] = 1.0,
    frozen_bn: Annotated[str, typer.Option(help="Frozen BatchNorm layers: train (stats update, as the seed) or eval.", rich_help_panel=PLAN)] = "train",
    moments: Annotated[str, typer.Option(help="Adam state of groups that train on at a stage switch: keep or fresh.", show_default="keep; fresh for --preset seed", rich_help_panel=PLAN)] = "keep",
    schedule: Annotated[str, typer.Option(help="Learning-rate shape within each stage, stepped per batch: constant, cosine, warmup-cosine[:W%] or onecycle.", rich_help_panel=PLAN)] = "constant",
    batch_size: Annotated[int, typer.Option(help="Images per training batch, per process.", rich_help_panel=LOOP)] = 64,
    nproc_per_node: Annotated[int, typer.Option(help="Training processes on this machine (one per GPU with --device cuda; gloo on the CPU), launched with torch's elastic launcher. Learning rates are not rescaled.", rich_help_panel=LOOP)] = 1,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="With several processes on GPUs: BatchNorm layers in train mode use statistics over all of them.", rich_help_panel=LOOP)] = False,
    stall_timeout: Annotated[int, typer.Option(help="With several processes: seconds one may stay silent (frozen, cut off, its machine gone) before the group stops, naming it.", rich_help_panel=LOOP)] = 120,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=LOOP)] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16 (auto: bf16 where the hardware has it: CUDA, or a CPU with AVX512-BF16 or AMX; else fp32).", rich_help_panel=LOOP)] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model.", rich_help_panel=LOOP)] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data order, augmentation and init.", rich_help_panel=LOOP)] = 0,
    threads: Annotated[int, typer.Option(help="torch's CPU threads; 0 chooses from the CPUs this process may use (affinity, cgroup quota) that other processes leave free, one fewer under the dashboard.", show_default="0: chosen", rich_help_panel=LOOP)] = 0,
    log_every: Annotated[int, typer.Option(help="Batches between loss lines.", rich_help_panel=LOOP)] = 100,
    headless: Annotated[bool, typer.Option("--headless", help="Plain lines instead of the dashboard (also when stdout is no terminal).", rich_help_panel=LOOP)] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Train in a background process that outlives the terminal; output in <run dir>/train.log.", rich_help_panel=RUN)] = False,
    name: Annotated[str, typer.Option(help="Run name, the end of the run directory's name.", rich_help_panel=RUN)] = "cbam",
    runs_root: Annotated[str, typer.Option(help="Where new run directories go.", rich_help_panel=RUN)] = "runs",
    run_dir: Annotated[str | None, typer.Option(help="Use exactly this (new or empty) run directory.", rich_help_panel=RUN)] = None,
    resume: Annotated[str | None, typer.Option(help="Continue a run: its directory, its name under --runs-root, or a checkpoint; auto: this --name's newest unfinished run, or a new one.", rich_help_panel=RUN)] = None,
    group_control: Annotated[bool, typer.Option("--group-control", help="Let the run directory's group read the run and send it commands.", rich_help_panel=RUN)] = False,
) -> None:
    values = {k: v for k, v in locals().items() if k != "ctx"}
    source = {k: getattr(ctx.get_parameter_source(k), "name", "DEFAULT") for k in values}
    given = {k for k in values if source[k] in ("COMMANDLINE", "ENVIRONMENT")}
    from_defaults = {k for k in values if source[k] == "DEFAULT_MAP"}
    if resume == "auto":  # a requeued job: go on with this name's unfinished run, or start one
        from core.runs import unfinished_run

        found = unfinished_run(name, Path(runs_root))
        resume = values["resume"] = str(found) if found is not None else None
        given -= {"resume", "runs_root", "run_dir"}  # they found the run; the same script runs again
    if resume is not None:
        config, home = resume_config(values, given)
    else:
        config, home = new_config(values, given, from_defaults), None
    from core.jobenv import in_job
    from tui import launch

    if in_job():
        if nproc_per_node > 1 or detach:  # torchrun or srun started this process as one of several
            raise ConfigError("--nproc-per-node and --detach do not apply under torchrun or srun, which start the processes")
        code = launch.rank(config)
    elif detach:
        code = launch.detach(config, home)
    elif nproc_per_node > 1:
        code = launch.processes(config, home, show_dashboard=not headless and sys.stdout.isatty())
    elif headless or not sys.stdout.isatty():
        code = launch.headless(config)
    else:
        code = launch.dashboard(config)
    raise typer.Exit(code)


def new_config(values: dict[str, Any], given: set[str], from_defaults: set[str]) -> Any:
    """The config of a new run. Plan options count only when typed, or from demo's
    defaults without a plan file: a plan file or a preset otherwise keeps its own."""
    from core.config import RunConfig, validate
    from core.plan import PlanOptions, build_plan

    def option(name: str) -> Any:
        chosen = name in given or (name in from_defaults and values["plan"] is None)
        return values[name] if chosen else None

    plan = build_plan(PlanOptions(option("preset"), values["plan"], *(option(n) for n in PLAN_OPTIONS)))
    config = RunConfig(plan=plan, **{k: v for k, v in values.items() if k not in NOT_CONFIG})
    validate(config)
    return config


def resume_config(values: dict[str, Any], given: set[str]) -> tuple[Any, Path | None]:
    """The saved run, with what this invocation may change about it. An option that
    defines the run, typed with another value than the run has, is refused here, the
    one place that knows both."""
    from core.checkpoint import find_checkpoint, read_config, run_dir_of
    from core.config import RESUMABLE, merge_resume
    from core.runs import resolve_run

    target = Path(values["resume"])
    if not target.exists() and "/" not in values["resume"]:
        target = resolve_run(values["resume"], Path(values["runs_root"]))
    path = find_checkpoint(target)
    home = run_dir_of(path)
    saved = read_config(path, values["resume"])  # a finished run is refused before anything claims it
    for name in sorted(given):
        flag = "--" + name.replace("_", "-")
        if name in ("resume", "headless", "detach") or (name in RESUMABLE and name not in ("runs_root", "run_dir")):
            continue
        if name in ("runs_root", "run_dir"):
            if home is not None:
                raise ConfigError(f"{flag} does not apply when resuming a run directory: the run stays in {home}")
            continue
        have = _saved_value(saved, name)
        if name in ("lrs", "new_lr_mult") or _normal(values[name]) != _normal(have):
            shown = f" (it has {have})" if have is not None else ""
            raise ConfigError(f"{flag} cannot be changed when resuming: the run continues with its saved settings{shown}")
    # What was not typed stays as the run had it (a demo's --log-every 5 stays 5); where a
    # lone checkpoint's new run directory goes is this invocation's to say.
    changed = {k: values[k] for k in RESUMABLE if k in given or k in ("runs_root", "run_dir")}
    config = merge_resume(saved, saved.replace(**changed), str(path))
    return config, home


def _saved_value(saved: Any, name: str) -> Any:
    plan = saved.plan
    if name == "stage_epochs":
        return ",".join(str(s.epochs) for s in plan.stages)
    if name in ("frozen_bn", "moments"):
        return getattr(plan, name)
    if name == "schedule":
        return plan.stages[0].schedule
    if name in ("preset", "plan"):
        return plan.label
    return getattr(saved, name, None)


def _normal(value: Any) -> Any:
    if isinstance(value, Path):
        return value.name
    if isinstance(value, str) and "," in value:
        return ",".join(v.strip() for v in value.split(","))
    return value


app.command("run", help="Fine-tune on a real data set (CIFAR-10 by default).")(run)
app.command(
    "demo",
    help="An offline tour: synthetic shapes, random init, a tiny three-stage plan (about a minute on a CPU).",
    context_settings={"default_map": DEMO_DEFAULTS},
)(run)


@app.command("_child", hidden=True)
def child(run_dir: Annotated[Path, typer.Argument()]) -> None:
    """The background half of run --detach (not for typing)."""
    from tui import launch

    raise typer.Exit(launch.child(run_dir))


@app.command("_rank", hidden=True)
def rank(run_dir: Annotated[Path, typer.Argument()]) -> None:
    """One training process of run --nproc-per-node (not for typing)."""
    from tui import launch

    raise typer.Exit(launch.launched_rank(run_dir))


@app.command("summary")
def summary(
    preset: Annotated[str | None, typer.Option(help="Stage plan: default or seed.", show_default="default")] = None,
    plan: Annotated[Path | None, typer.Option(help="A TOML plan file.")] = None,
    new_lr_mult: Annotated[float | None, typer.Option(help="Rate multiple of the new modules.")] = None,
    frozen_bn: Annotated[str | None, typer.Option(help="train or eval.")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the head.")] = 10,
    image_size: Annotated[int, typer.Option(help="Input size for the output shapes.")] = 32,
    depth: Annotated[int, typer.Option(help="Deepest tree level shown.")] = 3,
) -> None:
    """Print the model tree (CBAM blocks marked) and what each stage trains."""
    from tui.summary_view import print_summary

    if not 1 <= num_classes <= 100_000 or not 1 <= depth <= 100 or not 8 <= image_size <= 512:
        raise ConfigError("--num-classes must be 1 to 100000, --depth 1 to 100 and --image-size 8 to 512")
    print_summary(preset, plan, new_lr_mult, frozen_bn, num_classes, image_size, depth)


RUNS_ROOT = Annotated[Path, typer.Option("--runs-root", help="Where the runs are (for names and the newest run).")]
RUN_ARG_HELP = "A run directory, or a run's name (or the start of one) under --runs-root."


@app.command("watch")
def watch(
    run_dir: Annotated[str | None, typer.Argument(help=RUN_ARG_HELP + " Default: the newest run.")] = None,
    runs_root: RUNS_ROOT = Path("runs"),
    web: Annotated[str | None, typer.Option(metavar="[HOST:]PORT", help="Serve the dashboard to a browser instead (needs textual-serve): on 127.0.0.1 unless HOST says otherwise, where every request needs the token printed at start.")] = None,
) -> None:
    """Attach the dashboard to a run, live or over: replay its events, then follow them."""
    from core.runs import resolve_run
    from tui import web as browser

    listen = browser.parse_listen(web) if web is not None else None
    run = resolve_run(run_dir, runs_root)
    if listen is not None:
        raise typer.Exit(browser.serve(run, listen))
    from tui import launch

    if browser.served():  # one browser page's dashboard; stdout carries its screen, so nothing else goes there
        with contextlib.redirect_stdout(io.StringIO()):
            raise typer.Exit(launch.watch(run))
    if not sys.stdout.isatty():
        raise ConfigError("watch needs a terminal (or --web PORT for a browser); for a plain list use cbam-tui runs, or read events.jsonl")
    raise typer.Exit(launch.watch(run))


FORMAT = Annotated[str | None, typer.Option(
    "--format", help="text, json or csv (default: text when stdout is not a terminal).", show_default=False)]


@app.command("runs")
def runs(
    runs_root: RUNS_ROOT = Path("runs"),
    prune: Annotated[str | None, typer.Option(help="failed: remove the runs that failed before their first epoch.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="With --prune: do not ask.")] = False,
    fmt: FORMAT = None,
) -> None:
    """List the runs: state (a dead process is told apart), stage, epoch, best accuracy, start, duration, and why
    a run failed; --format json or csv for a script."""
    from core.runs import list_runs
    from tui.formats import check_format, print_runs_as
    from tui.runs_view import prune_failed

    check_format(fmt)
    if prune is not None:
        if prune != "failed":
            raise ConfigError(f"--prune takes failed, not {prune!r}")
        raise typer.Exit(prune_failed(runs_root, yes))
    print_runs_as(list_runs(runs_root), fmt or "text")


METRIC_HELP = (
    "The scalar drawn (m/M on screen cycle it) and printed: per epoch test_acc (default), test_loss, train_acc, "
    "train_loss, images_per_second, seconds; by step batch_loss (each loss line's train loss), lr/GROUP, "
    "grad_norm/GROUP. Piped: a table of it after the others (text), the only table (csv), or the only one of "
    "each run's metrics (json, which holds them all without --metric)."
)


@app.command("compare")
def compare(
    run_dirs: Annotated[list[str], typer.Argument(help="Two or more runs (directories or names under --runs-root).")],
    runs_root: RUNS_ROOT = Path("runs"),
    metric: Annotated[str | None, typer.Option(help=METRIC_HELP, show_default=False)] = None,
    fmt: FORMAT = None,
) -> None:
    """Any scalar the runs recorded (test accuracy first) on one set of axes, with a table of each run's best and
    the configuration values that differ; live runs refresh. When stdout is not a terminal (or with --format), the
    table and the configuration values that differ, as text, json or csv."""
    from core.comparison import DEFAULT_METRIC, is_line_metric, metric_names, read_compared
    from core.events import clean_text
    from core.runs import resolve_run
    from tui.formats import check_format

    check_format(fmt)
    if len(run_dirs) < 2:
        raise ConfigError("compare needs at least two runs")
    paths = list(dict.fromkeys(resolve_run(r, runs_root) for r in run_dirs))
    piped = fmt is not None or not sys.stdout.isatty()
    lines = piped and (is_line_metric(metric) if metric is not None else fmt == "json")
    found = [read_compared(p, lines) for p in paths]
    names = metric_names(g for r in found for g in r.groups)
    if metric is not None and metric not in names:
        raise typer.BadParameter(f"no metric {clean_text(metric)!r}; these runs have {', '.join(names)}",
                                 param_hint="--metric")
    if piped:
        from tui.formats import print_comparison

        raise typer.Exit(print_comparison(found, fmt or "text", metric))
    from tui import launch

    raise typer.Exit(launch.compare(paths, metric or DEFAULT_METRIC))


@app.command("export")
def export(
    run_dirs: Annotated[list[str], typer.Argument(help=RUN_ARG_HELP + " Several: overlaid.")],
    tensorboard: Annotated[Path | None, typer.Option(help="Write TensorBoard event files into this directory (several runs: each into DIR/<run name>/).")] = None,
    png: Annotated[Path | None, typer.Option(help="Draw the loss and accuracy curves into this PNG file (several runs: all in one figure).")] = None,
    runs_root: RUNS_ROOT = Path("runs"),
) -> None:
    """Runs' numbers for other tools (needs the export extra: tensorboard, matplotlib). Exporting again replaces
    the export's own files with the same content; any other file in the way is refused."""
    from core import export as writers
    from core.runs import resolve_run

    if tensorboard is None and png is None:
        raise ConfigError("export needs --tensorboard DIR, --png FILE or both")
    runs = list(dict.fromkeys(resolve_run(r, runs_root) for r in run_dirs))
    if png is not None and png.suffix.lower() != ".png":
        raise ConfigError(f"--png {png} must name a .png file")
    if tensorboard is not None and len(runs) == 1:
        count, written = writers.tensorboard(runs[0], tensorboard)
        print(f"cbam-tui: {count} scalars of {runs[0].name} in {written} (tensorboard --logdir {tensorboard})")
    elif tensorboard is not None:
        for (count, written), run in zip(writers.tensorboard_runs(runs, tensorboard), runs, strict=True):
            print(f"cbam-tui: {count} scalars of {run.name} in {written}")
        print(f"cbam-tui: {len(runs)} runs side by side: tensorboard --logdir {tensorboard}")
    if png is not None:
        drawn = writers.png(runs[0], png) if len(runs) == 1 else writers.png_runs(runs, png)
        print(f"cbam-tui: {drawn} ({writers.PNG_INCHES[0] * writers.PNG_DPI:.0f}x"
              f"{writers.PNG_INCHES[1] * writers.PNG_DPI:.0f} pixels)")


@app.command("ctl", context_settings={"ignore_unknown_options": True})  # so that `epochs -1` is a value
def ctl(
    run_dir: Annotated[str, typer.Argument(help=RUN_ARG_HELP)],
    command: Annotated[str, typer.Argument(help="pause, resume, next, save, stop, lr or epochs.")],
    value: Annotated[str | None, typer.Argument(help="lr: a rate (3e-4) or a factor (x0.5); epochs: +N or -N.")] = None,
    group: Annotated[str | None, typer.Option(help="lr: change only this optimizer group's rate.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run to take and apply the command.")] = 30.0,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the run has applied or refused it.")] = True,
    runs_root: RUNS_ROOT = Path("runs"),
) -> None:
    """Steer a running run from a shell or a script, as its dashboard keys do:
    ctl RUN pause | resume | next | save | stop | lr 3e-4 [--group new] | lr x0.5 | epochs +2 | epochs -1

    Waits until the run has applied the command and exits 0, or exits 1 with the run's
    reason when it refused it (an unknown group, a rate or a stage length a resume would
    not take)."""
    import math

    from core.inbox import send, steer
    from core.runs import resolve_run
    from core.state import describe
    from core.vocab import Command

    if value is not None and not value.strip():  # an unset shell variable: never "every group" or "no value"
        raise ConfigError(f"{command} was given an empty value: leave it out or give one")
    if group is not None and not group.strip():
        raise ConfigError("--group was given an empty name: leave it out to change every group's rate")
    if command in ("lr", "epochs") and value is None:
        raise ConfigError(f"{command} needs a value: " + ("a rate (3e-4) or a factor (x0.5)" if command == "lr" else "+N or -N"))
    order = Command(command, value or "", group or "")
    if not (math.isfinite(timeout) and 0 < timeout <= 86400):
        raise ConfigError("--timeout must be more than 0 and at most 86400 seconds")
    run = resolve_run(run_dir, runs_root)
    origin = f"ctl pid {os.getpid()}"
    if not wait:
        send(run, order, origin)
        print(f"cbam-tui: {order} queued for {run}")
        return
    done = steer(run, order, origin, timeout)
    said = describe(done) if command in ("lr", "epochs") else []
    print(f"cbam-tui: {order} taken by {run}" + (f": {said[0]}" if said else ""))


def _click_errors(name: str) -> tuple[type[BaseException], ...]:
    """click's exception class ``name``; typer vendors click from 0.20 on."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


USAGE_ERRORS = _click_errors("UsageError")
ABORTS: tuple[type[BaseException], ...] = (typer.Abort, *_click_errors("Abort"))


def _error(text: str) -> None:
    """One line on stderr, whatever the user typed: control characters are shown escaped."""
    shown = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    with contextlib.suppress(OSError):  # a stderr nobody reads: the exit status still says it
        print(f"cbam-tui: {shown}", file=sys.stderr)


def main() -> None:
    """Console entry point: every failure a user can cause is one line and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except USAGE_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see cbam-tui {ctx.info_name} --help)" if ctx is not None and ctx.parent is not None else ""
        _error(f"error: {exc.format_message()}{hint}")  # type: ignore[attr-defined]
        sys.exit(Exit.USAGE)
    except ABORTS:
        sys.exit(Exit.SIGINT)
    except CbamError as exc:
        _error(f"error: {exc}")
        sys.exit(Exit.ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        if not _stdout_failed(exc):
            _internal(exc)
        _error(f"error: cannot write to standard output: {exc.strerror or exc}")
        sys.exit(Exit.ERROR)
    except Exception as exc:  # a bug, not bad input: still one line, and where the details are
        _internal(exc)
    sys.exit(code if isinstance(code, int) else Exit.OK)


def _internal(exc: BaseException) -> NoReturn:
    """A bug, not bad input: still one line, and where the details are."""
    notes = "; ".join(getattr(exc, "__notes__", []))
    where = f" ({notes})" if notes else ""
    _error(f"internal error: {type(exc).__name__}: {exc}{where}")
    sys.exit(Exit.ERROR)


def _stdout_failed(exc: OSError) -> bool:
    """Whether ``exc`` is standard output refusing what was written (a full disk, a closed
    pipe): every file the project writes itself reports its own failures with its path. If
    so, standard output is pointed at /dev/null, so the interpreter's last flush adds nothing."""
    if exc.errno not in (errno.ENOSPC, errno.EPIPE, errno.EDQUOT, errno.EIO) or exc.filename is not None:
        return False
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return True


if __name__ == "__main__":
    main()
