"""`cbam-tui runs`: the runs under a root, one row each, and what to do about a dead one."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from core.errors import ConfigError
from core.events import clean_text
from core.runs import RunInfo
from core.state import fmt_seconds
from core.vocab import Exit, Status

STATE_STYLES = {
    Status.RUNNING: "green", Status.PAUSED: "yellow", Status.STARTING: "yellow", Status.LOADING: "yellow",
    Status.FINISHED: "cyan", Status.STOPPED: "blue", Status.FAILED: "red", Status.DEAD: "bold red",
    Status.UNREADABLE: "bold red",
}


COLUMNS = ("run", "state", "stage", "epoch", "best acc", "started", "duration", "pid")
RIGHT = ("best acc", "duration", "pid")
GAP = "   "


def print_runs(runs: list[RunInfo], console: Console | None = None) -> None:
    """One row a run, in columns. Names are shown terminal-safe."""
    console = console or Console(highlight=False)
    if not runs:
        console.print("no runs yet: start one with cbam-tui run (or cbam-tui demo)")
        return
    rows = [_cells(r) for r in runs]
    styles = [STATE_STYLES.get(r.state, "") for r in runs]
    console.print(columns(COLUMNS, rows, RIGHT, {"state": styles}), end="", no_wrap=True, overflow="ignore", crop=False)
    for r in runs:
        if r.state in (Status.DEAD, Status.FAILED, Status.UNREADABLE) or r.bad_lines:
            then = f"; continue it with cbam-tui run --resume {clean_text(str(r.path))}" if r.resumable else ""
            console.print(Text(f"{clean_text(r.path.name)}: {clean_text(r.message)}{then}"), soft_wrap=True)


def columns(header: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[str, ...] = (),
            styles: dict[str, list[str]] | None = None) -> Text:
    """A table of plain cells, laid out here rather than by a rich Table, which measures every
    cell and takes seconds over thousands of rows. ``styles``: a column's style, row by row."""
    styles = styles or {}
    widths = [max(cell_len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    last = len(header) - 1
    out = Text()
    for i, column in enumerate(header):
        out.append(_pad(column, widths[i], column in right) + (GAP if i < last else "\n"), style="bold")
    out.append("─" * (sum(widths) + len(GAP) * last) + "\n")
    for n, row in enumerate(rows):
        for i, (column, cell) in enumerate(zip(header, row, strict=True)):
            style = styles[column][n] if column in styles else ""
            out.append(_pad(cell, widths[i], column in right) + (GAP if i < last else "\n"), style=style)
    return out


def _cells(r: RunInfo) -> tuple[str, ...]:
    return (
        clean_text(r.path.name),
        r.state.word,
        r.stage,
        r.epoch,
        f"{r.best_acc:.2f}%" if r.best_acc is not None else "-",
        time.strftime("%m-%d %H:%M", time.localtime(r.started)) if r.started else "-",
        fmt_seconds(r.seconds) if r.seconds is not None else "-",
        str(r.pid) if r.pid else "-",
    )


def _pad(cell: str, width: int, right: bool) -> str:
    fill = " " * (width - cell_len(cell))
    return fill + cell if right else cell + fill


def prune_failed(root: Path, yes: bool) -> int:
    """Remove the runs under ``root`` that failed before their first epoch, after asking."""
    from core.runs import list_runs, remove_run

    doomed = [r for r in list_runs(root) if r.state is Status.FAILED and r.epochs_done == 0]
    if not doomed:
        print(f"cbam-tui: no run under {root} failed before its first epoch")
        return Exit.OK
    for r in doomed:
        print(f"  {r.path.name}: {r.message}")
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("runs --prune asks before it removes anything: answer in a terminal, or add --yes")
        if not typer.confirm(f"remove these {len(doomed)} run directories?", default=False):
            print("cbam-tui: nothing removed")
            return Exit.ERROR
    for r in doomed:
        remove_run(root, r.path.name)
    print(f"cbam-tui: removed {len(doomed)} run director{'y' if len(doomed) == 1 else 'ies'}")
    return Exit.OK
