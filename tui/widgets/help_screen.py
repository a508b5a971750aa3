"""The `?` screen: every key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("p / space", "pause or resume at the next batch boundary"),
    ("n", "end this stage now: evaluate, then start the next (asks on the last stage)"),
    ("s", "save a checkpoint now"),
    ("q / ctrl+c", "quit: stops training with a checkpoint (asks while training)"),
)
VIEW_KEYS = (
    ("tab", "next view"),
    ("1 / 2 / 3", "dashboard / model tree / log"),
    ("?", "this help"),
    ("escape", "close a dialog"),
)
WATCH_KEYS = (
    ("p / space", "pause or resume the run (through its control channel)"),
    ("n", "end the run's stage now (asks on the last stage)"),
    ("s", "have the run save a checkpoint"),
    ("x", "stop the run, with a checkpoint (asks first)"),
    ("q / ctrl+c", "leave: the run goes on; come back with cbam-tui watch"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, keys: tuple[tuple[str, str], ...] = KEYS) -> None:
        super().__init__()
        self.keys = keys + VIEW_KEYS

    def compose(self) -> ComposeResult:
        text = "\n".join(f"  {key:<12} {what}" for key, what in self.keys)
        with Vertical(id="dialog"):
            yield Static("Keys", classes="dialog-title")
            yield Static(text + "\n\n  ◆ marks CBAM blocks · * marks modules new to the pretrained net")
