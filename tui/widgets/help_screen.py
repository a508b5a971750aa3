"""The `?` screen: every key, and every mark on the screen."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

OWN_KEYS = (
    ("p / space", "pause, or resume, at the next batch boundary"),
    ("n", "end this stage now: evaluate, then start the next (asks on the last stage)"),
    ("s", "save a checkpoint now"),
    ("l", "learning rates: scale them all (x0.5), set them (3e-4) or one group's (new 3e-4)"),
    ("+ / -", "one epoch more / less in this stage"),
    ("q / ctrl+c", "quit: stops training with a checkpoint (asks while training)"),
)
ATTACHED_KEYS = (
    ("p / space", "pause, or resume, the run (through its control directory)"),
    ("n", "end the run's stage now (asks on the last stage)"),
    ("s", "have the run save a checkpoint"),
    ("l", "the run's learning rates: x0.5, 3e-4, or one group's (new 3e-4)"),
    ("+ / -", "one epoch more / less in the run's stage"),
    ("x", "stop the run, with a checkpoint (asks first)"),
    ("q / ctrl+c", "leave: the run goes on; come back with cbam-tui watch"),
)
VIEW_KEYS = (
    ("tab", "next view"),
    ("1 2 3", "dashboard, model tree (arrows, enter), log and machine"),
    ("4 5 6", "per-class accuracy, attention ([ ] other epochs), curves"),
    ("e / y / w", "loss curve: smoothing (EMA) / log scale / this stage only"),
    ("?", "this help"),
    ("escape", "close a dialog"),
)
COMPARE_KEYS = (
    ("m / M", "the next / previous scalar the runs recorded: per epoch, or by step at each loss line"),
    ("q / ctrl+c", "leave: the runs go on"),
    ("?", "this help"),
    ("escape", "close a dialog"),
)
MARKS = (
    ("*", "a module the pretrained weights do not provide (stem conv, CBAM blocks, fc)"),
    ("▸", "a module whose state or learning rate changed at the last stage switch"),
    ("◆", "a CBAM block (also in magenta)"),
)


def _table(rows: tuple[tuple[str, str], ...]) -> Table:
    """Keys on the left, what they do on the right, wrapped within its column."""
    table = Table.grid(padding=(0, 2), pad_edge=True)
    table.add_column(no_wrap=True, min_width=12)
    table.add_column(ratio=1)
    for key, what in rows:
        table.add_row(key, what)
    return table


SCROLL_HINT = " ↑ ↓ PgUp PgDn Home End: more "


class HelpBody(VerticalScroll):
    """The dialog itself scrolls, from the keyboard too (it takes the focus); where it does not
    all fit, its bottom border says how to see the rest."""

    def on_resize(self) -> None:
        self.call_after_refresh(self._hint)

    def _hint(self) -> None:
        self.border_subtitle = SCROLL_HINT if self.max_scroll_y > 0 else ""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, owns_run: bool = True, compare: bool = False) -> None:
        super().__init__()
        self.keys = COMPARE_KEYS if compare else (OWN_KEYS if owns_run else ATTACHED_KEYS) + VIEW_KEYS
        self.marks = () if compare else MARKS

    def compose(self) -> ComposeResult:
        note = Text("Keys that cannot act now are left out of the footer.")
        marks = (_table(self.marks), Text()) if self.marks else ()
        with HelpBody(id="dialog"):
            yield Static("Keys", classes="dialog-title")
            yield Static(Group(_table(self.keys), Text(), *marks, note))
