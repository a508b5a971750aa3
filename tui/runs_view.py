"""`cbam-tui runs`: the runs under a root, one row each, and what to do about a dead one."""

from __future__ import annotations

import time

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
