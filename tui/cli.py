"""cbam-tui's command line: parse, build a RunConfig, hand off. Kept thin.

Only typer is imported at start-up, so ``cbam-tui --help`` answers without
loading torch; the commands import the engine when they run.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from core import __version__
from core.errors import CbamError, ConfigError
from tui.options import OPTIONS, command, defaults

app = typer.Typer(
    name="cbam-tui",
    help="Staged fine-tuning of ResNet18 + CBAM, live in the terminal.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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


def start(given: dict[str, Any], demo: bool) -> None:
    """Resolve the options, then train under the dashboard or headless."""
    values = defaults(demo) | {k: v for k, v in given.items() if v is not None}
    if values["resume"] is not None:
        fixed = [o for o in OPTIONS if o.defines_run and given.get(o.name) is not None]
        if fixed:
            flag = fixed[0].decls[0].split("/")[0]
            raise ConfigError(f"{flag} cannot be changed when resuming: the run continues with its saved settings")
    config = build_config(values)
    headless = values["headless"] or not sys.stdout.isatty()
    if values["detach"]:
        from tui.detach import detach

        code = detach(given, demo, config)
    elif headless:
        from tui.headless import run_headless

        code = run_headless(config)
    else:
        from tui.app import run_dashboard

        code = run_dashboard(config)
    raise typer.Exit(code)


def build_config(values: dict[str, Any]) -> Any:
    from core.checkpoint import find_checkpoint
    from core.config import RunConfig, validate
    from core.plan import PlanOptions, build_plan, default_plan

    if values["resume"] is not None:
        find_checkpoint(Path(values["resume"]))  # a missing run fails before any screen opens
        plan = default_plan()  # replaced by the checkpoint's own plan
    else:
        plan = build_plan(
            PlanOptions(
                values["preset"], values["plan"], values["stage_epochs"], values["lrs"],
                values["new_lr_mult"], values["frozen_bn"],
            )
        )
    names = {f for f in RunConfig.__dataclass_fields__} - {"plan"}
    config = RunConfig(plan=plan, **{k: v for k, v in values.items() if k in names})
    if values["resume"] is None:
        validate(config)
    return config


app.command("run", help="Fine-tune on a real data set (CIFAR-10 by default).")(command(start, demo=False))
app.command(
    "demo", help="An offline tour: synthetic shapes, random init, a tiny three-stage plan (about a minute on a CPU)."
)(command(start, demo=True))


@app.command("summary")
def summary(
    preset: Annotated[str, typer.Option(help="Stage plan: default or seed.")] = "default",
    plan: Annotated[Path | None, typer.Option(help="A TOML plan file.")] = None,
    new_lr_mult: Annotated[float | None, typer.Option(help="Rate multiple of the new modules.")] = None,
    frozen_bn: Annotated[str | None, typer.Option(help="train or eval.")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the head.")] = 10,
    image_size: Annotated[int, typer.Option(help="Input size for the output shapes.")] = 32,
    depth: Annotated[int, typer.Option(help="Deepest tree level shown.")] = 3,
) -> None:
    """Print the model tree (CBAM blocks marked) and what each stage trains."""
    from tui.summary_view import print_summary

    if num_classes < 1 or depth < 1 or not 8 <= image_size <= 512:
        raise ConfigError("--num-classes and --depth must be at least 1, and --image-size from 8 to 512")
    print_summary(preset, plan, new_lr_mult, frozen_bn, num_classes, image_size, depth)


RUNS_ROOT = Annotated[Path, typer.Option("--runs-root", help="Where the runs are.")]


@app.command("watch")
def watch(
    run_dir: Annotated[str | None, typer.Argument(help="A run directory (default: the newest under --runs-root).")] = (
        None
    ),
    runs_root: RUNS_ROOT = Path("runs"),
) -> None:
    """Attach the dashboard to a run, live or over: replay its events, then follow them."""
    from core.runs import resolve_run

    run = resolve_run(run_dir, runs_root)
    if not sys.stdout.isatty():
        raise ConfigError("watch needs a terminal; for a plain list use cbam-tui runs, or read events.jsonl")
    from tui.watch import run_watch

    raise typer.Exit(run_watch(run))


@app.command("runs")
def runs(runs_root: RUNS_ROOT = Path("runs")) -> None:
    """List the runs: state (a dead process is told apart), stage, epoch, best accuracy, start, duration."""
    from core.runs import list_runs
    from tui.runs_view import print_runs

    print_runs(list_runs(runs_root))


@app.command("ctl")
def ctl(
    run_dir: Annotated[str, typer.Argument(help="The run directory.")],
    command: Annotated[str, typer.Argument(help="pause, resume, next, save or stop.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run to take the command.")] = 30.0,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the run has taken it.")] = True,
) -> None:
    """Steer a running run from a shell or a script, as its dashboard keys do."""
    import os

    from core.channel import VERBS, send, wait_taken
    from core.runs import resolve_run

    if command not in VERBS:
        raise ConfigError(f"unknown command {command!r}: use one of {', '.join(VERBS)}")
    if timeout <= 0:
        raise ConfigError("--timeout must be more than 0 seconds")
    run = resolve_run(run_dir, Path("runs"))
    sent = send(run, command, f"ctl pid {os.getpid()}")
    if not wait:
        print(f"cbam-tui: {command} queued for {run}")
        return
    if not wait_taken(sent, timeout):
        raise CbamError(
            f"the run did not take {command} within {timeout:g} s (it reads commands between batches); withdrawn"
        )
    print(f"cbam-tui: {command} taken by {run}")


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
    print(f"cbam-tui: {shown}", file=sys.stderr)


def main() -> None:
    """Console entry point: every failure a user can cause is one line and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except USAGE_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see cbam-tui {ctx.info_name} --help)" if ctx is not None and ctx.parent is not None else ""
        _error(f"error: {exc.format_message()}{hint}")  # type: ignore[attr-defined]
        sys.exit(2)
    except ABORTS:
        sys.exit(130)
    except CbamError as exc:
        _error(f"error: {exc}")
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, not bad input: still one line, and where the details are
        notes = "; ".join(getattr(exc, "__notes__", []))
        where = f" ({notes})" if notes else ""
        _error(f"internal error: {type(exc).__name__}: {exc}{where}")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
