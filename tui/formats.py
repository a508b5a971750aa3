"""`runs` and `compare` as text, JSON or CSV: for a pipe, a script or a spreadsheet.

Text is the same table `runs` prints in a terminal; JSON is one document; CSV one table.
`compare --metric NAME` adds that scalar: in text a table after the others, in CSV the
only table (its epoch or step, then one column per run), in JSON each run's `metrics`
holds only it (without --metric, every scalar the run recorded).
Names and values from a run directory are shown terminal-safe in text and CSV (JSON
escapes control characters itself), and a non-finite number is null in JSON.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from core.comparison import Compared, Series, differences, shown
from core.errors import ConfigError
from core.events import clean_text
from core.runs import RunInfo
from core.state import fmt_seconds
from core.vocab import Exit, Status
from tui.runs_view import STATE_STYLES, columns, print_runs

FORMATS = ("text", "json", "csv")
COMPARE_COLUMNS = ("run", "state", "best test acc", "at epoch", "epochs", "img/s", "time")
COMPARE_RIGHT = ("best test acc", "at epoch", "epochs", "img/s", "time")
RUN_FIELDS = ("run", "path", "state", "stage", "epoch", "best_acc", "started", "seconds", "pid", "resumable",
              "epochs_done", "bad_lines", "message")
COMPARED_FIELDS = ("run", "path", "state", "best_test_acc", "best_epoch", "epochs_done", "total_epochs",
                   "images_per_second", "seconds")


def check_format(value: str | None) -> str | None:
    if value is not None and value not in FORMATS:
        raise ConfigError(f"--format takes text, json or csv, not {clean_text(value)!r}")
    return value


# --- runs ------------------------------------------------------------------------------


def print_runs_as(runs: list[RunInfo], fmt: str) -> None:
    if fmt == "json":
        _json({"runs": [_run_fields(r) for r in runs]})
    elif fmt == "csv":
        _csv(RUN_FIELDS, [list(_run_fields(r).values()) for r in runs])
    else:
        print_runs(runs)


def _run_fields(r: RunInfo) -> dict[str, Any]:
    values = (r.path.name, str(r.path), r.state.word, r.stage, r.epoch, r.best_acc, r.started, r.seconds, r.pid,
              r.resumable, r.epochs_done, r.bad_lines, r.message)
    return dict(zip(RUN_FIELDS, values, strict=True))


# --- compare ---------------------------------------------------------------------------


def print_comparison(runs: list[Compared], fmt: str, metric: str | None = None) -> int:
    """The runs (with ``metric``: that scalar, run by run), then a line on stderr for each one
    that could not be read whole; 1 when one could not be read at all."""
    differ = differences(runs)
    if fmt == "json":
        document: dict[str, Any] = {"metric": metric} if metric is not None else {}
        document["runs"] = [{**_compared_fields(r), "epochs": list(r.epochs), "test_acc": list(r.test_acc),
                             "test_loss": list(r.test_loss), "note": r.note,
                             "metrics": {name: _series_fields(s) for name, s in r.series.items()
                                         if metric is None or name == metric}} for r in runs]
        document["differs"] = differ
        _json(document)
    elif fmt == "csv" and metric is not None:
        _csv(*metric_table(runs, metric))
    elif fmt == "csv":
        _csv((*COMPARED_FIELDS, *differ), [[*_compared_fields(r).values(), *(v[i] for v in differ.values())]
                                           for i, r in enumerate(runs)])
    else:
        _compare_text(runs, differ, metric)
    sys.stdout.flush()
    for r in runs:
        if r.note:
            print(f"cbam-tui: {clean_text(r.name)}: {clean_text(r.note)}", file=sys.stderr)
    return Exit.ERROR if any(r.state is Status.UNREADABLE for r in runs) else Exit.OK


def run_labels(runs: list[Compared]) -> list[str]:
    """A column name for each run: its directory's name, or its path where two share a name."""
    names = [r.name for r in runs]
    return [r.name if names.count(r.name) == 1 else str(r.path) for r in runs]


def metric_table(runs: list[Compared], metric: str) -> tuple[tuple[str, ...], list[list[Any]]]:
    """``metric`` of every run as one table: its epoch (or step), then a column per run,
    empty where a run has no value there."""
    found = [r.series.get(metric) for r in runs]
    axis = next((s.axis for s in found if s is not None), "epoch")
    by_run = [dict(zip(s.x, s.y, strict=True)) if s is not None else {} for s in found]
    xs = sorted({x for values in by_run for x in values})
    return (axis, *run_labels(runs)), [[x, *(values.get(x) for values in by_run)] for x in xs]


def _series_fields(s: Series) -> dict[str, list[Any]]:
    return {s.axis: list(s.x), "value": list(s.y)}


def compare_cells(r: Compared) -> tuple[str, ...]:
    """A run's row in the comparison table, on screen and in text."""
    return (
        clean_text(r.name), r.state.word,
        f"{r.best_acc:.2f}%" if r.best_acc is not None else "-", str(r.best_epoch or "-"),
        f"{r.epochs_done}/{r.total_epochs if r.total_epochs is not None else '-'}",
        f"{r.images_per_second:,.0f}" if r.images_per_second is not None else "-",
        fmt_seconds(r.seconds) if r.seconds is not None else "-",
    )


def _compare_text(runs: list[Compared], differ: dict[str, list[Any]], metric: str | None) -> None:
    console = Console(highlight=False)
    styles = {"state": [STATE_STYLES.get(r.state, "") for r in runs]}
    table = columns(COMPARE_COLUMNS, [compare_cells(r) for r in runs], COMPARE_RIGHT, styles)
    console.print(table, end="", no_wrap=True, overflow="ignore", crop=False)
    if sum(1 for r in runs if r.config) >= 2:
        if not differ:
            console.print("differs: nothing in the configuration")
        else:
            console.print(Text("differs: " + " | ".join(clean_text(r.name) for r in runs)), soft_wrap=True)
            for key, values in differ.items():
                console.print(Text(f"  {clean_text(key)}: " + " | ".join(shown(v) for v in values)), soft_wrap=True)
    if metric is not None:
        header, rows = metric_table(runs, metric)
        cells = [(str(x), *("-" if v is None else f"{v:.6g}" for v in values)) for x, *values in rows]
        console.print(Text(f"{metric}:"))
        console.print(columns(tuple(clean_text(h) for h in header), cells, header), end="", no_wrap=True,
                      overflow="ignore", crop=False)


def _compared_fields(r: Compared) -> dict[str, Any]:
    values = (r.name, str(r.path), r.state.word, r.best_acc, r.best_epoch, r.epochs_done, r.total_epochs,
              r.images_per_second, r.seconds)
    return dict(zip(COMPARED_FIELDS, values, strict=True))


# --- writers ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON has no NaN or infinity: such a number is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(_plain(document), allow_nan=False, indent=1) + "\n")


def _cell(value: Any) -> str:
    """A CSV cell: a value as JSON spells it (``true``, ``false``), None empty, text terminal-safe."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return str(value)
    return clean_text(json.dumps(_plain(value), separators=(",", ":")))


def _csv(header: tuple[str, ...], rows: list[list[Any]]) -> None:
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow([clean_text(h) for h in header])
    out.writerows([_cell(v) for v in row] for row in rows)
