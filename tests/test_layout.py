"""Every view at every size shows each panel whole or not at all: read back from the
screen, panel by panel, a plot's tick labels are whole numbers of its axes (x: whole
steps or epochs, in order; y: from low to high), apart from each other and from the
data, under a title; a log line is a run's line, whole or short of whole fields; the
stage panel's lines do not wrap; the tree keeps its Trainable column; no map is cut.

The run is the scripted one without a GPU, as the demo on a laptop is: the machine
panel is short, and the learning-rate curve gets what is left of the left column."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widget import Widget

from tests.conftest import tiny_config
from tests.helpers import screen_rows
from tests.scripted import ScriptedTrainer, events
from tui.app import make_app
from tui.links import InProcessLink

SIZES = [(80, 24), (100, 30), (120, 40), pytest.param((200, 50), marks=pytest.mark.slow),
         pytest.param((300, 80), marks=pytest.mark.slow)]
KEYS = (("1", "dashboard"), ("2", "tree"), ("3", "log"), ("4", "classes"), ("5", "attention"), ("6", "curves"))
NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")
INSIDE = re.compile(r"[^\s\u2800-\u28ff─│┤┬┼├┴]")  # what may not be in a plot's box but braille and lines


def plot_problems(rows: list[str]) -> list[str]:
    """What is wrong with a plot as drawn; a blank plot (hidden: too small) is fine."""
    if not any(r.strip() for r in rows):
        return []
    top = next((i for i, r in enumerate(rows) if "┌" in r), None)
    bottom = next((i for i, r in enumerate(rows) if "└" in r), None)
    if top is None or bottom is None or bottom + 1 >= len(rows) or top < 1:
        return [f"half-drawn: no box, title or x labels: {rows}"]
    problems = []
    if not rows[top - 1].strip():
        problems.append("no title")
    left, right = rows[top].index("┌"), rows[top].index("┐")
    ys = []
    for r in rows[top + 1 : bottom]:
        label = r[:left].strip()
        if label:
            if not NUMBER.fullmatch(label):
                problems.append(f"y label {label!r} is not a number")
            else:
                ys.append(float(label))
        inside = r[left + 1 : right]
        if INSIDE.search(re.sub(r"\bS\d+\b", "", inside)):  # the stage marks S2, S3 belong to the data
            problems.append(f"words over the data: {inside.strip()!r}")
    if ys != sorted(ys, reverse=True) or len(set(ys)) != len(ys):
        problems.append(f"y labels not from low to high: {ys}")
    xs = rows[bottom + 1].split()
    for label in xs:
        if not re.fullmatch(r"\d+", label):
            problems.append(f"x label {label!r} is not a whole step or epoch (or two labels touch)")
    if all(re.fullmatch(r"\d+", x) for x in xs) and [int(x) for x in xs] != sorted({int(x) for x in xs}):
        problems.append(f"x labels out of order: {xs}")
    return problems


def log_problems(rows: list[str], lines: list[str]) -> list[str]:
    """A log row is one of the run's lines, whole, or cut after a whole field (marked …)."""
    problems = []
    whole = set(lines)
    for row in (r.rstrip() for r in rows):
        if not row or row in whole:
            continue
        if row.endswith(" …") and any(line.startswith(row[:-2] + " ") for line in lines):
            continue
        problems.append(f"log row cut: {row!r}")
    return problems


def panel_problems(app, view: str) -> list[str]:
    from tui.widgets.curves import Plot
    from tui.widgets.loss_log import LossLog

    screen = app.screen
    problems: list[str] = []

    def shown(widget: Widget) -> bool:
        return widget.display and widget.region.area > 0 and widget.is_on_screen

    for plot in screen.query(Plot):
        if shown(plot):
            problems += [f"{plot.id}: {p}" for p in plot_problems(screen_rows(app, plot.region))]
    for log in screen.query(LossLog):
        if shown(log):
            rows = screen_rows(app, log.scrollable_content_region)
            problems += [f"{log.id}: {p}" for p in log_problems(rows, log.plain_lines)]
    if view == "dashboard":
        for line in screen.query("#stage Static"):
            if shown(line) and line.region.height > 1:
                problems.append(f"{line.id} wraps: {screen_rows(app, line.region)}")
    if view == "tree":
        head = " ".join(screen_rows(app, screen.query_one("#tree-head").region))
        if "Trainable" not in head.split():
            problems.append(f"tree header cut: {head.strip()!r}")
    if view == "attention":
        body = screen.query_one("#attention")
        cut = [r for r in screen_rows(app, body.region) if "…" in r]
        if cut:
            problems.append(f"attention maps cut: {cut[0]!r}")
    return problems


def run_without_gpu(tmp_path: Path):
    return make_app(InProcessLink(tiny_config(tmp_path),
                                  trainer=ScriptedTrainer(lambda: events(epochs=3, gpus=False))))


@pytest.mark.parametrize("size", SIZES)
async def test_every_panel_of_every_view_is_whole_or_hidden(tmp_path: Path, size: tuple[int, int]) -> None:
    app = run_without_gpu(tmp_path)
    found: dict[str, list[str]] = {}
    async with app.run_test(size=size) as pilot:
        while not (len(app.state.epochs) == 3 and app.settled):
            await pilot.pause(0.05)
        for key, view in KEYS:
            await pilot.press(key)  # the view
            while not app.settled:
                await pilot.pause(0.05)
            await pilot.pause()
            if problems := panel_problems(app, view):
                found[view] = problems
        await pilot.press("q", "y")  # quit, confirmed
    assert found == {}, "\n".join(f"{view}: {problem}" for view, problems in found.items() for problem in problems)


def test_the_checks_find_what_garbles_a_panel() -> None:
    """Each check fails on a panel as it was once drawn."""
    lr_panel = ["   learning rate per group  ",
                "0.00043┌────────────────┐  ",
                "       └┬──────┬───────┬┘  ",
                "0.000432.5      3.8      4 "]
    assert any("x label '0.000432.5'" in p for p in plot_problems(lr_panel))
    upside = ["  lr  ", "     ┌──────┐", "1e-3 ┤⠉⠉⠉⠉⠉⠉│", "1e-2 ┤      │", "     └┬────┬┘", "      1    2 "]
    assert any("low to high" in p for p in plot_problems(upside))
    legend = ["  acc  ", "  ┌──────────┐", "50┤ ⢕⢕ train│", "  └┬───────┬┘", "   1.25    2 "]
    found = plot_problems(legend)
    assert any("words over the data" in p for p in found) and any("'1.25'" in p for p in found)
    assert plot_problems(["", "  ┌──┐", "  └──┘", "  1  2"]) == ["no title"]
    line = "Epoch: 3/50 | Batch: 500/782 | Batch loss: 1.1613 | Avg loss: 1.1627 | 1234 img/s"
    assert log_problems(["Epoch: 3/50 | Batch: 500/782 | Batch loss: 1.1613 | Avg loss: 1.16"], [line])
    assert log_problems(["Epoch: 3/50 | Batch: 500/782 | Batch loss: 1.1613 …", line], [line]) == []


class OnePlot(App[None]):
    """One plot in a box of the given size: the left column's spare rows at 120x40."""

    def __init__(self, plot: Widget, size: tuple[int, int]) -> None:
        super().__init__()
        self.plot, self.box = plot, size

    def compose(self) -> ComposeResult:
        self.plot.styles.width, self.plot.styles.height = self.box
        yield self.plot


@pytest.mark.parametrize("rows", range(2, 11))
async def test_a_learning_rate_panel_with_a_few_rows_is_whole_or_hidden(rows: int) -> None:
    from core.state import RunState
    from tui.widgets.curves import GroupCurve

    state = RunState()
    for event in events(epochs=3, gpus=False):
        state.apply(event)
    plot = GroupCurve("lr")
    app = OnePlot(plot, (44, rows))
    async with app.run_test(size=(60, 12)) as pilot:
        plot.show(state)
        await pilot.pause()
        assert plot_problems(screen_rows(app, plot.region)) == []


def state_of(script) -> object:  # type: ignore[no-untyped-def]
    from core.state import RunState

    state = RunState()
    for event in script:
        state.apply(event)
    return state


async def test_one_epoch_is_shown_alone_on_its_axis_not_with_an_epoch_0_before_it() -> None:
    from tui.widgets.curves import EpochCurve

    plot = EpochCurve("acc")
    app = OnePlot(plot, (40, 12))
    async with app.run_test(size=(60, 14)) as pilot:
        plot.show(state_of(events(epochs=1, batches=20, log_every=10)))
        await pilot.pause()
        rows = screen_rows(app, plot.region)
        bottom = next(i for i, r in enumerate(rows) if "└" in r)
        assert rows[bottom + 1].split() == ["1"] and plot_problems(rows) == []


async def test_the_stage_marks_sit_in_a_row_of_their_own_above_the_losses() -> None:
    from tui.widgets.curves import ChartOptions, LossCurve

    state = state_of(events(epochs=21, batches=40, log_every=10, gpus=False))  # stages 2 and 3 began
    plot = LossCurve()
    app = OnePlot(plot, (60, 14))
    async with app.run_test(size=(70, 16)) as pilot:
        for options in (ChartOptions(), ChartOptions(log_scale=True)):
            plot.show(state, options)
            await pilot.pause()
            rows = screen_rows(app, plot.region)
            marked = [r for r in rows if "S2" in r]
            assert marked and "S3" in marked[0], rows
            assert not re.search("[\u2801-\u28ff]", marked[0]), f"losses under the stage marks: {marked[0]!r}"
            assert plot_problems(rows) == []


async def test_side_by_side_charts_keep_a_blank_column_at_each_end_of_their_heads() -> None:
    from rich.style import Style

    from tui.widgets.curves import GroupCurve

    state = state_of(events(epochs=21, batches=40, log_every=10, gpus=False))
    plot = GroupCurve("lr")
    app = OnePlot(plot, (80, 10))
    async with app.run_test(size=(90, 12)) as pilot:
        plot.show(state)
        await pilot.pause()
        assert plot.text  # built: its title and series are known
        full = len(plot.titles[0]) + sum(len(segment.text) for segment in plot._legend(Style()))
        for width in range(full - 2, full + 3):  # the title and legend fill the head, or nearly
            plot.styles.width = width
            await pilot.pause()
            head = screen_rows(app, plot.region)[0]
            assert head[0] == " " and head[-1] == " ", (width, head)


async def test_the_tree_built_while_hidden_is_shown_narrow_without_a_scroll_bar_for_its_old_columns(
        tmp_path: Path) -> None:
    """The tree is built while hidden, at no width, with the output-shape column; shown at
    80 columns it drops that column. Its width follows at once: no horizontal scroll bar
    (a blank row over the totals) for columns that are gone."""
    app = make_app(InProcessLink(tiny_config(tmp_path), trainer=ScriptedTrainer(lambda: events(epochs=3))))
    async with app.run_test(size=(80, 24)) as pilot:
        while not (len(app.state.epochs) == 3 and app.settled):
            await pilot.pause(0.05)
        await pilot.press("2")
        tree = app.screen.query_one("#tree-body")
        while not (app.settled and tree.size.height):
            await pilot.pause(0.05)
        assert tree.virtual_size.width <= tree.size.width, (tree.virtual_size, tree.size)


async def test_phrases_get_their_lines_at_the_width_they_are_laid_out_at() -> None:
    """Text given before the widget has a width (a hidden view) is broken at its separators
    when it is first laid out, and its height is those lines from the first frame."""
    from rich.text import Text

    from tui.widgets.text_panel import PhraseText

    phrases = PhraseText(separator=" · ")

    class Host(App[None]):
        def compose(self) -> ComposeResult:
            yield phrases

    text = Text(" · ".join(f"phrase number {i} here" for i in range(6)))  # 6 phrases of 20 cells
    phrases.show(text)  # not mounted yet: no width
    async with Host().run_test(size=(50, 10)) as pilot:
        await pilot.pause()
        rows = [r.rstrip() for r in screen_rows(pilot.app, phrases.region)]
        assert phrases.region.height == 3  # two phrases a line (20 + 3 + 20 cells)
        assert rows == ["phrase number 0 here · phrase number 1 here", "phrase number 2 here · phrase number 3 here",
                        "phrase number 4 here · phrase number 5 here"]
        phrases.styles.width = 30  # narrower: one phrase a line, and the height follows
        await pilot.pause()
        assert phrases.region.height == 6
