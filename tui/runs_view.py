"""`cbam-tui runs`: the runs under a root, one row each, and what to do about a dead one."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.errors import ConfigError
from core.rundir import RunInfo
from core.state import fmt_seconds

STATE_STYLES = {
    "running": "green", "paused": "yellow", "starting": "yellow", "loading": "yellow", "finished": "cyan",
    "stopped": "blue", "failed": "red", "dead": "bold red", "unreadable": "bold red",
}


def print_runs(runs: list[RunInfo], console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 140)  # a pipe or a file: never fold a row
    if not runs:
        console.print("no runs yet: start one with cbam-tui run (or cbam-tui demo)")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("run", "state", "stage", "epoch", "best acc", "started", "duration", "pid"):
        table.add_column(column, justify="right" if column in ("best acc", "duration", "pid") else "left", no_wrap=True)
    for r in runs:
        table.add_row(
            escape(r.path.name),
            f"[{STATE_STYLES.get(r.state, '')}]{r.state}[/]",
            r.stage,
            r.epoch,
            f"{r.best_acc:.2f}%" if r.best_acc is not None else "-",
            time.strftime("%m-%d %H:%M", time.localtime(r.started)) if r.started else "-",
            fmt_seconds(r.seconds) if r.seconds is not None else "-",
            str(r.pid) if r.pid else "-",
        )
    console.print(table)
    for r in runs:
        if r.state in ("dead", "failed", "unreadable") or r.bad_lines:
            then = f"; continue it with cbam-tui run --resume {r.path}" if r.resumable else ""
            console.print(f"{escape(r.path.name)}: {escape(r.message)}{then}", soft_wrap=True)


def prune_failed(root: Path, yes: bool) -> int:
    """Remove the runs under ``root`` that failed before their first epoch, after asking."""
    from core.rundir import list_runs, remove_run

    doomed = [r for r in list_runs(root) if r.state == "failed" and r.epochs_done == 0]
    if not doomed:
        print(f"cbam-tui: no run under {root} failed before its first epoch")
        return 0
    for r in doomed:
        print(f"  {r.path.name}: {r.message}")
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("runs --prune asks before it removes anything: answer in a terminal, or add --yes")
        if not typer.confirm(f"remove these {len(doomed)} run directories?", default=False):
            print("cbam-tui: nothing removed")
            return 1
    for r in doomed:
        remove_run(root, r.path.name)
    print(f"cbam-tui: removed {len(doomed)} run director{'y' if len(doomed) == 1 else 'ies'}")
    return 0
