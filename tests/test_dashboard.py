"""The dashboard's screen against its rules: a log line's look comes from its kind, never
from its text, and nothing in tui/ writes the RunState except through the state itself."""

from __future__ import annotations

import ast
from pathlib import Path

from textual.app import App, ComposeResult

from core.events import EpochEnded, RunStopped, StageStarted
from tests.scripted import events
from tui.widgets.loss_log import LineKind, LogLine, LossLog, log_lines, note

TUI = Path(__file__).resolve().parents[1] / "tui"
# Calls that change a list, dict or set in place.
MUTATING = {"append", "extend", "insert", "remove", "pop", "clear", "update", "add", "discard", "setdefault",
            "popitem", "sort", "reverse"}


def test_an_events_log_lines_carry_the_kind_the_event_gives_them() -> None:
    script = list(events(epochs=1))
    stage = next(e for e in script if isinstance(e, StageStarted))
    epoch = next(e for e in script if isinstance(e, EpochEnded))
    banner, *details = log_lines(stage)
    assert banner.kind == LineKind.BANNER and banner.text.startswith("=== Stage 1/3")
    assert details and {line.kind for line in details} == {LineKind.TEXT}
    assert [line.kind for line in log_lines(epoch)] == [LineKind.EPOCH]
    assert note("cannot pause: the run has finished") == LogLine(LineKind.NOTE, "> cannot pause: the run has finished")


def test_the_command_to_continue_a_stopped_run_has_a_line_of_its_own_that_a_narrow_log_keeps_whole() -> None:
    from tui.widgets.loss_log import fit_line

    run = Path("/work/walk/runs/20261204-051430-resumeme")
    stopped = RunStopped("stop", 1, 3, 20, str(run / "checkpoints" / "last.pt"), detail="stop command")
    what, command = (line.text for line in log_lines(stopped))
    assert what == "stopped (stop command) at epoch 3, batch 20"
    assert command == f"continue with: cbam-tui run --resume {run}"
    assert fit_line(command, 96) == command  # the log at 100x30: whole, where the one line was cut before the path
    assert [line.text for line in log_lines(RunStopped("quit", 1, 1, 0, None))] == [
        "stopped (quit) at epoch 1, batch 0; no checkpoint was kept"]


class OneLog(App[None]):
    def compose(self) -> ComposeResult:
        yield LossLog(id="log")


async def test_the_log_styles_a_line_by_its_kind_not_by_its_text() -> None:
    app = OneLog()
    async with app.run_test(size=(60, 6)) as pilot:
        log = app.query_one(LossLog)
        same = "=== Stage 1/3: warm up new modules (epochs 1-5) ==="
        log.add_lines([LogLine(LineKind.BANNER, same), LogLine(LineKind.NOTE, same),
                       LogLine(LineKind.EPOCH, "Epoch 1/50 done")])
        await pilot.pause()
        banner, noted, epoch = (log.render_line(y) for y in range(3))
        assert any(s.style is not None and s.style.bold for s in banner)
        assert not any(s.style is not None and s.style.bold for s in noted)  # the same words, another kind
        assert any(s.style is not None and s.style.color is not None and s.style.color.name == "cyan" for s in epoch)


async def test_the_log_scrolls_by_keys_and_follows_the_end_again_once_back_at_the_bottom() -> None:
    app = OneLog()
    async with app.run_test(size=(60, 6)) as pilot:
        log = app.query_one(LossLog)
        log.focus()
        log.add_lines([LogLine(LineKind.TEXT, f"line {i}") for i in range(40)])
        await pilot.pause()

        def top() -> str:
            return log.plain_lines[int(log.scroll_y)]

        assert log.scroll_y == log.max_scroll_y > 0  # at the newest line
        await pilot.press("home")  # the first line
        assert top() == "line 0"
        await pilot.press("pagedown", "down")  # a page and a line on
        assert top() == f"line {log.scrollable_content_region.height + 1}"
        await pilot.press("up", "pageup")  # and back
        assert top() == "line 0"
        log.add_lines([LogLine(LineKind.TEXT, "line 40")])  # a new line does not pull a reader away
        await pilot.pause()
        assert top() == "line 0"
        await pilot.press("end")  # back at the bottom: following again
        log.add_lines([LogLine(LineKind.TEXT, "line 41")])
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y and log.render_line(log.size.height - 1).text.rstrip() == "line 41"


def _names_state(node: ast.expr) -> bool:
    """``state``, ``x.state`` or ``x.state.y[...]``: an expression reaching into a RunState."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute) and node.attr == "state":
            return True
        node = node.value
    return isinstance(node, ast.Name) and node.id == "state"


def writes_into_state(source: str) -> list[int]:
    """The lines of ``source`` that assign into a state's fields or change its containers in place."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATING
              and _names_state(node.func.value)):
            found.append(node.lineno)
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, (ast.Attribute, ast.Subscript)) and _names_state(part.value):
                    found.append(node.lineno)
                    break
    return sorted(found)


def test_the_check_finds_a_write_into_the_state() -> None:
    assert writes_into_state("self.state.status = 'PAUSED'\nself.app.state.version += 1\n") == [1, 2]
    assert writes_into_state("state.epochs.append(e)\ndel state.attention[:3]\n") == [1, 2]
    assert writes_into_state("state.apply(e)\nstate.expect('PAUSED')\nx = state.status\n") == []


def test_nothing_in_tui_writes_into_the_run_state() -> None:
    """The app folds events with RunState.apply and shows a command's effect with
    RunState.expect; screens and widgets only read the state."""
    writes = {str(path.relative_to(TUI)): lines for path in sorted(TUI.rglob("*.py"))
              if (lines := writes_into_state(path.read_text()))}
    assert writes == {}
